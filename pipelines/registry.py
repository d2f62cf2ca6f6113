"""Stages from config entries: the registry (``thresher.scorers.registry``) plus config-key errors."""
from __future__ import annotations

from thresher.schemas.config import ConfigError, StageSpec
from thresher.scorers import registry as R
from thresher.scorers.base import ParamError, Stage


def names() -> list[str]:
    return R.names()


def stage_class(name: str, key: str = "") -> type[Stage]:
    try:
        return R.get(name)
    except R.UnknownStageError as e:
        raise ConfigError(key or "stages", e.message) from None


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


def check_columns(stages: list[Stage]) -> None:
    """Two stages of one pipeline must not write the same column."""
    seen: dict[str, str] = {}
    for k, st in enumerate(stages):
        for f in st.fields():
            if f.name in seen:
                raise ConfigError(f"stages[{k}].id", f"column {f.name!r} of stage {st.id!r} is also written by "
                                                     f"stage {seen[f.name]!r}; give one of them another 'id'")
            seen[f.name] = st.id
