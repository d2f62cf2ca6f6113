"""Columns of the ``language`` and ``toxicity`` stages."""
from __future__ import annotations

import pyarrow as pa
from thresher.schemas.columns import register_fields

# language: fastText language ID (top label and its probability)
LANGUAGE = "language"                  # label without "__label__", e.g. "en" or "eng_Latn"
LANGUAGE_SCORE = "language_score"      # probability of that label, 0..1

register_fields("language", [
    pa.field(LANGUAGE, pa.string()),
    pa.field(LANGUAGE_SCORE, pa.float32()),
])

# toxicity: word lists (always) + optional classifiers
TOXICITY_HARD_HITS = "toxicity_hard_hits"            # occurrences of hard-list entries
TOXICITY_SOFT_HITS = "toxicity_soft_hits"            # occurrences of soft-list entries
TOXICITY_WORDLIST_SCORE = "toxicity_wordlist_score"  # words covered by hits / words
TOXICITY_SCORE = "toxicity_score"                    # P(toxic) of the trained classifier (if configured)
TOXICITY_PROFANITY = "toxicity_profanity"            # alt-profanity-check probability (if enabled)

TOXICITY_WORDLIST_FIELDS = [
    pa.field(TOXICITY_HARD_HITS, pa.int32()),
    pa.field(TOXICITY_SOFT_HITS, pa.int32()),
    pa.field(TOXICITY_WORDLIST_SCORE, pa.float32()),
]
TOXICITY_CLASSIFIER_FIELD = pa.field(TOXICITY_SCORE, pa.float32())
TOXICITY_PROFANITY_FIELD = pa.field(TOXICITY_PROFANITY, pa.float32())

# every column the stage can write; a configured stage writes the word-list
# columns plus the optional ones it is configured for (see ToxicityStage.fields)
register_fields("toxicity", TOXICITY_WORDLIST_FIELDS + [TOXICITY_CLASSIFIER_FIELD, TOXICITY_PROFANITY_FIELD])
