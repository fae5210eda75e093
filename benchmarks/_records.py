"""The benchmarks' resume files: JSON lines of finished runs, one object per line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def finished_runs(path: str | Path, key: Callable[[dict[str, Any]], tuple]) -> dict[tuple, dict[str, Any]]:
    """The runs already in ``path`` (created with its folder if absent), by ``key(row)``; later lines win."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        return {}
    return {key(row): row for row in map(json.loads, path.read_text().splitlines())}
