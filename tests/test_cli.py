"""The copa command line, end to end, with the built-in floor attacks."""

import json
import subprocess
import sys

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from copa.cli import main


def copa(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "copa", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow
def test_attack_on_cifar10_train_index_3_matches_an_independent_psnr(cifar_npz, tmp_path):
    out = tmp_path / "x"
    result = copa("attack", "--attack", "mean-image", "--model", "cnn2_c1", "--dataset", f"npz:{cifar_npz}",
                  "--split", "train", "--index", 3, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "PSNR" in result.stdout and "mean-image" in result.stdout
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok"
    assert record["scenario"]["indices"] == [3] and record["scenario"]["model"] == "cnn2_c1"
    for key in ("hyperparameters", "seconds", "evaluations", "device", "versions", "seed", "git_commit"):
        assert key in record
    saved = np.load(out / "images.npz")
    target, recon = saved["target"][0], saved["reconstruction"][0]
    # The saved target is CIFAR-10 train image 3 itself.
    raw = np.load(cifar_npz)
    position = int(np.flatnonzero(raw["train_index"] == 3)[0])
    np.testing.assert_array_equal(np.round(target * 255).astype(np.uint8), raw["train_images"][position])
    expected_psnr = peak_signal_noise_ratio(target.astype(np.float64), recon.astype(np.float64), data_range=1.0)
    assert record["metrics"]["per_image"]["psnr"][0] == pytest.approx(expected_psnr, abs=1e-5)
    expected_ssim = structural_similarity(target, recon, data_range=1.0, channel_axis=0, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False)
    assert record["metrics"]["per_image"]["ssim"][0] == pytest.approx(expected_ssim, abs=1e-3)
    assert (out / "reconstruction.png").stat().st_size > 0


def test_batch_and_label_unknown(tmp_path):
    out = tmp_path / "batch"
    assert main(["attack", "--attack", "noise", "--model", "cnn2_c2", "--index", "0,1", "--index", "2",
                 "--label", "unknown", "--seed", "3", "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert len(record["metrics"]["per_image"]["psnr"]) == 3
    assert record["metrics"]["label_accuracy"] is None
    assert sorted(record["metrics"]["pairing"]) == [0, 1, 2]


def test_same_seed_same_record(tmp_path):
    records = []
    for name in ("a", "b"):
        assert main(["attack", "--attack", "noise", "--model", "cnn2_c1", "--seed", "7", "--out",
                     str(tmp_path / name)]) == 0
        records.append(json.loads((tmp_path / name / "record.json").read_text())["metrics"])
    assert records[0] == records[1]


@pytest.mark.parametrize("args, text", [
    (["--attack", "mean-imag", "--model", "cnn2_c1"], "mean-image"),
    (["--attack", "noise", "--model", "cnn2_c9"], "cnn2_c"),
    (["--attack", "noise", "--model", "cnn2_c1", "--dataset", "cifar11"], "cifar11"),
    (["--attack", "mean-image", "--model", "cnn2_c1", "--set", "levle=0.3"], "levle"),
    (["--attack", "mean-image", "--model", "cnn2_c1", "--set", "level=bright"], "bright"),
    (["--attack", "mean-image", "--model", "cnn2_c1", "--set", "level=2"], "level"),
    (["--attack", "noise", "--model", "cnn2_c1", "--index", "x"], "'x'"),
    (["--attack", "noise", "--model", "cnn2_c1", "--index", "99"], "99"),
    (["--attack", "noise", "--model", "cnn2_c1", "--preprocess", "whiten"], "whiten"),
])
def test_bad_inputs_exit_2_with_a_message_and_write_nothing(args, text, tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["attack", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("copa: error:") and text in err
    assert not out.exists()


def test_list_shows_every_registered_name(capsys):
    assert main(["list", "models"]) == 0
    listed = capsys.readouterr().out
    for name in ("cnn2_c0", "cnn2_c1", "cnn2_c2", "cnn2_c4", "cnn2_c5", "cnn2_c6", "cnn3_c1", "cnn3_c2",
                 "cnn3_c3", "cnn3_c4", "cnn3_c8", "cnn3_c9", "cnn4_c1", "cnn4_c2", "cnn4_c3", "lenet-zhu",
                 "cnn6", "cnn6-d", "convnet", "resnet18"):
        assert name in listed
    assert main(["list", "attacks"]) == 0
    assert "mean-image" in capsys.readouterr().out
    assert main(["list", "datasets"]) == 0
    listed = capsys.readouterr().out
    for form in ("cifar10", "cifar100", "mnist", "fashion-mnist", "npz:", "folder:", "sample"):
        assert form in listed
    assert main(["list", "metrics"]) == 0
    assert "ssim" in capsys.readouterr().out


@pytest.mark.slow
def test_the_readme_plugin_example_runs_as_written(tmp_path):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "register_attack" in block)
    command = next(line for line in readme.splitlines() if line.startswith("`copa attack --plugin my_attack.py"))
    (tmp_path / "my_attack.py").write_text(example)
    args = command.split("`")[1].split()[1:]
    args[args.index("--out") + 1] = str(tmp_path / "out")
    result = copa(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "record.json").read_text())["attack"]["name"] == "grey-guess"


COMMANDS = {  # each command that takes --threads, --out or --device, with good values for the rest
    "attack": ["attack", "--attack", "noise", "--model", "cnn2_c1"],
    "observe": ["observe", "--model", "cnn2_c1"],
    "security": ["security", "--model", "cnn2_c1"],
    "train": ["train", "--model", "cnn2_c1", "--dataset", "sample", "--epochs", "1", "--checkpoint-epochs", "0"],
    "verify": ["verify", "RESULTS"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("option, expected", [
    (["--threads", "99999999999"], "copa: error: --threads 99999999999 is invalid: accepted are integers from 1 to "
                                   "1024"),
    (["--out", ""], "copa: error: --out '' is an empty path: expected the name of a"),
    (["--device", ""], "copa: error: device '' is invalid: accepted are cpu, cuda or cuda:N"),
])
def test_every_command_refuses_huge_thread_counts_empty_outs_and_empty_devices(command, option, expected, tmp_path,
                                                                               monkeypatch, capsys):
    """One line, status 2, nothing written (an empty --out would be the current folder)."""
    if option[0] == "--threads" and command == "observe":
        pytest.skip("copa observe has no --threads")
    results = tmp_path / "results"
    results.mkdir()
    (results / "config.yaml").write_text("{dataset: sample, split: train, indices: [0], models: [cnn2_c1], "
                                         "attacks: [mean-image], seed: 0}\n")
    (results / "records.csv").write_text("model,attack,index,status,config_hash,hyperparameters\n"
                                         "cnn2_c1,mean-image,0,ok,0,{}\n")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    args = [str(results) if a == "RESULTS" else a for a in COMMANDS[command]] + option
    if option[0] != "--out" and command != "verify":
        args += ["--out", str(tmp_path / ("never.pt" if command == "observe" else "never"))]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(expected) and captured.err.count("\n") == 1, captured.err
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "results"]


def test_every_subcommand_has_one_handler():
    """build_parser's subcommands and copa.cli.COMMANDS name the same set: a command added to one is added to both."""
    from copa.cli import COMMANDS, build_parser

    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    assert set(subparsers.choices) == set(COMMANDS)
