"""The threat model: the observation holds what an attacker may see and nothing else."""

import gc
import types

import pytest
import torch
import torch.nn.functional as F

from copa.errors import CopaError, InvalidSpecError
from copa.models import create_model
from copa.threat import GroundTruth, Observation, Scenario

OBSERVATION_FIELDS = {"model", "model_name", "parameter_names", "gradients", "labels", "batch_size",
                      "input_shape", "num_classes", "preprocess", "loss", "defences", "meta", "local"}  # local: FedAvg public hyperparameters


# Modules and functions lead to the whole interpreter (sys.modules); the observation's own data does not
# live there.
SKIPPED = (type, str, bytes, int, float, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


def _reachable_tensors(root, limit=200_000):
    """Every tensor reachable from ``root`` through Python references (a breadth-first walk)."""
    seen, queue, tensors = set(), [root], []
    while queue and len(seen) < limit:
        obj = queue.pop()
        if id(obj) in seen or isinstance(obj, SKIPPED):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            tensors.append(obj)
            if obj.grad is not None:
                queue.append(obj.grad)
            continue
        queue.extend(gc.get_referents(obj))
    return tensors


def test_observation_has_only_the_threat_model_fields():
    assert {f for f in Observation.__dataclass_fields__} == OBSERVATION_FIELDS


@pytest.mark.parametrize("model", ["cnn2_c1", "convnet"])
def test_attacker_cannot_reach_the_ground_truth(model):
    observation, truth = Scenario(model=model, dataset="sample", indices=(1, 2)).build()
    target_model_space = truth.preprocess.apply(truth.images01)
    secrets = [truth.images01, target_model_space]
    for tensor in _reachable_tensors(observation):
        for secret in secrets:
            assert tensor.untyped_storage().data_ptr() != secret.untyped_storage().data_ptr()
            if tensor.shape[-3:] == secret.shape[-3:]:
                flat = tensor.detach().reshape(-1, *secret.shape[-3:])
                for image in secret:
                    assert not torch.any(torch.all((flat - image).abs().flatten(1) < 1e-7, dim=1))
    assert all(p.grad is None for p in observation.model.parameters())


def test_gradients_are_those_of_the_clients_step():
    scenario = Scenario(model="cnn2_c1", dataset="sample", indices=(4,), dtype="float64")
    observation, truth = scenario.build()
    model = create_model("cnn2_c1", num_classes=10, seed=0).double()
    loss = F.cross_entropy(model(truth.preprocess.apply(truth.images01)), truth.labels)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    assert len(expected) == len(observation.gradients)
    for got, want in zip(observation.gradients, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # The weights the attacker sees are the model's initial weights.
    for got, want in zip(observation.model.parameters(), model.parameters()):
        assert torch.equal(got, want)


def test_batchnorm_statistics_of_the_client_step_do_not_leak():
    observation, _ = Scenario(model="convnet", dataset="sample", indices=(0, 1)).build()
    fresh = create_model("convnet", num_classes=10, seed=0)
    for (name, got), (_, want) in zip(observation.model.named_buffers(), fresh.named_buffers()):
        assert torch.equal(got, want), name


def test_label_unknown_hides_labels_and_known_shows_them():
    hidden, truth = Scenario(model="cnn2_c1", indices=(3,), label_known=False).build()
    shown, _ = Scenario(model="cnn2_c1", indices=(3,)).build()
    assert hidden.labels is None and not hidden.label_known
    assert torch.equal(shown.labels, truth.labels)


def test_preprocessing_modes_and_bounds():
    for mode, lower, upper in [("center", -0.5, 0.5), ("none", 0.0, 1.0)]:
        observation, truth = Scenario(model="cnn2_c1", preprocess=mode).build()
        lo, hi = observation.bounds()
        assert torch.allclose(lo, torch.full_like(lo, lower)) and torch.allclose(hi, torch.full_like(hi, upper))
        x = truth.preprocess.apply(truth.images01)
        assert torch.allclose(truth.preprocess.undo(x), truth.images01)
    observation, truth = Scenario(model="cnn2_c1", preprocess="normalize").build()
    x = truth.preprocess.apply(truth.images01)
    assert torch.allclose(truth.preprocess.undo(x), truth.images01, atol=1e-6)
    assert not torch.allclose(x, truth.images01 - 0.5)


def test_grey_dataset_is_fitted_to_rgb_input(mnist_npz):
    observation, truth = Scenario(model="cnn2_c1", dataset=f"npz:{mnist_npz}", split="test", indices=(0,)).build()
    assert truth.images01.shape == (1, 3, 32, 32)
    assert torch.equal(truth.images01[:, 0], truth.images01[:, 1])
    lenet, truth28 = Scenario(model="lenet-zhu", dataset=f"npz:{mnist_npz}", split="test", indices=(0,),
                              input_shape="1x28x28").build()
    assert truth28.images01.shape == (1, 1, 28, 28)


@pytest.mark.parametrize("kwargs, text", [
    ({"preprocess": "centre"}, "centre"),
    ({"dtype": "float16"}, "float16"),
    ({"indices": ()}, "index"),
    ({"input_shape": "3x32"}, "3x32"),
    ({"num_classes": 0}, "num_classes"),
])
def test_bad_scenarios_are_rejected_with_the_bad_value(kwargs, text):
    with pytest.raises(InvalidSpecError, match=text):
        Scenario(model="cnn2_c1", **kwargs)


def test_cuda_requested_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(CopaError, match="CUDA is not available"):
        Scenario(model="cnn2_c1").build("cuda")


def test_scenario_round_trips_through_a_dict():
    scenario = Scenario(model="cnn3_c1", dataset="sample", indices=(1, 2), preprocess="none")
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    with pytest.raises(InvalidSpecError, match="modle"):
        Scenario.from_dict({**scenario.to_dict(), "modle": "x"})


def test_ground_truth_is_separate():
    observation, truth = Scenario(model="cnn2_c1").build()
    assert isinstance(truth, GroundTruth) and not isinstance(truth, Observation)
