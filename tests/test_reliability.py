"""Reliability and reproducibility: failures inside a run are records, provenance, determinism.

* non-finite observed gradients, a non-finite reconstruction, a solver error and out-of-memory become
  ``failed`` records with their reasons (``record_failures=True``, as the workflow runs), and a cell goes
  on; without ``record_failures`` they raise; ``not-applicable`` stays its own status;
* every record carries its ``config_hash`` and provenance; the leaderboard header states the run's
  commit, config hash, device, package versions, images per cell and date;
* the same scenario, attack and seed give bit-identical records and images.npz bytes on the CPU.
"""

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from copa.attacks import ATTACKS, Attack, Reconstruction, register_attack
from copa.bench import RunFailure, config_hash, run_attack, write_outputs
from copa.models import MODELS
from copa.threat import Scenario

pytestmark = pytest.mark.usefixtures("single_thread")


class _OverflowNet(nn.Module):
    """A linear classifier whose logits overflow to ±inf: every observed gradient is NaN."""

    def __init__(self, num_classes, in_shape):
        super().__init__()
        c, h, w = in_shape
        self.fc = nn.Linear(c * h * w, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("inf")


class _Raises(Attack):
    """Raises the exception in ``error`` (set by the test), or returns NaN images when it is 'nan'."""

    name = "test-raises"
    paper = "test"
    error: object = None

    def reconstruct(self, observation, generator):
        if self.error == "nan":
            images = torch.zeros(observation.batch_size, *observation.input_shape, dtype=observation.dtype)
            images[0, 0, :2, :3] = float("nan")
            images[0, 1, 0, 0] = float("inf")
            return Reconstruction(images=images, labels=observation.labels)
        if self.error is not None:
            raise self.error
        images = torch.zeros(observation.batch_size, *observation.input_shape, dtype=observation.dtype)
        return Reconstruction(images=images, labels=observation.labels)


@pytest.fixture
def injected():
    """Register the overflowing model and the raising attack; remove them afterwards."""
    MODELS.register("test-overflow-net", _OverflowNet, replace=True, not_chain_reason="test model")
    register_attack(_Raises, replace=True)
    yield
    MODELS._entries.pop("test-overflow-net", None)
    ATTACKS._entries.pop("test-raises", None)
    _Raises.error = None


def _attack(error):
    _Raises.error = error
    return _Raises()


def test_non_finite_gradients_are_a_failed_record_naming_the_tensor(injected, tmp_path):
    scenario = Scenario(model="test-overflow-net", dtype="float64")
    record, reconstruction, truth = run_attack(scenario, "mean-image", record_failures=True)
    assert record["status"] == "failed" and reconstruction is None
    assert record["reason"].startswith("failed: observed gradients are not finite: fc.weight has ")
    assert "fc.bias has 10 non-finite entries of 10 (10 NaN, 0 Inf)" in record["reason"]
    assert "metrics" not in record and record["git_commit"] is not None and record["versions"]["torch"]
    write_outputs(tmp_path / "out", record, reconstruction, truth)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["record.json"]  # no images for a failure
    # checked before applicability: the data is broken whatever the attack
    assert run_attack(scenario, "copa", record_failures=True)[0]["status"] == "failed"
    with pytest.raises(RunFailure, match=r"observed gradients are not finite: fc\.weight"):
        run_attack(scenario, "mean-image")  # without record_failures (the CLI): a clear error


def test_non_finite_reconstruction_is_never_scored(injected):
    record, reconstruction, _ = run_attack(Scenario(model="cnn2_c1"), _attack("nan"), record_failures=True)
    assert record["status"] == "failed" and reconstruction is None and "metrics" not in record
    assert record["reason"] == "failed: attack returned non-finite images (7 of 3072 entries)"
    with pytest.raises(RunFailure, match=r"non-finite images \(7 of 3072 entries\)"):
        run_attack(Scenario(model="cnn2_c1"), _attack("nan"))


@pytest.mark.parametrize("error, reason", [
    (torch.linalg.LinAlgError("linalg.solve: The solver failed because the input matrix is singular."),
     "failed: solver failure (torch.linalg.LinAlgError): linalg.solve: The solver failed because the input "
     "matrix is singular."),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
     "failed: out of memory (torch.OutOfMemoryError): CUDA out of memory. Tried to allocate 20.00 GiB"),
    (ValueError("boom\nsecond line"), "failed: ValueError: boom second line"),
])
def test_exceptions_in_the_attack_are_failed_records(injected, error, reason):
    record, reconstruction, _ = run_attack(Scenario(model="cnn2_c1"), _attack(error), record_failures=True)
    assert (record["status"], record["reason"], reconstruction) == ("failed", reason, None)
    assert type(error).__name__ in record["traceback"] and record["seconds"] >= 0
    with pytest.raises(type(error)):
        run_attack(Scenario(model="cnn2_c1"), _attack(error))


def test_not_applicable_stays_separate_from_failed(injected):
    record, _, _ = run_attack(Scenario(model="lenet-zhu"), "copa", record_failures=True)
    assert record["status"] == "not-applicable" and record["reason"].startswith("not applicable: ")
    ok, _, _ = run_attack(Scenario(model="cnn2_c1"), _attack(None), record_failures=True)
    assert ok["status"] == "ok"


def test_a_cell_goes_on_after_failures_and_the_leaderboard_counts_them(injected, tmp_path):
    """run_cell + write_tables in process: failed counts per cell, reasons, and the header's provenance."""
    from copa.bench.leaderboard import write_tables
    from copa.bench.pipeline import run_cell, run_config_hash

    config = {"dataset": "sample", "split": "train", "indices": [0, 1], "label": "known", "preprocess": "center",
              "dtype": "float32", "input_shape": "3x32x32", "num_classes": None, "model_seed": 0, "seed": 0,
              "device": "cpu", "retry_failed": True, "plugins": [], "attack_settings": {}}
    cells = []
    for model, attack in [("cnn2_c1", "mean-image"), ("test-overflow-net", "mean-image"), ("cnn2_c1", "test-raises")]:
        if attack == "test-raises":
            _Raises.error = torch.linalg.LinAlgError("singular")
        path = tmp_path / "cells" / model / f"{attack}.json"
        cell = run_cell(config, model, attack, records_dir=tmp_path / "records" / model / attack, summary=path,
                        log=lambda line: None)
        cells.append(path)
        assert cell["run_config_hash"] == run_config_hash(config)
    outputs = {"leaderboard_md": tmp_path / "board.md", "leaderboard_csv": tmp_path / "board.csv"}
    board = write_tables(cells, [], outputs=outputs, command="test", images_per_cell=2,
                         config_hash=run_config_hash(config)).set_index(["model", "attack"])
    assert board.loc[("cnn2_c1", "mean-image"), ["ok", "failed"]].tolist() == [2, 0]
    assert board.loc[("test-overflow-net", "mean-image"), ["ok", "failed"]].tolist() == [0, 2]
    assert board.loc[("cnn2_c1", "test-raises"), ["ok", "failed"]].tolist() == [0, 2]
    md = (tmp_path / "board.md").read_text()
    record = json.loads((tmp_path / "records/cnn2_c1/mean-image/0/record.json").read_text())
    for fact in [f"**commit**: `{record['git_commit']}`", f"**config hash**: `{run_config_hash(config)}`",
                 f"**device**: {record['device']}", f"torch {torch.__version__.split('+')[0]}",
                 "**package versions**: python ", "**images per cell**: 2", "**date**: 20", "failed (2)",
                 "observed gradients are not finite: fc.weight has",
                 "solver failure (torch.linalg.LinAlgError): singular"]:
        assert fact in md, fact
    assert record["workflow"]["run_config_hash"] == run_config_hash(config)
    changed = run_config_hash({**config, "seed": 1})
    assert changed != run_config_hash(config) and run_config_hash({**config, "_command": "x"}) == run_config_hash(config)


def test_config_hash_is_the_sha256_of_the_canonical_run_description():
    scenario = Scenario(model="cnn2_c1", dtype="float64")
    record, _, _ = run_attack(scenario, "mean-image", overrides={"level": 0.25}, seed=3)
    payload = {"attack": "mean-image", "hyperparameters": {"level": 0.25}, "scenario": scenario.to_dict(), "seed": 3}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    assert record["config_hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert record["config_hash"] == config_hash(scenario.to_dict(), "mean-image", {"level": 0.25}, 3)
    others = {config_hash(scenario.to_dict(), "mean-image", {"level": 0.25}, 4),
              config_hash(scenario.to_dict(), "mean-image", {"level": 0.5}, 3),
              config_hash(Scenario(model="cnn2_c1", dtype="float64", indices=(1,)).to_dict(), "mean-image",
                          {"level": 0.25}, 3),
              config_hash(scenario.to_dict(), "grey", {"level": 0.25}, 3)}
    assert len(others) == 4 and record["config_hash"] not in others
    for key in ["versions", "git_commit", "device", "seed", "seconds", "finished_at"]:
        assert key in record, key


# --------------------------------------------------------------------------------------------------
# Determinism on the CPU

TIMING_FIELDS = ("seconds", "finished_at")


def _without_timing(record):
    return {k: v for k, v in record.items() if k not in TIMING_FIELDS}


@pytest.mark.parametrize("model, attack, overrides", [
    ("cnn2_c1", "rgap", {}),
    ("lenet-zhu", "ig", {"iterations": 4}),
    ("lenet-zhu", "dlg", {"iterations": 2, "max_iter": 3}),
])
def test_same_scenario_attack_and_seed_give_bit_identical_records(tmp_path, model, attack, overrides):
    scenario = Scenario(model=model, dtype="float64", indices=(2,))
    outs = []
    for run in range(2):
        record, reconstruction, truth = run_attack(scenario, attack, overrides=overrides, seed=7)
        assert record["status"] == "ok", record["reason"]
        write_outputs(tmp_path / str(run), record, reconstruction, truth)
        outs.append(tmp_path / str(run))
    first, second = (json.loads((out / "record.json").read_text()) for out in outs)
    assert _without_timing(first) == _without_timing(second)
    assert (outs[0] / "images.npz").read_bytes() == (outs[1] / "images.npz").read_bytes()
    assert (outs[0] / "reconstruction.png").read_bytes() == (outs[1] / "reconstruction.png").read_bytes()
    # the comparison can fail: another seed changes an optimisation attack's result
    if attack != "rgap":
        other, reconstruction, truth = run_attack(scenario, attack, overrides=overrides, seed=8)
        write_outputs(tmp_path / "other", other, reconstruction, truth)
        assert (tmp_path / "other" / "images.npz").read_bytes() != (outs[0] / "images.npz").read_bytes()
        assert other["config_hash"] != first["config_hash"]
    with np.load(outs[0] / "images.npz") as npz:  # the deterministic npz is an ordinary npz
        assert set(npz.files) == {"target", "reconstruction", "indices"} and npz["indices"].tolist() == [2]


PLUGIN_MODEL = '''
import torch
from torch import nn

from copa.models import MODELS


class Overflow(nn.Module):
    def __init__(self, num_classes, in_shape):
        super().__init__()
        self.fc = nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("inf")


MODELS.register("test-plugin-overflow", Overflow, replace=True, description="a plug-in model with NaN gradients",
                not_chain_reason="test")
'''


def test_extension_modules_register_models_for_the_command_line(tmp_path, capsys):
    """A trusted --extension module may register a model (a sandboxed --plugin may not: docs/trust.md): `copa list
    models` shows it, and `copa attack` on it stops with the non-finite gradients named (exit 2, nothing written)."""
    import sys

    from copa import plugins as attacks_mod
    from copa.cli import main

    path = tmp_path / "overflow_model.py"
    path.write_text(PLUGIN_MODEL)
    try:
        assert main(["list", "models", "--extension", str(path)]) == 0
        assert "test-plugin-overflow" in capsys.readouterr().out
        code = main(["attack", "--extension", str(path), "--attack", "mean-image", "--model", "test-plugin-overflow",
                     "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and "observed gradients are not finite: fc.weight has 30720 non-finite entries" in err
        assert not (tmp_path / "out").exists()
    finally:
        MODELS._entries.pop("test-plugin-overflow", None)
        attacks_mod._imported.pop(str(path.resolve()), None)
        sys.modules.pop("copa_plugin_overflow_model", None)


class _OutOfMemoryNet(torch.nn.Module):
    """A model whose forward pass runs out of memory (as a client step on a full GPU would)."""

    def __init__(self, num_classes, in_shape):
        super().__init__()
        self.fc = torch.nn.Linear(int(torch.tensor(in_shape).prod()), num_classes)

    def forward(self, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")


def test_a_client_step_that_runs_out_of_memory_is_a_failed_record_and_the_others_go_on():
    from copa.bench import run_attacks

    MODELS.register("test-oom-net", _OutOfMemoryNet, replace=True, not_chain_reason="test model")
    try:
        scenarios = [Scenario(model="test-oom-net", indices=(0,)), Scenario(model="cnn2_c1", indices=(1,))]
        (failed, reconstruction, truth), (ok, _, _) = run_attacks(scenarios, "mean-image", record_failures=True)
        assert failed["status"] == "failed" and reconstruction is None and truth is None
        assert failed["reason"].startswith("failed: building the client's step: out of memory")
        assert failed["config_hash"] and failed["git_commit"] == ok["git_commit"] and ok["status"] == "ok"
        with pytest.raises(torch.OutOfMemoryError):  # without record_failures (the CLI) it propagates
            run_attacks(scenarios[:1], "mean-image")
    finally:
        MODELS._entries.pop("test-oom-net", None)
