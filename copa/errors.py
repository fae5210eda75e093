"""Errors that users see.

Every bad input raises a :class:`CopaError` subclass whose message names the bad value and what is
accepted; the CLI prints the message and exits with status 2, without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CopaError(Exception):
    """Base class of every error caused by a bad input (not by a bug)."""


class UnknownNameError(CopaError, KeyError):
    """A registry lookup with a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class InvalidSpecError(CopaError, ValueError):
    """A malformed model spec, dataset spec, option value or file."""


class DataUnavailableError(CopaError, FileNotFoundError):
    """A dataset or file that is not on disk (and may not be downloaded)."""


class NotApplicableError(CopaError):
    """An attack or analysis that does not apply to this model or scenario."""


class RunFailure(CopaError):
    """A run that cannot give a valid result: non-finite observed gradients or a non-finite reconstruction."""


def unknown_name(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown registry name, with close matches and the full list."""
    known = sorted(known)
    if not isinstance(name, str):  # e.g. a number from a config file: no close matches, but the same message
        return UnknownNameError(f"unknown {kind} {name!r} (a {type(name).__name__}, not a name). "
                                f"Known {kind}s: {', '.join(known)}.")
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known)}.")
