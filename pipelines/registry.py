"""The stage table: stage name -> class. Adding a stage = one line here."""
from __future__ import annotations

import importlib
from typing import Type

from thresher.schemas.config import ConfigError, StageSpec
from thresher.scorers.base import ParamError, Stage

# module path, class name. Modules are imported lazily so a heavy optional
# dependency only costs when its stage is used.
_TABLE: dict[str, tuple[str, str]] = {
    "length": ("thresher.scorers.filters.length", "Length"),
    "exact_dedup": ("thresher.scorers.dedup.exact", "ExactDedup"),
    "preselect": ("thresher.scorers.selection.preselect", "PreSelect"),
    "language": ("thresher.scorers.filters.language", "LanguageStage"),
    "toxicity": ("thresher.scorers.filters.toxicity", "ToxicityStage"),
    "gopher_quality": ("thresher.scorers.filters.gopher_quality", "GopherQuality"),
    "gopher_repetition": ("thresher.scorers.filters.gopher_repetition", "GopherRepetition"),
    "c4": ("thresher.scorers.filters.c4", "C4"),
    "fineweb": ("thresher.scorers.filters.fineweb", "FineWeb"),
    "minhash_dedup": ("thresher.scorers.dedup.minhash", "MinHashDedup"),
}


def register(name: str, module: str, cls: str) -> None:
    _TABLE[name] = (module, cls)


def load_all() -> None:
    """Import every stage module (registers all score columns)."""
    for name in list(_TABLE):
        stage_class(name)


def names() -> list[str]:
    return sorted(_TABLE)


def stage_class(name: str, key: str = "") -> Type[Stage]:
    if name not in _TABLE:
        import difflib
        near = difflib.get_close_matches(name, list(_TABLE), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ConfigError(key or "stages", f"unknown stage {name!r}{hint}; known stages: {', '.join(names())}")
    module, cls = _TABLE[name]
    mod = importlib.import_module(module)
    # importing the stage's schema module registers its columns
    return getattr(mod, cls)


def build_stage(spec: StageSpec) -> Stage:
    key = f"stages[{spec.index}]"
    cls = stage_class(spec.name, f"{key}.name")
    try:
        stage = cls(**spec.params)
    except ParamError as e:
        raise ConfigError(f"{key}.{e.key}", e.message) from None
    stage.id = spec.id
    return stage


def build_stages(specs: list[StageSpec]) -> list[Stage]:
    return [build_stage(s) for s in specs]
