"""ProX refining programs: a parser and a safe executor (framework-free; no Beam, no eval).

A refining LM writes one call per line; this module parses each line with a small
grammar of its own (a linear scanner: no Python evaluation, no recursion) and applies the
calls to the document::

    drop_doc()                                   # drop the whole document
    keep_doc()                                   # keep it (a no-op)
    skip_chunk()                                 # a no-op for a chunk without noise
    remove_lines(line_start=3, line_end=5)       # lines 3..5 inclusive (0-based, as numbered in the prompt)
    remove_lines(3, 5)                           # the same, positional
    remove_lines(all=True)                       # every line
    normalize(source_str="Cookies!", target_str="")   # replace in the whole document
    normalize("&amp;", "&")                     # positional; target optional (default "": delete)

Arguments are integers, ``True``/``False``, or string literals in single or double quotes
with backslash escapes (``\\"``, ``\\'``, ``\\\\``, ``\\n``, ``\\t``, ``\\r``; any other escape is
kept as written), so commas, ``=`` and quotes inside strings are fine. A line that is
not one of these calls with valid arguments is one *error operation*; it is counted and
not applied.

Semantics (the reference's, ``utils/chunk_utils.py`` of the ProX code): all
normalisations first, in program order, over the whole document; then the union of the
removed line ranges over the document's lines (``text.split("\\n")``); then the acceptance
rule: a program with ``max_errors`` (2) or more errors is ignored (the document stays as
it was); otherwise the document is dropped when at most ``min_word_fraction`` (5%) of its
whitespace-separated words remain or at most ``min_words`` (10) remain.

Fixes of the reference's quirks, on purpose:

1. **Strings are parsed, not split on commas.** The reference splits the argument text
   on ``,`` and ``=``, so a comma or ``=`` inside a string corrupts the call (and a
   ``normalize`` with three pieces is skipped without counting an error). Here string
   literals are scanned with their quotes and escapes; a wrong number of arguments is an
   error.
2. **No newlines in ``normalize`` arguments.** In the reference a source or target with a
   newline shifts the line numbering, so later removals hit the wrong lines. Here such a
   call is an error and is not applied, so line numbers always refer to the lines shown
   to the model.
3. **Empty documents.** The reference divides by the word count of the input (a
   division by zero for an empty document). Here the word thresholds do not apply to a
   document without words (the engine rejects empty texts before any stage anyway).
4. **``drop_doc`` is a call, not a substring.** The doc-level reference drops a document
   whenever the generated text contains ``drop`` anywhere (``"keep_doc() # no drop"``
   drops). Here only a parsed ``drop_doc()`` call drops.
5. **An ignored program leaves the document alone.** In the reference a program with 2+
   errors is ignored, yet its output can still drop the document through the ≤ 10 words
   rule. Here an ignored program changes nothing.
6. **Out-of-range removals.** As in the reference, a range whose start is past the last
   line, or whose start is after its end, or a negative index, is an error; a range whose
   end is past the last line is applied up to the last line and also counted as an error.
   ``normalize`` with an empty or blank source is skipped (a no-op, as in the reference).

Bounds (programs come from a model that reads untrusted web text): a program longer than
``max_program_chars`` is cut there (the rest counts as one error); at most
``max_operations`` calls are applied (the others count as errors); integers have at most
18 digits; a normalisation that would grow the document past ``max_growth`` times its
original size plus the program size is an error and is skipped. Parsing is one linear pass
per line and each applied normalisation is one linear pass over a document whose size is
bounded, so time and memory are linear in document plus program size.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Union

Value = Union[int, bool, str]

FUNCTIONS = ("drop_doc", "keep_doc", "skip_chunk", "remove_lines", "normalize")
_MAX_INT_DIGITS = 18
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


@dataclasses.dataclass(frozen=True)
class Limits:
    """Acceptance thresholds and resource bounds (defaults: the reference's thresholds)."""

    max_errors: int = 2                 # a program with this many errors or more is ignored
    min_word_fraction: float = 0.05     # drop when words(refined) / words(original) <= this
    min_words: int = 10                 # drop when words(refined) <= this
    max_operations: int = 256           # calls applied per program; the rest are errors
    max_program_chars: int = 1 << 20    # the rest of a longer program is one error
    max_growth: float = 2.0             # a normalisation may not grow the text past this × (doc + program)


@dataclasses.dataclass(frozen=True)
class Call:
    name: str
    args: tuple                          # positional values
    kwargs: tuple                        # (name, value) pairs


@dataclasses.dataclass
class Result:
    """What a program did to a document."""

    text: Optional[str]                  # the refined text, or None when the document is dropped
    errors: int                          # error operations
    dropped: Optional[str] = None        # "drop_doc" | "too_short" | None
    ignored: bool = False                # the program had max_errors or more errors and was ignored
    removed: list = dataclasses.field(default_factory=list)   # merged (start, end) line ranges removed
    lines_removed: int = 0
    chars_removed: int = 0               # characters of the input no longer in the output (dropped: all)
    normalizations: int = 0              # normalize calls applied


class ParseError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ parsing
def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in " \t\r":
        i += 1
    return i


def _ident(s: str, i: int) -> tuple[str, int]:
    j = i
    n = len(s)
    while j < n and (s[j] == "_" or s[j].isascii() and s[j].isalnum()):
        j += 1
    if j == i or s[i].isdigit():
        raise ParseError(f"expected a name at column {i}")
    return s[i:j], j


def _string(s: str, i: int) -> tuple[str, int]:
    q = s[i]
    i += 1
    out = []
    n = len(s)
    start = i
    while i < n:
        c = s[i]
        if c == q:
            out.append(s[start:i])
            return "".join(out), i + 1
        if c == "\\" and i + 1 < n:
            out.append(s[start:i])
            e = s[i + 1]
            out.append(_ESCAPES.get(e, "\\" + e))
            i += 2
            start = i
            continue
        i += 1
    raise ParseError("unterminated string")


def _value(s: str, i: int) -> tuple[Value, int]:
    c = s[i] if i < len(s) else ""
    if not c:
        raise ParseError("expected a value at the end of the line")
    if c in "\"'":
        return _string(s, i)
    if c.isdigit() or (c in "+-" and i + 1 < len(s) and s[i + 1].isdigit()):
        j = i + 1
        while j < len(s) and s[j].isdigit():
            j += 1
        digits = s[i:j].lstrip("+-")
        if len(digits) > _MAX_INT_DIGITS:
            raise ParseError("integer too long")
        return int(s[i:j]), j
    if s.startswith("True", i) and not (i + 4 < len(s) and (s[i + 4].isalnum() or s[i + 4] == "_")):
        return True, i + 4
    if s.startswith("False", i) and not (i + 5 < len(s) and (s[i + 5].isalnum() or s[i + 5] == "_")):
        return False, i + 5
    raise ParseError(f"expected an integer, True, False or a string at column {i}")


def parse_call(line: str) -> Call:
    """One program line -> :class:`Call`; :class:`ParseError` if it is not a call of the grammar."""
    s = line.strip()
    i = _skip_ws(s, 0)
    name, i = _ident(s, i)
    i = _skip_ws(s, i)
    if i >= len(s) or s[i] != "(":
        raise ParseError("expected '('")
    i = _skip_ws(s, i + 1)
    args: list = []
    kwargs: list = []
    if i < len(s) and s[i] == ")":
        i += 1
    else:
        while True:
            j = i
            key = None
            if i < len(s) and (s[i] == "_" or s[i].isalpha()) and not s.startswith(("True", "False"), i):
                key, j = _ident(s, i)
                j = _skip_ws(s, j)
                if j >= len(s) or s[j] != "=":
                    raise ParseError("expected '=' after an argument name")
                j = _skip_ws(s, j + 1)
            elif s.startswith(("True", "False"), i):
                # True/False as a value, or as a keyword name followed by '='
                k2, j2 = _ident(s, i)
                j3 = _skip_ws(s, j2)
                if j3 < len(s) and s[j3] == "=" and not s.startswith("==", j3):
                    key, j = k2, _skip_ws(s, j3 + 1)
            val, j = _value(s, j)
            if key is None:
                if kwargs:
                    raise ParseError("positional argument after a keyword argument")
                args.append(val)
            else:
                if any(k == key for k, _ in kwargs):
                    raise ParseError(f"argument {key!r} given twice")
                kwargs.append((key, val))
            i = _skip_ws(s, j)
            if i < len(s) and s[i] == ",":
                i = _skip_ws(s, i + 1)
                if i < len(s) and s[i] == ")":
                    i += 1
                    break
                continue
            if i < len(s) and s[i] == ")":
                i += 1
                break
            raise ParseError("expected ',' or ')'")
    i = _skip_ws(s, i)
    if i < len(s) and s[i] != "#":
        raise ParseError("text after the call")
    if name not in FUNCTIONS:
        raise ParseError(f"unknown function {name!r}")
    return Call(name, tuple(args), tuple(kwargs))


def _bind(call: Call, params: tuple[str, ...], required: int) -> dict:
    if len(call.args) > len(params):
        raise ParseError(f"{call.name}() takes at most {len(params)} arguments")
    bound = dict(zip(params, call.args))
    for k, v in call.kwargs:
        if k not in params:
            raise ParseError(f"{call.name}() has no argument {k!r}")
        if k in bound:
            raise ParseError(f"{call.name}() got {k!r} twice")
        bound[k] = v
    if any(p not in bound for p in params[:required]):
        raise ParseError(f"{call.name}() needs {', '.join(params[:required])}")
    return bound


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ------------------------------------------------------------------------------------------ execution
def _words(text: str) -> int:
    return len(text.split())


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def run_program(text: str, program: str, limits: Limits = Limits(), length_rule: bool = True) -> Result:
    """Apply ``program`` to ``text``. Never raises for any program; see the module doc.

    ``length_rule``: apply the acceptance rule's word thresholds (the chunk level does, as
    the reference; a doc-level program only keeps or drops). A document without words is
    never dropped by it (the reference divides by zero there)."""
    text = "" if text is None else str(text)
    program = "" if program is None else str(program)
    errors = 0
    if len(program) > limits.max_program_chars:
        program = program[: limits.max_program_chars]
        errors += 1
    drop = False
    all_lines = False
    ranges: list[tuple[int, int]] = []
    normalizations: list[tuple[str, str]] = []
    n_lines = text.count("\n") + 1
    ops = 0
    for raw in program.split("\n"):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        ops += 1
        if ops > limits.max_operations:
            errors += 1
            continue
        try:
            call = parse_call(line)
            if call.name == "drop_doc":
                _bind(call, (), 0)
                drop = True
            elif call.name in ("keep_doc", "skip_chunk"):
                _bind(call, (), 0)
            elif call.name == "remove_lines":
                b = _bind(call, ("line_start", "line_end", "all"), 0)
                if "all" in b:
                    if len(b) != 1 or b["all"] is not True:
                        raise ParseError("remove_lines(all=True) takes nothing else")
                    all_lines = True
                    continue
                if "line_start" not in b or "line_end" not in b:
                    raise ParseError("remove_lines() needs line_start and line_end")
                a, e = b["line_start"], b["line_end"]
                if not (_is_int(a) and _is_int(e)):
                    raise ParseError("line numbers must be integers")
                if a < 0 or e < 0 or a > e or a >= n_lines:
                    raise ParseError("line range out of order or past the last line")
                if e >= n_lines:
                    errors += 1          # applied up to the last line, and counted (as the reference)
                    e = n_lines - 1
                ranges.append((a, e))
            else:  # normalize
                b = _bind(call, ("source_str", "target_str"), 1)
                src, tgt = b["source_str"], b.get("target_str", "")
                if not (isinstance(src, str) and isinstance(tgt, str)):
                    raise ParseError("normalize() takes strings")
                if "\n" in src or "\n" in tgt:
                    raise ParseError("a newline in a normalize argument would shift the line numbers")
                if src.strip() == "":
                    continue             # skipped, as the reference does
                normalizations.append((src, tgt))
        except ParseError:
            errors += 1
        except Exception:  # noqa: BLE001 - defence in depth: a parser bug must never crash a stage
            errors += 1
    if errors >= limits.max_errors:
        return Result(text=text, errors=errors, ignored=True)
    if drop:
        return Result(text=None, errors=errors, dropped="drop_doc", chars_removed=len(text))
    out = text
    budget = int(limits.max_growth * (len(text) + len(program))) + 1
    applied = 0
    for src, tgt in normalizations:
        if len(tgt) > len(src):
            count = out.count(src)
            if len(out) + count * (len(tgt) - len(src)) > budget:
                errors += 1
                continue
        out = out.replace(src, tgt)
        applied += 1
    if errors >= limits.max_errors:
        return Result(text=text, errors=errors, ignored=True)
    lines = out.split("\n")
    merged = [(0, len(lines) - 1)] if all_lines else _merge(ranges)
    removed = 0
    if merged:
        keep = []
        pos = 0
        for a, b in merged:
            keep.extend(lines[pos:a])
            pos = b + 1
            removed += b - a + 1
        keep.extend(lines[pos:])
        out = "\n".join(keep)
    w0, w1 = _words(text), _words(out)
    res = Result(text=out, errors=errors, removed=merged, lines_removed=removed,
                 chars_removed=max(0, len(text) - len(out)), normalizations=applied)
    if length_rule and w0 > 0 and (w1 / w0 <= limits.min_word_fraction or w1 <= limits.min_words):
        res.text, res.dropped, res.chars_removed = None, "too_short", len(text)
    return res


def refine(text: str, program: str, limits: Limits = Limits(),
           length_rule: bool = True) -> tuple[Optional[str], int, dict]:
    """The public one-call form: (refined text or None when dropped, error count, what was removed)."""
    r = run_program(text, program, limits, length_rule)
    return r.text, r.errors, {"lines": r.removed, "lines_removed": r.lines_removed,
                              "chars_removed": r.chars_removed, "dropped": r.dropped, "ignored": r.ignored,
                              "normalizations": r.normalizations}
