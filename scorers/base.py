"""Framework-free stage interface (no Beam import anywhere under ``scorers/``).

A *local* stage is a pure function of a batch: ``process(text, batch)`` returns
score columns, a per-row rejection reason (null = keep) and optionally rewritten
text. A *global* stage needs the whole corpus: ``keys(text, batch)`` returns a
small table per batch (no text), ``compute(keys)`` returns decisions for the
whole corpus. The engine in ``pipelines/`` wires both into Beam.

Parameters are declared with :class:`Param`; the config loader validates them
and reports the exact config key at fault.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Optional

import pyarrow as pa
from thresher.schemas import columns as C


class ParamError(ValueError):
    """A stage parameter has a bad value. ``key`` names the parameter."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Param:
    """One stage parameter: its type, default, and an optional check."""

    type: Any                      # int, float, str, bool, list, dict, or a tuple of them
    default: Any = _MISSING        # _MISSING = required
    doc: str = ""
    check: Optional[Callable[[Any], Optional[str]]] = None  # returns an error message or None
    nullable: bool = False

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def coerce(self, key: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise ParamError(key, "must not be null")
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        ok = False
        for t in types:
            if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                value, ok = float(value), True
                break
            if t is int and isinstance(value, bool):
                continue
            if isinstance(value, t):
                ok = True
                break
        if not ok:
            names = " or ".join(getattr(t, "__name__", str(t)) for t in types)
            raise ParamError(key, f"expected {names}, got {type(value).__name__} {value!r}")
        if self.check is not None:
            msg = self.check(value)
            if msg:
                raise ParamError(key, msg)
        return value


def between(lo: Optional[float] = None, hi: Optional[float] = None) -> Callable[[Any], Optional[str]]:
    def check(v):
        if lo is not None and v < lo:
            return f"must be >= {lo}, got {v}"
        if hi is not None and v > hi:
            return f"must be <= {hi}, got {v}"
        return None
    return check


def one_of(*choices) -> Callable[[Any], Optional[str]]:
    def check(v):
        return None if v in choices else f"must be one of {list(choices)}, got {v!r}"
    return check


@dataclasses.dataclass
class StageOutput:
    """What a local stage returns for a batch of n rows."""

    columns: dict[str, pa.Array]              # score columns, each of length n
    reasons: Optional[pa.Array] = None        # string array, null = keep; None = keep all
    text: Optional[pa.Array] = None           # rewritten text (string), None = unchanged


class Stage:
    """Base class of every stage. Subclasses set ``name``, ``params`` and ``fields``."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "local"             # "local" or "global"
    params: ClassVar[dict[str, Param]] = {}
    doc: ClassVar[str] = ""
    rewrites_text: ClassVar[bool] = False
    #: reasons this stage can assign (documentation and inspection)
    reasons: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **kwargs: Any):
        self.config = self.validate(kwargs)
        self.id = self.name

    @classmethod
    def validate(cls, kwargs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in kwargs:
            if k not in cls.params:
                import difflib
                near = difflib.get_close_matches(k, list(cls.params), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                known = ", ".join(sorted(cls.params)) or "none"
                raise ParamError(prefix + k, f"unknown parameter for stage {cls.name!r}{hint}; known: {known}")
        for k, p in cls.params.items():
            if k in kwargs:
                out[k] = p.coerce(prefix + k, kwargs[k])
            elif p.required:
                raise ParamError(prefix + k, f"required parameter of stage {cls.name!r} is missing")
            else:
                out[k] = p.default
        cls.check_params(out, prefix)
        return out

    @classmethod
    def check_params(cls, params: dict[str, Any], prefix: str) -> None:
        """Cross-parameter checks; raise ParamError."""

    def fields(self) -> list[pa.Field]:
        """Columns this stage adds to every row (kept and rejected)."""
        return list(C.STAGE_FIELDS.get(self.name, []))

    def setup(self) -> None:
        """Load models etc. Called once per worker before the first batch."""

    def reason(self, rule: str) -> str:
        return f"{self.id}.{rule}"


class LocalStage(Stage):
    kind = "local"

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        raise NotImplementedError


class GlobalStage(Stage):
    """A stage that needs the whole corpus.

    ``keys`` runs per batch and returns a table of small columns, one row per
    input row (the engine adds ``__shard``, ``__row`` and the id column).
    ``compute`` receives the concatenated keys of every surviving row and
    returns a decision table with ``__shard``, ``__row``, ``reason`` (null =
    keep) and any of the stage's ``fields()`` (annotations for kept rows too),
    plus ``duplicate_of`` where it applies. Rows absent from the decision table
    are kept with null annotations.
    """

    kind = "global"

    def keys(self, text: pa.Array, batch: pa.Table, ids: pa.Array) -> pa.Table:
        raise NotImplementedError

    def compute(self, keys: pa.Table) -> pa.Table:
        raise NotImplementedError


def null_reasons(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def first_reason(n: int, masks) -> pa.Array:
    """Per row, the reason of the first mask (in list order) that is true; null = keep.

    ``masks``: a sequence of (boolean ndarray of length n, reason string)."""
    import pyarrow.compute as pc
    out = pa.nulls(n, pa.string())
    for mask, reason in reversed(list(masks)):
        if mask.any():
            out = pc.if_else(pa.array(mask), pa.scalar(reason, pa.string()), out)
    return out
