"""A new user's first hour (issue 36): every shell command in the README's ```bash blocks runs as written on a
fresh clone, or is listed here — in DRY_RUN (run with --dry-run: too long to run, but its flags and config are
checked) or in NOT_RUN — with the reason. A new command in the README is run by default, so the README
cannot drift from what happens.

Each block runs in order (a later command may use an earlier one's output) in a scratch folder laid out like a
fresh clone: the checkout's files linked, ``runs/`` empty, ``../shared`` beside it. Paths under ``/tmp/`` are
moved into the scratch folder, so that the tests write nothing outside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CIFAR_NPZ, ROOT

README = ROOT / "README.md"

NOT_RUN = {
    "make run": "creates .venv and runs the default workflow (minutes; README's measured time): its rules run in "
                "test_workflow.py's smoke run, and `snakemake --cores 8` is dry-run below",
    "make test": "the fast tier of the test suite (this file's fast tests included)",
    "source .venv/bin/activate": "shell set-up: these tests run with their own environment's copa, snakemake and "
                                 "pytest on PATH",
    "copa attack --attack ig --model lenet-zhu --dataset npz:../shared/data/cifar10_subset.npz --index 0,1,2,3 "
    "--local-steps 2 --local-lr 0.1 --label unknown --out runs/fedavg-ig":
        "hours (IG's 4,800 iterations; README gives the estimate): the same command with --set iterations=10 runs",
    "COPA_FLOWER_CAPTURES=captured pytest -m \"slow or not slow\" tests/test_flower.py":
        "tests/test_flower.py is part of the suite (a real Flower simulation with Ray, ≈ 50 s); the fixture's "
        "COPA_FLOWER_CAPTURES folder is the only difference",
    'copa attack --attack rgap --observation "$(ls captured/round-0001-node-*.pt | head -n 1)" --out runs/flower-rgap':
        "needs the captures of the command before it; test_flower.py's "
        "test_copa_attack_reads_a_captured_file_from_the_command_line attacks a capture the same way",
    "copa attack --attack rgap --observation captured/round-0001-node-N.pt --out runs/flower-rgap":
        "a template: N is the node id Flower gives the client",
    'pip install -e ".[slurm]"': "installs into the environment the tests run in (.ci/run installs the slurm extra)",
    "sudo scripts/slurm-local-cluster.sh start": "starts system daemons (root, apt): tests/test_slurm.py starts the "
                                                 "cluster itself and runs the smoke config through the profile",
    "snakemake --profile profiles/slurm --configfile config/smoke.yaml": "needs the running cluster: tests/test_slurm.py "
                                                                         "runs this command and compares with a local run",
    "sacct -X -o JobID,JobName%36,State,Elapsed,AllocCPUS,ReqMem,Timelimit": "needs the cluster's accounting: "
                                                                             "tests/test_slurm.py reads sacct",
    "sudo scripts/slurm-local-cluster.sh stop": "stops system daemons: tests/test_slurm.py stops the cluster it started",
    "copa site results results/defences results/metric-validity results/realistic/batches results/realistic/fedavg "
    "results/realistic/trained submissions/grey-guess --out site": "would write into the checkout's site/: tests/test_site.py builds the same "
                                            "folders' pages and compares them with the committed site/ byte by byte",
    "COPA_SITE_SCREENSHOT=docs/site-index.png pytest -m slow tests/test_site.py -k chromium":
        "rewrites docs/site-index.png: tests/test_site.py's browser tests run in the integration tier (without the variable)",
}
"""Commands of the README's bash blocks that are not run, with the reason."""

DRY_RUN = {
    "snakemake --cores 8": "the default run (README's measured time)",
    "snakemake site --cores 1": "would write into the checkout's site/ (the scratch clone links it): tests/test_site.py "
                                "compares the committed site/ with a fresh build of the same folders",
    "snakemake --cores 2 --configfile config/defences.yaml": "≈ 3 h (results/README.md)",
    "snakemake --cores 8 --configfile config/paper.yaml --config dataset=npz:../shared/data/cifar10_subset.npz":
        "≈ 9 CPU-hours (README's cost table)",
}
"""Workflow commands run with ``--dry-run`` only (every job listed, nothing run), with the reason."""

NEEDS_SHARED_DATA = "../shared/data/"


def readme_blocks(text: str | None = None) -> list[list[str]]:
    """The commands of each ```bash block: continuation lines joined, comments and blank lines dropped."""
    text = README.read_text() if text is None else text
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        commands, current = [], ""
        for line in body.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
            if not line.endswith("\\"):
                commands.append(strip_comment(current))
                current = ""
        blocks.append(commands)
    return blocks


def strip_comment(command: str) -> str:
    """The command without its trailing ``# comment`` (a ``#`` after whitespace, outside quotes)."""
    quote = None
    for i, char in enumerate(command):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and i > 0 and command[i - 1].isspace():
            return command[:i].rstrip()
    return command.rstrip()


def expected_outputs(text: str | None = None) -> dict[str, str]:
    """``{command: printed line}`` for a README command followed by a ``# <its output>`` comment line
    (the run's seconds left out)."""
    text = README.read_text() if text is None else text
    found = {}
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        lines = block.splitlines()
        for i, line in enumerate(lines[1:], start=1):
            if re.match(r"# \S+ on .*: PSNR ", line):
                start = i - 1
                while start > 0 and lines[start - 1].endswith("\\"):
                    start -= 1
                command = " ".join(part.rstrip("\\").strip() for part in lines[start:i])
                found[" ".join(command.split())] = re.sub(r", [0-9.]+ s$", "", line[2:])
    return found


ALL_COMMANDS = [command for block in readme_blocks() for command in block]


def test_every_listed_command_is_still_in_the_readme_and_the_blocks_parse():
    """No stale entries: each command named in NOT_RUN and DRY_RUN is one of the README's."""
    assert ALL_COMMANDS, "no ```bash block found in README.md"
    for command in [*NOT_RUN, *DRY_RUN]:
        assert command in ALL_COMMANDS, f"listed but not in README.md: {command}"
    assert not set(NOT_RUN) & set(DRY_RUN)
    assert all(reason.strip() for reason in [*NOT_RUN.values(), *DRY_RUN.values()])
    assert readme_blocks("```bash\na \\\n  b   # note\n# only a comment\nc 'x # y'\n```\n") == [["a b", "c 'x # y'"]]


def scratch_clone(tmp_path: Path) -> Path:
    """A folder laid out like a fresh clone of this checkout (its files linked), with ../shared beside it."""
    clone = tmp_path / "clone"
    clone.mkdir()
    skip = {".git", ".snakemake", "runs", ".venv", "captured", "ckpt", "report.html", ".pytest_cache", ".hypothesis",
            "__pycache__"}
    for entry in ROOT.iterdir():
        if entry.name not in skip and not entry.name.endswith(".egg-info"):
            (clone / entry.name).symlink_to(entry)
    if (ROOT.parent / "shared").exists():
        (tmp_path / "shared").symlink_to(ROOT.parent / "shared")
    return clone


def run_block(block: list[str], clone: Path) -> dict[str, subprocess.CompletedProcess]:
    """Run a block's commands in order in ``clone`` (DRY_RUN ones with --dry-run; NOT_RUN ones not)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    results = {}
    for command in block:
        if command in NOT_RUN:
            continue
        line = command.replace("/tmp/", f"{clone}/tmp/") + (" --dry-run" if command in DRY_RUN else "")
        result = subprocess.run(["bash", "-c", line], cwd=clone, env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"README command failed ({result.returncode}): {command}\n" \
                                       f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        results[command] = result
    return results


def block_id(block: list[str]) -> str:
    return block[0].split(" --")[0][:40]


SLOW_WORDS = ("config/smoke.yaml", "copa train", "--set iterations=10")
"""A block with one of these runs for more than a few seconds (the smoke workflow, training, IG)."""

BLOCKS = [pytest.param(block, id=block_id(block),
                       marks=[pytest.mark.slow] if any(w in c for c in block for w in SLOW_WORDS) else [])
          for block in readme_blocks()]


@pytest.mark.parametrize("block", BLOCKS)
def test_the_readme_block_runs_as_written(block, tmp_path):
    if any(NEEDS_SHARED_DATA in command for command in block if command not in NOT_RUN) and not CIFAR_NPZ.is_file():
        pytest.skip(f"shared data not present: {CIFAR_NPZ}")
    if all(command in NOT_RUN for command in block):
        pytest.skip("every command of this block is listed in NOT_RUN: " + "; ".join(NOT_RUN[c] for c in block))
    clone = scratch_clone(tmp_path)
    results = run_block(block, clone)
    for command, line in expected_outputs().items():  # a printed line the README quotes is what it prints
        if command in results:
            assert line in results[command].stdout, (command, line, results[command].stdout)
    smoke = results.get("snakemake --cores 2 --configfile config/smoke.yaml")
    if smoke is not None:  # the workflow block: what the terminal shows and what the report opens with
        shown = smoke.stdout + smoke.stderr
        assert "\n[cell none/cnn2_c1/copa] [progress] copa: layer 0: started" in shown, shown[-3000:]
        assert "\n[cell none/cnn2_c1/copa] [0] copa on cnn2_c1 / sample:train [0]: PSNR " in shown
        assert "[cell none/cnn2_c1/copa] done after" in shown and "Shell command: None" not in shown
        results_dir = clone / "runs" / "smoke" / "results"
        assert not (results_dir / "plots" / "privacy_curves.png").exists()  # no defences, no curves
        html = (clone / "report.html").read_text(errors="replace")
        assert "mean PSNR (dB) per model and attack" in html
        assert (results_dir / "verification.md").is_file() and (results_dir / "partial" / "leaderboard.md").is_file()
        mode = (results_dir / "leaderboard.md").stat().st_mode & 0o777
        umask = os.umask(0)
        os.umask(umask)
        assert mode == 0o666 & ~umask  # others on a shared machine can read a published leaderboard
