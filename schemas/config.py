"""The config model: what a thresher YAML file may say, validated with the key at fault.

```yaml
input: {path: "data/*.parquet", text_column: text, id_column: id}
output: out/
stages:
  - {name: exact_dedup}
  - {name: gopher_quality, min_words: 50}
runner: DirectRunner
pipeline_options: {direct_num_workers: 2}
```
Stage parameters are validated by the stage classes (``thresher.scorers.base.Stage.validate``)
when the pipeline is built; this module checks the top level and the shape of
each stage entry.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, Optional

DEFAULT_MAX_TEXT_BYTES = 10_000_000
DEFAULT_BATCH_ROWS = 2_000


def did_you_mean(name: Any, known) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or '' (the one copy of this hint)."""
    import difflib
    near = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


class ConfigError(ValueError):
    """A config value is wrong. ``key`` is the dotted path of the culprit."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config error at {key}: {message}" if key else f"config error: {message}")
        self.key = key
        self.message = message


@dataclasses.dataclass
class InputConfig:
    path: str
    text_column: str = "text"
    id_column: Optional[str] = None
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    batch_rows: int = DEFAULT_BATCH_ROWS


@dataclasses.dataclass
class OutputConfig:
    path: str
    compression: str = "zstd"
    overwrite: bool = False       # allow reusing a directory written with another config
    keep_work: bool = False       # keep _work/ (intermediate files) after a successful run


@dataclasses.dataclass
class StageSpec:
    name: str
    id: str
    params: dict[str, Any]
    index: int


@dataclasses.dataclass
class Config:
    input: InputConfig
    output: OutputConfig
    stages: list[StageSpec]
    runner: str = "DirectRunner"
    pipeline_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input": dataclasses.asdict(self.input),
            "output": dataclasses.asdict(self.output),
            "stages": [{"name": s.name, "id": s.id, **s.params} for s in self.stages],
            "runner": self.runner,
            "pipeline_options": dict(self.pipeline_options),
        }

    def fingerprint(self) -> str:
        """Hash of everything that changes outputs (not the runner or its options)."""
        d = self.to_dict()
        d.pop("runner")
        d.pop("pipeline_options")
        d["output"] = {"compression": self.output.compression}
        d["input"].pop("path")
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_TOP = {"input", "output", "stages", "runner", "pipeline_options"}


def _expect(key: str, value: Any, types, what: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ConfigError(key, f"expected {what}, got {value!r}")
    if not isinstance(value, types):
        raise ConfigError(key, f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def _fields(cls, key: str, raw: dict[str, Any]) -> dict[str, Any]:
    names = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for k, v in raw.items():
        if k not in names:
            raise ConfigError(f"{key}.{k}", f"unknown key{did_you_mean(k, names)}; known: {', '.join(names)}")
        out[k] = v
    return out


def parse_config(raw: Any, *, source: str = "config") -> Config:
    """Validate a config mapping (as loaded from YAML) into a :class:`Config`."""
    if not isinstance(raw, dict):
        raise ConfigError("", f"{source} must be a mapping with keys {sorted(_TOP)}, got {type(raw).__name__}")
    for k in raw:
        if k not in _TOP:
            raise ConfigError(str(k), f"unknown top-level key{did_you_mean(k, _TOP)}; "
                                      f"known: {', '.join(sorted(_TOP))}")

    # input
    inp = raw.get("input")
    if inp is None:
        raise ConfigError("input", "missing (give input.path or --input)")
    if isinstance(inp, str):
        inp = {"path": inp}
    _expect("input", inp, dict, "a mapping or a path string")
    inp = _fields(InputConfig, "input", inp)
    if "path" not in inp or inp["path"] in (None, ""):
        raise ConfigError("input.path", "missing (a file, directory or glob of Parquet shards)")
    _expect("input.path", inp["path"], str, "a string")
    _expect("input.text_column", inp.get("text_column", "text"), str, "a column name")
    if inp.get("id_column") is not None:
        _expect("input.id_column", inp["id_column"], str, "a column name or null")
    for k in ("max_text_bytes", "batch_rows"):
        if k in inp:
            _expect(f"input.{k}", inp[k], int, "a positive integer")
            if inp[k] <= 0:
                raise ConfigError(f"input.{k}", f"must be > 0, got {inp[k]}")
    input_cfg = InputConfig(**inp)

    # output
    out = raw.get("output")
    if out is None:
        raise ConfigError("output", "missing (an output directory, or --output)")
    if isinstance(out, str):
        out = {"path": out}
    _expect("output", out, dict, "a mapping or a path string")
    out = _fields(OutputConfig, "output", out)
    if not out.get("path"):
        raise ConfigError("output.path", "missing")
    _expect("output.path", out["path"], str, "a string")
    comp = out.get("compression", "zstd")
    if comp not in ("zstd", "snappy", "gzip", "lz4", "none"):
        raise ConfigError("output.compression", f"must be one of zstd, snappy, gzip, lz4, none; got {comp!r}")
    for k in ("overwrite", "keep_work"):
        if k in out:
            _expect(f"output.{k}", out[k], bool, "true or false")
    output_cfg = OutputConfig(**out)

    # stages
    stages_raw = raw.get("stages", [])
    if stages_raw is None:
        stages_raw = []
    _expect("stages", stages_raw, list, "a list of {name: ..., params...}")
    stages: list[StageSpec] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(stages_raw):
        key = f"stages[{i}]"
        if isinstance(s, str):
            s = {"name": s}
        _expect(key, s, dict, "a mapping with a 'name'")
        s = dict(s)
        name = s.pop("name", None)
        if not name:
            raise ConfigError(f"{key}.name", "missing stage name")
        _expect(f"{key}.name", name, str, "a stage name")
        sid = s.pop("id", name)
        _expect(f"{key}.id", sid, str, "a string")
        if sid in seen or sid == "input":
            raise ConfigError(f"{key}.id", f"stage id {sid!r} is used twice (stages[{seen.get(sid)}]); "
                                           f"give one an 'id'")
        if "." in sid:
            raise ConfigError(f"{key}.id", f"stage id {sid!r} must not contain '.'")
        seen[sid] = i
        stages.append(StageSpec(name=name, id=sid, params=s, index=i))

    runner = raw.get("runner", "DirectRunner") or "DirectRunner"
    _expect("runner", runner, str, "a Beam runner name")
    popts = raw.get("pipeline_options", {}) or {}
    _expect("pipeline_options", popts, dict, "a mapping of Beam pipeline options")
    return Config(input=input_cfg, output=output_cfg, stages=stages, runner=runner, pipeline_options=popts)


def config_number(key: str, v, typ, lo=None, hi=None, lo_open: bool = False, nullable: bool = False):
    """``v`` as ``typ`` (int or float; a numeric string such as YAML's ``1e-3`` is read as a
    number), within bounds, or a ConfigError naming ``key``."""
    if v is None and nullable:
        return None
    if isinstance(v, str) and typ is float:
        try:
            v = float(v)
        except ValueError:
            pass
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or isinstance(v, bool) or (typ is float and not math.isfinite(v)):
        raise ConfigError(key, f"expected {'an integer' if typ is int else 'a number'}, got {v!r}")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and v > hi):
        lb = "(" if lo_open else "["
        raise ConfigError(key, f"must be in {lb}{lo}, {hi if hi is not None else '∞'}], got {v!r}")
    return v


def check_top_keys(raw: Any, known, what: str) -> None:
    """A command config's top level: a mapping whose keys are all in ``known`` (did-you-mean
    on the first unknown one), else a :class:`ConfigError`; ``what`` names the config."""
    if not isinstance(raw, dict):
        raise ConfigError("", f"the {what} config must be a mapping")
    for k in raw:
        if k not in known:
            raise ConfigError(str(k), f"unknown key{did_you_mean(k, known)}; known: {', '.join(sorted(known))}")


def config_mapping(raw: Any, key: str, spec: dict) -> dict:
    """``raw`` (a mapping or None) checked against ``spec`` (key -> ``(str,)`` or
    ``(int | float, lower bound, bound excluded, nullable)``): unknown keys with a did-you-mean,
    numbers through :func:`config_number`; a :class:`ConfigError` names ``key.sub``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(key, f"expected a mapping, got {raw!r}")
    out = {}
    for k, v in raw.items():
        if k not in spec:
            raise ConfigError(f"{key}.{k}", f"unknown key{did_you_mean(k, spec)}; known: {', '.join(sorted(spec))}")
        t = spec[k]
        if t[0] is str:
            if not isinstance(v, str) or not v:
                raise ConfigError(f"{key}.{k}", f"expected a string, got {v!r}")
            out[k] = v
        else:
            out[k] = config_number(f"{key}.{k}", v, t[0], t[1], None, t[2], t[3])
    return out


def load_config_file(path: str) -> dict[str, Any]:
    import yaml

    if not os.path.exists(path):
        raise ConfigError("", f"config file {path!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"{path} must contain a mapping at the top level")
    return data


def load_command_config(path: str, output: Optional[str] = None) -> dict[str, Any]:
    """A command's YAML config (:func:`load_config_file`) with ``--output`` put over its ``output``."""
    raw = load_config_file(path)
    if output:
        raw["output"] = output
    return raw
