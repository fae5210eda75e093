"""copa.provenance.commit_of: a record's ``git_commit`` says ``-dirty`` when the code that ran is not the commit's —
not when a run rewrote the tracked outputs under results/, site/ or archive/ (the paper run's results_dir is
results/, so its later cells would otherwise all say -dirty; results/metric-validity's records do)."""

import shutil
import subprocess

import pytest

from copa.provenance import OUTPUT_FOLDERS, commit_of

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(tree, *args):
    return subprocess.run(["git", *args], cwd=tree, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    git(tmp_path, "init", "-q")
    for path in ["copa/attack.py", "Snakefile", *(f"{folder}/table.csv" for folder in OUTPUT_FOLDERS)]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("first\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    return tmp_path, git(tmp_path, "rev-parse", "HEAD")


def test_a_clean_checkout_and_changed_outputs_give_the_bare_commit(checkout):
    tree, head = checkout
    assert commit_of(tree / "copa") == head
    for folder in OUTPUT_FOLDERS:
        (tree / folder / "table.csv").write_text("rewritten by a run\n")
    (tree / "results" / "new-records.csv").write_text("untracked\n")
    (tree / "copa" / "untracked.py").write_text("untracked files are not what ran\n")
    assert commit_of(tree / "copa") == head


@pytest.mark.parametrize("changed", ["copa/attack.py", "Snakefile"])
def test_a_changed_file_outside_the_outputs_makes_it_dirty(checkout, changed):
    tree, head = checkout
    (tree / changed).write_text("edited, not committed\n")
    assert commit_of(tree / "copa") == head + "-dirty"
    assert commit_of(tree) == head + "-dirty"


def test_outside_a_checkout_there_is_no_commit(tmp_path):
    assert commit_of(tmp_path) is None
