"""check_attack: every shipped attack meets the contract, the README's GreyGuess example does, and each
kind of broken attack is caught by the check that names its fault."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from copa.attacks import ATTACKS, Attack, Hyperparameter, Reconstruction, check_attack, load_plugins
from copa.attacks.checking import CHECKS, AttackContractError
from copa.registry import Registry

ROOT = Path(__file__).resolve().parents[1]

# quick settings: the contract does not depend on how well an attack reconstructs. DLG/iDLG: one L-BFGS
# step of 3 evaluations, since L-BFGS amplifies the rounding of a vectorised batch (docs/baselines.md)
QUICK = {"dlg": {"iterations": 1, "max_iter": 3}, "idlg": {"iterations": 1, "max_iter": 3},
         "ig": {"iterations": 3}, "copa": {"steps": 5},
         "copa-gm": {"steps": 5, "steps_image": 5, "steps_layer1": 5, "steps_deeper": 5},
         "hybrid": {"steps_image": 3, "steps_layer1": 3, "steps_deeper": 3}}


def shipped_attacks() -> list[str]:
    load_plugins()
    return [name for name in ATTACKS.names() if ATTACKS.get(name).__module__.startswith(("copa.", "copa_baselines."))]


@pytest.mark.parametrize("name", ["copa", "copa-gm", "hybrid", "rgap", "dlg", "idlg", "ig", "mean-image", "noise"])
def test_every_shipped_attack_meets_the_contract(name):
    assert name in shipped_attacks()
    assert check_attack(name, overrides=QUICK.get(name)) == list(CHECKS)


def test_the_list_above_covers_every_shipped_attack():
    assert set(shipped_attacks()) == {"copa", "copa-gm", "hybrid", "rgap", "dlg", "idlg", "ig", "mean-image", "noise"}


def readme_grey_guess_source() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    [block] = [b for b in blocks if "class GreyGuess(Attack)" in b]
    return block


@pytest.mark.slow
def test_the_readme_grey_guess_example_meets_the_contract(tmp_path, monkeypatch):
    path = tmp_path / "my_attack.py"
    path.write_text(readme_grey_guess_source())
    saved = dict(ATTACKS._entries)
    try:
        load_plugins([str(path)])  # described by its sandboxed worker, and checked there (copa check)
        from copa.attacks.sandboxed import check_in_sandbox

        assert check_in_sandbox(ATTACKS.get("grey-guess"), {}, "cnn2_c1", (3, 16, 16)) == list(CHECKS)
    finally:
        ATTACKS._entries.clear()
        ATTACKS._entries.update(saved)


@pytest.mark.slow
def test_copa_check_runs_from_the_command_line(tmp_path, capsys):
    from copa.cli import main

    path = tmp_path / "my_attack.py"
    path.write_text(readme_grey_guess_source())
    saved = dict(ATTACKS._entries)
    try:
        assert main(["check", "--attack", "grey-guess", "--plugin", str(path)]) == 0
    finally:
        ATTACKS._entries.clear()
        ATTACKS._entries.update(saved)
    assert "grey-guess: 7 checks passed" in capsys.readouterr().out


class _Good(Attack):
    name = "good"
    paper = "test"
    hyperparameters = {"level": Hyperparameter(0.5, "test")}

    def reconstruct(self, observation, generator):
        shape = (observation.batch_size, *observation.input_shape)
        return Reconstruction(images=torch.full(shape, self.hp["level"], dtype=observation.dtype))


def broken(**attributes):
    return type("Broken", (_Good,), {"name": "broken", **attributes})


def _wrong_shape(self, observation, generator):
    return Reconstruction(images=torch.zeros(1, 3, 4, 4, dtype=observation.dtype))


def _mutates(self, observation, generator):
    observation.gradients[0].zero_()
    return _Good.reconstruct(self, observation, generator)


def _random_without_generator(self, observation, generator):
    shape = (observation.batch_size, *observation.input_shape)
    return Reconstruction(images=torch.rand(shape, dtype=observation.dtype))  # global RNG: not reproducible


def _nan(self, observation, generator):
    result = _Good.reconstruct(self, observation, generator)
    result.images[0, 0, 0, 0] = float("nan")
    return result


def _bad_batch(self, observations, generators):
    return [self.reconstruct(observations[0], generators[0])]


def _wrong_dtype(self, observation, generator):
    shape = (observation.batch_size, *observation.input_shape)
    return Reconstruction(images=torch.zeros(shape, dtype=torch.float16))


@pytest.mark.parametrize("attack, check", [
    (broken(name=""), "declaration"),
    (broken(paper=""), "declaration"),
    (broken(hyperparameters={"level": Hyperparameter(0.5, "")}), "declaration"),
    (broken(hyperparameters={"level": 0.5}), "declaration"),
    (broken(reconstruct=_wrong_shape), "output"),
    (broken(reconstruct=_wrong_dtype), "output"),
    (broken(reconstruct=_nan), "output"),
    (broken(reconstruct=_mutates), "observation untouched"),
    (broken(reconstruct=_random_without_generator), "determinism"),
    (broken(reconstruct_batch=_bad_batch), "batch"),
    (broken(needs_label=True, applicable=lambda self, observation: None), "applicability"),
    (broken(applicable=lambda self, observation: "never"), "applicability"),
    (broken(applicable=lambda self, observation: 3), "applicability"),
])
def test_a_broken_attack_fails_the_check_that_names_its_fault(attack, check):
    with pytest.raises(AttackContractError, match=f"fails check '{check}'"):
        check_attack(attack)


def test_an_attack_that_accepts_unknown_hyperparameters_fails():
    def lenient_init(self, **overrides):
        self.hp = {"level": 0.5}

    with pytest.raises(AttackContractError, match="fails check 'bad input'"):
        check_attack(broken(__init__=lenient_init))


def test_the_good_attack_passes_and_registries_are_untouched():
    before = ATTACKS.names()
    assert check_attack(_Good) == list(CHECKS)
    assert ATTACKS.names() == before and isinstance(ATTACKS, Registry)
