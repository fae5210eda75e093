"""Typed, source-cited parameters of attacks and defences.

A :class:`Hyperparameter` is a default with where it comes from (paper section, code file, or "ours:
why"); :meth:`Hyperparameter.coerce` turns a ``--set key=value`` string (or a config value) into the
default's type, or raises an error naming the value and the expected type.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from .errors import InvalidSpecError, UnknownNameError


INTEGER_CEILING = 10 ** 9
"""The largest integer a hyperparameter without a declared ``maximum`` takes: 40 000× the largest published
step count an attack here runs by default (Inverting Gradients' 24 000 iterations), so a typo such as
``--set iterations=1e30`` is refused instead of running until killed."""


STEP_CEILING = 10 ** 6
"""The largest step / iteration count the shipped attacks declare (``maximum``): 42× Inverting Gradients' 24 000
paper iterations, 100× COPA-GM's 10 000 image-layer steps — at least hours of CPU per image already."""


@dataclass(frozen=True)
class Hyperparameter:
    """A hyperparameter default with where it comes from (paper section, code file, or 'ours: why').

    ``minimum``/``maximum`` (inclusive, optional) bound a numeric value; every integer is at most
    :data:`INTEGER_CEILING` unless ``maximum`` says otherwise, every float finite."""

    default: Any
    source: str
    help: str = ""
    minimum: float | None = None
    maximum: float | None = None

    def coerce(self, name: str, value: Any) -> Any:
        """Convert ``value`` (possibly a ``--set`` string) to the default's type and check its bounds, or raise
        one line naming the value and what is accepted."""
        converted = self._convert(name, value)
        if isinstance(converted, bool) or not isinstance(converted, (int, float)):
            return converted
        if isinstance(converted, float) and not math.isfinite(converted):
            raise InvalidSpecError(f"hyperparameter {name}={value!r} is not finite: accepted are finite numbers")
        if self.minimum is not None and converted < self.minimum:
            raise InvalidSpecError(f"hyperparameter {name}={value!r} is below its minimum {self.minimum!r}: "
                                   f"accepted are {self.accepted()}")
        if self.maximum is not None and converted > self.maximum:
            raise InvalidSpecError(f"hyperparameter {name}={value!r} is above its maximum {self.maximum!r}: "
                                   f"accepted are {self.accepted()}")
        if self.maximum is None and isinstance(converted, int) and converted > INTEGER_CEILING:
            raise InvalidSpecError(f"hyperparameter {name}={value!r} is above {INTEGER_CEILING}, the largest integer "
                                   f"accepted where no maximum is declared")
        return converted

    def accepted(self) -> str:
        """The accepted values in words, e.g. ``integers from 1 to 1000000`` or ``finite numbers ≥ 0.0``."""
        kind = "integers" if type(self.default) is int else "finite numbers"
        if self.minimum is not None and self.maximum is not None:
            return f"{kind} from {self.minimum!r} to {self.maximum!r}"
        if self.minimum is not None:
            return f"{kind} ≥ {self.minimum!r}" + (f" and ≤ {INTEGER_CEILING}" if kind == "integers" else "")
        if self.maximum is not None:
            return f"{kind} ≤ {self.maximum!r}"
        return f"{kind} ≤ {INTEGER_CEILING}" if kind == "integers" else kind

    def _convert(self, name: str, value: Any) -> Any:
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


def close_hint(name: str, known) -> str:
    """`` (did you mean 'x'?)`` for a misspelt name, else an empty string."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def resolve_parameters(kind: str, owner: str, declared: dict[str, Hyperparameter], overrides: dict[str, Any],
                       noun: str = "hyperparameter") -> dict[str, Any]:
    """The defaults of ``declared`` with ``overrides`` applied and type-coerced; an unknown key or a wrong
    type raises one line naming the owner (``attack 'dlg' has no hyperparameter 'iteratoins' (did you
    mean 'iterations'?); accepted: ...``)."""
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise UnknownNameError(f"{kind} {owner!r} has no {noun} {unknown[0]!r}{close_hint(unknown[0], declared)}; "
                               f"accepted: {', '.join(sorted(declared)) or '(none)'}")
    values = {key: p.default for key, p in declared.items()}
    for key, value in overrides.items():
        try:
            values[key] = declared[key].coerce(key, value)
        except InvalidSpecError as exc:
            raise InvalidSpecError(f"{kind} {owner!r}: {exc}") from None
    return values


SEED_MAX = 2 ** 63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer


def check_seed(value: Any, what: str) -> int:
    """``value`` as a seed (an int in [0, 2⁶³ − 1]), or one line naming it (``what``: e.g. ``--seed``)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SEED_MAX:
        raise InvalidSpecError(f"{what} {value!r} is invalid: accepted are integers from 0 to {SEED_MAX}")
    return value


MAX_THREADS = 1024
"""The most CPU threads a job may ask for (``--threads``, a workflow's ``threads``): above the hardware threads of
the largest CPU servers (2 × 192 cores with SMT: 768), so every real machine's count is accepted, and far below
the values that make ``torch.set_num_threads`` overflow (above 2³¹ − 1: a traceback) or spawn a pool of
thousands of threads that only oversubscribe the cores."""


def check_threads(value: Any, what: str = "threads") -> int:
    """``value`` as a thread count (an int in [1, :data:`MAX_THREADS`]), or one line naming it (``what``: e.g.
    ``--threads``). Call it before :func:`copa.bench.run.set_threads`."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_THREADS:
        raise InvalidSpecError(f"{what} {value!r} is invalid: accepted are integers from 1 to {MAX_THREADS} "
                               f"(MAX_THREADS, above any machine's hardware threads)")
    return value
