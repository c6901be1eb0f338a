"""Registries of methods and tasks.

In-tree modules (``plastibench.methods.*``, ``plastibench.tasks.*``, from the top-level ``methods/``
and ``tasks/`` folders) register with a decorator and are discovered by importing the package.
Out-of-tree plugins register through the entry-point groups ``plastibench.methods`` and
``plastibench.tasks``: each entry point names a module or class whose import registers it.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class UnknownName(LookupError):
    """A name that no registered method or task has; the message suggests close names."""

    def __init__(self, kind: str, name: str, known: list[str], where: str = ""):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}{where}.{hint} Known {kind}s{where}: {', '.join(known)}.")


class Registry(Generic[T]):
    """Name -> class, filled by ``@registry.register("name")`` and by discovery on first use."""

    def __init__(self, kind: str, package: str, group: str):
        self.kind, self.package, self.group = kind, package, group
        self._items: dict[str, T] = {}
        self._origin: dict[str, str] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice: {self._origin[name]} and "
                                 f"{obj.__module__}")
            self._items[name] = obj
            self._origin[name] = obj.__module__
            obj.name = name
            return obj
        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
        for ep in entry_points(group=self.group):
            ep.load()

    def get(self, name: str) -> T:
        self._discover()
        if name not in self._items:
            raise UnknownName(self.kind, name, self.names())
        return self._items[name]

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._items)

    def in_tree(self, name: str) -> bool:
        """True when ``name`` comes from this repository (the leaderboard ranks only those)."""
        self.get(name)
        return self._origin[name].startswith(self.package + ".")


class MethodRegistry(Registry):
    """The method registry; ``get("cbp+l2")`` also answers compositions.

    Compositions are built by ``composer``, which :mod:`plastibench.compose` sets when imported;
    the in-tree methods' package imports it, so discovery always provides it.
    """

    composer: Callable[[str], type] | None = None

    def get(self, name: str):
        if "+" in name:
            self._discover()
            if self.composer is None:
                raise RuntimeError("no composer for method compositions: import plastibench.compose")
            return self.composer(name)
        return super().get(name)

    def in_tree(self, name: str) -> bool:
        """A composition is in-tree when every part is."""
        if "+" in name:
            self.get(name)
            return all(super(MethodRegistry, self).in_tree(part.strip()) for part in name.split("+"))
        return super().in_tree(name)


METHODS: Registry = MethodRegistry("method", "plastibench.methods", "plastibench.methods")
TASKS: Registry = Registry("task", "plastibench.tasks", "plastibench.tasks")
register_method = METHODS.register
register_task = TASKS.register
