"""A small name → factory registry, in the style of timm's ``register_model`` / ``create_model``.

One registry each for models, datasets and attacks. Entries keep free-form metadata (paper,
description, ...) that ``copa list`` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import CopaError, unknown_name

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Maps names to objects (factories or classes). ``kind`` names the registry in error messages."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, obj: T | None = None, *, replace: bool = False, **meta: Any):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""
        if obj is None:
            def decorator(o: T) -> T:
                self.register(name, o, replace=replace, **meta)
                return o
            return decorator
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise CopaError(f"{self.kind} name {name!r} is invalid: use a non-empty name without spaces")
        if name in self._entries and not replace and self._entries[name].obj is not obj:
            raise CopaError(f"{self.kind} {name!r} is already registered (pass replace=True to override)")
        self._entries[name] = Entry(name, obj, dict(meta))
        return obj

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name" such as a list
            raise unknown_name(self.kind, name, self._entries) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)


Factory = Callable[..., Any]
