"""The defence seam of the threat model: defences run on the client's update inside Scenario.build, the
observation carries the defended update and the defences' public descriptions, never the true gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from copa.errors import CopaError, InvalidSpecError, UnknownNameError
from copa.models import create_model
from copa.hyperparameters import Hyperparameter
from copa.threat import DEFENCES, Defence, Scenario, create_defence, parse_defence, register_defence
from copa.threat.observation_file import load_observation, save_observation

from test_threat import _reachable_tensors


@pytest.fixture
def scaled_noise():
    """A test defence: every gradient times ``scale`` plus N(0, sigma²) from the given generator; it also
    records the per-example gradients it was offered (their mean must be the batch gradient)."""
    seen = {}

    class ScaledNoise(Defence):
        name = "test-scaled-noise"
        paper = "test"
        description = "g * scale + N(0, sigma^2)"
        parameters = {"scale": Hyperparameter(1.0, "test"), "sigma": Hyperparameter(0.0, "test")}

        def validate(self):
            if self.params["sigma"] < 0:
                raise InvalidSpecError(f"defence {self.name!r}: sigma={self.params['sigma']} is negative: "
                                       f"accepted are values >= 0")

        def apply(self, update, generator):
            seen["per_example"] = update.per_example()
            seen["true"] = update.gradients
            return tuple(g * self.params["scale"]
                         + self.params["sigma"] * torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g)
                         for g in update.gradients)

    register_defence(ScaledNoise)
    yield ScaledNoise, seen
    DEFENCES._entries.pop(ScaledNoise.name)


def test_no_defence_is_the_default_and_none_is_no_defence():
    plain, _ = Scenario(model="cnn2_c1", indices=(0,)).build()
    named, _ = Scenario(model="cnn2_c1", indices=(0,), defences=("none",)).build()
    assert Scenario(model="cnn2_c1", defences=("none",)).defences == ()
    assert plain.defences == named.defences == ()
    for a, b in zip(plain.gradients, named.gradients):
        assert torch.equal(a, b)


def test_the_observation_holds_the_defended_update_and_its_public_description(scaled_noise):
    _, seen = scaled_noise
    scenario = Scenario(model="cnn2_c1", indices=(1, 2), dtype="float64",
                        defences=("test-scaled-noise:scale=0.5,sigma=1e-3",))
    assert scenario.defences == ("test-scaled-noise:scale=0.5,sigma=0.001",)
    observation, truth = scenario.build()
    assert observation.defences == ({"name": "test-scaled-noise", "parameters": {"scale": 0.5, "sigma": 0.001}},)
    assert observation.describe()["defences"] == [dict(observation.defences[0])]
    true = seen["true"]
    for defended, g in zip(observation.gradients, true):
        assert not torch.allclose(defended, 0.5 * g)  # the noise was added
        assert (defended - 0.5 * g).std() == pytest.approx(1e-3, rel=0.5)
    # the true gradients are nowhere in what the attacker can reach
    for tensor in _reachable_tensors(observation):
        for secret in true:
            assert tensor.untyped_storage().data_ptr() != secret.untyped_storage().data_ptr()
            if tensor.shape == secret.shape:
                assert not torch.allclose(tensor, secret)
    # per-example gradients: their mean is the batch's (mean-reduced) gradient
    model = create_model("cnn2_c1", num_classes=10, seed=0).double()
    loss = F.cross_entropy(model(truth.preprocess.apply(truth.images01)), truth.labels)
    for per_example, g in zip(seen["per_example"], torch.autograd.grad(loss, list(model.parameters()))):
        assert per_example.shape == (2, *g.shape)
        torch.testing.assert_close(per_example.mean(0), g)


def test_defences_are_deterministic_given_the_defence_seed(scaled_noise):
    spec = ("test-scaled-noise:sigma=0.01",)
    a, _ = Scenario(model="cnn2_c1", indices=(0,), defences=spec, defence_seed=3).build()
    b, _ = Scenario(model="cnn2_c1", indices=(0,), defences=spec, defence_seed=3).build()
    c, _ = Scenario(model="cnn2_c1", indices=(0,), defences=spec, defence_seed=4).build()
    assert all(torch.equal(x, y) for x, y in zip(a.gradients, b.gradients))
    assert not all(torch.equal(x, y) for x, y in zip(a.gradients, c.gradients))


def test_defences_compose_in_order(scaled_noise):
    twice, _ = Scenario(model="cnn2_c1", indices=(0,), dtype="float64",
                        defences=("test-scaled-noise:scale=2", "test-scaled-noise:scale=3")).build()
    plain, _ = Scenario(model="cnn2_c1", indices=(0,), dtype="float64").build()
    for a, b in zip(twice.gradients, plain.gradients):
        torch.testing.assert_close(a, 6 * b)
    assert [d["parameters"]["scale"] for d in twice.defences] == [2.0, 3.0]


def test_observation_files_keep_the_defences(scaled_noise, tmp_path):
    observation, _ = Scenario(model="cnn2_c1", indices=(0,), defences=("test-scaled-noise:scale=2",)).build()
    save_observation(tmp_path / "o.pt", observation)
    loaded, _ = load_observation(tmp_path / "o.pt")
    assert loaded.defences == observation.defences
    for a, b in zip(loaded.gradients, observation.gradients):
        assert torch.equal(a, b)


@pytest.mark.parametrize("spec, error, message", [
    ("prun", UnknownNameError, "unknown defence 'prun'"),
    ("none:p=1", UnknownNameError, "defence 'none' has no parameter 'p'; accepted: (none)"),
    ("test-scaled-noise:sigma=-1", InvalidSpecError, "sigma=-1.0 is negative"),
    ("test-scaled-noise:sigma=abc", InvalidSpecError, "defence 'test-scaled-noise': hyperparameter sigma='abc'"),
    ("test-scaled-noise:sigma", InvalidSpecError, "malformed at 'sigma'"),
    ("", InvalidSpecError, "expected NAME or NAME:key=value"),
])
def test_bad_defence_specs_name_the_value(scaled_noise, spec, error, message):
    with pytest.raises(error) as info:
        Scenario(model="cnn2_c1", defences=(spec,))
    assert message in str(info.value)


def test_parse_and_create():
    assert parse_defence("prune: p = 0.9 , seed=1") == ("prune", {"p": "0.9", "seed": "1"})
    assert create_defence("none").describe() == {"name": "none", "parameters": {}}


def test_a_defence_returning_other_shapes_is_refused():
    class Bad(Defence):
        name = "test-bad-shapes"
        paper = "test"

        def apply(self, update, generator):
            return update.gradients[:-1]

    register_defence(Bad)
    try:
        with pytest.raises(CopaError, match=r"returned \d+ tensors of other shapes than the \d+ gradients"):
            Scenario(model="cnn2_c1", defences=("test-bad-shapes",)).build()
    finally:
        DEFENCES._entries.pop("test-bad-shapes")


def test_a_defence_that_zeroes_every_gradient_gives_a_failed_record_not_nan(zero_defence):
    from copa.bench import run_attack

    scenario = Scenario(model="cnn2_c1", indices=(0,), defences=(zero_defence,))
    for attack in ("rgap", "mean-image"):
        record, reconstruction, _ = run_attack(scenario, attack, record_failures=True)
        assert record["status"] == "failed" and reconstruction is None
        assert record["reason"] == ("failed: observed gradients are all zero (test-zero): the update carries "
                                    "nothing to attack")
        assert record["observation"]["defences"] == [{"name": "test-zero", "parameters": {}}]
