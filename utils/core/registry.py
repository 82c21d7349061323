"""Name -> class registries, one per kind (datasets, backbones, models, norms).

Adding a component is adding one file to the package: the registry imports
every module of its package the first time a name is looked up, and each module
registers its classes with the ``register`` decorator.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from normcl.utils.core.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A case-sensitive mapping from names to registered objects."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_") and not info.ispkg:
                importlib.import_module(f"{self.package}.{info.name}")

    def name_of(self, obj: object) -> str:
        """The name ``obj`` is registered under (a subclass: its nearest registered base's); else its ``__name__``."""
        self._load()
        for candidate in getattr(obj, "__mro__", (obj,)):
            for name, item in self._items.items():
                if item is candidate:
                    return name
        return getattr(obj, "__name__", repr(obj))

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._items:
            raise UserError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self.names())}")
        return self._items[name]
