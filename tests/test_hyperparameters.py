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
