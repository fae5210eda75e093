"""Fill records.csv's ``attack_source_sha256`` column of results folders made before records had it, from git.

Each row names the commit it was made at (``git_commit``); the SHA-256 of the attack's source file *at that
commit* (``git show COMMIT:PATH``) is what :func:`copa.bench.pipeline.attack_identity` recorded for the rows made
after the column existed, so the site and ``copa verify`` can then tell a stale cell (made with an earlier version
of the attack's file, :func:`copa.bench.consistency.source_staleness`) from a current one. A row is left empty —
unknown, never guessed — when its commit is missing, ``-dirty`` or not a hexadecimal commit id (local changes: the file may not be the
commit's), when git does not have the commit, when the attack is not a built-in or baseline (a plug-in's file is
not in git) or when its file did not exist at that commit (it was moved).

Only the new column is written: every other byte of records.csv stays as it was (the csv module, not pandas,
so no number is re-rounded), atomically.

    python scripts/backfill_attack_sources.py results results/defences results/realistic/batches ...
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import io
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from copa.attacks import ATTACKS, SandboxedAttack  # noqa: E402
from copa.io import atomic_write_text  # noqa: E402
from copa.plugins import import_trusted  # noqa: E402

COMMIT = re.compile(r"[0-9a-f]{7,40}")
"""A commit as records name it (provenance.git_commit): anything else (``-dirty``, or text that git would read as
an option) is left unknown and never passed to git."""
COLUMN = "attack_source_sha256"
AFTER = "hyperparameters"  # copa.bench.record.RUN_COLUMNS's order


def source_path(attack: str) -> str | None:
    """The attack's source file relative to the repository, or None (not registered, a plug-in, outside it)."""
    if attack not in ATTACKS:
        return None
    cls = ATTACKS.get(attack)
    if issubclass(cls, SandboxedAttack):
        return None
    try:
        return Path(inspect.getsourcefile(cls)).resolve().relative_to(ROOT).as_posix()
    except (TypeError, ValueError):
        return None


def sha256_at(commit: str, path: str, cache: dict) -> str | None:
    key = (commit, path)
    if key not in cache:
        shown = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True)
        cache[key] = hashlib.sha256(shown.stdout).hexdigest() if shown.returncode == 0 else None
    return cache[key]


def backfill(folder: Path, cache: dict) -> tuple[int, int]:
    """Fill the column of ``folder``/records.csv; (rows filled, rows left unknown)."""
    path = folder / "records.csv"
    text = path.read_text(encoding="utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    if COLUMN not in header:
        where = header.index(AFTER) + 1 if AFTER in header else len(header)
        header.insert(where, COLUMN)
        body = [row[:where] + [""] + row[where:] for row in body]
    at, attack_at, commit_at = header.index(COLUMN), header.index("attack"), header.index("git_commit")
    filled = unknown = 0
    for row in body:
        if row[at]:
            continue
        commit, source = row[commit_at], source_path(row[attack_at])
        digest = None
        if COMMIT.fullmatch(commit) and source is not None:
            digest = sha256_at(commit, source, cache)
        if digest is None:
            unknown += 1
        else:
            row[at], filled = digest, filled + 1
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows([header, *body])
    atomic_write_text(path, out.getvalue())
    return filled, unknown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="results folders (config.yaml, records.csv)")
    args = parser.parse_args(argv)
    import_trusted(())
    cache: dict = {}
    for folder in args.folders:
        if not (folder / "records.csv").is_file():
            print(f"backfill: {folder} has no records.csv: expected a results folder", file=sys.stderr)
            return 2
    for folder in args.folders:
        filled, unknown = backfill(folder, cache)
        print(f"{folder}: {filled} rows filled, {unknown} left unknown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
