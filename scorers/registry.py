"""Stage registry: stage name -> class.

A stage registers itself beside its class with the :func:`register` decorator. The
built-in stages are found by importing every public module of the stage packages
(``STAGE_PACKAGES``; a module whose name starts with ``_`` is a private helper and is
not imported), so adding a stage is one new file in one of those folders. Third-party
packages register stages through the ``thresher.stages`` entry-point group::

    [project.entry-points."thresher.stages"]
    my_filter = "my_pkg.stages:MyFilter"

The entry-point name must equal the class's ``name``; the class is imported only when a
config uses it (or when every stage is listed).
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from typing import Optional

from thresher.scorers.base import GlobalStage, LocalStage, Stage, did_you_mean

#: packages whose public modules are imported to find the built-in stages; a dotted
#: module (not a package) is imported alone
STAGE_PACKAGES = (
    "thresher.scorers.filters",
    "thresher.scorers.dedup",
    "thresher.scorers.selection",
    "thresher.scorers.refine",
    "thresher.scorers.models.stages",
)
ENTRY_POINT_GROUP = "thresher.stages"

_CLASSES: dict[str, type[Stage]] = {}
_PLUGINS: dict[str, object] = {}        # name -> importlib.metadata.EntryPoint (not loaded yet)
_LOCK = threading.RLock()
_loaded = False


class UnknownStageError(KeyError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make ``cls`` usable by its ``name`` in a config."""
    if not (isinstance(cls, type) and issubclass(cls, (LocalStage, GlobalStage))):
        raise TypeError(f"{cls!r} is not a LocalStage or GlobalStage subclass")
    if not cls.name or not cls.name.isidentifier() or cls.name == "input":
        raise TypeError(f"{cls.__qualname__}: 'name' must be an identifier other than 'input', got {cls.name!r}")
    if not cls.doc:
        raise TypeError(f"{cls.__qualname__} ({cls.name}): a one-line 'doc' is required")
    names = [c.name for c in cls.columns]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__qualname__} ({cls.name}): column declared twice in {names}")
    for n in names:
        if n in ("reason", "duplicate_of") or n.startswith("__"):
            raise TypeError(f"{cls.__qualname__} ({cls.name}): column name {n!r} is reserved")
    with _LOCK:
        prev = _CLASSES.get(cls.name)
        if prev is not None and prev is not cls and f"{prev.__module__}.{prev.__qualname__}" != \
                f"{cls.__module__}.{cls.__qualname__}":
            raise TypeError(f"stage name {cls.name!r} is registered twice: {prev.__module__}.{prev.__qualname__} "
                            f"and {cls.__module__}.{cls.__qualname__}")
        _CLASSES[cls.name] = cls
    return cls


def _import_builtin() -> None:
    for name in STAGE_PACKAGES:
        mod = importlib.import_module(name)
        if hasattr(mod, "__path__"):
            for info in pkgutil.iter_modules(mod.__path__):
                if not info.name.startswith("_"):
                    importlib.import_module(f"{name}.{info.name}")


def _find_plugins() -> None:
    from importlib.metadata import entry_points
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _CLASSES:
            _PLUGINS.setdefault(ep.name, ep)


def _ensure() -> None:
    global _loaded
    with _LOCK:
        if not _loaded:
            _import_builtin()
            _find_plugins()
            _loaded = True


def _load_plugin(name: str) -> type[Stage]:
    ep = _PLUGINS[name]
    try:
        cls = ep.load()
    except Exception as e:  # a broken plugin names itself
        raise UnknownStageError(f"stage {name!r} from entry point {ep.value!r} could not be imported: "
                                f"{type(e).__name__}: {e}") from None
    if getattr(cls, "name", None) != name:
        raise UnknownStageError(f"entry point {name!r} = {ep.value!r} names a class whose name is "
                                f"{getattr(cls, 'name', None)!r}; they must be equal")
    register(cls)
    del _PLUGINS[name]
    return cls


def names() -> list[str]:
    _ensure()
    return sorted(set(_CLASSES) | set(_PLUGINS))


def get(name: str) -> type[Stage]:
    """The stage class registered as ``name``; :class:`UnknownStageError` with a hint if none."""
    _ensure()
    with _LOCK:
        if name in _CLASSES:
            return _CLASSES[name]
        if name in _PLUGINS:
            return _load_plugin(name)
    raise UnknownStageError(f"unknown stage {name!r}{did_you_mean(name, names())}; known stages: "
                            f"{', '.join(names())}")


def all_classes() -> list[type[Stage]]:
    """Every registered class (plugins imported), sorted by name."""
    return [get(n) for n in names()]


def default_pipeline() -> list[dict]:
    """The default pipeline: every stage with a ``default_order``, in that order."""
    found: list[tuple[int, str]] = []
    for cls in all_classes():
        order: Optional[int] = cls.default_order
        if order is not None:
            found.append((order, cls.name))
    return [{"name": n} for _, n in sorted(found)]
