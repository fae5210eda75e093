"""A small name → factory registry, in the style of timm's ``register_model`` / ``create_model``.

One registry each for models, datasets and attacks. Entries keep free-form metadata (paper,
description, ...) that ``copa list`` prints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import CopaError, unknown_name

T = TypeVar("T")

_plugin_stack: list[str] = []


@contextmanager
def registering_for(plugin: str):
    """Everything registered inside this block is marked as the plug-in's (``Entry.plugin``): the runner
    isolates a plug-in's attacks, and its worker imports the plug-ins its attack and model came from
    (:mod:`copa.plugins`, :mod:`copa.bench.isolation`)."""
    _plugin_stack.append(plugin)
    try:
        yield
    finally:
        _plugin_stack.pop()


@dataclass
class Entry(Generic[T]):
    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None
    """The plug-in (module name or .py path, as :func:`copa.plugins.load_plugins` loaded it) that registered
    this entry; None for copa-bench's own entries and those a program registers itself."""


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
        self._entries[name] = Entry(name, obj, dict(meta), _plugin_stack[-1] if _plugin_stack else None)
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

    def in_registration_order(self) -> list[str]:
        """The names in the order they were registered (:meth:`names` sorts them)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)


Factory = Callable[..., Any]


def class_registrar(registry: Registry, base: type, kind: str) -> Callable[..., Any]:
    """The ``@register_…`` decorator of a registry of classes (attacks, defences): checks that the class
    derives from ``base`` and has a ``name``, and registers it with its ``paper`` and ``description``.
    Usable bare (``@register_attack``) or with ``replace=True``."""
    def register(cls: type | None = None, *, replace: bool = False):
        def decorator(c: type) -> type:
            if not (isinstance(c, type) and issubclass(c, base)):
                raise CopaError(f"{c!r} is not a subclass of {base.__name__}")
            if not getattr(c, "name", ""):
                raise CopaError(f"{kind} class {c.__name__} has no name")
            registry.register(c.name, c, replace=replace, paper=c.paper, description=c.description)
            return c
        return decorator(cls) if cls is not None else decorator
    register.__doc__ = f"Class decorator: register a {base.__name__} subclass under its ``name``."
    return register
