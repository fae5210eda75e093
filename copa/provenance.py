"""Provenance of a result: package versions, the source commit, the device (and the one check of a
requested device, :func:`resolve_device`).

Every record, cell summary, security entry and observation file states these, so that a published
number can be traced to the code and machine that produced it.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from .errors import CopaError, InvalidSpecError


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    names = ["copa-bench", "torch", "torchvision", "numpy", "scipy", "torchmetrics"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree copa was imported from, with '-dirty' if it has local changes."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def resolve_device(device: str | torch.device) -> torch.device:
    """Return a torch device, refusing CUDA when none is available (instead of failing later)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidSpecError(f"device {device!r} is invalid: accepted are 'cpu', 'cuda', 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CopaError(f"device {device!r} requested but CUDA is not available here (torch.cuda.is_available() "
                        f"is False); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidSpecError(f"device {device!r} is not supported: accepted are 'cpu', 'cuda', 'cuda:N'")
    return dev
