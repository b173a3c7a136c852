"""Name → builder maps for the pieces a YAML config can name.

A LAVIS-style registry reduced to what it must do: decorator registration, and a lookup whose
unknown names raise an error listing the registered ones. The only state is the name maps.
Registration happens when the defining module is imported; ``llmva_gebc/__init__.py`` imports every
such module explicitly (no star-imports), so ``import llmva_gebc`` fills all registries.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, TypeVar

T = TypeVar("T")


class Registry:
    """A named map from strings to classes or builder functions."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._map: Dict[str, Callable] = {}

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
        try:
            return self._map[name]
        except KeyError:
            known = ", ".join(sorted(self._map)) or "(none)"
            raise KeyError(f"unknown {self.kind} '{name}'; registered {self.kind}s: {known}") from None

    def build(self, name: str, *args, **kwargs):
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._map)

    def __contains__(self, name: object) -> bool:
        return name in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._map))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


DATASETS = Registry("dataset builder")
MODELS = Registry("model")
PROCESSORS = Registry("processor")
TASKS = Registry("task")
RUNNERS = Registry("runner")
LR_SCHEDULERS = Registry("lr scheduler")

__all__ = ["Registry", "DATASETS", "MODELS", "PROCESSORS", "TASKS", "RUNNERS", "LR_SCHEDULERS"]
