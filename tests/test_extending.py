"""Extending copa-bench: a defence, a metric and an attack are each one new file plus a config line.

The three files below are what a user writes; the test runs a workflow cell in-process
(copa.bench.pipeline.run_cell) with a config naming them — the defence and the metric as trusted
``extensions:`` (they decide what the client computes and how it is scored: docs/trust.md), the attack as an
untrusted ``plugins:`` file (sandboxed), ``defences:``, ``metrics:`` and the cell's attack — and finds each
one in the record and the metric in the leaderboard (records.csv, leaderboard.csv, leaderboard.md with its
label and ↓). Registries are process-global: the fixture restores them and forgets the files afterwards.
"""

from __future__ import annotations

import json
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from copa import plugins
from copa.attacks import ATTACKS, load_plugins, sandboxed
from copa.attacks.sandboxed import check_in_sandbox
from copa.attacks.checking import CHECKS
from copa.bench import leaderboard as lb
from copa.bench.pipeline import check_config, run_cell
from copa.metrics import METRICS
from copa.threat import DEFENCES

DEFENCE = textwrap.dedent('''
    """signSGD-style compression: each gradient tensor's signs, times its mean absolute value."""
    from copa.threat import Defence, register_defence


    @register_defence
    class Sign(Defence):
        name = "sign"
        paper = "Bernstein et al. 2018, signSGD (arXiv 1802.04434); scaled by the mean |g| as in EF-signSGD"
        description = "sign of each gradient tensor times its mean absolute value"

        def apply(self, update, generator):
            return tuple(g.sign() * g.abs().mean() for g in update.gradients)
''')

METRIC = textwrap.dedent('''
    """Mean absolute error per image."""
    from copa.metrics import register_metric


    @register_metric("mae", label="MAE", higher_is_better=False, digits=4,
                     description="mean absolute error per image, on [0, 1] images")
    def mae(reconstruction, target):
        return (reconstruction.double().clamp(0, 1) - target.double().clamp(0, 1)).abs().flatten(1).mean(1)
''')

ATTACK = textwrap.dedent('''
    """A floor: every pixel at one grey level."""
    import torch

    from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack


    @register_attack
    class ConstantImage(Attack):
        name = "constant-image"
        paper = "a floor: the image every pixel of which is one grey level"
        hyperparameters = {"level": Hyperparameter(0.25, "ours: a dark grey, far from the mean image")}

        def reconstruct(self, observation, generator):
            shape = (observation.batch_size, *observation.input_shape)
            grey = torch.full(shape, self.hp["level"], dtype=observation.dtype, device=observation.device)
            return Reconstruction(images=observation.preprocess.apply(grey), labels=observation.labels)
''')


@pytest.fixture
def plugin_files(tmp_path):
    """The three plug-in files; the registries and the loaded plug-ins are restored afterwards (the installed
    plug-ins are loaded first, so that the snapshot holds the baselines: their modules stay imported)."""
    load_plugins()
    registries = [ATTACKS, DEFENCES, METRICS]
    saved = [dict(registry._entries) for registry in registries]
    imported, described = dict(plugins._imported), dict(sandboxed._described)
    paths = {}
    for kind, source in [("defence", DEFENCE), ("metric", METRIC), ("attack", ATTACK)]:
        paths[kind] = tmp_path / f"my_{kind}.py"
        paths[kind].write_text(source)
    yield paths
    for registry, entries in zip(registries, saved):
        registry._entries.clear()
        registry._entries.update(entries)
    plugins._imported.clear()
    plugins._imported.update(imported)
    sandboxed._described.clear()
    sandboxed._described.update(described)
    for path in paths.values():
        sys.modules.pop(f"copa_plugin_{path.stem}", None)


def config_with(plugin_files, tmp_path) -> dict:
    """A workflow config (as the schema fills it in) whose plug-ins, defence, metric and attack are the files'."""
    return {"dataset": "sample", "split": "train", "indices": [0, 1], "models": ["cnn2_c1"],
            "attacks": ["constant-image"], "attack_settings": {}, "plugins": [str(plugin_files["attack"])],
            "extensions": [str(plugin_files["defence"]), str(plugin_files["metric"])],
            "metrics": ["mse", "psnr", "ssim", "mae"], "defences": ["sign"], "defence_seed": 0, "label": "known",
            "preprocess": "center", "dtype": "float32", "input_shape": "3x16x16", "num_classes": None,
            "model_seed": 0, "seed": 0, "device": "cpu", "threads": 1, "data_root": None, "download": False,
            "retry_failed": True, "out": str(tmp_path / "out")}


@pytest.mark.slow
def test_a_defence_a_metric_and_an_attack_are_each_one_file_and_a_config_line(plugin_files, tmp_path):
    config = config_with(plugin_files, tmp_path)
    check_config(config)  # loads the plug-ins: every name is known
    records = tmp_path / "records"
    cell = run_cell(config, "cnn2_c1", "constant-image", records_dir=records, summary=tmp_path / "cell.json",
                    log=lambda line: None, setting="sign")
    assert cell["counts"] == {"ok": 2, "failed": 0, "not-applicable": 0}
    assert cell["defence"] == "sign" and cell["defences"] == ["sign"]

    for index in (0, 1):
        record = json.loads((records / str(index) / "record.json").read_text())
        # the defence: in the scenario, and described to the attacker by the observation
        assert record["scenario"]["defences"] == ["sign"]
        assert record["observation"]["defences"] == [{"name": "sign", "parameters": {}}]
        # the attack ran: its grey level is the reconstruction
        assert record["attack"]["name"] == "constant-image" and record["hyperparameters"] == {"level": 0.25}
        with np.load(records / str(index) / "images.npz") as images:
            target, reconstruction = images["target"], images["reconstruction"]
        np.testing.assert_allclose(reconstruction, 0.25, atol=1e-6)
        # the metric: scored in the record, in the configured order
        mean = record["metrics"]["mean"]
        assert list(mean) == ["mse", "psnr", "ssim", "mae"]
        assert mean["mae"] == pytest.approx(float(np.abs(reconstruction - target).mean()), abs=1e-6)

    # the leaderboard: the metric's column in records.csv and leaderboard.csv, its label and ↓ in leaderboard.md
    out = tmp_path / "results"
    outputs = {"records_csv": out / "records.csv", "leaderboard_csv": out / "leaderboard.csv",
               "leaderboard_md": out / "leaderboard.md"}
    board = lb.write_tables([tmp_path / "cell.json"], [], outputs=outputs, models=["cnn2_c1"],
                            attacks=["constant-image"])
    assert list(pd.read_csv(outputs["records_csv"]).columns)[7:11] == ["psnr", "ssim", "mse", "mae"]
    assert "mae_mean" in pd.read_csv(outputs["leaderboard_csv"]).columns
    assert board.loc[0, "mae_mean"] == pytest.approx(np.mean([json.loads((records / f"{i}/record.json").read_text())
                                                              ["metrics"]["mean"]["mae"] for i in (0, 1)]))
    table = outputs["leaderboard_md"].read_text()
    header = next(line for line in table.splitlines() if line.startswith("| attack ") and "runs ok" in line)
    assert [cell.strip() for cell in header.strip("|").split("|")][2:6] == [
        "PSNR dB ↑ (mean ± std)", "SSIM ↑", "MSE ↓", "MAE ↓"]
    assert "LPIPS" not in header  # not configured, so not in the records: no column

    # the attack also meets the contract every attack must meet (checked where it runs: its sandbox)
    assert record["isolation"]["plugin"] == str(plugin_files["attack"].resolve())
    assert check_in_sandbox(ATTACKS.get("constant-image"), {}, "cnn2_c1", (3, 16, 16)) == list(CHECKS)


@pytest.mark.slow
def test_a_stored_record_is_recomputed_only_for_a_newly_configured_metric(plugin_files, tmp_path):
    config = config_with(plugin_files, tmp_path)
    config.update(defences=["none"], metrics=["psnr", "ssim"])
    lines = []

    def run(metrics):
        return run_cell({**config, "metrics": metrics}, "cnn2_c1", "constant-image", records_dir=tmp_path / "records",
                        summary=tmp_path / "cell.json", log=lines.append)

    assert not any(e["reused"] for e in run(["psnr", "ssim"])["records"])
    assert all(e["reused"] for e in run(["psnr"])["records"])  # fewer metrics: the records still hold them
    assert not any(e["reused"] for e in run(["psnr", "mae"])["records"])
    assert any("metrics mae not in the record" in line for line in lines)
    assert all(e["reused"] for e in run(["psnr", "mae"])["records"])


@pytest.mark.slow
def test_a_bad_metric_name_is_refused_by_name(plugin_files, tmp_path):
    from copa.errors import CopaError

    config = config_with(plugin_files, tmp_path)
    with pytest.raises(CopaError, match=r"metrics: unknown metric 'maee'\. Did you mean 'mae'"):
        check_config({**config, "metrics": ["psnr", "maee"]})
    with pytest.raises(CopaError, match=r"metrics: \[\] is empty: give one or more of lpips, mae, mse, psnr, ssim"):
        check_config({**config, "metrics": []})
