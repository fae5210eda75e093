"""COPA and COPA-GM never below guessing (issue 34): the floor check of copa/attacks/copa.py (stage 4).

random-chain:4 (c3k5:softplus c3k2s2:leakyrelu c4k4s2:sigmoid c8k3s2:tanh) collapses: its deficient layers' choices
leave the next inputs outside the activations' ranges and the recursion returns an image far outside the pixel box
(5 dB against the mean image's 12.97 dB on CIFAR-10 train image 0). cnn2_c2's recursion works (consistent system).
"""

import math

import pytest
import torch

from copa.bench import run_attack, run_attacks
from copa.threat import Scenario

pytestmark = pytest.mark.usefixtures("single_thread")

# small budgets: the per-layer stages barely run; what is tested is the floor check after them
COPA_STEPS = {"steps": 5}
COPA_GM_STEPS = {"steps": 5, "steps_image": 20, "steps_layer1": 20, "steps_deeper": 5, "fallback_steps": 300}


def _run(model, attack, cifar_npz, overrides, **scenario):
    return run_attack(Scenario(model=model, dataset=f"npz:{cifar_npz}", indices=scenario.pop("indices", (0,)),
                               dtype="float64", **scenario), attack, overrides=overrides)[0]


def _image_layer(record):
    layer = record["attack_info"]["layers"][-1]
    assert layer["layer"] == 0
    return layer


@pytest.mark.slow
def test_the_floor_check_triggers_on_a_collapsing_chain_and_lifts_copa_to_the_floor(cifar_npz):
    floor = _run("random-chain:4", "mean-image", cifar_npz, None)["metrics"]["mean"]["psnr"]
    unchecked = _run("random-chain:4", "copa", cifar_npz, {**COPA_STEPS, "floor_check": False})
    checked = _run("random-chain:4", "copa", cifar_npz, COPA_STEPS)
    # the detector, from the attacker's quantities only: the layer-wise image leaves the pixel box and
    # reproduces the observed gradients worse than the blank image does
    assert _image_layer(unchecked)["outside_fraction"] > 0.5
    assert "floor_check" not in _image_layer(unchecked)
    check = _image_layer(checked)["floor_check"]
    assert check["residual_layer-wise"] > check["residual_blank"] and check["chosen"] == "blank"
    assert unchecked["metrics"]["mean"]["psnr"] < floor - 3  # the collapse this guards against
    assert checked["metrics"]["mean"]["psnr"] == pytest.approx(floor, abs=1e-3)


@pytest.mark.slow
def test_copa_gm_beats_the_floor_on_a_collapsing_chain(cifar_npz):
    floor = _run("random-chain:4", "mean-image", cifar_npz, None)["metrics"]["mean"]["psnr"]
    record = _run("random-chain:4", "copa-gm", cifar_npz, COPA_GM_STEPS)
    check = _image_layer(record)["floor_check"]
    assert check["chosen"].startswith("gradient-matching")
    assert check[f"residual_{check['chosen']}"] < check["residual_blank"]
    assert record["metrics"]["mean"]["psnr"] > floor + 1


def test_the_floor_check_keeps_a_working_recursion(cifar_npz):
    """cnn2_c2: the layer-wise image reproduces the observation (residual ~1e-29); the blank image does not."""
    for attack, steps in (("copa", COPA_STEPS), ("copa-gm", COPA_GM_STEPS)):
        checked = _run("cnn2_c2", attack, cifar_npz, steps, indices=(3,), input_shape="3x16x16")
        unchecked = _run("cnn2_c2", attack, cifar_npz, {**steps, "floor_check": False}, indices=(3,),
                         input_shape="3x16x16")
        check = _image_layer(checked)["floor_check"]
        assert check["chosen"] == "layer-wise" and check["residual_layer-wise"] < 1e-12 < check["residual_blank"]
        assert _image_layer(checked)["outside_fraction"] < 0.5
        assert checked["metrics"]["mean"]["psnr"] == unchecked["metrics"]["mean"]["psnr"]


def test_without_a_label_the_floor_check_uses_the_recovered_one(cifar_npz):
    record = _run("cnn2_c2", "copa", cifar_npz, COPA_STEPS, indices=(3,), input_shape="3x16x16", label_known=False)
    assert _image_layer(record)["floor_check"]["chosen"] == "layer-wise"


def test_of_the_restarts_only_the_one_of_lowest_objective_competes(cifar_npz, monkeypatch):
    """COPA-GM's restarts are chosen among by their own loss (Inverting Gradients' cosine + TV, which they
    minimise), not by the residual: on random-chain:28 the two restarts reproduce the gradients
    equally well (residuals within 10 %) and the residual's pick fell below the mean image (11.84 against 11.96 dB
    at the study's budgets). Here a restart of lower residual but higher objective must lose to the blank image."""
    from copa.attacks import copa as copa_module

    def fallback(self, match, candidates, worse, lower, upper, generators):
        n = len(candidates["blank"])
        noisy = candidates["blank"] + 0.01 * torch.ones_like(candidates["blank"])
        inf = [math.inf] * n
        return {"low residual, high objective": (noisy, [0.0 if k in worse else math.inf for k in range(n)],
                                                  [0] * n, [2.0 if k in worse else math.inf for k in range(n)]),
                "high residual, low objective": (noisy, [1e300 if k in worse else math.inf for k in range(n)],
                                                  [0] * n, [1.0 if k in worse else math.inf for k in range(n)]),
                "not run": (noisy, inf, [0] * n, inf)}

    monkeypatch.setattr(copa_module.COPAGradientMatching, "_fallback_candidates", fallback)
    check = _image_layer(_run("random-chain:4", "copa-gm", cifar_npz, COPA_GM_STEPS))["floor_check"]
    assert check["worse_than_blank"]
    assert check["objective_low residual, high objective"] == 2.0 and "objective_not run" not in check
    assert check["chosen"] == "blank"  # the low-residual restart was out: its objective is the higher


@pytest.mark.slow
def test_copa_gm_is_not_below_the_floor_on_random_chain_28(cifar_npz):
    """The one chain of the study (results/metric-validity) where COPA-GM ended below the mean image when the
    residual chose among the restarts: at the study's budgets (config/metric-validity.yaml), images 0-3."""
    budgets = {"steps": 300, "steps_image": 2000, "steps_layer1": 1000, "steps_deeper": 300, "fallback_steps": 1200}
    indices = (0, 1, 2, 3)
    floor = [_run("random-chain:28", "mean-image", cifar_npz, None, indices=(i,))["metrics"]["mean"]["psnr"]
             for i in indices]
    records = [record for record, _, _ in run_attacks(
        [Scenario(model="random-chain:28", dataset=f"npz:{cifar_npz}", indices=(i,), dtype="float64")
         for i in indices], "copa-gm", overrides=budgets)]
    psnr = [record["metrics"]["mean"]["psnr"] for record in records]
    assert all(_image_layer(r)["floor_check"]["chosen"].startswith("gradient-matching") for r in records)
    assert sum(psnr) / 4 >= sum(floor) / 4
