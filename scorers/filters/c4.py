"""``c4``: the C4 document filters and line cleaning."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.schemas import columns as C
from thresher.scorers.base import (
    Column,
    Param,
    StageOutput,
    between,
    one_of,
)
from thresher.scorers.filters.rules import (
    SKIPPED_DOC,
    _int_col,
    _lt,
    _positive_or_none,
    _RuleStage,
    _text_len,
)
from thresher.scorers.registry import register
from thresher.scorers.text import ops as T

# ----------------------------------------------------------------------------------------
# c4
# ----------------------------------------------------------------------------------------

C4_POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                     "use of cookies", "use cookies")
C4_CITATION_RE = r"\[\p{Nd}*\]|\[edit\]|\[citation needed\]"
C4_TERMINAL = ".?!\"'"


ORIGINAL_TEXT_COLUMN = Column(C.ORIGINAL_TEXT, pa.string(), "the input text before line cleaning (keep_original: true)")


@register
class C4(_RuleStage):
    """C4 cleaning and filtering (Raffel et al. 2020), reference defaults.

    Line cleaning (each line of ``str.splitlines``, whitespace-stripped), in this order:

    1. drop a line with a whitespace-separated word longer than ``max_word_length``;
    2. remove citation markers ``[1]``, ``[]``, ``[edit]``, ``[citation needed]``;
    3. drop a line that does not end in ``. ? ! " '`` or that ends in ``...``
       (``filter_no_terminal_punct``);
    4. drop a line with fewer than ``min_words_per_line`` whitespace-separated words
       (counted before citation removal);
    5. a remaining line containing ``lorem ipsum`` (any case) rejects the document
       (``lorem_ipsum``);
    6. drop a line containing ``javascript`` (any case);
    7. a remaining line containing ``{`` rejects the document (``curly_bracket``);
    8. drop a line containing a policy phrase (``terms of use``, ``privacy policy``,
       cookie notices; any case).

    Document rules, in order: ``lorem_ipsum`` and ``curly_bracket`` (whichever line comes
    first), ``too_few_sentences`` (fewer than ``min_sentences`` sentences in the kept
    lines, see :func:`thresher.scorers.text.ops.sentence_counts`), and, if
    ``paragraph_filter`` is on, ``paragraphs`` (fewer than ``min_paragraphs`` kept lines
    of at least ``min_paragraph_length`` characters, as the mC4 paragraph filter).

    ``mode="clean_and_filter"`` replaces the text of kept documents by the kept lines
    joined with ``\\n``; ``mode="filter"`` takes the same decisions without rewriting.
    Rejected documents keep their text. ``c4_lines_removed`` / ``c4_chars_removed`` say
    how much cleaning removed (or would remove).

    Documents written without spaces (Han/kana) count one word per character for the
    words-per-line rule; for Thai-like scripts that rule is skipped; ``。！？｡`` also count
    as terminal punctuation for both.
    """

    name = "c4"
    doc = "C4 line cleaning and document filter (lorem ipsum, curly brackets, sentences)."
    rewrites_text = True
    RULES = ("lorem_ipsum", "curly_bracket", "too_few_sentences", "paragraphs")
    reasons = RULES
    default_order = 50
    cpu_ns_per_byte = 110  # benchmarks/results (filters.txt, langid.txt, dedup_100k.json)
    columns = (
        Column("c4_lorem_ipsum", pa.bool_(), "a checked line contains 'lorem ipsum'"),
        Column("c4_curly_bracket", pa.bool_(), "a checked line contains '{'"),
        Column("c4_sentences", pa.int64(), "sentences in the kept lines"),
        Column("c4_paragraphs", pa.int64(), "kept lines of >= min_paragraph_length chars"),
        Column("c4_lines_removed", pa.int64(), "lines removed by cleaning"),
        Column("c4_chars_removed", pa.int64(), "characters removed by cleaning"),
        Column("c4_lines_long_word", pa.int64(), "lines removed for a word longer than max_word_length"),
        Column("c4_lines_no_terminal_punct", pa.int64(), "lines removed for lacking terminal punctuation"),
        Column("c4_lines_too_few_words", pa.int64(), "lines removed for fewer than min_words_per_line words"),
        Column("c4_lines_javascript", pa.int64(), "lines removed for mentioning javascript"),
        Column("c4_lines_policy", pa.int64(), "lines removed for terms-of-use/cookie phrases"),
        Column("c4_skipped", pa.string(), SKIPPED_DOC),
    )
    params = {
        "mode": Param(str, "clean_and_filter", "clean_and_filter: rewrite kept documents; "
                      "filter: decisions only", check=one_of("clean_and_filter", "filter")),
        "keep_original": Param(bool, False, f"keep the input text in column {C.ORIGINAL_TEXT!r}"),
        "remove_citations": Param(bool, True, "remove [1], [edit], [citation needed]"),
        "filter_no_terminal_punct": Param(bool, True, "drop lines without terminal punctuation"),
        "min_words_per_line": Param(int, 3, "drop lines with fewer words", check=_positive_or_none,
                                    nullable=True),
        "max_word_length": Param(int, 1000, "drop lines with a longer word", check=_positive_or_none,
                                 nullable=True),
        "filter_javascript": Param(bool, True, "drop lines mentioning javascript"),
        "filter_policy": Param(bool, True, "drop lines with terms-of-use/cookie phrases"),
        "policy_phrases": Param(list, list(C4_POLICY_PHRASES), "lower-case phrases for filter_policy",
                                check=lambda v: None if all(isinstance(s, str) and s for s in v)
                                else "must be a list of non-empty strings"),
        "filter_lorem_ipsum": Param(bool, True, "reject documents with 'lorem ipsum'"),
        "filter_curly_bracket": Param(bool, True, "reject documents with '{' in a kept line"),
        "min_sentences": Param(int, 5, "reject documents with fewer sentences after cleaning",
                               check=_positive_or_none, nullable=True),
        "paragraph_filter": Param(bool, False, "mC4 paragraph rule"),
        "min_paragraphs": Param(int, 3, "paragraph rule: minimum number of long lines", check=between(0)),
        "min_paragraph_length": Param(int, 200, "paragraph rule: characters of a long line",
                                      check=between(0)),
    }

    def active_columns(self) -> list[Column]:
        out = list(self.columns)
        if self.config["keep_original"]:
            out.append(ORIGINAL_TEXT_COLUMN)
        return out

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        cfg = self.config
        text_in = T.as_array(text)
        text = T.as_string(text_in)
        n = len(text)
        scripts = T.script_info(text)
        unseg = scripts.unsegmented_doc()
        nospace = scripts.no_space() | unseg

        lines, lpar, loff = T.list_parts(T.split_lines(text))
        m = len(lines)
        n_lines = np.diff(loff)
        line = pc.utf8_trim_whitespace(lines) if m else lines
        llen = T.lengths(line)
        idx_in_doc = np.arange(m) - loff[lpar] if m else np.zeros(0, np.int64)
        alive = np.ones(m, bool)
        line_nospace = nospace[lpar] if m else np.zeros(0, bool)
        line_unseg = unseg[lpar] if m else np.zeros(0, bool)

        # 1. long words
        long_word = np.zeros(m, bool)
        if cfg["max_word_length"] is not None and m:
            cand = np.flatnonzero(llen > cfg["max_word_length"])
            if len(cand):
                pieces, ppar = T.split_whitespace(line.take(pa.array(cand)))
                big = T.lengths(pieces) > cfg["max_word_length"]
                long_word[cand[np.unique(ppar[big])]] = True
        alive &= ~long_word

        # word counts (before citation removal)
        if m:
            ws, wpar = T.split_whitespace(line)
            n_words = np.bincount(wpar, minlength=m) if len(wpar) else np.zeros(m, np.int64)
            if line_nospace.any():
                cjk_chars = T.count_regex(line, "[" + T.CJK_CLASS + "]")
                n_words = np.where(line_nospace, n_words + cjk_chars, n_words)
        else:
            n_words = np.zeros(0, np.int64)

        # 2. citations
        if cfg["remove_citations"] and m:
            has = T.to_bool(pc.match_substring(line, "["))
            if has.any():
                line = pc.if_else(pa.array(has), pc.replace_substring_regex(line, C4_CITATION_RE, ""), line)

        # 3. terminal punctuation
        no_term = np.zeros(m, bool)
        if cfg["filter_no_terminal_punct"] and m:
            ends = T.to_bool(pc.match_substring_regex(line, "[" + T.char_class(C4_TERMINAL) + "]$"))
            ends |= line_nospace & T.to_bool(pc.match_substring_regex(line, "[。！？｡]$"))
            ends &= ~T.to_bool(pc.ends_with(line, "..."))
            no_term = alive & ~ends
            alive &= ends

        # 4. too few words
        few = np.zeros(m, bool)
        if cfg["min_words_per_line"] is not None and m:
            few = alive & (n_words < cfg["min_words_per_line"]) & ~line_unseg
            alive &= ~few

        # 5-8 on the lower-cased surviving lines
        lorem_line = np.zeros(m, bool)
        js = np.zeros(m, bool)
        curly_line = np.zeros(m, bool)
        policy = np.zeros(m, bool)
        sel = np.flatnonzero(alive)
        if len(sel):
            sub = line.take(pa.array(sel))
            low = pc.utf8_lower(sub)
            if cfg["filter_lorem_ipsum"]:
                lorem_line[sel] = T.to_bool(pc.match_substring(low, "lorem ipsum"))
            if cfg["filter_javascript"]:
                js[sel] = T.to_bool(pc.match_substring(low, "javascript"))
            js &= ~lorem_line
            if cfg["filter_curly_bracket"]:
                curly_line[sel] = T.to_bool(pc.match_substring(sub, "{"))
            curly_line &= ~lorem_line & ~js
            if cfg["filter_policy"] and cfg["policy_phrases"]:
                pat = "|".join(T.regex_literal(s) for s in cfg["policy_phrases"])
                policy[sel] = T.to_bool(pc.match_substring_regex(low, pat))
            policy &= ~lorem_line & ~js & ~curly_line
        kept = alive & ~lorem_line & ~js & ~curly_line & ~policy

        # document rules
        big = np.iinfo(np.int64).max
        first_lorem = np.full(n, big)
        first_curly = np.full(n, big)
        if lorem_line.any():
            np.minimum.at(first_lorem, lpar[lorem_line], idx_in_doc[lorem_line])
        if curly_line.any():
            np.minimum.at(first_curly, lpar[curly_line], idx_in_doc[curly_line])
        lorem_doc = first_lorem <= first_curly
        lorem_doc &= first_lorem < big
        curly_doc = (first_curly < first_lorem)

        kidx = np.flatnonzero(kept)
        kpar = lpar[kidx]
        kept_lines = line.take(pa.array(kidx)) if m else line
        if cfg["min_sentences"] is not None and len(kidx):
            sent_line = T.sentence_counts_text(kept_lines)
            sentences = np.bincount(kpar, weights=sent_line, minlength=n).astype(np.int64)
        else:
            sentences = np.zeros(n, np.int64)
        kcount = np.bincount(kpar, minlength=n) if len(kpar) else np.zeros(n, np.int64)
        klen = T.lengths(kept_lines) if len(kidx) else np.zeros(0, np.int64)
        long_par = T.per_doc_count(klen >= cfg["min_paragraph_length"], kpar, n)

        fails = {
            "lorem_ipsum": lorem_doc,
            "curly_bracket": curly_doc,
            "too_few_sentences": _lt(sentences, cfg["min_sentences"]),
            "paragraphs": (long_par < cfg["min_paragraphs"]) if cfg["paragraph_filter"]
            else np.zeros(n, bool),
        }
        reasons = self._reasons(fails, n)
        rejected = T.to_bool(pc.is_valid(reasons))

        # rewritten text: kept lines joined by "\n"
        koff = np.zeros(n + 1, np.int64)
        np.cumsum(kcount, out=koff[1:])
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array(koff, pa.int32()), kept_lines), "\n")
        new_len = T.lengths(joined)
        tlen = _text_len(text)

        p = "c4_"
        cols = {
            p + "lorem_ipsum": pa.array(first_lorem < big, pa.bool_()),
            p + "curly_bracket": pa.array(first_curly < big, pa.bool_()),
            p + "sentences": _int_col(sentences),
            p + "paragraphs": _int_col(long_par),
            p + "lines_removed": _int_col(n_lines - kcount),
            p + "chars_removed": _int_col(tlen - new_len),
            p + "lines_long_word": _int_col(T.per_doc_count(long_word, lpar, n)),
            p + "lines_no_terminal_punct": _int_col(T.per_doc_count(no_term, lpar, n)),
            p + "lines_too_few_words": _int_col(T.per_doc_count(few, lpar, n)),
            p + "lines_javascript": _int_col(T.per_doc_count(js, lpar, n)),
            p + "lines_policy": _int_col(T.per_doc_count(policy, lpar, n)),
            p + "skipped": self._skipped({"min_words_per_line": unseg}, n),
        }
        out_text = None
        if cfg["mode"] == "clean_and_filter":
            out_text = pc.if_else(pa.array(rejected), text, joined).cast(text_in.type)
        if cfg["keep_original"]:
            cols[C.ORIGINAL_TEXT] = text_in
        return StageOutput(columns=cols, reasons=reasons, text=out_text)


