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
from collections.abc import Callable
from typing import Any, ClassVar, Optional

import pyarrow as pa

from thresher.schemas.config import did_you_mean


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


@dataclasses.dataclass(frozen=True)
class Column:
    """One output column of a stage, declared by its default name.

    The name is the one written when the stage's ``id`` equals its ``name`` (the usual
    case). A second instance with another id gets names derived from that id (see
    :meth:`Stage.column_name`), so two instances never collide."""

    name: str
    type: pa.DataType
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class Resources:
    """What a stage needs from a worker. ``accelerator``: the stage runs a model that
    benefits from a GPU; with an accelerator hint in its config the engine gives it a
    step of its own (a Beam resource hint), else it runs with the other stages."""

    accelerator: bool = False
    note: str = ""


class StageContractError(RuntimeError):
    """A stage broke its own declaration (columns, reasons, text rewriting). A bug in
    the stage, not a user mistake: the message names the stage and what differs."""


@dataclasses.dataclass(frozen=True)
class PreflightContext:
    """What a stage can check before any document is read (``Stage.preflight``): the
    input schema (first shard), the columns present when the stage runs (input columns,
    the id column and what earlier stages declare), the text column, and whether the
    runner is local (so this machine's devices are the workers')."""

    input_schema: pa.Schema
    columns: frozenset
    text_column: str = "text"
    local: bool = True


@dataclasses.dataclass
class StageOutput:
    """What a local stage returns for a batch of n rows."""

    columns: dict[str, pa.Array]              # score columns by declared name, each of length n
    reasons: Optional[pa.Array] = None        # string array, null = keep; None = keep all
    text: Optional[pa.Array] = None           # rewritten text (string), None = unchanged


@dataclasses.dataclass
class Decisions:
    """What a global stage's ``compute`` returns: a table with ``__shard``, ``__row``,
    ``reason`` (null = keep), optionally ``duplicate_of`` and any declared column of
    the stage (annotations, for kept rows too), plus statistics for ``_global/<id>.json``."""

    table: pa.Table
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


class Stage:
    """Base class of every stage: everything about a stage is declared on its class.

    ``name`` (the config name), ``doc`` (one line) and the class docstring (the stage
    reference, Markdown), ``params``, ``columns`` (output columns with docs), ``reasons``
    (rule names, or a mapping rule -> doc; the written reason is ``<id>.<rule>``),
    ``rewrites_text``, ``default_order`` (its place in the default pipeline; None = not
    in it), ``resources`` and ``cpu_ns_per_byte`` (a cost estimate, for the local runner).
    Register the class with :func:`thresher.scorers.registry.register`.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "local"             # "local" or "global"
    params: ClassVar[dict[str, Param]] = {}
    doc: ClassVar[str] = ""
    columns: ClassVar[tuple[Column, ...]] = ()
    #: prefix of the declared column names that a non-default id replaces (default: ``name``)
    column_prefix: ClassVar[Optional[str]] = None
    reasons: ClassVar[Any] = ()
    rewrites_text: ClassVar[bool] = False
    default_order: ClassVar[Optional[int]] = None
    resources: ClassVar[Resources] = Resources()
    #: estimated CPU nanoseconds per byte of text of the stage's per-shard work on one core
    #: (measured by the benchmarks on the 2-core build machine); the local runner adds these
    #: up to decide whether worker processes pay for their start-up
    cpu_ns_per_byte: ClassVar[float] = 50.0

    def __init__(self, **kwargs: Any):
        self.config = self.validate(kwargs)
        self.id = self.name

    @classmethod
    def validate(cls, kwargs: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in kwargs:
            if k not in cls.params:
                known = ", ".join(sorted(cls.params)) or "none"
                raise ParamError(prefix + k, f"unknown parameter for stage {cls.name!r}"
                                             f"{did_you_mean(k, cls.params)}; known: {known}")
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

    @classmethod
    def reason_rules(cls) -> dict[str, str]:
        """rule -> doc for every reason the stage can write."""
        r = cls.reasons
        return dict(r) if isinstance(r, dict) else {name: "" for name in r}

    # -- columns ------------------------------------------------------------------------
    def active_columns(self) -> list[Column]:
        """The declared columns this instance writes (a subset when parameters switch
        optional columns off). Every row gets them, null where the stage did not see it."""
        return list(self.columns)

    def column_name(self, base: str) -> str:
        """Written name of declared column ``base``: unchanged when ``id == name``; else
        the declared prefix (``column_prefix``, default ``name``) is replaced by the id
        (``language_score`` of id ``lang_fr`` -> ``lang_fr_score``), and a name without
        that prefix gets ``<id>_`` in front (``cluster_id`` -> ``<id>_cluster_id``)."""
        if self.id == self.name:
            return base
        p = self.column_prefix or self.name
        if base == p:
            return self.id
        if base.startswith(p + "_"):
            return self.id + base[len(p):]
        return f"{self.id}_{base}"

    def column_map(self) -> list[tuple[str, pa.Field]]:
        """(declared name, written field) for every active column."""
        return [(c.name, pa.field(self.column_name(c.name), c.type)) for c in self.active_columns()]

    def fields(self) -> list[pa.Field]:
        """Columns this stage adds to every row (kept and rejected), as written."""
        return [f for _, f in self.column_map()]

    def setup(self) -> None:
        """Load models etc. Called once per worker before the first batch."""

    def preflight(self, ctx: PreflightContext) -> None:
        """Checks that need more than the parameters (the input schema, earlier stages'
        columns, model files, devices); raise :class:`ParamError` naming the parameter.
        Runs in ``plan()``, before any work; must be cheap (no model weights loaded)."""

    def reason(self, rule: str) -> str:
        if rule not in self.reason_rules():
            raise StageContractError(f"stage {self.id!r} ({type(self).__name__}) writes reason rule {rule!r} "
                                     f"but declares only {sorted(self.reason_rules())}")
        return f"{self.id}.{rule}"

    def __getstate__(self):
        """Pickled stages (Beam ships them to workers) drop what ``setup`` loaded: the
        attributes listed in ``_loaded`` are reset to None and loaded again there."""
        d = dict(self.__dict__)
        for k in getattr(self, "_loaded", ()):
            if k in d:
                d[k] = None
        return d


class LocalStage(Stage):
    kind = "local"

    def process(self, text: pa.Array, batch: pa.Table) -> StageOutput:
        raise NotImplementedError


class GlobalStage(Stage):
    """A stage that needs the whole corpus.

    ``keys`` runs per batch and returns a table of small columns, one row per
    input row (the engine adds ``__shard``, ``__row``); a key column with the name of
    a declared column is written as that annotation. ``compute`` receives the
    concatenated keys of every surviving row and returns :class:`Decisions`. Rows
    absent from the decision table are kept with null annotations. ``compute`` never
    needs ``setup`` (no model is loaded to decide on keys).
    """

    kind = "global"

    def keys(self, text: pa.Array, batch: pa.Table, ids: pa.Array) -> pa.Table:
        raise NotImplementedError

    def compute(self, keys: pa.Table) -> Decisions:
        raise NotImplementedError

    def distributed_step(self) -> Optional[str]:
        """``"module:function"`` of a Beam builder that computes this stage's decisions
        across workers, or None for the one-worker ``compute``. The builder is called as
        ``fn(plan, k, key_paths, prior_decisions)`` and returns a PCollection of one
        ``(k, decision table)``. (A path, not a function, keeps this module free of Beam.)"""
        return None


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
