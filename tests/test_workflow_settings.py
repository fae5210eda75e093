"""The workflow's client settings (issue "Realistic federated updates"): the local_steps and client_batch axes
beside the defences axis, trained checkpoints in the models axis (ARCH@epochE, rule train), one record per
instance (an image or a client batch), one leaderboard section per setting, bad values refused by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from copa.bench.leaderboard import load_records
from copa.bench.setting import Setting
from copa.bench.pipeline import (scenario_for, check_config, client_batches, instance_key, parse_model_entry, run_cell,
                                 setting_axis, train_checkpoint)
from copa.errors import CopaError, InvalidSpecError

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")


def _config(tmp_path, **changes):
    config = {"dataset": "sample", "split": "train", "indices": [0, 1, 2, 3], "models": ["cnn2_c1"],
              "attacks": ["mean-image"], "attack_settings": {}, "plugins": [], "label": "known",
              "preprocess": "center", "dtype": "float64", "input_shape": "3x32x32", "num_classes": None,
              "model_seed": 0, "seed": 0, "device": "cpu", "threads": 1, "data_root": None, "download": False,
              "retry_failed": True, "out": str(tmp_path / "out"), "local_lr": 0.1}
    config.update(changes)
    return config


def test_the_papers_setting_keeps_its_paths_and_the_axes_multiply(tmp_path):
    assert setting_axis(_config(tmp_path)) == {"none": Setting.of(())}
    axis = setting_axis(_config(tmp_path, defences=["none", "prune:p=0.9"], local_steps=[1, 2], client_batch=[1, 4]))
    assert list(axis) == ["none", "none+client-batch-4", "none+local-steps-2+local-lr-0.1",
                          "none+local-steps-2+local-lr-0.1+client-batch-4", "prune-p-0.9", "prune-p-0.9+client-batch-4",
                          "prune-p-0.9+local-steps-2+local-lr-0.1", "prune-p-0.9+local-steps-2+local-lr-0.1+client-batch-4"]
    assert axis["none+local-steps-2+local-lr-0.1+client-batch-4"].label == \
        "none; local_steps=2; local_lr=0.1; client_batch=4"
    assert axis["none"].local_lr == 1e-4  # one gradient step: the learning rate does not matter, one setting
    assert axis["prune-p-0.9"].label == "prune:p=0.9" and axis["prune-p-0.9"].defence == "prune:p=0.9"


def test_a_new_axis_is_one_declaration_local_lr_as_a_list(tmp_path):
    """Issue "The house, second pass": local_lr became an axis by its declaration in copa.bench.setting.AXES and
    its schema entry alone; the scenario, the tags, the labels and the records follow."""
    axis = setting_axis(_config(tmp_path, local_steps=[1, 5], local_lr=[1e-4, 0.01, 0.1]))
    assert list(axis) == ["none", "none+local-steps-5", "none+local-steps-5+local-lr-0.01",
                          "none+local-steps-5+local-lr-0.1"]
    config = _config(tmp_path, local_steps=[1, 5], local_lr=[1e-4, 0.01, 0.1])
    scenario = scenario_for(config, "cnn2_c1", 0, axis["none+local-steps-5+local-lr-0.01"])
    assert scenario.local_lr == 0.01 and scenario.local_steps == 5
    with pytest.raises(Exception, match=r"local_lr: -0.1 is invalid: accepted are finite numbers > 0"):
        setting_axis(_config(tmp_path, local_lr=[0.1, -0.1]))


def test_instances_are_consecutive_chunks_of_the_indices(tmp_path):
    config = _config(tmp_path, indices=[5, 1, 7, 3, 9])
    assert client_batches(config, 1) == [(5,), (1,), (7,), (3,), (9,)]
    assert client_batches(config, 2) == [(5, 1), (7, 3)]  # the incomplete last chunk is left out
    assert client_batches({**config, "max_instances": 1}, 2) == [(5, 1)]
    assert [instance_key(b) for b in client_batches(config, 2)] == ["5-1", "7-3"]
    assert instance_key((3,)) == "3"  # the paper's per-image directories are unchanged


@pytest.mark.parametrize("changes, message", [
    ({"local_steps": 0}, "local_steps: 0 is invalid: accepted are integers ≥ 1"),
    ({"local_steps": [1, 1]}, "local_steps: [1, 1] repeats a value"),
    ({"client_batch": 5}, "client_batch: 5 is larger than the 4 configured indices"),
    ({"client_batch": [1, True]}, "client_batch: True is invalid"),
    ({"local_lr": 0.0, "local_steps": [1, 2]}, "local_lr: 0.0 is invalid: accepted are finite numbers > 0"),
    ({"local_steps": 2, "client_batch": 4, "local_batch": 3}, "local_batch: 3 divides no configured client_batch ([4])"),
    ({"models": ["cnn2_c1@epoch1001"]}, "'cnn2_c1@epoch1001' names epoch 1001: accepted are epochs 0 to 1000"),
    ({"models": ["cnn9@epoch1"]}, "models: unknown model 'cnn9'"),
    ({"training": {"epochs": 3}}, "training: unknown key(s) ['epochs']"),
])
def test_bad_settings_are_one_line_naming_the_value(tmp_path, changes, message):
    with pytest.raises(CopaError) as error:
        check_config(_config(tmp_path, **changes))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


def test_model_entries_name_trained_checkpoints():
    assert parse_model_entry("cnn4_c2") == ("cnn4_c2", None)
    assert parse_model_entry("cnn4_c2@epoch5") == ("cnn4_c2", 5)
    assert parse_model_entry("random-chain:3") == ("random-chain:3", None)
    with pytest.raises(InvalidSpecError):
        parse_model_entry("cnn4_c2@epoch99999")


def test_a_cell_of_client_batches_after_local_steps_records_each_batch(tmp_path):
    config = _config(tmp_path, attacks=["mean-image", "dlg"], attack_settings={"dlg": {"iterations": 2}})
    lines = []
    cell = run_cell(config, "cnn2_c1", "dlg", records_dir=tmp_path / "records", summary=tmp_path / "cell.json",
                    setting=Setting.of((), local_steps=2, local_lr=0.1, client_batch=2), log=lines.append)
    assert cell["defence"] == "none+local-steps-2+local-lr-0.1+client-batch-2" and cell["batch_size"] == 1
    assert [e["index"] for e in cell["records"]] == ["0-1", "2-3"] and cell["counts"]["ok"] == 2
    record = json.loads((tmp_path / "records" / "0-1" / "record.json").read_text())
    assert record["scenario"]["indices"] == [0, 1] and record["scenario"]["local_steps"] == 2
    assert record["observation"]["update"]["kind"] == "weight-delta"
    rows = load_records([tmp_path / "records" / k / "record.json" for k in ("0-1", "2-3")])
    assert set(rows["defence"]) == {"none; local_steps=2; local_lr=0.1; client_batch=2"}
    assert set(rows["index"]) == {"0,1", "2,3"}
    again = run_cell(config, "cnn2_c1", "dlg", records_dir=tmp_path / "records", summary=tmp_path / "cell.json",
                     setting=Setting.of((), local_steps=2, local_lr=0.1, client_batch=2), log=lines.append)
    assert all(e["reused"] for e in again["records"])  # resumable like the paper's cells


def test_a_trained_checkpoint_at_epoch_0_is_the_untrained_model_and_tables_name_it(tmp_path):
    config = _config(tmp_path, models=["cnn2_c1", "cnn2_c1@epoch0"], training={"max_images": 64})
    check_config(config)
    summary = train_checkpoint(config, "cnn2_c1", 0, out_dir=tmp_path / "ckpt", log=None)
    assert (tmp_path / "ckpt" / "epoch0.pt").is_file() and (tmp_path / "ckpt" / "epoch0.json").is_file()
    assert summary["checkpoints"][0]["hyperparameters"]["batch_size"] == 64
    from copa.models import create_model

    untrained = create_model("cnn2_c1", seed=0).state_dict()
    trained = torch.load(tmp_path / "ckpt" / "epoch0.pt", weights_only=True)
    assert all(torch.equal(trained[k], v) for k, v in untrained.items())
    cells = {}
    for model, checkpoint in (("cnn2_c1", None), ("cnn2_c1@epoch0", str(tmp_path / "ckpt" / "epoch0.pt"))):
        cells[model] = run_cell({**config, "indices": [0]}, model, "rgap", records_dir=tmp_path / model,
                                summary=tmp_path / f"{model}.json", checkpoint=checkpoint, log=lambda _: None)
    rows = load_records([tmp_path / m / "0" / "record.json" for m in cells])
    assert list(rows["model"]) == ["cnn2_c1", "cnn2_c1@epoch0"]
    assert rows["psnr"].iloc[0] == rows["psnr"].iloc[1]  # the same weights, the same reconstruction
    assert cells["cnn2_c1@epoch0"]["checkpoint"].endswith("epoch0.pt")


@pytest.mark.slow
def test_training_twice_gives_bit_identical_checkpoints_with_a_stated_accuracy(tmp_path, cifar_npz):
    config = _config(tmp_path, dataset=f"npz:{cifar_npz}", training={"max_images": 256, "batch_size": 32})
    for run in ("a", "b"):
        train_checkpoint(config, "cnn2_c2", 1, out_dir=tmp_path / run, log=None)
    a = torch.load(tmp_path / "a" / "epoch1.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "epoch1.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "a" / "epoch1.json").read_text())
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and meta["epoch"] == 1


@pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake not installed")
def test_the_workflow_plans_a_cell_per_setting_and_trains_named_epochs(tmp_path):
    config = _config(tmp_path, models=["cnn2_c1", "cnn2_c1@epoch2"], local_steps=[1, 2], client_batch=[1, 2],
                     out="runs/settings", results_dir="runs/settings/results", title="settings")
    for key in ("plugins", "num_classes", "data_root"):
        del config[key]
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1",
                             "--dry-run", "--configfile", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "runs/settings/sample-train/checkpoints/cnn2_c1/epoch2.pt" in out
    for tag in ("none", "none+local-steps-2+local-lr-0.1", "none+client-batch-2",
                "none+local-steps-2+local-lr-0.1+client-batch-2"):
        assert f"cells/{tag}/cnn2_c1@epoch2/mean-image.json" in out, tag
    jobs = dict(line.split()[:2] for line in out.splitlines() if line.split()[:1] in (["cell"], ["train"]))
    assert jobs == {"cell": "8", "train": "1"}
    bad = subprocess.run([SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1",
                          "--dry-run", "--configfile", str(path), "--config", "client_batch=[1,9]"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "client_batch: 9 is larger than the 4 configured indices" in bad.stdout + bad.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_copa_verify_reruns_client_batches_fedavg_and_trained_models_identically(tmp_path):
    """A leaderboard of the new settings stays verifiable: each record's setting and model come back from
    config.yaml (the checkpoint from where rule train wrote it), and the rerun equals the record."""
    from copa.bench.leaderboard import records_from_cells
    from copa.bench.pipeline import checkpoint_file
    from copa.bench.verify import verify_results

    config = _config(tmp_path, models=["cnn2_c1@epoch0"], attacks=["rgap", "dlg"], local_steps=[1, 2],
                     client_batch=[1, 2], attack_settings={"dlg": {"iterations": 2}}, max_instances=1,
                     training={"max_images": 32})
    ckpt = Path(checkpoint_file(config, "cnn2_c1", 0))
    train_checkpoint(config, "cnn2_c1", 0, out_dir=ckpt.parent, log=None)
    cells = []
    for tag, setting in setting_axis(config).items():
        for attack in config["attacks"]:
            summary = tmp_path / "cells" / tag / f"{attack}.json"
            run_cell(config, "cnn2_c1@epoch0", attack, records_dir=tmp_path / "records" / tag / attack,
                     summary=summary, log=lambda _: None, setting=setting, checkpoint=str(ckpt))
            cells.append(summary)
    results = tmp_path / "results"
    results.mkdir()
    records = records_from_cells(cells)
    assert (records["status"] == "not-applicable").sum() == 3  # rgap on the FedAvg settings and on a batch of 2
    records.to_csv(results / "records.csv", index=False)
    (results / "config.yaml").write_text(yaml.safe_dump(config))
    verdicts = verify_results(results, sample=len(records), seed=0, log=lambda _: None)
    assert {v.verdict for v in verdicts} == {"identical"}, [(v.defence, v.attack, v.detail) for v in verdicts]
    consistency = verdicts.consistency.counts()  # every row in the design, its hash rebuilt, every ok row rescored
    assert consistency["consistent"] == consistency["rows"] == len(records)
    assert consistency["rescored"] == (records["status"] == "ok").sum()
    assert {v.index for v in verdicts} == {0, "0,1"}
