"""Typed, source-cited parameters of attacks and defences.

A :class:`Hyperparameter` is a default with where it comes from (paper section, code file, or "ours:
why"); :meth:`Hyperparameter.coerce` turns a ``--set key=value`` string (or a config value) into the
default's type, or raises an error naming the value and the expected type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidSpecError


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter default with where it comes from (paper section, code file, or 'ours: why')."""

    default: Any
    source: str
    help: str = ""

    def coerce(self, name: str, value: Any) -> Any:
        """Convert ``value`` (possibly a ``--set`` string) to the default's type, or raise a clear error."""
        kind = type(self.default)
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        if isinstance(value, str):
            text = value.strip()
            try:
                if kind is bool:
                    if text.lower() in ("1", "true", "yes", "on"):
                        return True
                    if text.lower() in ("0", "false", "no", "off"):
                        return False
                    raise ValueError(text)
                if kind is int:
                    as_float = float(text)
                    if not as_float.is_integer():
                        raise ValueError(text)
                    return int(as_float)
                if kind is float:
                    return float(text)
                if kind is str:
                    return text
            except ValueError:
                pass
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        elif kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        raise InvalidSpecError(f"hyperparameter {name}={value!r} has the wrong type: expected {kind.__name__} "
                               f"(default {self.default!r})")
