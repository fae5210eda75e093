"""Files in and out: atomic output (write to a temporary file beside the target, then rename: a run that is
killed midway leaves either the old file or the new one, never a partial file), and the one reader of YAML
mappings (workflow configs), whose every failure is one line naming the file and what is accepted.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .errors import CopaError, InvalidSpecError

# the largest YAML file read (a workflow config is a few KiB): a larger one is refused before it is parsed
MAX_YAML_BYTES = 1 << 20


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


def yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what is wrong and where (line and column, from 1)."""
    text = str(exc).strip()
    problem = getattr(exc, "problem", None) or (text.splitlines()[0] if text else type(exc).__name__)
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def read_yaml_mapping(path: str | os.PathLike, *, expected: str, what: str = "") -> dict[str, Any]:
    r"""The YAML mapping in ``path``. Messages name the file as ``what`` (an option, e.g. ``--config``) and its
    quoted path, or as its path alone; ``expected`` says what is accepted. Raises :class:`~copa.errors.CopaError` when the file is missing, and
    :class:`~copa.errors.InvalidSpecError` when it is larger than :data:`MAX_YAML_BYTES`, not UTF-8, not YAML or
    not a mapping — one line each.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> (folder / "ok.yaml").write_text("models: [cnn2_c1]\n") and None
    >>> read_yaml_mapping(folder / "ok.yaml", what="--config", expected="a workflow config")
    {'models': ['cnn2_c1']}
    >>> (folder / "bad.yaml").write_text("models: [cnn2_c1\n") and None
    >>> read_yaml_mapping(folder / "bad.yaml", what="--config", expected="a workflow config")
    Traceback (most recent call last):
    copa.errors.InvalidSpecError: --config '...bad.yaml' is not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1; accepted: a workflow config
    """
    path = Path(path)
    shown = f"{what} {str(path)!r}" if what else str(path)
    if not path.is_file():
        raise CopaError(f"{shown} does not exist: expected {expected}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise InvalidSpecError(f"{shown} has {size} bytes: accepted is {expected} of at most {MAX_YAML_BYTES} bytes")
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InvalidSpecError(f"{shown} is not valid YAML: {yaml_problem(exc)}; accepted: {expected}") from None
    if not isinstance(value, dict):
        raise InvalidSpecError(f"{shown} does not hold a mapping (it holds {type(value).__name__}): "
                               f"accepted: {expected}")
    return value
