"""Hyperparameter bounds (issue "Trust", item 5): declared minimum/maximum, a ceiling on integers without a
declared maximum (``--set iterations=1e30`` ran until killed), finite floats; each refusal one line naming the
owner, the value and what is accepted."""

from __future__ import annotations

import pytest

from copa.cli import main
from copa.errors import InvalidSpecError
from copa.hyperparameters import INTEGER_CEILING, Hyperparameter, resolve_parameters

DECLARED = {"steps": Hyperparameter(100, "test", minimum=0, maximum=10_000),
            "iterations": Hyperparameter(300, "test"),
            "lr": Hyperparameter(0.1, "test", minimum=0.0),
            "name": Hyperparameter("adam", "test")}


@pytest.mark.parametrize(("key", "value", "message"), [
    ("steps", "-3", "attack 'toy': hyperparameter steps='-3' is below its minimum 0"),
    ("steps", 10_001, "attack 'toy': hyperparameter steps=10001 is above its maximum 10000"),
    ("iterations", "1e30", f"attack 'toy': hyperparameter iterations='1e30' is above {INTEGER_CEILING}, the "
                           f"largest integer accepted where no maximum is declared"),
    ("lr", "nan", "attack 'toy': hyperparameter lr='nan' is not finite: accepted are finite numbers"),
    ("lr", "inf", "attack 'toy': hyperparameter lr='inf' is not finite"),
    ("lr", -1.0, "attack 'toy': hyperparameter lr=-1.0 is below its minimum 0.0"),
])
def test_out_of_range_values_are_refused_by_name(key, value, message):
    with pytest.raises(InvalidSpecError) as caught:
        resolve_parameters("attack", "toy", DECLARED, {key: value})
    assert str(caught.value).startswith(message)


def test_values_inside_the_bounds_pass_with_their_types():
    values = resolve_parameters("attack", "toy", DECLARED, {"steps": "10000", "iterations": str(INTEGER_CEILING),
                                                            "lr": "0", "name": "sgd"})
    assert values == {"steps": 10_000, "iterations": INTEGER_CEILING, "lr": 0.0, "name": "sgd"}


def test_the_command_line_refuses_a_runaway_step_count(tmp_path, capsys):
    code = main(["attack", "--attack", "dlg", "--model", "cnn2_c1", "--set", "iterations=1e30",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "attack 'dlg': hyperparameter iterations='1e30' is above" in err[0]
    assert not (tmp_path / "out").exists()


def test_the_refusal_says_what_is_accepted():
    assert Hyperparameter(5, "t", minimum=0, maximum=10).accepted() == "integers from 0 to 10"
    assert Hyperparameter(5, "t", minimum=1).accepted() == f"integers ≥ 1 and ≤ {INTEGER_CEILING}"
    assert Hyperparameter(0.1, "t", minimum=0.0).accepted() == "finite numbers ≥ 0.0"
    with pytest.raises(InvalidSpecError, match=r"below its minimum 0: accepted are integers from 0 to 10000$"):
        resolve_parameters("attack", "toy", DECLARED, {"steps": -1})


def test_every_shipped_attack_declares_the_range_of_its_numbers():
    """Issue "Trust": every numeric hyperparameter of a shipped attack has a declared minimum, and every step or
    iteration count a maximum of at most STEP_CEILING — a typo is refused by name instead of running for days."""
    from copa.attacks import ATTACKS, STEP_CEILING, load_plugins

    load_plugins()
    shipped = [name for name in ATTACKS.names()
               if ATTACKS.get(name).__module__.startswith(("copa.", "copa_baselines."))]
    assert {"copa", "copa-gm", "hybrid", "dlg", "idlg", "ig", "mean-image"} <= set(shipped)
    for name in shipped:
        for key, declared in ATTACKS.get(name).hyperparameters.items():
            if isinstance(declared.default, bool) or not isinstance(declared.default, (int, float)):
                continue
            assert declared.minimum is not None, f"{name}.{key} declares no minimum"
            if isinstance(declared.default, int) and ("steps" in key or "iterations" in key):
                assert declared.maximum is not None and declared.maximum <= STEP_CEILING, f"{name}.{key}"
            assert declared.minimum <= declared.default <= (declared.maximum if declared.maximum is not None
                                                            else float("inf")), f"{name}.{key}"
