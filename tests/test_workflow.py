"""The Snakemake workflow and its library (copa.pipeline): smoke run end to end, idempotence, report,
resumption after a real kill, a plugin attack, failed records, config errors, lint and profiles."""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
CIFAR_NPZ = ROOT.parent / "shared" / "data" / "cifar10_subset.npz"
needs_snakemake = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed")

SMOKE_RESULTS = Path("runs/smoke/results")
SMOKE_RECORDS = Path("runs/smoke/sample-train/records")

# A plugin attack, as a user would add one: a file and its name in the config.
PLUGIN = textwrap.dedent('''
    import time

    import torch

    from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack


    @register_attack(replace=True)
    class SlowGrey(Attack):
        name = "slow-grey"
        paper = "test plugin"
        hyperparameters = {"seconds": Hyperparameter(0.0, "test: sleep per image"),
                           "fail_on_label": Hyperparameter(-1, "test: raise on this label")}

        def reconstruct(self, observation, generator):
            time.sleep(self.hp["seconds"])
            if int(observation.labels[0]) == self.hp["fail_on_label"]:
                raise RuntimeError("planned failure of the test plugin")
            shape = (observation.batch_size, *observation.input_shape)
            grey = torch.full(shape, 0.4, dtype=observation.dtype, device=observation.device)
            return Reconstruction(images=observation.preprocess.apply(grey), labels=observation.labels)
''')


# Failures injected into the smoke run, as a user could write them: a trusted extension (listed under
# `extensions:`: a plug-in may register attacks only) that registers a model whose forward overflows — every observed gradient is NaN — and an
# attack whose solver raises. Both must become failed records with their reasons, never crashes.
INJECT = textwrap.dedent('''
    import torch
    from torch import nn

    from copa.attacks import Attack, Reconstruction, register_attack
    from copa.models import MODELS


    class OverflowNet(nn.Module):
        """A linear classifier whose logits overflow to ±inf: the client's gradients are NaN."""

        def __init__(self, num_classes, in_shape):
            super().__init__()
            c, h, w = in_shape
            self.fc = nn.Linear(c * h * w, num_classes)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("inf")


    MODELS.register("overflow-net", OverflowNet, replace=True, description="test: non-finite gradients",
                    not_chain_reason="a test model")


    @register_attack(replace=True)
    class SolverFails(Attack):
        name = "solver-fails"
        paper = "test plug-in"

        def reconstruct(self, observation, generator):
            raise torch.linalg.LinAlgError("planned singular system of the test plug-in")
''')


def smoke_config_with_injected_failures(workdir) -> Path:
    """config/smoke.yaml plus the INJECT plug-in: one more model (NaN gradients) and one more attack (raises)."""
    (Path(workdir) / "inject.py").write_text(INJECT)
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config.update(extensions=["inject.py"], models=[*config["models"], "overflow-net"],
                  attacks=[*config["attacks"], "solver-fails"])
    path = Path(workdir) / "smoke-injected.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir, *args, configfile=ROOT / "config" / "smoke.yaml"):
    """Run the workflow; no wall-clock limit of its own (a busy machine must not fail a test: CI's limit governs)."""
    config = ["--configfile", str(configfile)] if configfile else []
    return subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", "2",
                           *args, *config], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def snapshot(paths):
    return {str(p): (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


# --------------------------------------------------------------------------------------------------
# End to end


@needs_snakemake
@pytest.mark.slow
def test_smoke_run_end_to_end_with_injected_failures_then_nothing_to_do_and_report(tmp_path):
    """config/smoke.yaml, plus a model with NaN gradients and an attack that raises (INJECT): the failures
    are records with status failed and their reasons, counted per cell in the leaderboard; every other
    cell completes as in the plain smoke run."""
    configfile = smoke_config_with_injected_failures(tmp_path)
    first = snakemake(tmp_path, configfile=configfile)
    assert first.returncode == 0, first.stderr[-4000:]
    results = tmp_path / SMOKE_RESULTS
    config = yaml.safe_load(configfile.read_text())
    models, attacks, indices = config["models"], config["attacks"], config["indices"]
    smoke = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    for name in ["leaderboard.csv", "leaderboard.md", "records.csv", "security.csv", "security.md", "config.yaml",
                 "plots/psnr_vs_security.png", "plots/psnr_distribution.png", "plots/time_vs_psnr.png",
                 *[f"plots/reconstructions_{m}.png" for m in models]]:
        assert (results / name).stat().st_size > 0, name
    assert not (results / "plots" / "privacy_curves.png").exists()  # no defences: no curve to draw, no file
    assert not (tmp_path / "results").exists()  # the published leaderboard is only written by config/paper.yaml

    records = sorted((tmp_path / SMOKE_RECORDS).glob("*/*/*/*/record.json"))
    assert len(records) == len(models) * len(attacks) * len(indices)

    board = pd.read_csv(results / "leaderboard.csv").set_index(["model", "attack"])
    assert len(board) == len(models) * len(attacks)
    lenet_copa = board.loc[("lenet-zhu", "copa")]
    assert (lenet_copa.ok, lenet_copa.not_applicable, lenet_copa.failed, lenet_copa.runs) == (0, len(indices), 0,
                                                                                             len(indices))
    chain_copa = board.loc[("cnn2_c1", "copa")]
    assert chain_copa.ok == len(indices) and chain_copa.psnr_mean > 100  # exact recovery on a full-rank chain
    cell_log = (tmp_path / "runs" / "smoke" / "logs").glob("*/cells/none/cnn2_c1/copa.log")
    progress_lines = [line for log in cell_log for line in log.read_text().splitlines() if "[progress] copa:" in line]
    assert progress_lines, "the cell's log reports the attack's progress"
    assert chain_copa.copa_index == 0
    for model in smoke["models"]:  # the plain smoke cells are untouched by the injected failures
        assert board.loc[(model, "mean-image"), "ok"] == len(indices)
        assert board.loc[(model, "solver-fails"), ["ok", "failed"]].tolist() == [0, len(indices)]
    for attack in attacks:  # NaN gradients fail every attack on that model, before it runs
        assert board.loc[("overflow-net", attack), ["ok", "failed", "not_applicable"]].tolist() == [0, len(indices), 0]
    assert board["failed"].sum() == len(indices) * (len(models) + len(attacks) - 1)

    rows = pd.read_csv(results / "records.csv")
    failed = rows[rows.status == "failed"]
    nan_reasons = failed[failed.model == "overflow-net"].reason
    assert nan_reasons.str.fullmatch(r"failed: observed gradients are not finite: fc\.weight has \d+ non-finite "
                                     r"entries of 30720 .*; fc\.bias has 10 non-finite entries of 10 .*").all()
    solver_reasons = failed[(failed.model != "overflow-net")].reason
    assert (solver_reasons == "failed: solver failure (torch.linalg.LinAlgError): planned singular system of the "
                              "test plug-in").all() and len(solver_reasons) == len(indices) * len(smoke["models"])
    assert set(rows[rows.status == "ok"].model) == set(smoke["models"])

    security = pd.read_csv(results / "security.csv").set_index("model")
    assert security.loc["cnn2_c1", "status"] == "ok"
    assert security.loc["lenet-zhu", "status"] == "not-applicable"
    assert "chain" in security.loc["lenet-zhu", "reason"]
    assert security.loc["overflow-net", "status"] == "not-applicable"

    md = (results / "leaderboard.md").read_text()
    for fact in ["**command**: `snakemake", "**commit**", "**config hash**: `", "**device**: cpu",
                 "**package versions**: python ", "torch ", f"**images per cell**: {len(indices)}",
                 "**date**", "## lenet-zhu — security metric not applicable", "not-applicable",
                 f"failed ({len(indices)})", "| solver-fails ", f"| 0 / {len(indices)} / 0 ",
                 "observed gradients are not finite: fc.weight has",
                 "solver failure (torch.linalg.LinAlgError): planned singular system of the test plug-in"]:
        assert fact in md, fact
    from copa.bench.pipeline import run_config_hash

    effective = yaml.safe_load((results / "config.yaml").read_text())
    assert f"**config hash**: `{run_config_hash(effective)}`" in md  # the hash of the validated config it wrote
    record = json.loads(records[0].read_text())
    assert len(record["config_hash"]) == 64 and len(record["workflow"]["run_config_hash"]) == 64

    second = snakemake(tmp_path, "--dry-run", configfile=configfile)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Nothing to be done" in second.stdout + second.stderr
    changed = snakemake(tmp_path, "--dry-run", "--config", "seed=1", configfile=configfile)  # reruns the cells
    assert changed.returncode == 0 and "Params have changed since last execution" in changed.stdout, changed.stdout[-2000:]
    assert any(line.split() == ["cell", str(len(models) * len(attacks))] for line in changed.stdout.splitlines())

    # the leaderboard verifies: its records rerun from results_dir alone, bit-identical on the CPU (failed ones
    # with the same reason, the plug-in attack in its worker, the plug-in model rebuilt there)
    verified = snakemake(tmp_path, "verify", configfile=configfile)
    assert verified.returncode == 0, verified.stderr[-3000:]
    verification = (results / "verification.md").read_text()
    assert re.search(r"^(\d+) identical of \1 sampled records(;|$)", verification, re.M), verification[:3000]

    report = snakemake(tmp_path, "--report", "report.html", configfile=configfile)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "psnr_vs_security.png" in html and "Spearman" in html


@needs_snakemake
@pytest.mark.slow
def test_plugin_attack_failed_record_and_resume_after_kill(tmp_path, monkeypatch):
    """A new attack is a file + its name in the config; a failing image is a failed record; a run killed
    midway (SIGKILL to snakemake and its jobs) resumes without recomputing its finished records: every
    record of every cell written before the kill is untouched, and the attack runs again on exactly the
    images that had no record (counted in the rerun's cell log; the plug-in runs isolated, so it cannot
    count them itself: its worker's file system is read-only)."""
    (tmp_path / "my_attack.py").write_text(PLUGIN)
    config = tmp_path / "test.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": "sample", "indices": [0, 1, 2, 3, 4], "models": ["lenet-zhu"],
        "attacks": ["mean-image", "slow-grey"], "plugins": ["my_attack.py"],
        "attack_settings": {"slow-grey": {"seconds": 1.0, "fail_on_label": 2}},
        "out": "runs/test", "dtype": "float32", "device": "cpu"}))
    cell_records = tmp_path / "runs/test/sample-train/records/none/lenet-zhu/slow-grey"
    summary = tmp_path / "runs/test/sample-train/cells/none/lenet-zhu/slow-grey.json"

    proc = subprocess.Popen([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "2",
                             "--configfile", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        while len(list(cell_records.glob("*/record.json"))) < 2:  # no wall-clock limit: CI's own governs
            assert proc.poll() is None, "snakemake ended before it could be killed"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # snakemake and the running job
        proc.wait()
    all_records = tmp_path / "runs/test/sample-train/records"
    before = snapshot(sorted(all_records.glob("*/*/*/*/record.json")) + sorted(all_records.glob("*/*/*/*/images.npz")))
    kept = sorted(int(p.parent.name) for p in cell_records.glob("*/record.json"))
    assert 2 <= len(kept) < 5 and not summary.exists()

    assert snakemake(tmp_path, "--unlock", configfile=config).returncode == 0
    rerun = snakemake(tmp_path, configfile=config)
    assert rerun.returncode == 0, rerun.stderr[-4000:]

    assert snapshot(Path(p) for p in before) == before  # finished records of every cell untouched
    after = snapshot(sorted(all_records.glob("*/*/*/*/record.json")))
    assert len(after) == 2 * 5  # both cells complete
    log = (tmp_path / "runs/test/logs/sample-train/cells/none/lenet-zhu/slow-grey.log").read_text()
    ran = [re.match(r"\[(\d+)\] (.*)", line) for line in log.splitlines()]
    recomputed = sorted(int(m[1]) for m in ran if m and not m[2].startswith(("kept the complete record", "recomputing")))
    assert recomputed == sorted(set(range(5)) - set(kept))  # only the unfinished images ran again, once each
    cell = json.loads(summary.read_text())
    assert [e["index"] for e in cell["records"] if e["reused"]] == kept
    records = {int(p.parent.name): json.loads(p.read_text()) for p in cell_records.glob("*/record.json")}
    assert sorted(records) == [0, 1, 2, 3, 4]
    assert records[2]["status"] == "failed" and "planned failure" in records[2]["reason"]
    assert all(records[i]["status"] == "ok" for i in (0, 1, 3, 4))
    assert records[0]["hyperparameters"] == {"seconds": 1.0, "fail_on_label": 2}
    assert log.count("kept the complete record") == len(kept)

    results = tmp_path / "runs/test/results"
    board = pd.read_csv(results / "leaderboard.csv").set_index("attack")
    assert (board.loc["slow-grey", "ok"], board.loc["slow-grey", "failed"]) == (4, 1)
    md = (results / "leaderboard.md").read_text()
    assert "| slow-grey " in md and "planned failure of the test plugin" in md
    # --configfile replaces config/config.yaml rather than merging into it
    effective = yaml.safe_load((results / "config.yaml").read_text())
    assert effective["attack_settings"] == {"slow-grey": {"seconds": 1.0, "fail_on_label": 2}}


# --------------------------------------------------------------------------------------------------
# Config errors, lint, profiles, the paper config


@needs_snakemake
@pytest.mark.parametrize("args, expected", [
    (["--config", "attacks=[copa,idgl]"], ["invalid config: unknown attack 'idgl'", "Did you mean 'idlg'",
                                           "Known attacks:"]),
    (["--config", "dtype=float16"], ["'float16' is not one of ['float32', 'float64']"]),
])
def test_bad_config_fails_before_any_job_naming_the_value(tmp_path, args, expected):
    result = snakemake(tmp_path, "--dry-run", *args)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stdout + result.stderr, text
    assert not (tmp_path / "runs").exists()


@needs_snakemake
def test_lint_is_clean():
    result = subprocess.run([SNAKEMAKE, "--lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_slurm_profile_groups_cells_and_leaves_the_gpu_to_the_config():
    """profiles/slurm groups cells and security reports, and asks for no GPU of its own: a CPU-only cluster
    refuses a GPU request; cells ask for one with device cuda or --set-resources cell:gpu=1 (README)."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    text = "".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    for component in profile["group-components"]:
        group, count = component.split("=")
        assert f'group:\n        "{group}"' in text and int(count) > 1, component
    assert "gpu" not in str(profile.get("default-resources")) and "gpu" not in str(profile.get("set-resources"))
    assert "gpu=local" in profile["set-resource-scopes"]  # a group job holds at most one GPU (resources: gpu=1)
    for rule in profile.get("set-resources") or {}:
        assert f"rule {rule}:" in text, f"profile sets resources of unknown rule {rule!r}"


@needs_snakemake
@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')")
def test_slurm_profile_dry_run(tmp_path):
    result = snakemake(tmp_path, "--dry-run", "--profile", str(ROOT / "profiles" / "slurm"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "Group job cells" in out and "security" in out and "gpu=0" in out and "gpu=1" not in out
    assert "runtime=40" in out  # a smoke cell: 2 images at 20 minutes each (workflow/rules/common.smk)


@needs_snakemake
@pytest.mark.skipif(not CIFAR_NPZ.is_file(), reason=f"shared data not present: {CIFAR_NPZ}")
def test_paper_config_dry_run_on_the_offline_cifar10_subset(tmp_path):
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    assert {"copa", "copa-gm", "rgap", "dlg", "idlg", "ig"} <= set(paper["attacks"])
    assert {"cnn2_c1", "cnn2_c2", "cnn3_c1", "cnn4_c1", "cnn4_c2", "lenet-zhu", "cnn6", "cnn6-d"} <= set(paper["models"])
    assert len(paper["indices"]) >= 8 and paper["results_dir"] == "results"
    result = snakemake(tmp_path, "--dry-run", "--config", f"dataset=npz:{CIFAR_NPZ}",
                       configfile=ROOT / "config" / "paper.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    cells = len(paper["models"]) * len(paper["attacks"])
    assert any(line.split() == ["cell", str(cells)] for line in result.stdout.splitlines()), result.stdout[-2000:]
    assert "results/leaderboard.md" in result.stdout


# --------------------------------------------------------------------------------------------------
# copa.pipeline (the logic behind the rules)


def _config(tmp_path, **changes):
    config = {"dataset": "sample", "split": "train", "indices": [0, 1], "models": ["cnn2_c1"],
              "attacks": ["mean-image"], "attack_settings": {}, "plugins": [], "label": "known",
              "preprocess": "center", "dtype": "float32", "input_shape": "3x32x32", "num_classes": None,
              "model_seed": 0, "seed": 0, "device": "cpu", "threads": 1, "data_root": None, "download": False,
              "retry_failed": True, "out": str(tmp_path / "out")}
    config.update(changes)
    return config


def test_dataset_tag_is_path_safe():
    from copa.bench.pipeline import dataset_tag

    assert dataset_tag("sample", "train") == "sample-train"
    assert dataset_tag("npz:../shared/data/cifar10_subset.npz", "test") == "npz-cifar10_subset-test"
    assert dataset_tag("folder:/data/my images/", "train") == "folder-my_images-train"


def test_check_config_names_unknown_attacks_and_settings(tmp_path):
    from copa.errors import CopaError
    from copa.bench.pipeline import check_config

    with pytest.raises(CopaError, match=r"unknown attack 'rgp'.*Did you mean 'rgap'"):
        check_config(_config(tmp_path, attacks=["rgp"]))
    with pytest.raises(CopaError, match=r"attack_settings: unknown attack 'copa_gm'.*'copa-gm'"):
        check_config(_config(tmp_path, attack_settings={"copa_gm": {"steps_image": 5}}))
    with pytest.raises(CopaError, match=r"attack_settings.mean-image: .*level='dark'.*expected float"):
        check_config(_config(tmp_path, attack_settings={"mean-image": {"level": "dark"}}))
    with pytest.raises(CopaError, match=r"attack_settings.copa: .*no hyperparameter 'stepz'.*did you mean 'steps'"):
        check_config(_config(tmp_path, attack_settings={"copa": {"stepz": 3}}))
    with pytest.raises(CopaError, match=r"models: unknown model 'cnn2_c9'.*Did you mean"):
        check_config(_config(tmp_path, models=["cnn2_c9"]))
    with pytest.raises(CopaError, match=r"indices \[99\] are not in sample train \(10 images; official indices 0–9\)"):
        check_config(_config(tmp_path, indices=[0, 99]))
    check_config(_config(tmp_path, attack_settings={"mean-image": {"level": 0.3}}))


def test_check_config_refuses_an_out_or_results_dir_that_cannot_be_written_and_makes_neither(tmp_path):
    from copa.errors import CopaError
    from copa.bench.pipeline import check_config

    (tmp_path / "file").write_text("")
    with pytest.raises(CopaError, match=r"^out '/proc/copa-out' cannot be written: "):
        check_config(_config(tmp_path, out="/proc/copa-out"))
    with pytest.raises(CopaError, match=r"^results_dir '.*file' exists and is not a directory$"):
        check_config(_config(tmp_path, results_dir=str(tmp_path / "file")))
    with pytest.raises(CopaError, match=r"^out '' is an empty path"):
        check_config(_config(tmp_path, out=""))
    check_config(_config(tmp_path, out=str(tmp_path / "new" / "out"), results_dir=str(tmp_path / "new" / "res")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # checked, not created


def test_check_config_checks_the_metrics_by_name_and_against_the_input_shape(tmp_path):
    from copa.bench.pipeline import RUN_KEYS, check_config, configured_metrics
    from copa.errors import CopaError

    assert "metrics" in RUN_KEYS  # a changed metric list reruns the cells, which keep the records that hold it
    assert configured_metrics(_config(tmp_path)) == ("mse", "psnr", "ssim", "lpips")  # the schema's default
    with pytest.raises(CopaError, match=r"metrics: unknown metric 'pnsr'\. Did you mean 'psnr'"):
        check_config(_config(tmp_path, metrics=["mse", "pnsr"]))
    with pytest.raises(CopaError, match=r"input_shape: input shape 3x8x8 is too small for the metric ssim"):
        check_config(_config(tmp_path, input_shape="3x8x8"))
    check_config(_config(tmp_path, input_shape="3x8x8", metrics=["mse", "psnr"]))  # without SSIM: fine


def test_run_cell_resumes_and_reruns_only_what_changed(tmp_path):
    from copa.bench.pipeline import run_cell

    config = _config(tmp_path, indices=[0, 1, 2])
    records = tmp_path / "records"
    lines = []
    cell = run_cell(config, "cnn2_c1", "mean-image", records_dir=records, summary=tmp_path / "cell.json",
                    log=lines.append)
    assert cell["counts"] == {"ok": 3, "failed": 0, "not-applicable": 0}
    paths = sorted(records.glob("*/record.json"))
    before = snapshot(paths)

    (tmp_path / "cell.json").unlink()
    (records / "1" / "record.json").unlink()  # as if killed while image 1 was running
    cell = run_cell(config, "cnn2_c1", "mean-image", records_dir=records, summary=tmp_path / "cell.json",
                    log=lines.append)
    assert [e["reused"] for e in cell["records"]] == [True, False, True]
    after = snapshot(paths)
    assert after[str(records / "0" / "record.json")] == before[str(records / "0" / "record.json")]
    assert after[str(records / "2" / "record.json")] == before[str(records / "2" / "record.json")]

    changed = _config(tmp_path, indices=[0, 1, 2], attack_settings={"mean-image": {"level": 0.25}})
    cell = run_cell(changed, "cnn2_c1", "mean-image", records_dir=records, summary=tmp_path / "cell.json",
                    log=lines.append)
    assert not any(e["reused"] for e in cell["records"])
    assert json.loads((records / "0" / "record.json").read_text())["hyperparameters"] == {"level": 0.25}
    assert any("different hyperparameters" in line for line in lines)


@pytest.fixture
def forget_attacks():
    """Attack names registered by a test, removed from the registry afterwards (other tests list attacks)."""
    from copa.attacks import ATTACKS

    names = []
    yield names
    for name in names:
        ATTACKS._entries.pop(name, None)


def test_run_cell_recomputes_when_the_attack_file_changes(tmp_path, forget_attacks):
    from copa.bench.pipeline import attack_identity, run_cell

    plugin = tmp_path / "grey_plugin.py"
    plugin.write_text(PLUGIN)
    forget_attacks.append("slow-grey")
    config = _config(tmp_path, attacks=["slow-grey"], plugins=[str(plugin)], indices=[0, 1])
    first = attack_identity(config, "slow-grey")
    assert first["hyperparameters"] == {"seconds": 0.0, "fail_on_label": -1} and len(first["source_sha256"]) == 64
    lines = []

    def run():
        return run_cell(config, "cnn2_c1", "slow-grey", records_dir=tmp_path / "records",
                        summary=tmp_path / "cell.json", log=lines.append)

    assert not any(e["reused"] for e in run()["records"])
    assert all(e["reused"] for e in run()["records"])
    plugin.write_text(PLUGIN + "\n# a changed attack\n")
    assert attack_identity(config, "slow-grey")["source_sha256"] != first["source_sha256"]
    assert not any(e["reused"] for e in run()["records"])
    assert any("the attack's source file changed" in line for line in lines)


def test_run_cell_loads_the_plugins_once_and_builds_the_attack_once(tmp_path, forget_attacks, monkeypatch):
    import torch

    import copa.attacks
    import copa.attacks.sandboxed
    import copa.bench.pipeline
    from copa.attacks import Attack, Reconstruction, register_attack
    from copa.bench.pipeline import attack_identity, run_cell

    forget_attacks.append("test-counted-grey")
    built = []

    @register_attack(replace=True)
    class CountedGrey(Attack):
        name = "test-counted-grey"
        paper = "test"

        def __init__(self, **overrides):
            super().__init__(**overrides)
            built.append(self)

        def reconstruct(self, observation, generator):
            grey = torch.full((1, *observation.input_shape), 0.5, dtype=observation.dtype)
            return Reconstruction(images=observation.preprocess.apply(grey), labels=observation.labels)

    loads = []
    real = copa.attacks.load_plugins

    def counted(modules=(), extensions=()):
        loads.append(tuple(modules))
        real(modules, extensions)

    monkeypatch.setattr(copa.attacks, "load_plugins", counted)
    monkeypatch.setattr(copa.attacks.sandboxed, "load_plugins", counted)  # create_attack's
    monkeypatch.setattr(copa.bench.pipeline, "load_plugins", counted)  # the workflow's (load_config_plugins)
    config = _config(tmp_path, attacks=["test-counted-grey"])
    expected = attack_identity(config, "test-counted-grey")  # as the Snakefile computes its rule param
    loads.clear()
    built.clear()
    cell = run_cell(config, "cnn2_c1", "test-counted-grey", records_dir=tmp_path / "records",
                    summary=tmp_path / "cell.json", log=lambda line: None)
    assert cell["counts"]["ok"] == 2
    assert len(loads) == 1 and len(built) == 1
    assert attack_identity(config, "test-counted-grey", built[0]) == expected  # the same rule param
    assert cell["attack_source_sha256"] == expected["source_sha256"]


def test_run_cell_records_a_failing_image_and_goes_on(tmp_path, forget_attacks):
    import torch

    from copa.attacks import Attack, Reconstruction, register_attack
    from copa.bench.pipeline import run_cell

    forget_attacks.append("test-fails-on-label-one")

    @register_attack(replace=True)
    class FailsOnLabelOne(Attack):
        name = "test-fails-on-label-one"
        paper = "test"

        def reconstruct(self, observation, generator):
            if int(observation.labels[0]) == 1:
                raise ValueError("boom on label 1")
            grey = torch.full((1, *observation.input_shape), 0.5, dtype=observation.dtype)
            return Reconstruction(images=observation.preprocess.apply(grey), labels=observation.labels)

    config = _config(tmp_path, indices=[0, 1, 2], attacks=["test-fails-on-label-one"], retry_failed=False)
    records = tmp_path / "records"
    cell = run_cell(config, "cnn2_c1", "test-fails-on-label-one", records_dir=records,
                    summary=tmp_path / "cell.json", log=lambda line: None)
    assert cell["counts"] == {"ok": 2, "failed": 1, "not-applicable": 0}
    failed = json.loads((records / "1" / "record.json").read_text())
    assert failed["status"] == "failed" and "ValueError: boom on label 1" in failed["reason"]
    assert "Traceback" in failed["traceback"] and not (records / "1" / "images.npz").exists()
    again = run_cell(config, "cnn2_c1", "test-fails-on-label-one", records_dir=records,
                     summary=tmp_path / "cell.json", log=lambda line: None)
    assert all(e["reused"] for e in again["records"])  # retry_failed: false keeps the failed record


def test_command_line_values_are_read_with_the_schemas_types():
    """`--config indices=[0,1]` gives strings ('0'); they are read as the schema's types before validation."""
    from copa.bench.pipeline import coerce_to_schema

    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    given = {"indices": ["0", "3"], "retry_failed": "false", "security": {"condition": "true", "index": "2"},
             "data_root": "null", "seed": "7", "dataset": "sample", "split": "train", "title": "123"}
    assert coerce_to_schema(given, schema) == {
        "indices": [0, 3], "retry_failed": False, "security": {"condition": True, "index": 2}, "data_root": None,
        "seed": 7, "dataset": "sample", "split": "train", "title": "123"}  # strings stay strings where accepted
    assert coerce_to_schema({"indices": ["x"]}, schema) == {"indices": ["x"]}  # left for the schema to refuse


@needs_snakemake
def test_any_key_can_be_overridden_on_the_command_line(tmp_path):
    result = snakemake(tmp_path, "--dry-run", "--config", "indices=[0,1]", "retry_failed=false",
                       "security={condition: true}", "seed=3")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    bad = snakemake(tmp_path, "--dry-run", "--config", "indices=[0,x]")
    assert bad.returncode == 1 and "invalid config: indices[1]: 'x' is not of type 'integer'" in bad.stdout + bad.stderr


SLEEPER = textwrap.dedent('''
    import time

    import torch

    from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack


    @register_attack
    class Sleeper(Attack):
        name = "test-sleeper"
        paper = "test plugin"
        hyperparameters = {"seconds": Hyperparameter(3600.0, "test: far longer than any test may take")}

        def reconstruct(self, observation, generator):
            time.sleep(self.hp["seconds"])
            shape = (observation.batch_size, *observation.input_shape)
            return Reconstruction(images=torch.zeros(shape, dtype=observation.dtype), labels=observation.labels)
''')


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@needs_snakemake
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the jobs")
@pytest.mark.slow
def test_ctrl_c_stops_every_job_and_its_attack_worker(tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) stops snakemake, the running cell and the plug-in's attack
    worker: no process of the run is left, the interrupted image has no record (none half-written), the finished
    ones are complete. The attack sleeps an hour, so a test that ends at all shows the job was stopped."""
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    config = tmp_path / "test.yaml"
    config.write_text(yaml.safe_dump({"dataset": "sample", "indices": [0], "models": ["cnn2_c1"],
                                      "attacks": ["mean-image", "test-sleeper"], "plugins": ["sleeper.py"],
                                      "out": "runs/test", "device": "cpu"}))
    worker_tmp = tmp_path / "tmp"
    worker_tmp.mkdir()
    proc = subprocess.Popen([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "2",
                             "--configfile", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(worker_tmp)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    try:
        while not any(worker_tmp.glob("copa-worker-*/request.json")):  # the attack runs in its worker
            assert proc.poll() is None, "snakemake ended before the attack started"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait() != 0
        while _processes_mentioning(str(tmp_path)):  # no wall-clock limit: CI's own governs
            time.sleep(0.2)
    finally:
        for pid in _processes_mentioning(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
    records = tmp_path / "runs/test/sample-train/records/none/cnn2_c1"
    assert not (records / "test-sleeper" / "0" / "record.json").exists()
    assert not list(worker_tmp.glob("copa-worker-*"))  # the worker's folder went with it
