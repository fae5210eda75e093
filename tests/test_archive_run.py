"""scripts/archive-run.sh: a long run's records kept on the repository between sittings, and restored."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "archive-run.sh"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "scripts" / "archive-run.sh")
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "t@example.org")
    git(repo, "config", "user.name", "t")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "init")
    return repo


def make_run(run: Path) -> None:
    record = run / "ds" / "records" / "none" / "cnn2_c1" / "rgap" / "0"
    record.mkdir(parents=True)
    (record / "record.json").write_text('{"status": "ok"}')
    (record / "images.npz").write_bytes(b"\x00npz")
    (record / "reconstruction.png").write_bytes(b"\x89PNG")
    (run / "ds" / "cells" / "none" / "cnn2_c1").mkdir(parents=True)
    (run / "ds" / "cells" / "none" / "cnn2_c1" / "rgap.json").write_text("{}")
    (run / "logs" / "ds" / "cells").mkdir(parents=True)
    (run / "logs" / "ds" / "cells" / "cnn2_c1-rgap.log").write_text("layer 1: elapsed 0:01 — done\n")
    (run / "ds" / "leaderboard.csv").write_text("rebuilt, not archived\n")


def run_script(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / "scripts" / "archive-run.sh"), *args], capture_output=True, text=True)


def test_save_commits_records_cells_and_logs_only_and_restore_brings_them_back(repo: Path, tmp_path: Path):
    run = tmp_path / "run"
    make_run(run)
    saved = run_script(repo, "save", str(run), "paper")
    assert saved.returncode == 0, saved.stderr
    assert "1 records" in saved.stdout
    tracked = set(git(repo, "ls-files", "archive").split())
    assert tracked == {"archive/paper/ds/records/none/cnn2_c1/rgap/0/record.json",
                       "archive/paper/ds/records/none/cnn2_c1/rgap/0/images.npz",
                       "archive/paper/ds/records/none/cnn2_c1/rgap/0/reconstruction.png",
                       "archive/paper/ds/cells/none/cnn2_c1/rgap.json",
                       "archive/paper/logs/ds/cells/cnn2_c1-rgap.log"}
    assert git(repo, "status", "--porcelain") == ""
    again = run_script(repo, "save", str(run), "paper")
    assert again.returncode == 0 and "nothing new" in again.stdout
    assert len(git(repo, "log", "--oneline").splitlines()) == 2

    fresh = tmp_path / "fresh"
    (fresh / "ds" / "records" / "none" / "cnn2_c1" / "rgap" / "0").mkdir(parents=True)
    kept = fresh / "ds" / "records" / "none" / "cnn2_c1" / "rgap" / "0" / "record.json"
    kept.write_text('{"status": "newer"}')
    restored = run_script(repo, "restore", "paper", str(fresh))
    assert restored.returncode == 0, restored.stderr
    assert kept.read_text() == '{"status": "newer"}'  # a file already there is kept
    assert (fresh / "logs" / "ds" / "cells" / "cnn2_c1-rgap.log").read_text() == "layer 1: elapsed 0:01 — done\n"
    assert not (fresh / "ds" / "leaderboard.csv").exists()


def test_a_changed_record_is_committed_again(repo: Path, tmp_path: Path):
    run = tmp_path / "run"
    make_run(run)
    assert run_script(repo, "save", str(run), "paper").returncode == 0
    (run / "ds" / "records" / "none" / "cnn2_c1" / "rgap" / "0" / "record.json").write_text('{"status": "failed"}')
    assert run_script(repo, "save", str(run), "paper").returncode == 0
    assert git(repo, "show", "HEAD:archive/paper/ds/records/none/cnn2_c1/rgap/0/record.json") == '{"status": "failed"}'


def test_a_file_the_live_run_removes_during_the_save_is_skipped(repo: Path, tmp_path: Path):
    """The workflow deletes a cell's summary before it reruns the cell; a save that meets it gone (here: a `cp` that
    finds its source removed, as in a race with the run) still commits everything else and says what it skipped."""
    run = tmp_path / "run"
    make_run(run)
    vanishing = run / "ds" / "cells" / "none" / "cnn2_c1" / "copa.json"
    vanishing.write_text("{}")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    real_cp = shutil.which("cp")
    (bin_dir / "cp").write_text(f'#!/bin/sh\ncase "$2" in *copa.json) rm -f "$2"; '
                                f'echo "cp: cannot stat $2" >&2; exit 1;; esac\nexec {real_cp} "$@"\n')
    (bin_dir / "cp").chmod(0o755)
    env = {**__import__("os").environ, "PATH": f"{bin_dir}:{__import__('os').environ['PATH']}"}
    saved = subprocess.run(["bash", str(repo / "scripts" / "archive-run.sh"), "save", str(run), "paper"],
                           capture_output=True, text=True, env=env)
    assert saved.returncode == 0, saved.stderr
    assert "copa.json went away while it was copied: skipped" in saved.stderr
    assert "archive/paper/ds/records/none/cnn2_c1/rgap/0/record.json" in git(repo, "ls-files", "archive")
    assert git(repo, "status", "--porcelain") == ""  # nothing left half copied and uncommitted


@pytest.mark.parametrize("args, message", [
    ((), "usage"),
    (("move", "a", "b"), "usage"),
    (("save", "/nonexistent/run", "paper"), "run folder /nonexistent/run does not exist"),
    (("restore", "nothing", "/tmp/x"), "archive/nothing does not exist"),
])
def test_bad_arguments_exit_2_with_one_line(repo: Path, args, message):
    result = run_script(repo, *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert git(repo, "status", "--porcelain") == ""
