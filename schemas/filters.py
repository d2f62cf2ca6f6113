"""Score columns of the heuristic filter stages (``scorers/heuristics.py``).

Every rule writes the measured value (null where it is undefined, e.g. a ratio over zero
words); ``<stage>_skipped`` lists, comma-separated, the rules that could not apply to a row
(null: none skipped).
"""
from __future__ import annotations

import pyarrow as pa
from thresher.schemas.columns import register_fields

_f64 = pa.float64()
_i64 = pa.int64()
_str = pa.string()

GOPHER_QUALITY_FIELDS = register_fields("gopher_quality", [
    pa.field("gopher_quality_word_count", _i64),          # words that are not only punctuation/symbols
    pa.field("gopher_quality_mean_word_length", _f64),    # mean characters of those words
    pa.field("gopher_quality_hash_ratio", _f64),          # '#' per word
    pa.field("gopher_quality_ellipsis_ratio", _f64),      # '...'/'…' per word
    pa.field("gopher_quality_bullet_lines", _f64),        # fraction of lines starting with a bullet
    pa.field("gopher_quality_ellipsis_lines", _f64),      # fraction of lines ending with an ellipsis
    pa.field("gopher_quality_alpha_words", _f64),         # fraction of words with a letter
    pa.field("gopher_quality_stop_words", _i64),          # distinct stop words present
    pa.field("gopher_quality_skipped", _str),
])

_REP_RULES = ["dup_para_frac", "dup_para_char_frac", "dup_line_frac", "dup_line_char_frac"] + [
    f"top_{n}_gram" for n in (2, 3, 4)] + [f"dup_{n}_gram" for n in range(5, 11)]

GOPHER_REPETITION_FIELDS = register_fields("gopher_repetition", [
    pa.field(f"gopher_repetition_{r}", _f64) for r in _REP_RULES
] + [pa.field("gopher_repetition_skipped", _str)])

FINEWEB_FIELDS = register_fields("fineweb", [
    pa.field("fineweb_line_punct_ratio", _f64),   # fraction of lines ending in terminal punctuation
    pa.field("fineweb_short_line_ratio", _f64),   # fraction of short lines
    pa.field("fineweb_char_dup_ratio", _f64),     # character fraction in duplicate lines
    pa.field("fineweb_newline_ratio", _f64),      # newlines per word
    pa.field("fineweb_skipped", _str),
])

C4_FIELDS = register_fields("c4", [
    pa.field("c4_lorem_ipsum", pa.bool_()),        # a checked line contains "lorem ipsum"
    pa.field("c4_curly_bracket", pa.bool_()),      # a checked line contains "{"
    pa.field("c4_sentences", _i64),                # sentences in the kept lines
    pa.field("c4_paragraphs", _i64),               # kept lines of >= min_paragraph_length chars
    pa.field("c4_lines_removed", _i64),            # lines removed by cleaning
    pa.field("c4_chars_removed", _i64),            # characters removed by cleaning
    pa.field("c4_lines_long_word", _i64),
    pa.field("c4_lines_no_terminal_punct", _i64),
    pa.field("c4_lines_too_few_words", _i64),
    pa.field("c4_lines_javascript", _i64),
    pa.field("c4_lines_policy", _i64),
    pa.field("c4_skipped", _str),
])
