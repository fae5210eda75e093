"""Where dataset files live: the default data root, this project's offline subsets, cache keys of files."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_ROOT = Path(os.environ.get("COPA_DATA_ROOT") or "./data")
"""Root of torchvision's dataset folders when ``root`` is not given: ``$COPA_DATA_ROOT``, else ./data."""

OFFLINE_SUBSETS = "../shared/data"  # where this project's offline subsets live, relative to the checkout


def _resolve_root(root: str | os.PathLike | None) -> Path:
    return Path(DEFAULT_DATA_ROOT if root is None else root).expanduser().resolve()


def _file_signature(path: Path) -> tuple[str, int, int]:
    """(path, mtime, size): a cache key that changes when the file does."""
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


def _relative_to_here(path: Path) -> str:
    """Where a relative path was looked for: a workflow's config names its data relative to the folder it ran in
    (the repository root), so ``copa verify`` run elsewhere does not find it.

    >>> _relative_to_here(Path("/abs/x.npz"))
    ''
    """
    return "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
