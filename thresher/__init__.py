"""thresher: data selection and curation pipelines for LM pretraining corpora, on Apache Beam.

    import thresher
    stats = thresher.run({"input": "data/*.parquet", "output": "out/",
                          "stages": [{"name": "exact_dedup"}, {"name": "gopher_quality"}]})

Public API: :func:`run`, :func:`plan` (validate a config and the shards' footers without
reading documents), the Beam transforms :class:`CurateShards` and :class:`ApplyStages`, and the
stage base classes (:class:`Stage`, :class:`LocalStage`, :class:`GlobalStage`,
:class:`ModelStage`, :class:`ScoreThenSelect`) with :func:`register` for your own stages.
Sub-packages: ``thresher.pipelines`` (Beam, the engine, the CLI), ``thresher.scorers``
(framework-free scoring code), ``thresher.schemas`` (engine-wide contracts).
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

try:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version
    __version__ = _version("thresher")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# name -> module; resolved on first use so `import thresher` stays cheap (no Beam, no torch)
_LAZY = {
    "run": "thresher.pipelines.api",
    "plan": "thresher.pipelines.api",
    "load": "thresher.pipelines.api",
    "ReconciliationError": "thresher.pipelines.api",
    "CurateShards": "thresher.pipelines.transforms",
    "ApplyStages": "thresher.pipelines.transforms",
    "ConfigError": "thresher.schemas.config",
    "InputError": "thresher.schemas.documents",
    "Stage": "thresher.scorers.base",
    "LocalStage": "thresher.scorers.base",
    "GlobalStage": "thresher.scorers.base",
    "StageOutput": "thresher.scorers.base",
    "Decisions": "thresher.scorers.base",
    "Column": "thresher.scorers.base",
    "Param": "thresher.scorers.base",
    "register": "thresher.scorers.registry",
    "ModelStage": "thresher.scorers.models.stages",
    "ScoreThenSelect": "thresher.scorers.selection.select",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'thresher' has no attribute {name!r}")
    value = getattr(import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
