"""The rule-based ProX teacher: (prompt, program) pairs from thresher's own signals.

The ProX authors had a large LLM annotate programs; this teacher writes them from rules
instead, so a refining model can be made offline (``thresher prox teach``, then
``thresher prox train``). Chunk level, per chunk of numbered lines:

* ``remove_lines`` for boilerplate lines: navigation and "skip to content" lines, cookie
  and consent notices, share / login / subscribe / follow lines, footers (copyright, all
  rights reserved, privacy policy, terms), "read more" / "related posts" teasers, and spam
  lines (casino, pills, "buy now", "free shipping" ...), when the line is short (a long
  line that merely mentions cookies is prose);
* ``remove_lines`` for a line that repeats an earlier line of the document;
* ``normalize`` for broken encodings (UTF-8 read as Latin-1: ``â€™`` -> ``’`` ...) and stray
  markup (``&nbsp;``, ``&amp;``, ``<br>``) found in the chunk;
* ``skip_chunk()`` when nothing applies.

Doc level: ``drop_doc()`` when the heuristic filters (``gopher_quality``,
``gopher_repetition``, ``fineweb``) reject the document, else ``keep_doc()``.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Optional

from thresher.scorers.refine.stages import number_lines, pack_chunks

_BOILERPLATE = re.compile(
    r"(skip to (main )?content|^\s*(home|menu|search|navigation)\s*([|/>»·•-]|$)|\bhome\s*[|/>»·•]"
    r"|we use cookies|cookie (policy|settings|preferences)|accept (all )?cookies|by continuing to (browse|use)"
    r"|\bshare (this|on)\b|\b(log ?in|sign (in|up)|register)\b.*\b(log ?in|sign (in|up)|register|account)\b"
    r"|subscribe( to)?( our)? newsletter|\bfollow us\b|all rights reserved|©|\(c\) ?\d{4}|copyright \d{4}"
    r"|privacy policy|terms (of (use|service)|and conditions)|\bread more\b|\brelated (posts|articles|stories)\b"
    r"|\bclick here\b|\badvertisement\b|\bback to top\b|\bprevious post\b|\bnext post\b"
    r"|\b(casino|viagra|cialis|payday loans?|buy now|free shipping|limited time offer|act now)\b)",
    re.IGNORECASE)
#: lines longer than this are prose even when they match a boilerplate phrase
BOILERPLATE_MAX_CHARS = 160

NORMALIZE = (
    ("â€™", "’"), ("â€˜", "‘"), ("â€œ", "“"), ("â€\x9d", "”"), ("â€“", "–"), ("â€”", "—"), ("â€¦", "…"),
    ("Ã©", "é"), ("Ã¨", "è"), ("Ã¤", "ä"), ("Ã¶", "ö"), ("Ã¼", "ü"), ("Ã±", "ñ"),
    ("&nbsp;", " "), ("&amp;", "&"), ("&quot;", '"'), ("&#39;", "'"), ("<br>", ""), ("<br/>", ""), ("<br />", ""),
)


def is_boilerplate(line: str) -> bool:
    s = line.strip()
    return bool(s) and len(s) <= BOILERPLATE_MAX_CHARS and bool(_BOILERPLATE.search(s))


def noisy_lines(text: str) -> list[int]:
    """0-based indices of the lines the teacher removes: boilerplate and repeated lines."""
    seen: set[str] = set()
    out = []
    for i, line in enumerate(text.split("\n")):
        key = line.strip()
        if is_boilerplate(line) or (key and len(key) > 20 and key in seen):
            out.append(i)
        if key:
            seen.add(key)
    return out


def _ranges(idx: list[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for i in idx:
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [(a, b) for a, b in out]


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def chunk_programs(text: str, chunks: list[list[int]]) -> list[str]:
    """One program per chunk (chunks: lists of 0-based line indices, in order)."""
    lines = text.split("\n")
    noisy = set(noisy_lines(text))
    out = []
    for chunk in chunks:
        calls = [f"remove_lines(line_start={a}, line_end={b})" for a, b in _ranges([i for i in chunk if i in noisy])]
        body = "\n".join(lines[i] for i in chunk if i not in noisy)
        calls += [f"normalize(source_str={_quote(src)}, target_str={_quote(tgt)})"
                  for src, tgt in NORMALIZE if src in body]
        out.append("\n".join(calls) if calls else "skip_chunk()")
    return out


def doc_program(text: str, rejects: Callable[[str], bool]) -> str:
    return "drop_doc()" if rejects(text) else "keep_doc()"


def heuristic_rejecter() -> Callable[[str], bool]:
    """True when gopher_quality, gopher_repetition or fineweb rejects a document."""
    import pyarrow as pa

    from thresher.scorers.filters.fineweb import FineWeb
    from thresher.scorers.filters.gopher_quality import GopherQuality
    from thresher.scorers.filters.gopher_repetition import GopherRepetition
    stages = [GopherQuality(), GopherRepetition(), FineWeb()]

    def rejects(text: str) -> bool:
        arr = pa.array([text], pa.string())
        return any(st.process(arr, None).reasons[0].is_valid for st in stages)
    return rejects


def chunk_pairs(text: str, count_tokens: Callable[[list[str]], list[int]], chunk_tokens: int = 1500,
                programs: Optional[Callable[[list[str]], list[str]]] = None) -> list[tuple[str, str]]:
    """(user turn, program) per chunk of a document, the chunks packed exactly as the
    ``prox_chunk`` stage packs them; ``programs`` (user turns -> programs) replaces the
    rule teacher, e.g. with a model."""
    lines = number_lines(text)
    lengths = [n + 1 for n in count_tokens(lines)]
    packed = pack_chunks(lines, lengths, chunk_tokens)
    users = ["[doc]\n" + "\n".join(lines[j] for j in c) + "\n[/doc]" for c in packed]
    progs = programs(users) if programs is not None else chunk_programs(text, packed)
    return list(zip(users, progs))
