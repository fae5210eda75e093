"""scripts/backfill_attack_sources.py: records.csv's attack_source_sha256 filled from git for folders made before
the column existed — the same hashes the workflow records, every other byte kept, a commit git would read as an
option never passed to it."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from copa.bench.pipeline import attack_identity

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "backfill_attack_sources.py"
PUBLISHED = ROOT / "results" / "realistic" / "batches"


def _has_commit(commit: str) -> bool:
    return subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=ROOT, capture_output=True).returncode == 0


def test_the_column_is_refilled_from_git_and_nothing_else_changes(tmp_path):
    published = pd.read_csv(PUBLISHED / "records.csv")
    if not all(_has_commit(c) for c in published["git_commit"].unique()):
        pytest.skip("this clone lacks the commits the published records were made at (a shallow clone)")
    folder = tmp_path / "older"
    folder.mkdir()
    before = published.drop(columns="attack_source_sha256")
    before.loc[0, "git_commit"] = "--output=" + str(tmp_path / "written-by-git")  # never an option to git
    before.loc[1, "git_commit"] = published.loc[1, "git_commit"] + "-dirty"
    before.to_csv(folder / "records.csv", index=False)
    text = (folder / "records.csv").read_text()
    done = subprocess.run([sys.executable, str(SCRIPT), str(folder)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{folder}: {len(published) - 2} rows filled, 2 left unknown"
    after = pd.read_csv(folder / "records.csv")
    assert list(after.columns) == list(published.columns)
    # these attacks' files have not changed since: git's file at each row's commit is the checkout's, whose hash the
    # workflow records (attack_identity)
    current = {a: attack_identity({}, a)["source_sha256"] for a in after["attack"].unique()}
    assert after["attack_source_sha256"].iloc[2:].tolist() == [current[a] for a in after["attack"].iloc[2:]]
    assert after["attack_source_sha256"].iloc[:2].isna().all() and not (tmp_path / "written-by-git").exists()
    assert after.drop(columns="attack_source_sha256").to_csv(index=False) == text


def test_a_folder_without_records_is_refused_with_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stderr.strip() == f"backfill: {tmp_path} has no records.csv: expected a " \
                                                            f"results folder"
