"""Official indices: checking the ones asked for, finding them in a split, summarising the ones present."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InvalidSpecError


def validate_indices(indices: Sequence[int]) -> np.ndarray:
    """Official indices as a 1-D int64 array: non-empty, non-negative, no repeats."""
    if isinstance(indices, (int, np.integer)):
        raise InvalidSpecError(f"indices {indices!r} is a single number: give a sequence, e.g. [{indices}]")
    huge = [i for i in np.ravel(np.asarray(indices, dtype=object)) if isinstance(i, int) and not -2 ** 63 <= i < 2 ** 63]
    if huge:
        raise InvalidSpecError(f"index {huge[0]} is out of range: official indices are integers from 0 to the "
                               f"split's size - 1")
    wanted = np.asarray(indices)
    if wanted.size == 0:
        raise InvalidSpecError("indices are empty: give at least one image index")
    if wanted.ndim != 1 or wanted.dtype == bool or not np.issubdtype(wanted.dtype, np.integer):
        raise InvalidSpecError(f"indices {list(np.ravel(wanted))[:10]!r} are invalid: give a flat sequence of ints")
    wanted = wanted.astype(np.int64)
    negative = wanted[wanted < 0]
    if negative.size:
        raise InvalidSpecError(f"indices {negative.tolist()} are negative: official indices start at 0")
    values, counts = np.unique(wanted, return_counts=True)
    if (counts > 1).any():
        raise InvalidSpecError(f"indices {values[counts > 1].tolist()} are repeated: each image may be asked for once")
    return wanted


def summarise_ranges(sorted_indices: np.ndarray, most: int = 8) -> str:
    """'0–931, 10000–10931': the runs of consecutive values in an ascending array."""
    if sorted_indices.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(sorted_indices) != 1)
    starts = np.concatenate([sorted_indices[:1], sorted_indices[breaks + 1]])
    ends = np.concatenate([sorted_indices[breaks], sorted_indices[-1:]])
    runs = [f"{a}" if a == b else f"{a}–{b}" for a, b in zip(starts[:most].tolist(), ends[:most].tolist())]
    more = f", … ({len(starts)} runs in all)" if len(starts) > most else ""
    return ", ".join(runs) + more


def _positions_of(official_index: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
    """Storage positions of the wanted official indices; error naming any that are absent."""
    order = np.argsort(official_index, kind="stable")
    sorted_index = official_index[order]
    slot = np.minimum(np.searchsorted(sorted_index, wanted), max(len(sorted_index) - 1, 0))
    found = sorted_index[slot] == wanted if len(sorted_index) else np.zeros(len(wanted), bool)
    if not found.all():
        missing = wanted[~found]
        shown = ", ".join(map(str, missing[:10].tolist())) + (", …" if missing.size > 10 else "")
        noun = "index {} is" if missing.size == 1 else "indices {} are"
        raise InvalidSpecError(f"{noun.format(shown)} not in {where} ({len(sorted_index)} images; official indices "
                               f"present: {summarise_ranges(sorted_index)})")
    return order[slot]

