"""The layer-wise attacks (R-GAP, COPA, COPA-GM) on a defended update (issue "Defences"): noise, pruning and
quantisation make each conv layer's system ``U x = v`` inconsistent; the attacks must still finish with a
finite image and record each layer's relative least-squares residual ``‖U x̃ − v‖/‖v‖`` (≈ 0 undefended on
the full-rank cnn2_c1, > 0 once the update is defended). Also the security report's per-layer
``noise_amplification`` (the condition number, the first-order least-squares error bound)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from copa.bench.run import run_attack
from copa.layerwise.security import security_report
from copa.threat import Scenario

#: small step counts: these tests check robustness and bookkeeping, not reconstruction quality
ATTACKS = {
    "rgap": None,
    "copa": {"steps": 20},
    "copa-gm": {"steps": 20, "steps_image": 20, "steps_layer1": 20, "steps_deeper": 20, "fallback_steps": 20},
}
DEFENCES = ("noise:scale=0.001", "noise:scale=0.1", "prune:p=0.9", "quantize:bits=4")
MODELS = ("cnn2_c1", "cnn2_c2")


def _attack(model, attack, defences=()):
    scenario = Scenario(model=model, dataset="sample", indices=(0,), dtype="float64", defences=defences)
    return run_attack(scenario, attack, overrides=ATTACKS[attack], record_failures=True)


def _check_layers(record):
    layers = record["attack_info"]["layers"]
    assert layers, "no per-layer info recorded"
    for layer in layers:
        for key in ("residual_least_squares", "rhs_norm", "residual_relative"):
            assert key in layer, f"layer {layer.get('layer')} lacks {key}"
        assert layer["rhs_norm"] > 0
        assert math.isfinite(layer["residual_relative"]) and layer["residual_relative"] >= 0
        assert layer["residual_relative"] == pytest.approx(layer["residual_least_squares"] / layer["rhs_norm"],
                                                            rel=1e-12)
    return layers


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("defence", DEFENCES)
@pytest.mark.slow
def test_layerwise_attack_on_a_defended_update_finishes_and_records_its_residual(model, attack, defence):
    record, reconstruction, _ = _attack(model, attack, (defence,))
    assert record["status"] == "ok", record.get("reason")
    assert reconstruction is not None
    images = reconstruction.images.detach().cpu().numpy()
    assert np.isfinite(images).all()
    assert all(math.isfinite(v) for v in record["metrics"].values() if isinstance(v, float))
    for layer in _check_layers(record):
        # every shipped defence at these strengths leaves v outside range(U) on a full-rank or deficient layer
        assert layer["residual_relative"] > 1e-8, (layer["layer"], layer["residual_relative"])


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_undefended_full_rank_layer_has_zero_relative_residual(attack):
    record, reconstruction, _ = _attack("cnn2_c1", attack)
    assert record["status"] == "ok"
    layers = _check_layers(record)
    assert all(layer["nullity"] == 0 for layer in layers)  # cnn2_c1: every conv layer determined
    assert all(layer["residual_relative"] < 1e-10 for layer in layers)


@pytest.mark.slow
def test_relative_residual_grows_with_the_noise_scale():
    residuals = [_attack("cnn2_c1", "rgap", (f"noise:scale={s}",))[0]["attack_info"]["layers"][0]["residual_relative"]
                 for s in (1e-4, 1e-2, 1.0)]
    assert residuals[0] < residuals[1] < residuals[2]


@pytest.fixture(scope="module")
def reports():
    return security_report("cnn2_c2", condition=True), security_report("cnn2_c2", condition=False)


@pytest.mark.slow
def test_security_report_noise_amplification_is_the_condition_number(reports):
    conditioned, _ = reports
    conv = [layer for layer in conditioned.layers if layer.kind == "conv"]
    assert conv
    for layer in conditioned.layers:
        assert layer.noise_amplification == layer.condition_number
    assert all(layer.noise_amplification is not None and layer.noise_amplification >= 1 for layer in conv)
    data = json.loads(json.dumps(conditioned.to_dict()))
    for layer in data["layers"]:
        assert "noise_amplification" in layer and "condition_number" in layer
    assert "noise amplification" in conditioned.to_table()


def test_security_report_without_condition_numbers_shows_no_noise_amplification(reports):
    conditioned, plain = reports
    assert all(layer.noise_amplification is None for layer in plain.layers)
    data = plain.to_dict()
    assert all("noise_amplification" not in layer for layer in data["layers"])
    assert "noise amplification" not in plain.to_table()
    # the existing keys are unchanged: the conditioned report only adds one
    for with_kappa, without in zip(conditioned.to_dict()["layers"], data["layers"]):
        assert set(with_kappa) - set(without) == {"noise_amplification"}
