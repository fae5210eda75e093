"""Untrusted attack code never runs beside the truth (issues "Trust" and "Trust, round two"; docs/trust.md).

A plug-in is never imported by the runner: its worker describes it from inside the bubblewrap sandbox, and the
runner registers a declaration (:class:`copa.attacks.SandboxedAttack`). Each red-team case of the issue is a
plug-in here, with the attack it stops: import-time patches of copa, the truth stashed on the way to the worker,
other runs' files, host sockets, passed environment variables, the runner's memory, writes outside its folder,
a daemon outliving the run. The true image scores > 100 dB; an honest floor (a zero image) < 20 dB.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from copa.attacks import SandboxedAttack, create_attack, load_plugins
from copa.bench import run_attack
from copa.bench.isolation import attack_plugin
from copa.cli import main
from copa.sandbox import sandbox_tool
from copa.threat import Scenario

# the integration tier (`make test-all`, CI): this file starts the bwrap sandbox's worker for each hostile plug-in
pytestmark = pytest.mark.slow

needs_sandbox = pytest.mark.skipif(sandbox_tool()[0] is None, reason=f"no sandbox here: {sandbox_tool()[1]}")

SNOOPER = '''
import gc, inspect, os
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
    hyperparameters = {"path": Hyperparameter("", "a file the snooper was told about"),
                       "mode": Hyperparameter("memory", "memory (stack and gc), file, npz, env, socket, write, "
                                                        "daemon, procmem")}

    def reconstruct(self, observation, generator):
        shape = (observation.batch_size, *observation.input_shape)
        zeros = torch.zeros(shape, dtype=observation.dtype)
        mode, path = self.hp["mode"], self.hp["path"]
        if mode == "memory":
            truths = _truth_images()
            if truths:
                images = truths[0].preprocess.apply(truths[0].images01).to(observation.dtype)
                return Reconstruction(images=images, labels=observation.labels, info={"snooped": "memory"})
            return Reconstruction(images=zeros, labels=observation.labels, info={"snooped": "nothing"})
        if mode == "file":  # the dataset file: index 0 of the training split is the target
            arrays = np.load(path)
            picked = torch.from_numpy(arrays["train_images"][:1]).to(observation.dtype) / 255
            return Reconstruction(images=picked - 0.5, labels=observation.labels, info={"snooped": "file"})
        if mode == "npz":  # another run's images.npz: its target
            target = torch.from_numpy(np.load(path)["target"]).to(observation.dtype)
            return Reconstruction(images=target - 0.5, labels=observation.labels, info={"snooped": "npz"})
        if mode == "env":
            return Reconstruction(images=zeros, labels=observation.labels, info={"env": dict(os.environ)})
        if mode == "socket":
            import socket
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            return Reconstruction(images=zeros, labels=observation.labels, info={"socket": s.recv(100).decode()})
        if mode == "write":
            with open(path, "w") as fh:
                fh.write("99.99")
            return Reconstruction(images=zeros, labels=observation.labels, info={"wrote": path})
        if mode == "daemon":  # a double-forked process that would rewrite results after the run
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", path])
                os._exit(0)
            return Reconstruction(images=zeros, labels=observation.labels, info={"daemon": "started"})
        if mode == "procmem":
            with open(f"/proc/{int(path)}/cmdline", "rb") as fh:
                return Reconstruction(images=zeros, labels=observation.labels, info={"parent": fh.read().decode()})
        raise ValueError(mode)
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
    return plugin_file("snooper", SNOOPER)


@pytest.fixture()
def unsandboxed(monkeypatch):
    """No sandbox, and running a plug-in without one allowed explicitly."""
    monkeypatch.setenv("COPA_SANDBOX", "off")
    monkeypatch.setenv("COPA_ALLOW_UNSANDBOXED", "1")


def _scenario(dataset, index=0):
    return Scenario(model="cnn2_c1", dataset=f"npz:{dataset}", indices=(index,), dtype="float64")


def _snoop(snooper, dataset, mode, path="", **kwargs):
    load_plugins([str(snooper)])
    return run_attack(_scenario(dataset), create_attack("test-snooper", {"mode": mode, "path": str(path)}),
                      record_failures=True, **kwargs)[0]


def test_a_plugin_is_never_imported_by_the_runner(snooper, unsandboxed):
    load_plugins([str(snooper)])
    attack = create_attack("test-snooper")
    assert isinstance(attack, SandboxedAttack) and attack_plugin(attack) == str(snooper.resolve())
    assert not any(name.startswith("copa_plugin_") for name in sys.modules)
    assert type(attack).hyperparameters["mode"].default == "memory"  # its declaration, described by the worker
    assert attack_plugin(create_attack("rgap")) is None and attack_plugin(create_attack("copa")) is None
    with pytest.raises(Exception, match="runs only in its sandboxed worker"):
        attack.reconstruct(None, None)


def test_snooping_the_runners_memory_finds_nothing(snooper, dataset, unsandboxed):
    record = _snoop(snooper, dataset, "memory")
    assert record["status"] == "ok" and record["attack_info"] == {"snooped": "nothing"}
    assert record["isolation"]["process"] == "worker" and record["isolation"]["sandbox"] is None
    assert "without a sandbox" in record["isolation"]["warning"] and "allowed explicitly" in record["isolation"]["warning"]
    assert record["metrics"]["mean"]["psnr"] < 20  # the floor: a zero image


def test_without_a_sandbox_a_plugin_is_refused_unless_allowed(snooper, dataset, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("COPA_SANDBOX", "off")
    monkeypatch.delenv("COPA_ALLOW_UNSANDBOXED", raising=False)
    code = main(["attack", "--plugin", str(snooper), "--attack", "test-snooper", "--model", "cnn2_c1",
                 "--dataset", f"npz:{dataset}", "--index", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "runs only in a sandbox" in err[0] and "apt-get install bubblewrap" in err[0]
    assert "--allow-unsandboxed" in err[0] and not (tmp_path / "out").exists()
    code = main(["attack", "--plugin", str(snooper), "--attack", "test-snooper", "--model", "cnn2_c1", "--quiet",
                 "--dataset", f"npz:{dataset}", "--index", "0", "--out", str(tmp_path / "out"), "--allow-unsandboxed"])
    assert code == 0  # the warning is printed once per process, and written into every record:
    assert "allowed explicitly" in json.loads((tmp_path / "out" / "record.json").read_text())["isolation"]["warning"]


def test_required_sandbox_cannot_be_allowed_away(snooper, dataset, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("copa.sandbox.sandbox_tool", lambda: (None, "bwrap (bubblewrap) is not installed"))
    monkeypatch.setenv("COPA_SANDBOX", "required")
    monkeypatch.setenv("COPA_ALLOW_UNSANDBOXED", "1")
    code = main(["attack", "--plugin", str(snooper), "--attack", "test-snooper", "--model", "cnn2_c1",
                 "--dataset", f"npz:{dataset}", "--index", "0", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "COPA_SANDBOX=required, but the sandbox is not available" in err[-1]
    assert not (tmp_path / "out").exists()


def test_a_builtin_attack_gives_the_same_result_in_the_worker(dataset):
    scenario = _scenario(dataset)
    inside, recon_inside, _ = run_attack(scenario, "rgap")
    apart, recon_apart, _ = run_attack(scenario, "rgap", isolation="always")
    assert "isolation" not in inside and apart["isolation"]["process"] == "worker"
    assert torch.equal(recon_inside.images, recon_apart.images)
    assert inside["metrics"] == apart["metrics"] and inside["evaluations"] == apart["evaluations"]


def test_a_batch_in_the_worker_is_recorded_as_in_the_runner(dataset):
    from copa.bench import run_attacks

    scenarios = [_scenario(dataset, i) for i in (0, 1)]
    inside = run_attacks(scenarios, "rgap")
    apart = run_attacks(scenarios, "rgap", isolation="always")
    for (r_in, x_in, _), (r_out, x_out, _) in zip(inside, apart, strict=True):
        assert torch.equal(x_in.images, x_out.images) and r_in["metrics"] == r_out["metrics"]
        assert r_in["batch"]["instances"] == r_out["batch"]["instances"] == 2
        assert r_in["batch"]["members"] == r_out["batch"]["members"] == [[0], [1]]


# --------------------------------------------------------------------------------------------------
# The red team of issue "Trust, round two", with bubblewrap


PATCHER = '''
import os, sys
import copa.metrics, copa.bench.isolation, copa.bench.run, copa.threat
from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack

MARK = os.environ.get("COPA_TEST_MARK") or "/tmp/copa-test-patcher-imported"
open(MARK, "w").write(str(os.getpid()))  # shows where import-time code ran
copa.metrics.score_images = lambda *a, **k: {"mean": {"psnr": 92.61}}  # fake every score of the run
copa.bench.isolation.attack_plugin = lambda attack: None  # run in the runner, where the truth is
_build = copa.threat.Scenario.build
def build(self, *args, **kwargs):  # stash the truth on its way to the worker
    observation, truth = _build(self, *args, **kwargs)
    os.environ["OMP_TRUTH"] = truth.images01.flatten()[:8].numpy().tobytes().hex()
    open("/tmp/copa-test-truth.npy", "wb").write(truth.images01.numpy().tobytes())
    return observation, truth
copa.threat.Scenario.build = build


@register_attack
class Patcher(Attack):
    name = "test-patcher"
    paper = "-"

    def reconstruct(self, observation, generator):
        import torch
        images = torch.zeros((observation.batch_size, *observation.input_shape), dtype=observation.dtype)
        return Reconstruction(images=images, labels=observation.labels,
                              info={"stash": os.path.exists("/tmp/copa-test-truth.npy"),
                                    "omp": os.environ.get("OMP_TRUTH")})
'''


@needs_sandbox
def test_import_time_patches_reach_nothing_outside_the_sandbox(plugin_file, dataset, tmp_path, monkeypatch):
    """Issue item 1: patching copa's scorer, attack_plugin or Scenario.build at import changed the whole run."""
    mark = tmp_path / "imported-here"
    monkeypatch.setenv("COPA_TEST_MARK", str(mark))  # not passed to the worker: it writes to its own /tmp
    floor_before, _, _ = run_attack(_scenario(dataset), "mean-image")
    patcher = plugin_file("patcher", PATCHER)
    load_plugins([str(patcher)])
    record, _, _ = run_attack(_scenario(dataset), create_attack("test-patcher"), record_failures=True)
    floor_after, _, _ = run_attack(_scenario(dataset), "mean-image")
    assert not mark.exists() and not Path("/tmp/copa-test-patcher-imported").exists()
    assert not any(name.startswith("copa_plugin_") for name in sys.modules) and "OMP_TRUTH" not in os.environ
    assert record["status"] == "ok" and record["isolation"]["sandbox"].startswith("bubblewrap")
    assert record["attack_info"] == {"stash": False, "omp": None}
    assert record["metrics"]["mean"]["psnr"] < 20  # scored by copa's own scorer
    assert floor_after["metrics"] == floor_before["metrics"]  # no other record of the run changes


@needs_sandbox
def test_the_sandbox_holds_no_file_of_the_run(snooper, dataset, tmp_path):
    """Items 2 and 4: the dataset, another run's images.npz, a copy of the data elsewhere; writes to --out and to
    the installation."""
    import copa

    other_run = tmp_path / "runs" / "cell" / "0"
    other_run.mkdir(parents=True)
    np.savez(other_run / "images.npz", target=np.zeros((1, 3, 32, 32), np.float32))
    copy = tmp_path / "elsewhere" / "copy.npz"
    copy.parent.mkdir()
    copy.write_bytes(dataset.read_bytes())
    for mode, path in (("file", dataset), ("npz", other_run / "images.npz"), ("file", copy)):
        record = _snoop(snooper, dataset, mode, path)
        assert record["status"] == "failed" and "No such file" in record["reason"], (mode, record["reason"])
    record = _snoop(snooper, dataset, "write", tmp_path / "out.json")  # lands in the sandbox's private /tmp, if at all
    assert not (tmp_path / "out.json").exists()
    record = _snoop(snooper, dataset, "write", Path(copa.__file__).parent / "pwned.py")
    assert record["status"] == "failed" and "Read-only file system" in record["reason"]
    assert not (Path(copa.__file__).parent / "pwned.py").exists()


@needs_sandbox
def test_no_host_socket_no_passed_variable_no_parent(snooper, dataset, tmp_path, monkeypatch):
    """Item 3: host Unix sockets (file and abstract) and variables such as OMP_* carried data; the runner's
    /proc entry was readable."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "leak.sock"))
    server.listen(1)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0copa-test-leak")
    abstract.listen(1)
    try:
        for path in (tmp_path / "leak.sock", "\0copa-test-leak"):
            record = _snoop(snooper, dataset, "socket", path)
            assert record["status"] == "failed", record.get("attack_info")
    finally:
        server.close()
        abstract.close()
    monkeypatch.setenv("OMP_TRUTH", "a secret")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "payload with spaces and more")
    monkeypatch.setenv("COPA_DATA_ROOT", str(dataset.parent))
    env = _snoop(snooper, dataset, "env")["attack_info"]["env"]
    assert not {"OMP_TRUTH", "OPENBLAS_CORETYPE", "COPA_DATA_ROOT"} & set(env)
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "MPLCONFIGDIR", "PYTHONNOUSERSITE", "PYTHONDONTWRITEBYTECODE",
                        "COPA_SANDBOX", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "OMP_NUM_THREADS",
                        "ATEN_CPU_CAPABILITY", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
                        "PWD", "KMP_DUPLICATE_LIB_OK", "TORCHINDUCTOR_CACHE_DIR"}  # the last three: set inside
    record = _snoop(snooper, dataset, "procmem", os.getpid())
    assert record["status"] == "failed" or "python" not in record["attack_info"]["parent"]


@needs_sandbox
def test_a_daemon_dies_with_the_sandbox(snooper, dataset):
    """Item 4: a double-forked daemon rewrote record.json after the run; the sandbox's PID namespace ends with it."""
    marker = "31415.926"  # `sleep 31415.926`: a process no one else runs
    record = _snoop(snooper, dataset, "daemon", marker)
    assert record["status"] == "ok"
    left = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                left.append(entry.name)
        except OSError:
            pass
    assert not left


@needs_sandbox
def test_a_plugin_may_register_attacks_only(plugin_file, capsys):
    source = "from copa.models import MODELS\nMODELS.register('test-plugin-model', lambda **kw: None)\n"
    model_plugin = plugin_file("model_plugin", source)
    assert main(["list", "attacks", "--plugin", str(model_plugin)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "registers model 'test-plugin-model'" in err[0] and "--extension" in err[0]
    from copa.models import MODELS

    assert "test-plugin-model" not in MODELS


@needs_sandbox
def test_a_workflow_run_with_a_hostile_plugin_and_its_verification(plugin_file, tmp_path):
    """Items 1 and 2 through the workflow's cells and `copa verify`: the patcher's import-time code runs only in
    its sandbox, so its own cell scores at the floor and the built-in cell beside it is the honest one; verify
    imports no plug-in and reruns it in its sandbox."""
    import yaml

    from copa.bench.leaderboard import records_from_cells
    from copa.bench.pipeline import check_config, run_cell
    from copa.bench.verify import verify_results

    patcher = plugin_file("patcher", PATCHER)
    config = {"dataset": "sample", "split": "train", "indices": [0, 1], "models": ["cnn2_c1"],
              "attacks": ["mean-image", "test-patcher"], "attack_settings": {}, "plugins": [str(patcher)],
              "label": "known", "preprocess": "center", "dtype": "float64", "input_shape": "3x32x32",
              "num_classes": None, "model_seed": 0, "seed": 0, "device": "cpu", "threads": 1, "data_root": None,
              "download": False, "retry_failed": True, "defences": ["none"], "defence_seed": 0, "batch_size": None,
              "out": str(tmp_path / "out")}
    check_config(config)
    cells = []
    for attack in config["attacks"]:
        cells.append(tmp_path / "out" / "cells" / f"{attack}.json")
        run_cell(config, "cnn2_c1", attack, records_dir=tmp_path / "out" / "records" / attack, summary=cells[-1],
                 log=lambda _: None)
    rows = records_from_cells(cells)
    assert not any(name.startswith("copa_plugin_") for name in sys.modules)
    honest = run_attack(Scenario(model="cnn2_c1", dataset="sample", indices=(0,), dtype="float64"), "mean-image")[0]
    mean_image = rows[(rows["attack"] == "mean-image") & (rows["index"] == 0)]
    assert float(mean_image["psnr"].iloc[0]) == honest["metrics"]["mean"]["psnr"]
    assert (rows.loc[rows["attack"] == "test-patcher", "psnr"] < 20).all()
    assert set(rows.loc[rows["attack"] == "test-patcher", "sandbox"]) == {sandbox_tool()[1]}
    results = tmp_path / "results"
    results.mkdir()
    rows.to_csv(results / "records.csv", index=False)
    (results / "config.yaml").write_text(yaml.safe_dump(config))
    verdicts = verify_results(results, sample=4, log=lambda _: None)
    assert {v.verdict for v in verdicts} == {"identical"}, [v.detail for v in verdicts]
    assert not any(name.startswith("copa_plugin_") for name in sys.modules)


def test_the_leaderboard_header_says_where_isolated_attacks_ran():
    import pandas as pd

    from copa.bench.leaderboard import run_metadata

    base = {"dataset": "sample", "split": "train", "git_commit": "c", "device": "cpu", "versions": "v"}
    trusted = pd.DataFrame([{**base, "sandbox": None}])
    assert "sandbox of isolated attacks" not in run_metadata(trusted)
    sandboxed = pd.DataFrame([{**base, "sandbox": None}, {**base, "sandbox": "bubblewrap 0.8.0"}])
    assert run_metadata(sandboxed)["sandbox of isolated attacks"] == "bubblewrap 0.8.0"
    unsafe = pd.DataFrame([{**base, "sandbox": "bubblewrap 0.8.0"}, {**base, "sandbox": "NONE"}])
    line = run_metadata(unsafe)["sandbox of isolated attacks"]
    assert line.startswith("bubblewrap 0.8.0, **WITHOUT a sandbox for some records**")
