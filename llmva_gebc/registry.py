"""Name → builder maps for the pieces a YAML config can name.

A LAVIS-style registry reduced to what it must do: decorator registration, and a lookup whose
unknown names raise an error listing the registered ones. The only state is the name maps.
Registration happens when the defining module is imported. The package's own modules are listed in
``BUILTIN_MODULES`` and imported (explicitly, no star-imports) on the first lookup, so that
``import llmva_gebc`` stays light (no torch, no transformers) and a lookup still sees every builtin.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Iterator, Optional, TypeVar

from llmva_gebc.errors import UserError

T = TypeVar("T")

# Modules whose import registers the builtin dataset builders, processors, LR schedulers, runner, model.
BUILTIN_MODULES = (
    "llmva_gebc.data.gebc",  # dataset 'gebc'
    "llmva_gebc.data.pretrain",  # webvid, cc3m, videochat_instruct
    "llmva_gebc.data.processors",  # clip_video_eval/train, clip_image_eval
    "llmva_gebc.engine.optim",  # LR schedulers
    "llmva_gebc.engine.trainer",  # runner_base
    "llmva_gebc.models.llmva_gebc",  # model 'llmva_gebc'
)
_builtins_state = {"loaded": False}


def load_builtins() -> None:
    """Import :data:`BUILTIN_MODULES` once (their decorators fill the registries)."""
    if _builtins_state["loaded"]:
        return
    _builtins_state["loaded"] = True  # set first: a module may look something up while importing
    for name in BUILTIN_MODULES:
        importlib.import_module(name)


class UnknownNameError(KeyError, UserError):
    """A name that no builder is registered under (a config value such as ``run.lr_sched: foo``); a
    ``KeyError`` for callers that catch one, a user error for the command lines (one line, exit 2)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class Registry:
    """A named map from strings to classes or builder functions. ``key``: the config key whose value
    names an entry (e.g. ``run.lr_sched``), for the error message of an unknown name."""

    def __init__(self, kind: str, builtins: bool = False, key: Optional[str] = None) -> None:
        self.kind = kind
        self.key = key
        self._map: Dict[str, Callable] = {}
        self._builtins = builtins  # filled by BUILTIN_MODULES: import them before a lookup

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@MODELS.register("llmva_gebc")``; the object's ``__name__`` if no name."""

        def deco(obj: T) -> T:
            key = name or obj.__name__  # type: ignore[attr-defined]
            if key in self._map and self._map[key] is not obj:
                raise KeyError(f"{self.kind} '{key}' is already registered to {self._map[key]!r}")
            self._map[key] = obj  # type: ignore[assignment]
            return obj

        return deco

    def get(self, name: str) -> Callable:
        self._load()
        try:
            return self._map[name]
        except KeyError:
            known = ", ".join(sorted(self._map)) or "(none)"
            where = f" (config key {self.key})" if self.key else ""
            raise UnknownNameError(f"unknown {self.kind} '{name}'{where}; registered {self.kind}s: {known}") from None

    def _load(self) -> None:
        if self._builtins:
            load_builtins()

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._map)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


DATASETS = Registry("dataset builder", builtins=True, key="datasets.<name>.builder")
MODELS = Registry("model", builtins=True, key="model.arch")
PROCESSORS = Registry("processor", builtins=True, key="datasets.<name>.vis_processor.name")
TASKS = Registry("task", builtins=True, key="run.task")
RUNNERS = Registry("runner", builtins=True, key="run.runner")
LR_SCHEDULERS = Registry("lr scheduler", builtins=True, key="run.lr_sched")

__all__ = ["Registry", "UnknownNameError", "BUILTIN_MODULES", "load_builtins", "DATASETS", "MODELS", "PROCESSORS", "TASKS", "RUNNERS",
           "LR_SCHEDULERS"]
