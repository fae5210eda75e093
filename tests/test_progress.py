"""Progress of long runs (issue "Reproduce the paper at full fidelity"): an attack reports stage, step / total,
its own loss and an ETA — log lines, a tqdm bar or nothing — in the runner's process and, forwarded while it
runs, from an isolated plug-in's worker."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from copa.attacks import create_attack, progress
from copa.bench import run_attack
from copa.cli import main
from copa.threat import Scenario

REPORTER = '''
import torch
from copa.attacks import Attack, Hyperparameter, Reconstruction, progress, register_attack


@register_attack
class Reporting(Attack):
    name = "test-reporting"
    paper = "-"
    hyperparameters = {"steps": Hyperparameter(5, "steps of its one stage")}

    def reconstruct(self, observation, generator):
        with progress.stage("the only stage", total=self.hp["steps"]) as bar:
            for t in range(self.hp["steps"]):
                bar.step(loss=1.0 / (t + 1))
        shape = (observation.batch_size, *observation.input_shape)
        return Reconstruction(images=torch.zeros(shape, dtype=observation.dtype), labels=observation.labels)
'''


@pytest.fixture()
def reporting_plugin(plugin_file):
    return plugin_file("reporting", REPORTER, ("test-reporting",))


def test_log_lines_name_stage_step_total_loss_and_eta():
    stream = io.StringIO()
    with progress.reporting("log", "copa", stream=stream, interval=0):
        with progress.stage("layer 1 null space", total=4) as bar:
            for t in range(4):
                bar.step(loss=0.5 ** t)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[progress] copa: layer 1 null space: started (4 steps)"
    assert re.fullmatch(r"\[progress\] copa: layer 1 null space: step 2/4, loss 0\.5, elapsed \d+:\d\d, ETA \d+:\d\d", lines[2])
    assert lines[-1].startswith("[progress] copa: layer 1 null space: step 4/4, loss 0.125,")
    assert lines[-1].endswith("— done") and len(lines) == 6


def test_a_tensor_loss_is_read_only_when_shown():
    import torch

    class Watched(torch.Tensor):
        reads = 0

        def detach(self):
            Watched.reads += 1
            return torch.Tensor.detach(self)

    quiet = io.StringIO()
    with progress.reporting("log", "copa", stream=quiet, interval=3600), progress.stage("s", total=100) as bar:
        for _ in range(100):
            bar.step(loss=torch.tensor([1.0, 3.0]).as_subclass(Watched))
    assert Watched.reads == 1  # the end line only
    assert "loss 2," in quiet.getvalue().splitlines()[-1]


def test_log_lines_are_at_most_one_per_interval():
    stream = io.StringIO()
    with progress.reporting("log", "dlg", stream=stream, interval=3600):
        with progress.stage("L-BFGS", total=1000) as bar:
            for _ in range(1000):
                bar.step()
    assert len(stream.getvalue().splitlines()) == 2  # start and end only


def test_quiet_and_no_reporter_say_nothing_and_bar_draws(capsys):
    with progress.stage("outside any run", total=3) as bar:  # no reporter installed: quiet
        bar.step(loss=1.0)
    with progress.reporting("quiet", "ig"), progress.stage("Adam", total=3) as bar:
        bar.step(loss=1.0)
    assert capsys.readouterr().err == ""
    stream = io.StringIO()
    with progress.reporting("bar", "ig", stream=stream), progress.stage("Adam", total=3) as bar:
        for _ in range(3):
            bar.step(loss=0.25)
    drawn = stream.getvalue()
    assert "ig: Adam:   0%" in drawn and "0/3" in drawn and drawn.endswith("\r")  # drawn, then cleared (leave=False)


def test_auto_is_a_bar_on_a_terminal_and_log_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert progress.make_reporter("auto", "x", stream=Terminal()).mode == "bar"
    assert progress.make_reporter("auto", "x", stream=io.StringIO()).mode == "log"
    with pytest.raises(ValueError, match="progress mode 'loud' is invalid: accepted are auto, bar, log, quiet"):
        progress.make_reporter("loud", "x")


def _dataset(tmp_path):
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(path, train_images=rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), train_labels=np.arange(2))
    return path


@pytest.mark.slow
def test_an_isolated_plugins_progress_is_forwarded_from_its_worker(reporting_plugin, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("COPA_SANDBOX", "off")
    monkeypatch.setenv("COPA_ALLOW_UNSANDBOXED", "1")
    from copa.attacks import load_plugins

    load_plugins([str(reporting_plugin)])
    scenario = Scenario(model="cnn2_c1", dataset=f"npz:{_dataset(tmp_path)}", indices=(0,), dtype="float64")
    with progress.reporting("log", "test-reporting", interval=0):
        record, _, _ = run_attack(scenario, create_attack("test-reporting", {"steps": 3}))
    assert record["status"] == "ok" and record["isolation"]["process"] == "worker"
    err = capfd.readouterr().err
    forwarded = [line for line in err.splitlines() if line.startswith("[progress]")]
    assert forwarded[0] == "[progress] test-reporting: the only stage: started (3 steps)"
    assert forwarded[-1].startswith("[progress] test-reporting: the only stage: step 3/3, loss 0.3333")
    assert len(forwarded) == 5  # once each: the worker's tail, printed after it ends, leaves them out


@pytest.mark.slow
def test_copa_attack_reports_progress_unless_quiet(reporting_plugin, tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("COPA_SANDBOX", "off")
    monkeypatch.setenv("COPA_ALLOW_UNSANDBOXED", "1")
    data = _dataset(tmp_path)
    common = ["attack", "--plugin", str(reporting_plugin), "--attack", "test-reporting", "--model", "cnn2_c1",
              "--dataset", f"npz:{data}", "--index", "0"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert "[progress] test-reporting: the only stage: started (5 steps)" in capfd.readouterr().err
    assert main([*common, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert "[progress]" not in capfd.readouterr().err
    assert (tmp_path / "b" / "record.json").is_file()


@pytest.mark.parametrize("attack, overrides, stage", [
    ("copa", {"steps": 3}, "layer 0 null space (1 of 1): step 3/3"),
    ("copa-gm", {"steps": 2, "steps_image": 3, "steps_layer1": 3, "steps_deeper": 3, "consistency_tol": 0},
     "layer 0 gradient matching (1 of 1): step 3/3"),
    ("hybrid", {"steps_image": 3, "steps_layer1": 3, "steps_deeper": 3}, "layer 0 gradient matching: step 3/3"),
    ("dlg", {"iterations": 2, "max_iter": 2}, "L-BFGS: step 2/2"),
    ("ig", {"iterations": 3}, "signed Adam: step 3/3"),
])
def test_the_shipped_attacks_report_their_stages(attack, overrides, stage):
    scenario = Scenario(model="cnn2_c2", dataset="sample", indices=(0,), dtype="float64")
    stream = io.StringIO()
    with progress.reporting("log", attack, stream=stream, interval=0):
        record, _, _ = run_attack(scenario, create_attack(attack, overrides))
    assert record["status"] == "ok"
    ends = [line for line in stream.getvalue().splitlines() if line.endswith("— done")]
    assert any(f"[progress] {attack}: {stage}, loss " in line for line in ends), stream.getvalue()
    stepped = [line for line in ends if ": step " in line]
    assert all(re.search(r"loss (-?[0-9.e+-]+|n/a|nan), elapsed \d+:\d\d, ETA", line) for line in stepped)
    if attack in ("copa", "copa-gm"):  # one stage per layer of the chain, from the output down
        assert f"[progress] {attack}: layer 0: started" in stream.getvalue()


def test_a_workflow_jobs_progress_lines_reach_the_terminal_tagged_with_the_job():
    """The cell's log gets everything; the terminal (the job's standard error) its progress lines, tagged."""
    from copa.bench.terminal import JobTerminal

    log, screen = io.StringIO(), io.StringIO()
    terminal = JobTerminal("cell none/cnn2_c1/copa", stream=screen, interval=30)
    with terminal.watching(), progress.reporting("log", "copa", stream=terminal.tee(log), interval=0):
        with progress.stage("image layer", total=3) as bar:
            for _ in range(3):
                bar.step(loss=0.5)
        terminal.say("[3] ok: PSNR 140.0 dB")
    shown = screen.getvalue().splitlines()
    assert shown[0] == "[cell none/cnn2_c1/copa] started"
    assert "[cell none/cnn2_c1/copa] [progress] copa: image layer: started (3 steps)" in shown
    assert any(re.fullmatch(r"\[cell none/cnn2_c1/copa\] \[progress\] copa: image layer: step 2/3, loss 0\.5, "
                            r"elapsed 0:00, ETA 0:00", line) for line in shown), shown
    assert shown[-2] == "[cell none/cnn2_c1/copa] [3] ok: PSNR 140.0 dB"
    assert re.fullmatch(r"\[cell none/cnn2_c1/copa\] done after 0:00", shown[-1])
    assert "[progress] copa: image layer: step 3/3" in log.getvalue() and "[3] ok" not in log.getvalue()


def test_a_silent_job_gets_a_heartbeat_naming_its_last_line():
    import time

    from copa.bench.terminal import JobTerminal

    screen = io.StringIO()
    terminal = JobTerminal("security cnn4_c1", stream=screen, interval=0.2)
    with terminal.watching():
        terminal.say("[progress] copa: layer 2: step 5/10, loss 1, elapsed 0:01, ETA 0:01")
        time.sleep(0.7)
    beats = [line for line in screen.getvalue().splitlines() if "still running" in line]
    assert beats and all(line.startswith("[security cnn4_c1] still running, 0:0") for line in beats)
    assert "ago: [progress] copa: layer 2: step 5/10" in beats[0]
