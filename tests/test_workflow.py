"""The Snakemake workflow runs end to end in a temporary directory and is idempotent."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")


def snakemake(workdir, *args):
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
                           "--configfile", str(ROOT / "config" / "config.yaml"), *args],
                          capture_output=True, text=True)


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed")
def test_workflow_runs_and_a_second_run_has_nothing_to_do(tmp_path):
    config = ["--config", "models=[cnn2_c1]", "attacks=[mean-image,noise]", "indices=[0,1]", "out=runs/test"]
    first = snakemake(tmp_path, *config)
    assert first.returncode == 0, first.stderr[-3000:]
    records = sorted((tmp_path / "runs" / "test").glob("*/*/*/record.json"))
    assert len(records) == 4
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["scenario"]["dataset"] == "sample"
    second = snakemake(tmp_path, *config, "--dry-run")
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr
