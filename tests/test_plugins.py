"""Adding an attack: a temporary module loaded with --plugin, with COPA_PLUGINS, and in-process (always
described and run by its sandboxed worker: docs/trust.md)."""

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from copa.attacks import sandboxed as attacks_mod
from copa.attacks import ATTACKS, create_attack, load_plugins
from copa.bench import run_attack
from copa.threat import Scenario

ROOT = Path(__file__).resolve().parents[1]

ATTACK_FILE = textwrap.dedent('''
    """A temporary test attack: the gradient of the output bias, broadcast as a grey level."""
    import torch
    from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack
    from copa.errors import InvalidSpecError

    @register_attack
    class TmpGrey(Attack):
        name = "tmp-grey"
        paper = "test plug-in"
        hyperparameters = {"level": Hyperparameter(0.3, "test default")}

        def validate(self):
            if not 0 <= self.hp["level"] <= 1:
                raise InvalidSpecError(f"level={self.hp['level']} is outside [0, 1]")

        def reconstruct(self, observation, generator):
            shape = (observation.batch_size, *observation.input_shape)
            images01 = torch.full(shape, self.hp["level"], dtype=observation.dtype)
            return Reconstruction(images=observation.preprocess.apply(images01), labels=observation.labels,
                                  forward_evals=0, gradient_evals=0)
''')


def copa(*args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "COPA_PLUGINS"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "copa", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd)


@pytest.fixture
def attack_file(tmp_path):
    path = tmp_path / "tmp_grey_attack.py"
    path.write_text(ATTACK_FILE)
    return path


@contextlib.contextmanager
def registry_restored():
    """Snapshot the attack registry, the described plug-ins, plug-in modules and sys.path; restore them afterwards.
    The trusted baselines are loaded first, so that the snapshot holds them."""
    load_plugins()
    entries = dict(ATTACKS._entries)
    loaded = dict(attacks_mod._described)
    modules = set(sys.modules)
    path = list(sys.path)
    try:
        yield
    finally:
        _restore(entries, loaded, modules, path)


def _restore(entries, loaded, modules, path):
    ATTACKS._entries.clear()
    ATTACKS._entries.update(entries)
    attacks_mod._described.clear()
    attacks_mod._described.update(loaded)
    for name in set(sys.modules) - modules:
        if name.startswith("copa_plugin_"):  # plug-in files; library modules imported meanwhile stay
            del sys.modules[name]
    sys.path[:] = path


def _check_run(out: Path, level: float):
    record = json.loads((out / "record.json").read_text())
    assert record["status"] == "ok" and record["attack"]["name"] == "tmp-grey"
    assert record["hyperparameters"] == {"level": level}
    assert record["evaluations"]["forward"] == 0
    assert np.allclose(np.load(out / "images.npz")["reconstruction"], level)


@pytest.mark.slow
def test_plugin_file_via_the_plugin_option(attack_file, tmp_path):
    listed = copa("list", "attacks", "--plugin", attack_file)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^tmp-grey\s+test plug-in$", listed.stdout, re.M)
    out = tmp_path / "out"
    result = copa("attack", "--plugin", attack_file, "--attack", "tmp-grey", "--model", "cnn2_c1",
                  "--set", "level=0.7", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "tmp-grey on cnn2_c1" in result.stdout
    _check_run(out, 0.7)
    bad = copa("attack", "--plugin", attack_file, "--attack", "tmp-grey", "--model", "cnn2_c1",
               "--set", "level=3", "--out", tmp_path / "never")
    assert bad.returncode == 2 and "level=3.0 is outside [0, 1]" in bad.stderr
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_plugin_file_via_the_environment(attack_file, tmp_path):
    env = {"COPA_PLUGINS": str(attack_file)}  # a module name works too: see the README test below
    listed = copa("list", "attacks", env_extra=env)
    assert listed.returncode == 0, listed.stderr
    assert "tmp-grey" in listed.stdout and "dlg" in listed.stdout  # the built-in attacks are still there
    out = tmp_path / "out"
    result = copa("attack", "--attack", "tmp-grey", "--model", "cnn2_c1", "--out", out, env_extra=env)
    assert result.returncode == 0, result.stderr
    _check_run(out, 0.3)


def test_a_missing_plugin_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from copa.cli import main

    with registry_restored():
        assert main(["list", "attacks", "--plugin", str(tmp_path / "nope.py")]) == 2
        err = capsys.readouterr().err
        assert "nope.py" in err and "does not exist" in err
        monkeypatch.setenv("COPA_PLUGINS", "no_such_copa_plugin_module")
        assert main(["list", "attacks"]) == 2
        assert "no_such_copa_plugin_module" in capsys.readouterr().err


@pytest.mark.slow
def test_plugin_in_process_leaves_the_registry_as_it_was(attack_file):
    load_plugins()
    before = set(ATTACKS.names())
    with registry_restored():
        load_plugins([str(attack_file)])
        assert set(ATTACKS.names()) == before | {"tmp-grey"}
        assert "copa_plugin_tmp_grey_attack" not in sys.modules  # described by its sandboxed worker, not imported
        record, _, _ = run_attack(Scenario(model="cnn2_c1"), create_attack("tmp-grey", {"level": "0.25"}))
        assert record["status"] == "ok" and record["hyperparameters"] == {"level": 0.25}
        assert record["isolation"]["plugin"] == str(attack_file.resolve())
    assert set(ATTACKS.names()) == before and "tmp-grey" not in ATTACKS
    assert str(attack_file.resolve()) not in attacks_mod._described


@pytest.mark.slow
def test_the_readme_example_loads_from_copa_plugins(tmp_path):
    """README's "Add your attack" example, as written, loaded by module name through COPA_PLUGINS."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Add your attack", 1)[1].split("\n## ", 1)[0]
    example = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    (tmp_path / "my_attack.py").write_text(example)
    env = {"COPA_PLUGINS": "my_attack", "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = tmp_path / "g"
    result = copa("attack", "--attack", "grey-guess", "--model", "cnn2_c1", "--set", "level=0.6", "--out", out,
                  env_extra=env)
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "record.json").read_text())
    assert record["attack"]["name"] == "grey-guess" and record["hyperparameters"] == {"level": 0.6}
    assert np.allclose(np.load(out / "images.npz")["reconstruction"], 0.6)
    assert "docs/baselines.md" in section  # the section links to the baselines' documentation
