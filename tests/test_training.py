"""copa.training.train and `copa train`: checkpoints of trained weights for attacks (tiny runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from copa.cli import main
from copa.errors import CopaError
from copa.models import create_model
from copa.training import parse_checkpoint_epochs, train

CHAIN = "chain:c4k3s2:tanh fc:identity"
CIFAR_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10_subset.npz"


def _train(tmp_path, name, dataset, **kw):
    settings = dict(epochs=1, checkpoint_epochs=(0, 1), batch_size=16, seed=3, out_dir=tmp_path, log=None)
    settings.update(kw)
    return train(name, dataset, **settings)


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory, single_thread):
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"shared data not present: {CIFAR_NPZ}")
    spec = f"npz:{CIFAR_NPZ}"
    out = tmp_path_factory.mktemp("train_a")
    summary = _train(out, CHAIN, spec, max_images=96, max_test_images=50)
    return spec, out, summary


def test_writes_checkpoints_and_metadata(cifar_run):
    _spec, out, summary = cifar_run
    for e in (0, 1):
        assert (out / f"epoch{e}.pt").is_file() and (out / f"epoch{e}.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["epoch0.json", "epoch0.pt", "epoch1.json", "epoch1.pt"]
    meta = json.loads((out / "epoch1.json").read_text())
    assert meta["epoch"] == 1 and meta["seed"] == 3
    assert 0.0 <= meta["test_accuracy"] <= 1.0 and meta["data"]["test_images"] == 50
    assert meta["data"]["train_images"] == 96
    assert meta["hyperparameters"]["lr"] == 0.01 and meta["hyperparameters"]["batch_size"] == 16
    assert meta["model"]["spec"] == "c4k3s2:tanh fc:identity"
    assert "torch" in meta["provenance"]["packages"] and meta["seconds"] >= 0
    assert summary["checkpoints"][1]["test_accuracy"] == meta["test_accuracy"]


def test_epoch0_is_the_untrained_init_and_training_changes_it(cifar_run):
    _spec, out, _ = cifar_run
    init = create_model(CHAIN, seed=3).state_dict()
    _same_tensors(_load(out / "epoch0.pt"), init)
    trained = _load(out / "epoch1.pt")
    assert any(not torch.equal(trained[k], init[k]) for k in init)


def test_reloading_a_checkpoint_is_bit_identical(cifar_run):
    _spec, out, _ = cifar_run
    model = create_model(CHAIN, seed=99, checkpoint=out / "epoch1.pt")
    _same_tensors(model.state_dict(), _load(out / "epoch1.pt"))


def test_same_seed_gives_identical_checkpoints(cifar_run, tmp_path):
    spec, out, _ = cifar_run
    _train(tmp_path, CHAIN, spec, max_images=96, max_test_images=50, checkpoint_epochs=(1,))
    _same_tensors(_load(tmp_path / "epoch1.pt"), _load(out / "epoch1.pt"))
    assert not (tmp_path / "epoch0.pt").exists()


def test_other_seed_gives_other_weights(cifar_run, tmp_path):
    spec, out, _ = cifar_run
    _train(tmp_path, CHAIN, spec, max_images=96, max_test_images=0, checkpoint_epochs=(1,), seed=4)
    a, b = _load(tmp_path / "epoch1.pt"), _load(out / "epoch1.pt")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "epoch1.json").read_text())["test_accuracy"] is None


def test_sample_dataset_cnn2_c1(tmp_path, single_thread):
    summary = _train(tmp_path, "cnn2_c1", "sample", epochs=2, checkpoint_epochs="2")
    assert [m["epoch"] for m in summary["checkpoints"]] == [2]
    create_model("cnn2_c1", checkpoint=tmp_path / "epoch2.pt")


@pytest.mark.parametrize("kw, fragment", [
    (dict(epochs=-1), "epochs -1"),
    (dict(epochs=10**9, checkpoint_epochs=(0,)), "epochs 1000000000 is invalid: accepted are integers from 0 to 1000"),
    (dict(device=""), "device '' is invalid"),
    (dict(checkpoint_epochs=(0, 2)), "checkpoint epoch 2"),
    (dict(checkpoint_epochs=(-1,)), "checkpoint epoch -1"),
    (dict(lr=0.0), "lr 0.0"),
    (dict(batch_size=0), "batch size 0"),
    (dict(momentum=-0.5), "momentum -0.5"),
    (dict(seed=-1), "seed -1"),
    (dict(preprocess="zscore"), "'zscore'"),
])
def test_library_bad_inputs_write_nothing(tmp_path, kw, fragment):
    out = tmp_path / "out"
    with pytest.raises(CopaError, match=fragment.replace("(", r"\(")):
        _train(out, CHAIN, "sample", **kw)
    assert not out.exists()


def test_parse_checkpoint_epochs():
    assert parse_checkpoint_epochs("5, 0,1,1") == (0, 1, 5)
    with pytest.raises(CopaError, match="'0,x'"):
        parse_checkpoint_epochs("0,x")


@pytest.mark.parametrize("args, fragment", [
    (["--epochs", "-1", "--checkpoint-epochs", "0"], "--epochs -1"),
    (["--epochs", "1", "--checkpoint-epochs", "0,3"], "epoch 3"),
    (["--epochs", "1", "--checkpoint-epochs", "-1"], "epoch -1"),
    (["--epochs", "1", "--checkpoint-epochs", "0,a"], "'0,a'"),
    (["--epochs", "1", "--checkpoint-epochs", "1", "--lr", "0"], "--lr 0.0"),
    (["--epochs", "1", "--checkpoint-epochs", "1", "--lr", "-0.1"], "--lr -0.1"),
    (["--epochs", "1", "--checkpoint-epochs", "1", "--batch-size", "0"], "--batch-size 0"),
    (["--epochs", "1", "--checkpoint-epochs", "1", "--model", "nosuchmodel"], "nosuchmodel"),
])
def test_cli_bad_inputs(tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    argv = ["train", "--model", CHAIN, "--dataset", "sample", "--out", str(out), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("copa: error:") and fragment in err, err
    assert not out.exists()


def test_cli_out_not_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["train", "--model", CHAIN, "--dataset", "sample", "--epochs", "0", "--checkpoint-epochs", "0",
                 "--out", str(blocker)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--out" in err and str(blocker) in err
    assert blocker.read_text() == "x"


@pytest.mark.slow
def test_cli_trains_and_attack_loads_checkpoint(tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["train", "--model", "cnn2_c1", "--dataset", "sample", "--epochs", "1", "--checkpoint-epochs", "0,1",
                 "--batch-size", "2", "--threads", "1", "--out", str(out)]) == 0
    assert "wrote 4 files" in capsys.readouterr().out
    attack_out = tmp_path / "attack"
    assert main(["attack", "--attack", "mean-image", "--model", "cnn2_c1", "--dataset", "sample", "--index", "0",
                 "--checkpoint", str(out / "epoch1.pt"), "--out", str(attack_out)]) == 0
    record = json.loads((attack_out / "record.json").read_text())
    assert "epoch1.pt" in json.dumps(record)
