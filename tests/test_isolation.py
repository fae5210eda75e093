"""Isolation of plug-in attacks (issue "Trust", item 1): a plug-in attack runs in a worker process that gets
only the observation; under the bubblewrap sandbox it cannot read the dataset either. A snooping plug-in —
stack walk, gc, opening the dataset file it was configured with — gets nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from copa.attacks import create_attack
from copa.bench import run_attack
from copa.bench.isolation import attack_plugin, sandbox_tool
from copa.cli import main
from copa.threat import Scenario

SNOOPER = '''
import gc, inspect
import numpy as np
import torch
from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack
from copa.threat import GroundTruth


def _truth_images():
    """Every way a hostile attack in the runner's process found the client's images."""
    found = []
    for info in inspect.stack():  # the runner's locals (e.g. the list of ground truths)
        for value in info.frame.f_locals.values():
            items = value if isinstance(value, (list, tuple)) else [value]
            found += [v for v in items if isinstance(v, GroundTruth)]
    found += [o for o in gc.get_objects() if isinstance(o, GroundTruth)]
    return found


@register_attack
class Snooper(Attack):
    name = "test-snooper"
    paper = "-"
    hyperparameters = {"path": Hyperparameter("", "the dataset file the snooper was told about"),
                       "mode": Hyperparameter("memory", "memory (stack and gc) or file")}

    def reconstruct(self, observation, generator):
        shape = (observation.batch_size, *observation.input_shape)
        if self.hp["mode"] == "memory":
            truths = _truth_images()
            if truths:
                images = truths[0].preprocess.apply(truths[0].images01).to(observation.dtype)
                return Reconstruction(images=images, labels=observation.labels, info={"snooped": "memory"})
            return Reconstruction(images=torch.zeros(shape, dtype=observation.dtype), labels=observation.labels,
                                  info={"snooped": "nothing"})
        arrays = np.load(self.hp["path"])  # the dataset file: index 0 of the training split is the target
        picked = torch.from_numpy(arrays["train_images"][:1]).to(observation.dtype) / 255
        return Reconstruction(images=picked - 0.5, labels=observation.labels, info={"snooped": "file"})
'''


@pytest.fixture()
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data" / "secret.npz"
    path.parent.mkdir()
    np.savez(path, train_images=rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8),
             train_labels=np.arange(4) % 10, classes=np.array([str(c) for c in range(10)]))
    return path


@pytest.fixture()
def snooper(plugin_file):
    return plugin_file("snooper", SNOOPER, ("test-snooper",))


def _scenario(dataset):
    return Scenario(model="cnn2_c1", dataset=f"npz:{dataset}", indices=(0,), dtype="float64")


def test_plugin_attacks_are_known_by_the_registry_not_by_what_they_say(snooper):
    from copa.plugins import load_plugins

    assert attack_plugin(create_attack("rgap")) is None and attack_plugin(create_attack("copa")) is None
    load_plugins([str(snooper)])
    attack = create_attack("test-snooper")
    type(attack).__module__ = "copa.attacks.copa"  # a class can claim any module: the registry knows better
    assert attack_plugin(attack) == str(snooper.resolve())


def test_snooping_the_runners_memory_finds_nothing(snooper, dataset, monkeypatch):
    monkeypatch.setenv("COPA_SANDBOX", "off")  # the worker process alone hides the runner's memory
    from copa.plugins import load_plugins

    load_plugins([str(snooper)])
    record, _, truth = run_attack(_scenario(dataset), create_attack("test-snooper"))
    assert record["status"] == "ok" and record["attack_info"] == {"snooped": "nothing"}
    assert record["isolation"]["process"] == "worker" and record["isolation"]["sandbox"] is None
    assert "without a sandbox" in record["isolation"]["warning"]
    assert record["metrics"]["mean"]["psnr"] < 20  # the floor: a zero image
    # the same snooper in the runner's own process (what isolation prevents) finds the truth
    from copa.bench import run as run_mod

    monkeypatch.setattr("copa.bench.isolation.attack_plugin", lambda attack: None)
    record_inside, _, _ = run_mod.run_attack(_scenario(dataset), create_attack("test-snooper"))
    assert record_inside["attack_info"] == {"snooped": "memory"} and record_inside["metrics"]["mean"]["psnr"] > 100


@pytest.mark.skipif(sandbox_tool()[0] is None, reason=f"no sandbox here: {sandbox_tool()[1]}")
def test_the_sandbox_hides_the_dataset_file(snooper, dataset, tmp_path, capsys):
    from copa.plugins import load_plugins

    load_plugins([str(snooper)])
    out = tmp_path / "out"
    out.mkdir()
    attack = create_attack("test-snooper", {"mode": "file", "path": str(dataset)})
    record, _, _ = run_attack(_scenario(dataset), attack, record_failures=True, hide=[out])
    assert record["status"] == "failed" and "snooper.py" in record["worker_traceback"], record["reason"]
    assert record["isolation"]["sandbox"].startswith("bubblewrap")
    assert record["isolation"]["hidden"] == [str(out.resolve()), str(dataset.resolve())]
    # the command line: one line, nothing written
    code = main(["attack", "--plugin", str(snooper), "--attack", "test-snooper", "--set", "mode=file",
                 "--set", f"path={dataset}", "--model", "cnn2_c1", "--dataset", f"npz:{dataset}", "--index", "0",
                 "--dtype", "float64", "--out", str(tmp_path / "cli")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("copa: error: ") and "secret.npz" in err[-1]
    assert not (tmp_path / "cli").exists()


def test_without_the_sandbox_the_file_is_readable_and_the_record_says_so(snooper, dataset, monkeypatch):
    """What the sandbox is for: the same snooper without it reads the dataset; the record warns."""
    monkeypatch.setenv("COPA_SANDBOX", "off")
    from copa.plugins import load_plugins

    load_plugins([str(snooper)])
    record, _, _ = run_attack(_scenario(dataset), create_attack("test-snooper", {"mode": "file", "path": str(dataset)}))
    assert record["attack_info"] == {"snooped": "file"} and record["metrics"]["mean"]["psnr"] > 100
    assert record["isolation"]["sandbox"] is None and "warning" in record["isolation"]


def test_required_sandbox_that_is_missing_is_one_line(snooper, dataset, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("copa.bench.isolation.sandbox_tool", lambda: (None, "bwrap (bubblewrap) is not installed"))
    monkeypatch.setenv("COPA_SANDBOX", "required")
    code = main(["attack", "--plugin", str(snooper), "--attack", "test-snooper", "--model", "cnn2_c1",
                 "--dataset", f"npz:{dataset}", "--index", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith("COPA_SANDBOX=required, but the sandbox is not available: bwrap "
                                          "(bubblewrap) is not installed")
    assert not (tmp_path / "out").exists()


def test_a_builtin_attack_gives_the_same_result_in_the_worker(dataset):
    scenario = _scenario(dataset)
    inside, recon_inside, _ = run_attack(scenario, "rgap")
    apart, recon_apart, _ = run_attack(scenario, "rgap", isolation="always")
    assert "isolation" not in inside and apart["isolation"]["process"] == "worker"
    assert torch.equal(recon_inside.images, recon_apart.images)
    assert inside["metrics"] == apart["metrics"] and inside["evaluations"] == apart["evaluations"]



def test_paths_the_worker_needs_are_never_hidden(tmp_path):
    import copa
    from copa.bench.isolation import hidden_paths

    plugin = tmp_path / "plugins" / "mine.py"
    plugin.parent.mkdir()
    plugin.write_text("")
    data = tmp_path / "data.npz"
    data.write_bytes(b"")
    project = Path(copa.__file__).resolve().parent.parent
    assert hidden_paths([data, project, "/", tmp_path, tmp_path / "missing"], keep=[plugin]) == [data.resolve()]


def test_a_batch_in_the_worker_is_recorded_as_in_the_runner(dataset):
    from copa.bench import run_attacks

    scenarios = [Scenario(model="cnn2_c1", dataset=f"npz:{dataset}", indices=(i,), dtype="float64") for i in (0, 1)]
    inside = run_attacks(scenarios, "rgap")
    apart = run_attacks(scenarios, "rgap", isolation="always")
    for (r_in, x_in, _), (r_out, x_out, _) in zip(inside, apart, strict=True):
        assert torch.equal(x_in.images, x_out.images) and r_in["metrics"] == r_out["metrics"]
        assert r_in["batch"]["instances"] == r_out["batch"]["instances"] == 2
        assert r_in["batch"]["members"] == r_out["batch"]["members"] == [[0], [1]]
