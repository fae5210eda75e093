"""Atomic file output: write to a temporary file beside the target, then rename.

A run that is killed midway leaves either the old file or the new one, never a partial file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CopaError


def current_umask() -> int:
    """The process's file-creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically, with the mode a plain ``open``
    would give it (0o666 less the umask; ``mkstemp`` alone creates 0o600, unreadable to the others of a
    shared machine)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def check_writable(path: str | os.PathLike, *, what: str, directory: bool) -> None:
    """Raise :class:`~copa.errors.CopaError` unless ``path`` (a directory to fill, or a file to write) can
    be written — checked before any work, by creating and removing a temporary file in its nearest
    existing folder, so that nothing is left behind either way (no folder is created). ``what`` names the
    option (``--out``). An empty ``path`` is refused: ``Path("")`` is the current folder."""
    if not str(path):  # Path("") is "." : an empty option would write into the current folder
        raise CopaError(f"{what} '' is an empty path: expected the name of a "
                        f"{'directory to write into' if directory else 'file to write'}")
    target = Path(path)
    if directory and target.exists() and not target.is_dir():
        raise CopaError(f"{what} {str(path)!r} exists and is not a directory")
    if not directory and target.is_dir():
        raise CopaError(f"{what} {str(path)!r} is a directory: expected a file name")
    folder = target if directory else target.parent
    folder = folder.absolute()
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise CopaError(f"{what} {str(path)!r} cannot be written: {str(folder)!r} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".copa-write-check.", dir=folder)
    except OSError as exc:
        raise CopaError(f"{what} {str(path)!r} cannot be written: {exc.strerror or exc} (in {str(folder)!r})") from None
    os.close(fd)
    os.unlink(probe)
