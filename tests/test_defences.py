"""The shipped defences (copa.threat.defences): DP-SGD's clipped Gaussian mechanism with Opacus' (ε, δ), DLG's
pruning and noise, k-bit quantisation — their semantics checked against independent computations, their
determinism given the defence seed and their one-line errors."""

from __future__ import annotations

import json
import sys
import math

import pytest
import torch
import torch.nn.functional as F

from copa.cli import main
from copa.errors import CopaError, InvalidSpecError, UnknownNameError
from copa.models import create_model
from copa.threat import DEFENCES, ClientUpdate, Scenario, create_defence
from copa.threat.observation_file import load_observation, save_observation

SHIPPED = ("dp-gaussian", "prune", "quantize", "noise")


def build(model="cnn2_c1", indices=(0, 1, 2), defences=(), seed=0):
    return Scenario(model=model, indices=indices, dtype="float64", defences=defences, defence_seed=seed).build()


def per_example_gradients(truth, model="cnn2_c1"):
    """Each example's gradient of its own cross-entropy, computed here independently of the scenario."""
    net = create_model(model, num_classes=10, seed=0).double()
    inputs = truth.preprocess.apply(truth.images01)
    return [torch.autograd.grad(F.cross_entropy(net(inputs[k:k + 1]), truth.labels[k:k + 1]), list(net.parameters()))
            for k in range(len(inputs))]


def clipped_mean(rows, clip):
    """Abadi et al.'s clipped batch gradient: mean over examples of g_k / max(1, ‖g_k‖/C)."""
    factors = [1 / max(1.0, math.sqrt(sum(float(t.pow(2).sum()) for t in row)) / clip) for row in rows]
    return [sum(f * row[i] for f, row in zip(factors, rows)) / len(rows) for i in range(len(rows[0]))]


@pytest.fixture(scope="module")
def client():
    """The undefended 3-image step on cnn2_c1 and its per-example gradients, with their global norms."""
    _, truth = build()
    rows = per_example_gradients(truth)
    norms = sorted(math.sqrt(sum(float(t.pow(2).sum()) for t in row)) for row in rows)
    return rows, norms


def test_dp_gaussian_without_noise_is_the_mean_of_the_clipped_per_example_gradients(client):
    rows, norms = client
    clip = norms[1]  # the middle one: one example clipped, one not, one at the bound
    observation, _ = build(defences=(f"dp-gaussian:sigma=0,clip={clip!r}",))
    for defended, expected in zip(observation.gradients, clipped_mean(rows, clip)):
        torch.testing.assert_close(defended, expected)
    assert not torch.allclose(observation.gradients[1], sum(row[1] for row in rows) / 3)  # clipping did something


def test_dp_gaussian_clips_each_examples_whole_gradient_to_the_bound(client):
    rows, norms = client
    per_example = tuple(torch.stack(column) for column in zip(*rows))
    for clip in (norms[0] / 2, norms[1], 2 * norms[2]):
        clipped = create_defence("dp-gaussian").clip_per_example(per_example, clip)
        after = torch.stack([g.flatten(1).pow(2).sum(1) for g in clipped]).sum(0).sqrt()
        before = torch.tensor([math.sqrt(sum(float(t.pow(2).sum()) for t in row)) for row in rows],
                              dtype=torch.float64)
        torch.testing.assert_close(after, torch.clamp(before, max=clip))
        for c, g in zip(clipped, per_example):  # directions kept
            torch.testing.assert_close(c, g * (after / before).view(-1, *[1] * (g.dim() - 1)))


def test_dp_gaussian_noise_has_std_sigma_clip_over_batch_size(client):
    rows, norms = client
    sigma, clip = 0.7, norms[0] / 2
    observation, _ = build(defences=(f"dp-gaussian:sigma={sigma},clip={clip!r}",))
    residual = torch.cat([(d - e).flatten() for d, e in zip(observation.gradients, clipped_mean(rows, clip))])
    assert residual.numel() > 50_000
    assert float(residual.std()) == pytest.approx(sigma * clip / 3, rel=0.05)
    assert abs(float(residual.mean())) < 5 * sigma * clip / 3 / math.sqrt(residual.numel())


def test_dp_gaussian_on_one_example_clips_the_gradient_itself():
    plain, truth = build(indices=(0,))
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in plain.gradients))
    defended, _ = build(indices=(0,), defences=(f"dp-gaussian:sigma=0,clip={norm / 4!r}",))
    for d, g in zip(defended.gradients, plain.gradients):
        torch.testing.assert_close(d, g / 4)


def test_dp_gaussian_epsilon_is_opacus_rdp_and_its_published_value():
    from opacus.accountants import RDPAccountant

    # Opacus' own test (opacus/tests/accountants_test.py, AccountingTest.test_rdp_accountant): σ = 1.5,
    # q = 0.04, int(90 / 0.04) = 2250 steps, δ = 1e-5 → ε = 7.32911117143
    defence = create_defence("dp-gaussian:sigma=1.5,sample_rate=0.04,steps=2250,delta=1e-5")
    privacy = defence.privacy()
    assert privacy["epsilon"] == pytest.approx(7.32911117143, abs=1e-9)
    accountant = RDPAccountant()
    for _ in range(2250):
        accountant.step(noise_multiplier=1.5, sample_rate=0.04)
    assert privacy["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-12)
    assert privacy == {"epsilon": privacy["epsilon"], "delta": 1e-5, "sample_rate": 0.04, "steps": 2250,
                       "noise_multiplier": 1.5, "accountant": "opacus RDP"}
    assert defence.describe()["privacy"] == privacy
    # more noise, less ε; no noise, no privacy
    assert create_defence("dp-gaussian:sigma=3,sample_rate=0.04,steps=2250").privacy()["epsilon"] < privacy["epsilon"]
    assert create_defence("dp-gaussian:sigma=0").privacy()["epsilon"] == math.inf


def test_the_observation_carries_the_privacy_and_survives_json_and_files(tmp_path):
    observation, _ = build(indices=(0,), defences=("dp-gaussian:sigma=0",))
    (described,) = observation.defences
    assert described["name"] == "dp-gaussian" and described["privacy"]["epsilon"] == math.inf
    assert json.loads(json.dumps(observation.describe(), allow_nan=True))["defences"][0]["privacy"]["epsilon"] == math.inf
    save_observation(tmp_path / "o.pt", observation)
    loaded, _ = load_observation(tmp_path / "o.pt")
    assert loaded.defences == observation.defences


def test_dp_gaussian_must_come_first():
    with pytest.raises(InvalidSpecError, match="defence 'dp-gaussian' must come first: .* discard 'prune'"):
        Scenario(model="cnn2_c1", defences=("prune", "dp-gaussian"))
    assert Scenario(model="cnn2_c1", defences=("none", "dp-gaussian", "prune")).defences[1].startswith("prune")


def update_of(*tensors):
    return ClientUpdate(tuple(f"t{i}" for i in range(len(tensors))), tensors, 1, lambda: None)


@pytest.mark.parametrize("p", [0.0, 0.25, 0.3, 0.5, 0.9, 0.999])
def test_prune_keeps_exactly_the_stated_fraction_of_largest_magnitudes(p):
    torch.manual_seed(0)
    tensors = (torch.randn(7), torch.randn(3, 5), torch.randn(1), torch.randn(10), torch.randn(40, 25))
    for g, d in zip(tensors, create_defence(f"prune:p={p}").apply(update_of(*tensors), torch.Generator())):
        kept = d != 0
        assert int(kept.sum()) == max(1, round((1 - p) * g.numel()))  # round: half to even (10 × 0.75 → 8)
        assert torch.equal(d[kept], g[kept])
        if not kept.all():
            assert g[kept].abs().min() >= g[~kept].abs().max()


def test_prune_breaks_ties_by_position_and_keeps_the_update_shape():
    ones = torch.ones(2, 3)
    (d,) = create_defence("prune:p=0.5").apply(update_of(ones), torch.Generator())
    assert torch.equal(d, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))


def test_prune_on_a_real_update():
    plain, _ = build(model="lenet-zhu", indices=(0,))
    pruned, _ = build(model="lenet-zhu", indices=(0,), defences=("prune:p=0.9",))
    for d, g in zip(pruned.gradients, plain.gradients):
        kept = d != 0  # the top k by magnitude; zero entries of g among them stay zero
        assert int(kept.sum()) == min(max(1, round(0.1 * g.numel())), int((g != 0).sum()))
        assert torch.equal(d[kept], g[kept])


@pytest.mark.parametrize("rounding", ["deterministic", "stochastic"])
@pytest.mark.parametrize("bits", [1, 2, 3, 8])
def test_quantize_has_at_most_two_to_the_bits_levels_per_tensor(bits, rounding):
    plain, _ = build(model="lenet-zhu", indices=(0,))
    quantized, _ = build(model="lenet-zhu", indices=(0,), defences=(f"quantize:bits={bits},rounding={rounding}",))
    for d, g in zip(quantized.gradients, plain.gradients):
        step = (g.max() - g.min()) / (2 ** bits - 1)
        assert len(torch.unique(d)) <= 2 ** bits
        assert float((d - g).abs().max()) <= float(step) * (0.5 if rounding == "deterministic" else 1) * (1 + 1e-9)
        levels = (d - g.min()) / step  # on the grid min + i·Δ
        torch.testing.assert_close(levels, levels.round(), rtol=0, atol=1e-6)


def test_stochastic_quantization_is_unbiased_on_average():
    g = torch.linspace(-1.0, 2.0, 101, dtype=torch.float64) ** 3
    defence = create_defence("quantize:bits=2,rounding=stochastic")
    generator = torch.Generator().manual_seed(0)
    draws = torch.stack([defence.apply(update_of(g), generator)[0] for _ in range(4000)])
    step = float(g.max() - g.min()) / 3
    # each draw is within a step; the mean of 4000 draws is within 5 standard errors (≤ Δ/2 / √4000) of g
    assert float((draws - g).abs().max()) < step
    assert float((draws.mean(0) - g).abs().max()) < 5 * step / 2 / math.sqrt(4000)
    nearest = create_defence("quantize:bits=2").apply(update_of(g), generator)[0]
    assert float((nearest - g).mean().abs()) > 10 * float((draws.mean(0) - g).mean().abs())  # nearest is biased


def test_quantize_leaves_a_constant_tensor_as_is():
    constant = torch.full((4, 4), 0.25)
    for rounding in ("deterministic", "stochastic"):
        (d,) = create_defence(f"quantize:bits=1,rounding={rounding}").apply(update_of(constant), torch.Generator())
        assert torch.equal(d, constant)


def test_noise_is_gaussian_relative_to_each_tensors_rms():
    plain, _ = build(indices=(0,))
    noisy, _ = build(indices=(0,), defences=("noise:scale=0.5",))
    big = 1  # cnn2_c1's fc weight, 54000 entries
    g, d = plain.gradients[big], noisy.gradients[big]
    assert float((d - g).std()) == pytest.approx(0.5 * float(g.pow(2).mean().sqrt()), rel=0.05)
    silent, _ = build(indices=(0,), defences=("noise:scale=0",))
    assert all(torch.equal(a, b) for a, b in zip(silent.gradients, plain.gradients))


@pytest.mark.parametrize("spec, random", [("dp-gaussian:sigma=0.5", True), ("prune:p=0.5", False),
                                          ("quantize:bits=2,rounding=stochastic", True), ("noise", True)])
def test_same_seed_same_defended_update(spec, random):
    a, _ = build(indices=(0, 1), defences=(spec,), seed=5)
    b, _ = build(indices=(0, 1), defences=(spec,), seed=5)
    c, _ = build(indices=(0, 1), defences=(spec,), seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a.gradients, b.gradients))
    assert random != all(torch.equal(x, y) for x, y in zip(a.gradients, c.gradients))


def test_an_all_zero_update_goes_through_every_defence(zero_defence):
    for spec in ("prune:p=0.9", "quantize:bits=1,rounding=stochastic", "quantize", "noise:scale=2"):
        observation, _ = build(indices=(0,), defences=(zero_defence, spec))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in observation.gradients)


@pytest.mark.parametrize("spec, error, message", [
    ("prune:p=1.5", InvalidSpecError, "defence 'prune': p=1.5 is outside [0, 1)"),
    ("prune:p=1", InvalidSpecError, "defence 'prune': p=1.0 is outside [0, 1)"),
    ("prune:p=-0.1", InvalidSpecError, "defence 'prune': p=-0.1 is outside [0, 1)"),
    ("dp-gaussian:sigma=-1", InvalidSpecError, "defence 'dp-gaussian': sigma=-1.0 is outside [0, inf)"),
    ("dp-gaussian:clip=0", InvalidSpecError, "defence 'dp-gaussian': clip=0.0 is outside (0, inf)"),
    ("dp-gaussian:sample_rate=0", InvalidSpecError, "defence 'dp-gaussian': sample_rate=0.0 is outside (0, 1]"),
    ("dp-gaussian:sample_rate=1.5", InvalidSpecError, "defence 'dp-gaussian': sample_rate=1.5 is outside (0, 1]"),
    ("dp-gaussian:steps=0", InvalidSpecError, "defence 'dp-gaussian': steps=0 is outside {1, 2, ...}"),
    ("dp-gaussian:delta=1", InvalidSpecError, "defence 'dp-gaussian': delta=1.0 is outside (0, 1)"),
    ("dp-gaussian:delta=0", InvalidSpecError, "defence 'dp-gaussian': delta=0.0 is outside (0, 1)"),
    ("quantize:bits=0", InvalidSpecError, "defence 'quantize': bits=0 is outside {1, 2, ..., 64}"),
    ("quantize:bits=1.5", InvalidSpecError, "defence 'quantize': hyperparameter bits='1.5' has the wrong type"),
    ("quantize:rounding=up", InvalidSpecError,
     "defence 'quantize': rounding='up' is outside {'deterministic', 'stochastic'}"),
    ("noise:scale=-1", InvalidSpecError, "defence 'noise': scale=-1.0 is outside [0, inf)"),
    ("noise:scale=nan", InvalidSpecError, "defence 'noise': hyperparameter scale='nan' is not finite"),
    ("prune:q=0.5", UnknownNameError, "defence 'prune' has no parameter 'q'; accepted: p"),
])
def test_bad_parameters_give_one_line_errors(spec, error, message):
    with pytest.raises(error) as info:
        Scenario(model="cnn2_c1", defences=(spec,))
    assert isinstance(info.value, CopaError) and str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_a_bad_defence_on_the_command_line_exits_2(tmp_path, capsys):
    out = tmp_path / "o.pt"
    assert main(["observe", "--model", "cnn2_c1", "--defence", "prune:p=1.5", "--out", str(out)]) == 2
    assert "defence 'prune': p=1.5 is outside [0, 1)" in capsys.readouterr().err
    assert not out.exists()


def test_copa_list_defences_lists_them(capsys):
    assert main(["list", "defences"]) == 0
    listed = capsys.readouterr().out
    for name in SHIPPED:
        assert any(line.startswith(name + " ") for line in listed.splitlines())
    assert "Abadi" in listed and "Deep Leakage from Gradients" in listed


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_defence_cites_its_source(name):
    cls = DEFENCES.get(name)
    assert cls.paper and cls.description and cls.__doc__
    for key, parameter in cls.parameters.items():
        assert parameter.source.startswith(("source:", "ours:")), (name, key)


def test_string_parameters_round_trip_through_the_canonical_spec():
    scenario = Scenario(model="cnn2_c1", defences=("quantize:rounding=stochastic,bits=4",))
    assert scenario.defences == ("quantize:bits=4,rounding='stochastic'",)
    assert create_defence(scenario.defences[0]).params == {"bits": 4, "rounding": "stochastic"}
    assert Scenario(model="cnn2_c1", defences=scenario.defences).defences == scenario.defences


def test_dp_gaussian_without_opacus_is_one_line_not_a_failed_run(monkeypatch):
    """A missing dependency is the install's fault, not the run's: one line (a workflow once recorded 'failed'
    runs for every dp-gaussian cell of a venv made before opacus was a dependency)."""
    from copa.bench import run_attack

    monkeypatch.setitem(sys.modules, "opacus.accountants", None)
    with pytest.raises(CopaError, match=r"pip install 'opacus>=1.4'"):
        run_attack(Scenario(model="cnn2_c1", defences=("dp-gaussian:sigma=0.01",)), "mean-image", record_failures=True)


@pytest.mark.parametrize("spec, message", [
    ("prune:p=0.5,p=0.6", r"defence 'prune:p=0\.5,p=0\.6' gives the parameter 'p' twice \(p=0\.5, p=0\.6\)"),
    ("prune:", r"defence 'prune:' is malformed: nothing after ':'; accepted are 'prune' \(its defaults\)"),
    ("none:", r"defence 'none:' is malformed: nothing after ':'; accepted is 'none' \(it has no parameters\)"),
    ("prune:p=0.5,", r"defence 'prune:p=0\.5,' is malformed: it has an empty item"),
    ("prune:,p=0.5", r"it has an empty item"),
])
def test_a_spec_that_would_pick_a_value_silently_is_refused(spec, message):
    """A repeated key (the last would win), an empty item and a bare colon (the defaults) are errors."""
    with pytest.raises(InvalidSpecError, match=message):
        create_defence(spec)
    assert create_defence("prune:p=0.5").params["p"] == 0.5 and create_defence("prune").spec() == "prune:p=0.3"
