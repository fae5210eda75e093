"""The authors' released hybrid method (baselines/hybrid.py; Chen & Campbell, BMVC 2022, hybrid.py @ 7a8183d):
the acceptance number on cnn2_c2, an independent transcription of one layer, and the contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from copa.attacks import ATTACKS, check_attack, create_attack, load_plugins
from copa.attacks.checking import CHECKS
from copa.bench import run_attack
from copa.errors import InvalidSpecError
from copa.layerwise import ConvGeometry, layer_system
from copa.threat import Scenario

pytestmark = pytest.mark.usefixtures("single_thread")

# three convs: layer 2 ("deeper"), layer 1 (strided and padded, stride residue 1) and the image layer
TINY = "chain:c3k3:tanh c3k3s2p1:tanh c2k3p1:tanh fc:identity"
QUICK = {"steps_image": 12, "steps_layer1": 8, "steps_deeper": 5}


def _scenario(model=TINY, **kw):
    base = {"model": model, "dataset": "sample", "indices": (0,), "dtype": "float64", "input_shape": (3, 12, 12)}
    return Scenario(**{**base, **kw})


def test_hybrid_is_registered_and_meets_the_contract():
    load_plugins()
    assert ATTACKS.get("hybrid").__module__ == "copa_baselines.hybrid"
    assert check_attack("hybrid", overrides={"steps_image": 3}) == list(CHECKS)


@pytest.mark.slow
def test_full_defaults_on_cnn2_c2_image_3_reproduce_the_authors_code(cifar_npz):
    """The authors' hybrid.py on copa-bench's cnn2_c2 weights and observation of CIFAR-10 train image 3:
    27.49 dB. Full defaults (10000 Adam steps at the image layer), float64; ~20 s on a 2-core CPU."""
    record = run_attack(Scenario(model="cnn2_c2", dataset=f"npz:{cifar_npz}", indices=(3,), dtype="float64"),
                        "hybrid")[0]
    assert record["status"] == "ok"
    layer, = record["attack_info"]["layers"]
    assert layer["layer"] == 0 and layer["steps"] == 10000 and layer["rank"] == 3072 - 1470
    assert layer["residual_relative"] < 1e-10  # the system is consistent; the soft penalty moves x anyway
    assert record["metrics"]["mean"]["psnr"] == pytest.approx(27.49, abs=0.5)


def test_runs_every_layer_with_its_schedule_and_returns_finite_images():
    record, rec, truth = run_attack(_scenario(), "hybrid", overrides=QUICK)
    assert record["status"] == "ok"
    assert rec.images.shape == truth.images01.shape == (1, 3, 12, 12) and rec.images.dtype == torch.float64
    assert torch.isfinite(rec.images).all()
    layers = record["attack_info"]["layers"]
    assert [d["layer"] for d in layers] == [2, 1, 0]
    assert [d["steps"] for d in layers] == [5, 8, 12]
    assert [d["weights"] for d in layers] == [{"cos": 10.0, "tv": 0.1, "linear": 1.0},
                                              {"cos": 1.0, "tv": 1.0, "linear": 0.1},
                                              {"cos": 1.0, "tv": 1.0, "linear": 0.05}]
    # layer 2 is full rank and consistent: its least-squares start fits the gradients exactly, and Adam's first
    # steps (each coordinate moves by about lr) raise the objective there — the soft penalty as in hybrid.py
    assert layers[0]["rank"] == layers[0]["unknowns"] and layers[0]["objective_final"] > layers[0]["objective_initial"]
    assert all(d["objective_final"] < d["objective_initial"] for d in layers[1:])
    assert rec.forward_evals == 5 + 8 + 12 + 3  # one evaluation per step, plus one at each returned point


def test_deterministic_and_independent_of_the_seed():
    runs = [run_attack(_scenario(), "hybrid", overrides=QUICK, seed=seed)[1].images for seed in (0, 0, 7)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])  # nothing in hybrid.py is random


@pytest.mark.parametrize("model", ["convnet", "lenet-zhu"])
def test_non_chains_are_refused_with_the_shared_chain_message(model):
    record = run_attack(Scenario(model=model, dataset="sample", indices=(0,)), "hybrid",
                        overrides={"steps_image": 1})[0]
    assert record["status"] == "not-applicable" and f"{model} is not a chain: " in record["reason"]


def test_needs_the_label():
    record = run_attack(_scenario(label_known=False), "hybrid", overrides=QUICK)[0]
    assert record["status"] == "not-applicable" and "label" in record["reason"]


def test_bad_settings_are_refused():
    for bad in ({"precision": "half"}, {"fc_rows": "last"}, {"gradient_rows": "dense"}, {"solver": "qr"},
                {"lr": 0}, {"tanh_clip": 1.0}, {"steps_image": 10 ** 7}, {"gm_weight_image": -1}):
        with pytest.raises(InvalidSpecError, match="hybrid"):
            create_attack("hybrid", bad)


def _transcription(observation, steps: int, lr: float, clip: float = 0.9999) -> torch.Tensor:
    """hybrid_solve (L563–646) for a chain of one conv layer, written out with a dense U: first non-zero
    row at the FC layer, tanh clipped at ±0.9999, min-norm lstsq of [A; K] x = [z; g] over the unpadded
    input, then Adam on cos + TV + 0.05·(Ux − v)ᵀ(Ux − v) and the last iterate."""
    model = observation.model
    conv, fc = model.weight_layers
    grads = dict(zip((id(p) for p in model.parameters()), observation.gradients))
    g_conv, g_fcw, g_fcb = grads[id(conv.weight)], grads[id(fc.weight)], grads[id(fc.bias)]
    r = int(torch.nonzero(g_fcb)[0])
    g = ConvGeometry.from_conv(conv, observation.input_shape[-2:])
    y = (g_fcw[r] / g_fcb[r]).reshape(g.out_channels, *g.output)
    z = torch.atanh(y.clamp(-clip, clip))
    delta = (1 - torch.tanh(z) ** 2) * (g_fcb @ fc.weight).reshape(z.shape)
    system = layer_system(conv.weight, delta, z, g_conv, g, include_padding=False)
    u = system.matrix[:, g.interior_mask().reshape(-1)]
    v = system.rhs
    x = torch.linalg.lstsq(u, v[:, None], driver="gelsd").solution.detach().requires_grad_(True)
    weight, fc_w, fc_b = (p.detach().clone().requires_grad_(True) for p in (conv.weight, fc.weight, fc.bias))
    targets = {id(weight): g_conv, id(fc_w): g_fcw, id(fc_b): g_fcb}
    optimizer = torch.optim.Adam([x], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        image = x.reshape(1, *observation.input_shape)
        hidden = torch.tanh(F.conv2d(image, weight, stride=conv.stride, padding=conv.padding))
        loss = F.cross_entropy(F.linear(hidden.flatten(1), fc_w, fc_b), observation.labels)
        params = [fc_b, fc_w, weight]
        dummy = torch.autograd.grad(loss, params, create_graph=True)
        cos = sum(1 - F.cosine_similarity(d.flatten(), targets[id(p)].flatten(), 0, 1e-10)
                  for d, p in zip(dummy, params))
        tv = ((image[..., :, :-1] - image[..., :, 1:]).abs().mean()
              + (image[..., :-1, :] - image[..., 1:, :]).abs().mean())
        residual = u @ x - v[:, None]
        (cos + tv + 0.05 * (residual.T @ residual)[0, 0]).backward()
        optimizer.step()
    return x.detach().reshape(1, *observation.input_shape)


def test_one_layer_equals_a_dense_transcription_of_hybrid_py_and_returns_the_last_iterate():
    """k3 s2 p1 on 12×12 (stride residue 1, rank-deficient): padding, least squares, objective and Adam
    as hybrid.py. lr 0.5 makes Adam overshoot: the last iterate, which hybrid.py returns (L846), is worse
    than the start, and it is what comes back."""
    scenario = _scenario(model="chain:c4k3s2p1:tanh fc:identity")
    observation, _ = scenario.build()
    steps, lr = 20, 0.5
    record, rec, _ = run_attack(scenario, "hybrid", overrides={"steps_image": steps, "lr": lr})
    expected = _transcription(observation, steps, lr)
    assert (rec.images - expected).abs().max() < 1e-8  # measured 9e-11
    layer, = record["attack_info"]["layers"]
    assert layer["rank"] < layer["unknowns"] == 3 * 12 * 12
    assert layer["objective_final"] > layer["objective_initial"] == layer["objective_lowest"]
    assert layer["objective_lowest_step"] == 0


def test_circ_rep_grad_option_only_changes_padded_strided_layers_with_a_stride_residue():
    """hybrid.py's circ_rep_grad drops the last (H + 2p − k) mod s rows/columns of a padded input from K(δ)."""
    quick = {"steps_image": 5}
    affected = _scenario(model="chain:c4k3s2p1:tanh fc:identity")    # (12 + 2 − 3) mod 2 = 1, p = 1
    unaffected = _scenario(model="chain:c4k4s2:tanh fc:identity")    # (12 − 4) mod 2 = 0, p = 0
    for scenario, changed in ((affected, True), (unaffected, False)):
        exact = run_attack(scenario, "hybrid", overrides=quick)[1].images
        theirs = run_attack(scenario, "hybrid", overrides={**quick, "gradient_rows": "circ_rep_grad"})[1].images
        assert torch.equal(exact, theirs) is not changed


def test_float32_precision_and_all_row_fc_options_run():
    for overrides in ({"precision": "float32"}, {"fc_rows": "all", "solver": "normal"}):
        record, rec, _ = run_attack(_scenario(), "hybrid", overrides={**QUICK, **overrides})
        assert record["status"] == "ok" and torch.isfinite(rec.images).all() and rec.images.dtype == torch.float64
