"""Issue 34, "Sharper science" part 1: FedAvg as clients run it. The client's loss per local step (kept in the
record, never shown to the attacker), the zero-loss mark (the update then equals fewer steps), the local data
(the K steps cycle through the client's mini-batches), the setting product that skips local batches that do not
divide the client's batch, and the sweep's tables and protection onset (copa.bench.fedavg)."""

from __future__ import annotations

import gc
import json
import math
import types

import numpy as np
import pandas as pd
import pytest
import torch

from copa.bench import run_attack
from copa.bench.fedavg import fedavg_section, has_fedavg, onset_sentences, protection_onset, sweep_table
from copa.bench.leaderboard import load_records, write_tables
from copa.bench.pipeline import client_batches, run_cell, scenario_for
from copa.bench.record import SETTING_COLUMNS, client_training_entry, record_row, zero_loss_tolerance
from copa.bench.setting import Setting, setting_axis
from copa.errors import CopaError, InvalidSpecError
from copa.threat import LocalTraining, Scenario
from copa.threat.observation import client_loss
from copa.threat.observation_file import observation_payload


# one torch thread and one BLAS thread for every test here (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def _manual_sgd(scenario: Scenario, chunks, lr: float):
    """The client's local steps by hand (plain tensors, p ← p − η ∇): the loss of each step, before it."""
    observation, truth = scenario.build()
    model = observation.model
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    inputs = truth.preprocess.apply(truth.images01)
    losses = []
    for chunk in chunks:
        loss = client_loss(torch.func.functional_call(model, params, (inputs[chunk],)), truth.labels[chunk])
        grads = torch.autograd.grad(loss, list(params.values()))
        losses.append(float(loss.detach()))
        params = {n: (p - lr * g).detach().requires_grad_(True) for (n, p), g in zip(params.items(), grads)}
    return losses, truth


# --------------------------------------------------------------------------------------------------
# The client's loss per step, in the ground truth and the record, not in the observation


def test_the_clients_loss_per_step_is_that_of_its_sgd_steps():
    scenario = Scenario(model="lenet-zhu", dataset="sample", indices=(0, 1, 2, 3), dtype="float64",
                        local_steps=5, local_lr=0.01, local_batch=2)
    expected, truth = _manual_sgd(scenario, [slice(0, 2), slice(2, 4)] * 2 + [slice(0, 2)], 0.01)
    assert truth.local_losses == pytest.approx(expected, rel=1e-12)
    assert len(set(truth.local_losses)) == 5  # five different steps
    fedsgd = Scenario(model="lenet-zhu", dataset="sample", indices=(0,), dtype="float64")
    _, truth = fedsgd.build()
    assert truth.local_losses == pytest.approx(_manual_sgd(fedsgd, [slice(0, 1)], 0.0)[0], rel=1e-12)


SKIPPED = (type, str, bytes, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


def _reachable_numbers(root, limit=200_000):
    """Every float and 0-d or 1-element tensor value reachable from ``root`` through Python references."""
    seen, queue, values = set(), [root], []
    while queue and len(seen) < limit:
        obj = queue.pop()
        if id(obj) in seen or isinstance(obj, SKIPPED):
            continue
        seen.add(id(obj))
        if isinstance(obj, float):
            values.append(obj)
            continue
        if isinstance(obj, torch.Tensor):
            values.extend(obj.detach().reshape(-1)[:100_000].tolist())
            continue
        queue.extend(gc.get_referents(obj))
    return values


def test_the_attacker_sees_the_update_not_the_clients_losses(tmp_path):
    scenario = Scenario(model="lenet-zhu", dataset="sample", indices=(0, 1), dtype="float64", local_steps=3,
                        local_lr=0.01, local_batch=1)
    observation, truth = scenario.build()
    losses = set(truth.local_losses)
    assert len(losses) == 3
    assert not losses & set(_reachable_numbers(observation))
    assert "loss" not in json.dumps(observation.describe()).replace('"loss": "cross-entropy', "")
    payload = observation_payload(observation)  # the observation file: what a captured update holds
    assert not losses & set(_reachable_numbers(payload))
    record, _, _ = run_attack(scenario, "mean-image")
    assert record["client_training"]["losses_per_step"] == list(truth.local_losses)
    assert record["client_training"]["update_equals_fewer_steps"] is False


# --------------------------------------------------------------------------------------------------
# The zero-loss mark


def test_the_zero_loss_tolerance_and_entry():
    assert zero_loss_tolerance(torch.float64) == 1e-7 and zero_loss_tolerance(torch.float32) == 1.3e-6
    entry = client_training_entry([11.3, 1e-7, 0.0, 2e-7], torch.float64)
    assert entry["zero_loss_steps"] == [2, 3] and entry["update_equals_fewer_steps"] is True
    assert entry["zero_loss_tolerance"] == 1e-7
    assert client_training_entry([2e-7], torch.float32)["zero_loss_steps"] == [1]
    assert client_training_entry([11.3, 5.7, 0.06], torch.float64)["update_equals_fewer_steps"] is False
    with pytest.raises(CopaError, match="float16 has no zero-loss tolerance: accepted are float32, float64"):
        zero_loss_tolerance(torch.float16)


def test_a_step_of_zero_loss_adds_nothing_and_the_record_marks_it():
    """At η = 0.1 one step takes the sample image's loss to 2.7e-11 (issue 34 saw the same on CIFAR-10: 11.3 → 0):
    the five-step update equals one step's, −η g, to torch.testing's default float64 tolerances."""
    five = Scenario(model="lenet-zhu", dataset="sample", indices=(0,), dtype="float64", local_steps=5, local_lr=0.1)
    record, _, truth = run_attack(five, "mean-image")
    assert record["client_training"]["zero_loss_steps"] == [2, 3, 4, 5], truth.local_losses
    assert record["client_training"]["update_equals_fewer_steps"] is True
    assert record_row(record)["zero_loss_step"] == 2
    delta, _ = five.build()
    gradient, _ = Scenario(model="lenet-zhu", dataset="sample", indices=(0,), dtype="float64").build()
    for d, g in zip(delta.gradients, gradient.gradients, strict=True):
        torch.testing.assert_close(d, -0.1 * g)
    slow = Scenario(model="lenet-zhu", dataset="sample", indices=(0,), dtype="float64", local_steps=5, local_lr=0.01)
    record, _, _ = run_attack(slow, "mean-image")
    assert record["client_training"]["zero_loss_steps"] == [] and math.isnan(record_row(record)["zero_loss_step"])


def test_records_without_the_client_training_still_read():
    record, _, _ = run_attack(Scenario(model="cnn2_c1", dataset="sample"), "mean-image")
    row = record_row(record)
    assert json.loads(row["local_losses"]) == record["client_training"]["losses_per_step"]
    del record["client_training"]  # as published before it was recorded
    row = record_row(record)
    assert row["local_losses"] is None and math.isnan(row["zero_loss_step"])
    assert (row["local_steps"], row["local_lr"], row["local_batch"], row["client_batch"]) == (1, 1e-4, 1, 1)


# --------------------------------------------------------------------------------------------------
# Local data: client_batch images, local_batch per step, the K steps cycling through them in order


def test_with_one_image_per_step_the_local_steps_cycle_through_the_clients_images():
    local = LocalTraining(steps=6, lr=0.1, batch=1)
    assert [local.chunk(k, 4) for k in range(6)] == [slice(i, i + 1) for i in (0, 1, 2, 3, 0, 1)]  # 1.5 epochs
    assert [LocalTraining(3, 0.1, 2).chunk(k, 4) for k in range(3)] == [slice(0, 2), slice(2, 4), slice(0, 2)]
    scenario = Scenario(model="lenet-zhu", dataset="sample", indices=(4, 5, 6, 7), dtype="float64", local_steps=6,
                        local_lr=0.01, local_batch=1)
    expected, truth = _manual_sgd(scenario, [slice(i, i + 1) for i in (0, 1, 2, 3, 0, 1)], 0.01)
    assert truth.local_losses == pytest.approx(expected, rel=1e-12)
    # the first step saw image 4 alone, not the batch: its loss is that image's at the server's weights
    observation, _ = scenario.build()
    inputs = truth.preprocess.apply(truth.images01)
    alone = float(client_loss(observation.model(inputs[:1]), truth.labels[:1]).detach())
    together = float(client_loss(observation.model(inputs), truth.labels).detach())
    assert truth.local_losses[0] == pytest.approx(alone, rel=1e-12) and abs(alone - together) > 1e-3


# --------------------------------------------------------------------------------------------------
# The setting product


def _config(tmp_path, **changes):
    config = {"dataset": "sample", "split": "train", "indices": list(range(8)), "models": ["lenet-zhu"],
              "attacks": ["mean-image"], "attack_settings": {}, "plugins": [], "label": "unknown",
              "preprocess": "center", "dtype": "float64", "input_shape": "3x32x32", "num_classes": None,
              "model_seed": 0, "seed": 0, "device": "cpu", "threads": 1, "data_root": None, "download": False,
              "retry_failed": True, "out": str(tmp_path / "out"), "max_instances": 2}
    config.update(changes)
    return config


def test_the_product_skips_local_batches_that_do_not_divide_the_client_batch_with_a_note(tmp_path):
    config = _config(tmp_path, local_steps=[1, 2], local_lr=0.1, local_batch=[1, 2], client_batch=[1, 4])
    notes = []
    axis = setting_axis(config, note=notes.append)
    assert notes == ["local_batch: skipped 2 with client_batch 1 (a local batch must divide the client's batch)"]
    assert list(axis) == ["none", "none+client-batch-4", "none+local-steps-2+local-lr-0.1",
                          "none+local-steps-2+local-lr-0.1+local-batch-1+client-batch-4",
                          "none+local-steps-2+local-lr-0.1+local-batch-2+client-batch-4"]
    # one image per step of a one-image client is the step on all its images: one setting, as the scenario says
    assert axis["none+local-steps-2+local-lr-0.1"].local_batch is None
    for setting in axis.values():  # records name their setting as the workflow does (tables, copa verify)
        batch = client_batches(config, setting.client_batch)[0]
        assert Setting.from_scenario(scenario_for(config, "lenet-zhu", batch, setting).to_dict()) == setting
    larger = setting_axis(_config(tmp_path, local_steps=2, local_batch=[2, 8], client_batch=[4, 8]), note=notes.append)
    assert notes[-1] == "local_batch: skipped 8 with client_batch 4 (a local batch must divide the client's batch)"
    assert len(larger) == 3
    assert setting_axis(config) == axis  # no note wanted, none given


def test_a_local_batch_that_fits_no_client_batch_is_refused_by_name(tmp_path):
    with pytest.raises(InvalidSpecError) as error:
        setting_axis(_config(tmp_path, local_steps=2, local_batch=[1, 3], client_batch=[2, 4]))
    assert str(error.value) == ("local_batch: 3 divides no configured client_batch ([2, 4]): accepted are divisors "
                                "of one of them, or null (all the client's images every step)")


# --------------------------------------------------------------------------------------------------
# The sweep's tables and where FedAvg starts to protect


def _synthetic(rows):
    """records.csv rows of a sweep: (model, attack, K, η, client batch, local batch, PSNRs of the clients,
    loss trajectory, first zero-loss step)."""
    out = []
    for model, attack, steps, lr, client, local, psnrs, losses, zero in rows:
        suffix = "".join([f"; local_steps={steps}" if steps > 1 else "", f"; local_lr={lr:g}" if steps > 1 else "",
                          f"; local_batch={local}" if steps > 1 and local != client else "",
                          f"; client_batch={client}" if client > 1 else ""])
        for k, psnr in enumerate(psnrs):
            out.append({"model": model, "attack": attack, "defence": "none" + suffix, "index": str(k),
                        "status": "ok" if psnr is not None else "failed", "psnr": psnr,
                        "local_steps": steps, "local_lr": lr if steps > 1 else 1e-4, "local_batch": local,
                        "client_batch": client, "local_losses": json.dumps(losses), "zero_loss_step": zero})
    return pd.DataFrame(out)


SWEEP = _synthetic([
    # FedSGD on one image leaks; at η = 0.1 the loss vanishes after one step and DLG still leaks (fewer steps)
    ("lenet-zhu", "dlg", 1, 1e-4, 1, 1, [50.0, 54.0], [11.3], np.nan),
    ("lenet-zhu", "dlg", 2, 1e-4, 1, 1, [52.0, 53.0], [11.3, 11.2], np.nan),
    ("lenet-zhu", "dlg", 2, 0.01, 1, 1, [18.0, 19.0], [11.3, 5.7], np.nan),
    ("lenet-zhu", "dlg", 2, 0.1, 1, 1, [48.0, 50.0], [11.3, 0.0], 2),
    # four images per client: FedSGD already protects with 2 per step; with 1 per step from η = 0.01, K = 2
    ("lenet-zhu", "dlg", 1, 1e-4, 4, 4, [25.0, 23.0], [9.0], np.nan),
    ("lenet-zhu", "dlg", 2, 1e-4, 4, 1, [24.0, 22.0], [9.0, 8.9], np.nan),
    ("lenet-zhu", "dlg", 2, 0.01, 4, 1, [15.0, 17.0], [9.0, 4.0], np.nan),
    ("lenet-zhu", "dlg", 2, 0.01, 4, 2, [12.0, 14.0], [9.0, 4.5], np.nan),
    # IG never falls below 20 dB on one image
    ("lenet-zhu", "ig", 1, 1e-4, 1, 1, [25.0, 26.0], [11.3], np.nan),
    ("lenet-zhu", "ig", 2, 0.1, 1, 1, [21.0, None], [11.3, 0.0], 2),
])


def test_protection_onset_names_the_first_setting_below_20_db_per_local_data():
    onset = protection_onset(SWEEP).set_index(["attack", "client_batch", "local_batch"])
    one = onset.loc[("dlg", 1, 1)]
    assert (one["first"], one["value"], one["fedsgd"], one["below"]) == ("η = 0.01, K = 2", 18.5, 52.0, "1/4")
    four_by_one = onset.loc[("dlg", 4, 1)]
    assert four_by_one["first"] == "η = 0.01, K = 2" and four_by_one["value"] == 16.0
    assert four_by_one["fedsgd"] == 24.0 and four_by_one["below"] == "1/3"
    four_by_two = onset.loc[("dlg", 4, 2)]
    assert four_by_two["first"] == "η = 0.01, K = 2" and four_by_two["below"] == "1/2"
    ig = onset.loc[("ig", 1, 1)]
    assert pd.isna(ig["first"]) and ig["lowest"] == 21.0 and ig["below"] == "0/2"  # the failed run is left out
    # FedSGD itself below the threshold is the onset
    below = protection_onset(SWEEP, threshold=25.0).set_index(["attack", "client_batch", "local_batch"])
    assert below.loc[("dlg", 4, 1), "first"] == "K = 1 (FedSGD)"
    assert onset_sentences(protection_onset(SWEEP)) == [
        "dlg on lenet-zhu — 1 image: first at η = 0.01, K = 2 (18.50 dB; FedSGD 52.00; 1/4 settings below); "
        "4 images, 2 per step: first at η = 0.01, K = 2 (13.00 dB; FedSGD 24.00; 1/2 settings below); "
        "4 images, 1 per step: first at η = 0.01, K = 2 (16.00 dB; FedSGD 24.00; 1/3 settings below).",
        "ig on lenet-zhu — 1 image: never below 20 dB (lowest 21.00).",
    ]
    # a partial sweep (or a failed K = 1 cell): no FedSGD mean, written as –, not nan
    no_fedsgd = SWEEP[~((SWEEP["attack"] == "dlg") & (SWEEP["local_steps"] == 1) & (SWEEP["client_batch"] == 1))]
    assert onset_sentences(protection_onset(no_fedsgd))[0].startswith(
        "dlg on lenet-zhu — 1 image: first at η = 0.01, K = 2 (18.50 dB; FedSGD –; 1/3 settings below); ")


def test_the_sweep_table_shows_each_setting_its_loss_trajectory_and_the_zero_loss_mark():
    table = sweep_table(SWEEP, "lenet-zhu", ["dlg", "ig"])
    lines = table.splitlines()
    assert "local loss per step (mean over clients)" in lines[0] and "loss 0 (update = fewer steps)" in lines[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[:3] for r in rows] == [["1 image", "–", "1"], ["1 image", "0.0001", "2"], ["1 image", "0.01", "2"],
                                     ["1 image", "0.1", "2"], ["4 images", "–", "1"],
                                     ["4 images, 2 per step", "0.01", "2"], ["4 images, 1 per step", "0.0001", "2"],
                                     ["4 images, 1 per step", "0.01", "2"]]
    fast = rows[3]
    assert fast[3] == "11.3 → 0" and fast[4] == "2/2 from step 2" and fast[5:] == ["49.00", "21.00"]
    assert rows[2][5] == "**18.50**" and rows[2][4] == "none" and rows[4][6] == "–"


def test_the_fedavg_section_only_with_a_fedavg_setting():
    assert has_fedavg(SWEEP) and not has_fedavg(SWEEP[SWEEP["local_steps"] == 1])
    assert fedavg_section(SWEEP[SWEEP["local_steps"] == 1]) == []
    assert fedavg_section(pd.DataFrame({"model": [], "defence": []})) == []
    text = "\n".join(fedavg_section(SWEEP))
    assert "## FedAvg sweep" in text and "### lenet-zhu" in text and "- ig on lenet-zhu — 1 image: never" in text
    floor = "\n".join(fedavg_section(SWEEP, floor="ig"))  # the floor's column stays, its onset goes
    assert "- ig on lenet-zhu" not in floor and "- dlg on lenet-zhu" in floor and "| ig " in floor


@pytest.mark.slow
def test_a_workflow_sweep_keeps_the_losses_in_records_csv_and_leaderboard_md(tmp_path):
    config = _config(tmp_path, local_steps=[1, 2], local_lr=[0.01, 0.1], local_batch=[1], client_batch=[1, 2])
    cells = []
    for tag, setting in setting_axis(config).items():
        summary = tmp_path / "cells" / f"{tag}.json"
        run_cell(config, "lenet-zhu", "mean-image", records_dir=tmp_path / "records" / tag, summary=summary,
                 setting=setting, log=lambda line: None)
        cells.append(summary)
    outputs = {"records_csv": tmp_path / "records.csv", "leaderboard_md": tmp_path / "leaderboard.md"}
    write_tables(cells, [], outputs=outputs, defences=[s.label for s in setting_axis(config).values()])
    records = pd.read_csv(outputs["records_csv"])
    assert set(SETTING_COLUMNS) <= set(records.columns) and len(records) == 2 * len(cells)
    fast = records[(records["local_lr"] == 0.1) & (records["client_batch"] == 1)]
    assert (fast["zero_loss_step"] == 2).all() and all(len(json.loads(t)) == 2 for t in fast["local_losses"])
    text = outputs["leaderboard_md"].read_text()
    assert "## FedAvg sweep" in text and "2/2 from step 2" in text
    assert text.count("| 2 images, 1 per step |") == 2  # η = 0.01 and 0.1, K = 2
    assert load_records([tmp_path / "records" / "none" / "0" / "record.json"])["local_steps"].tolist() == [1]
