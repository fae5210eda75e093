"""The workflow on a real SLURM cluster (issue 33): config/smoke.yaml through `snakemake --executor slurm --profile
profiles/slurm` on the single-node cluster of scripts/slurm-local-cluster.sh, with one job cancelled mid-run.

Checks: the jobs went through SLURM (sacct lists them COMPLETED, grouped: fewer jobs than cells), the run with
the cancelled job, interrupted and run again, completes and keeps every record finished before the cancel (same
bytes, same mtime), and the leaderboard and records equal those of a local run (`snakemake --cores 2`) bit for
bit, provenance (times, paths) aside.
Skips, with the reason, where the cluster cannot be started (not root, no apt-get, no packages)."""

import csv
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm-local-cluster.sh"
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
SMOKE = ROOT / "config" / "smoke.yaml"
RECORDS = Path("runs/smoke/sample-train/records")
RESULTS = Path("runs/smoke/results")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
# The plugin waits 40 s before its first status check and 10 s between checks by default: for a cluster
# whose jobs run for hours; a smoke run's jobs take a minute (feasibility.md: 122 s -> 31 s for two rules).
FAST_STATUS = ["--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2"]
# Fields that say when, where and how long, not what: they differ between any two runs.
PROVENANCE = {"seconds", "seconds_total", "finished_at", "record", "images"}

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,  # the integration tier (`make test-all`, CI): a real SLURM cluster
    pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed"),
    pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                       reason="snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')"),
]


@pytest.fixture(scope="module")
def cluster():
    """The local cluster, started by the script when it is not running (and then stopped again afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("a local SLURM cluster needs root (scripts/slurm-local-cluster.sh installs and starts daemons)")
    running = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True).returncode == 0
    if not running:
        started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True)
        if started.returncode != 0:
            pytest.skip(f"cannot start a local SLURM cluster: {(started.stderr or started.stdout).strip()[-500:]}")
    node_memory = int(subprocess.check_output(["sinfo", "-h", "-o", "%m"], text=True).split()[0].rstrip("+"))
    cell_memory = int(re.search(r"^CELL_MEM_MB = (\d+)", (ROOT / "workflow/rules/common.smk").read_text(), re.M)[1])
    if node_memory < cell_memory:
        if not running:
            subprocess.run(["bash", str(SCRIPT), "stop"], check=True, capture_output=True)
        pytest.skip(f"the local cluster's node has {node_memory} MB, a cell asks for {cell_memory} "
                    "(workflow/rules/common.smk)")
    yield
    if not running:
        subprocess.run(["bash", str(SCRIPT), "stop"], check=True, capture_output=True)


def snakemake(workdir, *args):
    """A workflow run on config/smoke.yaml; no wall-clock limit of its own (CI's limit governs)."""
    return [SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--configfile", str(SMOKE), *args]


def through_slurm(workdir):
    """The profile as a user runs it (the status checks' delays aside: FAST_STATUS)."""
    return snakemake(workdir, "--executor", "slurm", "--profile", str(ROOT / "profiles" / "slurm"), *FAST_STATUS)


def slurm_jobs(output):
    """The SLURM job ids the plugin reports submitting."""
    return re.findall(r"SLURM jobid (\d+)", output)


def sacct_states(job_ids):
    """{job id: state} as the accounting database has them (allocations only, -X)."""
    out = subprocess.check_output(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                                  text=True)
    return dict(line.split("|")[:2] for line in out.splitlines() if line)


def running_jobs_in(workdir):
    """Ids of this run's SLURM jobs that are running now (their working directory is the run's)."""
    out = subprocess.check_output(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%Z"], text=True)
    return [job for job, directory in (line.split("|", 1) for line in out.splitlines() if line)
            if Path(directory) == Path(workdir)]


def snapshot(paths):
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


def record_files(workdir):
    root = Path(workdir) / RECORDS
    return sorted(root.glob("*/*/*/*/record.json")) + sorted(root.glob("*/*/*/*/images.npz"))


def without_provenance(value):
    """A record (or part of one) without the fields that depend on when and how long it ran."""
    if isinstance(value, dict):
        return {k: without_provenance(v) for k, v in value.items() if k not in PROVENANCE}
    if isinstance(value, list):
        return [without_provenance(v) for v in value]
    return value


def csv_without_provenance(path):
    """A CSV's rows as text (every digit of every float), less the provenance columns."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in row.items() if k not in PROVENANCE and not k.startswith("seconds")} for row in rows]


def test_smoke_run_through_slurm_with_a_cancelled_job_equals_a_local_run(cluster, tmp_path):
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    local = subprocess.run(snakemake(local_dir, "--cores", "2"), capture_output=True, text=True, env=ENV)
    assert local.returncode == 0, local.stderr[-4000:]

    # Through SLURM; as soon as the first record is written, the job writing it is cancelled (scancel).
    log = open(tmp_path / "slurm-run.log", "w+")
    proc = subprocess.Popen(through_slurm(slurm_dir), stdout=log, stderr=subprocess.STDOUT, text=True,
                            env=ENV)
    cancelled = []
    while not cancelled:  # no wall-clock limit: CI's own governs
        assert proc.poll() is None, "snakemake ended before a job could be cancelled:\n" + log_text(log)[-4000:]
        if list((slurm_dir / RECORDS).glob("*/*/*/*/record.json")):
            cancelled = running_jobs_in(slurm_dir)
        time.sleep(0.2)
    subprocess.run(["scancel", *cancelled], check=True)
    while set(cancelled) & set(running_jobs_in(slurm_dir)) or any(
            state in ("RUNNING", "COMPLETING") for state in sacct_states(cancelled).values()):
        time.sleep(0.2)
    finished = snapshot(record_files(slurm_dir))  # written before the cancel took effect: atomically, so complete
    assert finished

    # snakemake-executor-plugin-slurm 2.8.0 takes sacct's "CANCELLED by UID" for a running job and waits on it
    # (it knows "CANCELLED" only): the user stops Snakemake (Ctrl-C) and runs the workflow again.
    proc.send_signal(signal.SIGINT)
    proc.wait()
    output = log_text(log)
    again = subprocess.run(through_slurm(slurm_dir), capture_output=True, text=True, env=ENV)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-4000:]
    output += again.stdout + again.stderr
    assert snapshot(Path(p) for p in finished) == finished  # every record finished before the cancel untouched

    # Every job went through SLURM: the accounting lists them, COMPLETED but for the cancelled one(s).
    jobs = slurm_jobs(output)
    states = sacct_states(jobs)
    assert set(states) == set(jobs), (jobs, states)
    assert all(states[job].startswith("CANCELLED") for job in cancelled), states
    assert {states[job] for job in jobs if job not in cancelled} == {"COMPLETED"}, states
    cells = len(list((local_dir / "runs/smoke/sample-train/cells").glob("*/*/*.json")))
    securities = len(list((local_dir / "runs/smoke/sample-train/security").glob("*.json")))
    assert len(jobs) - len(cancelled) < cells + securities, "cells and security reports are grouped into few jobs"

    # The same records and leaderboard as the local run, bit for bit, but for when and how long.
    local_records, slurm_records = record_files(local_dir), record_files(slurm_dir)
    assert [p.relative_to(local_dir) for p in local_records] == [p.relative_to(slurm_dir) for p in slurm_records]
    for a, b in zip(local_records, slurm_records):
        if a.suffix == ".json":
            assert without_provenance(json.loads(a.read_text())) == without_provenance(json.loads(b.read_text())), a
        else:
            with np.load(a) as x, np.load(b) as y:
                assert sorted(x.files) == sorted(y.files) and all(
                    x[k].dtype == y[k].dtype and x[k].tobytes() == y[k].tobytes() for k in x.files), a
    for table in ("leaderboard.csv", "records.csv", "security.csv"):
        assert csv_without_provenance(local_dir / RESULTS / table) == csv_without_provenance(
            slurm_dir / RESULTS / table), table


def log_text(log):
    log.flush()
    log.seek(0)
    return log.read()
