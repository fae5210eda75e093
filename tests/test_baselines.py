"""DLG, iDLG, Inverting Gradients (and R-GAP's declarations) on real CIFAR-10 / MNIST images."""

import dataclasses
import json

import pytest
import torch

from copa.attacks import gradmatch
from copa.attacks import ATTACKS, create_attack, load_plugins, parse_overrides
from copa.bench import run_attack
from copa.cli import main
from copa.errors import InvalidSpecError, UnknownNameError
from copa.threat import Scenario


# one torch thread and one BLAS thread for every test here (conftest.single_thread)
pytestmark = pytest.mark.usefixtures("single_thread")


def _scenario(npz, index=0, model="lenet-zhu", split="test", **kw):
    shape = kw.pop("input_shape", (1, 28, 28) if "mnist" in str(npz) else (3, 32, 32))
    return Scenario(model=model, dataset=f"npz:{npz}", split=split, indices=(index,) if isinstance(index, int)
                    else tuple(index), input_shape=shape, **kw)


def _without_output_bias(observation):
    """The same observation with the output layer's bias gradient withheld (iDLG's no-bias rule)."""
    keep = [i for i, n in enumerate(observation.parameter_names) if n != "weight_layers.3.bias"]
    return dataclasses.replace(observation, parameter_names=tuple(observation.parameter_names[i] for i in keep),
                               gradients=tuple(observation.gradients[i] for i in keep))


# --- iDLG's label rule ------------------------------------------------------------------------------


def test_idlg_label_rule_recovers_the_true_label_on_real_cifar10_and_mnist(cifar_npz, mnist_npz):
    checked = {"bias": 0, "no bias": 0, "no bias, tanh": 0}
    for npz in (cifar_npz, mnist_npz):
        for index in range(12):
            observation, truth = _scenario(npz, index, label_known=False).build()
            label, info = gradmatch.label_from_gradients(observation)
            assert label.tolist() == truth.labels.tolist(), (npz.name, index)
            assert info["rule"].startswith("argmin of the output bias") and info["unique_sign"]
            checked["bias"] += 1
            # without the bias: iDLG's row-sum rule (sigmoid activations are positive)
            label, info = gradmatch.label_from_gradients(_without_output_bias(observation))
            assert label.tolist() == truth.labels.tolist() and "row sums" in info["rule"]
            checked["no bias"] += 1
    for index in range(10):  # tanh features: the row sums' common sign can be either; the odd sign is the label
        observation, truth = _scenario(cifar_npz, index, model="cnn2_c1", label_known=False).build()
        label, _ = gradmatch.label_from_gradients(_without_output_bias(observation))
        assert label.tolist() == truth.labels.tolist()
        checked["no bias, tanh"] += 1
    assert checked["bias"] >= 20 and checked["no bias"] >= 20


def test_idlg_with_unknown_label_reports_the_true_label_and_runs_dlg_with_it(cifar_npz):
    record, reconstruction, truth = run_attack(_scenario(cifar_npz, 2, label_known=False), "idlg",
                                               overrides={"iterations": 2})
    assert record["status"] == "ok" and record["metrics"]["label_accuracy"] == 1.0
    assert record["attack_info"]["extracted_label"] == int(truth.labels[0])
    assert record["attack_info"]["label_rule"].startswith("argmin")
    known, _, _ = run_attack(_scenario(cifar_npz, 2), "idlg", overrides={"iterations": 2})
    assert known["attack_info"]["extracted_matches_known"] is True


@pytest.mark.parametrize("attack", ["idlg", "ig"])
def test_label_rule_attacks_read_a_batchs_labels_with_the_batch_rule(attack, cifar_npz):
    record, reconstruction, truth = run_attack(_scenario(cifar_npz, (0, 1), label_known=False), attack,
                                               overrides={"iterations": 1})
    assert record["status"] == "ok", record.get("reason")
    assert record["attack_info"]["label_rule"].startswith("bias-gradient label counts")
    assert sorted(record["attack_info"]["extracted_labels"]) == sorted(truth.labels.tolist())


def test_idlg_needs_an_output_linear_layer_with_one_output_per_class():
    from copa.errors import NotApplicableError

    observation, _ = Scenario(model="cnn2_c1", label_known=False).build()
    fewer = dataclasses.replace(observation, num_classes=5)
    with pytest.raises(NotApplicableError, match="10 outputs, not the 5 classes"):
        gradmatch.label_from_gradients(fewer)
    assert "10 outputs" in create_attack("idlg").applicable(fewer)


# --- the gradient-matching module -------------------------------------------------------------------


def test_gradient_model_reproduces_the_observation_without_changing_the_model():
    scenario = Scenario(model="convnet", indices=(0, 1), input_shape=(3, 16, 16))  # BatchNorm, train mode
    observation, truth = scenario.build()
    state = {k: v.clone() for k, v in observation.model.state_dict().items()}
    images = observation.preprocess.apply(truth.images01)
    grads = gradmatch.parameter_gradients(observation, images, truth.labels)
    for g, t in zip(grads, observation.gradients, strict=True):
        torch.testing.assert_close(g, t, rtol=1e-4, atol=1e-5)  # conv biases before BatchNorm: exact 0 ± rounding
    assert float(gradmatch.cosine_distance(grads, observation.gradients)) == pytest.approx(0, abs=1e-5)
    assert float(gradmatch.squared_l2_distance(grads, observation.gradients)) < 1e-8
    # an attack's step: a distance differentiated through the gradients, back to the images
    guess = images.clone().unsqueeze(0).requires_grad_(True)
    model = gradmatch.GradientModel([observation])
    gradmatch.squared_l2_distance(model(guess, truth.labels.unsqueeze(0)), model.targets).backward()
    assert guess.grad is not None and bool(torch.isfinite(guess.grad).all())
    for key, value in observation.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in observation.model.parameters())


def test_distances_match_their_definitions():
    g = (torch.tensor([1.0, 2.0]), torch.tensor([[0.0, -1.0]]))
    t = (torch.tensor([2.0, 0.0]), torch.tensor([[1.0, 1.0]]))
    # concatenated: g = (1, 2, 0, -1), t = (2, 0, 1, 1): <g,t> = 1, |g|² = 6, |t|² = 6
    assert float(gradmatch.cosine_distance(g, t)) == pytest.approx(1 - 1 / 6)
    assert float(gradmatch.squared_l2_distance(g, t)) == pytest.approx(1 + 4 + 1 + 4)
    cos0, cos1 = 2 / (5 ** 0.5 * 2), -1 / (1 * 2 ** 0.5)
    assert float(gradmatch.per_tensor_cosine_distance(g, t)) == pytest.approx((1 - cos0) + (1 - cos1))
    scaled = tuple(3 * x for x in g)
    assert float(gradmatch.cosine_distance(scaled, t)) == pytest.approx(float(gradmatch.cosine_distance(g, t)))
    zero = tuple(torch.zeros_like(x) for x in g)
    assert float(gradmatch.cosine_distance(zero, t)) == 1.0
    x = torch.tensor([[[[0.0, 1.0, 3.0], [0.0, 0.0, 0.0]]]])  # 1×1×2×3
    # horizontal |diffs| 1,2,0,0 -> mean 0.75; vertical 0,1,3 -> mean 4/3
    assert float(gradmatch.total_variation(x)) == pytest.approx(0.75 + 4 / 3)


# --- DLG and IG ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("attack, overrides", [("dlg", {"iterations": 4}), ("ig", {"iterations": 40})])
def test_attacks_reduce_their_own_loss_and_count_their_evaluations(attack, overrides, cifar_npz):
    record, reconstruction, _ = run_attack(_scenario(cifar_npz, 1), attack, overrides=overrides)
    assert record["status"] == "ok"
    info = record["attack_info"]
    initial = info["initial_loss"] if attack == "dlg" else info["initial_losses"][0]
    assert record["attack_loss"] < 0.5 * initial
    evaluations = record["evaluations"]
    assert evaluations["forward"] == evaluations["gradient"] == evaluations["forward_calls_counted"]
    if attack == "dlg":  # L-BFGS: at least one closure call per step, at most max_iter + a few
        assert 4 <= evaluations["forward"] <= 4 * 25 + 1
    else:  # one per Adam step, one for the final iterate, one for the reported cosine
        assert evaluations["forward"] == 40 + 2
        images = reconstruction.images  # clamped to the pixel box: [-0.5, 0.5] with 'center' preprocessing
        assert float(images.min()) >= -0.5 - 1e-6 and float(images.max()) <= 0.5 + 1e-6


def test_dlg_with_unknown_label_returns_a_label_from_its_soft_label(cifar_npz):
    record, reconstruction, _ = run_attack(_scenario(cifar_npz, 0, label_known=False), "dlg",
                                           overrides={"iterations": 3})
    assert reconstruction.labels.shape == (1,) and 0 <= int(reconstruction.labels[0]) < 10
    soft = torch.tensor(record["attack_info"]["soft_labels"])
    assert soft.shape == (1, 10) and float(soft.sum()) == pytest.approx(1, abs=1e-5)
    assert int(soft.argmax()) == int(reconstruction.labels[0])
    assert record["metrics"]["label_accuracy"] in (0.0, 1.0)


@pytest.mark.parametrize("attack, overrides", [("dlg", {"iterations": 2}), ("idlg", {"iterations": 2}),
                                               ("ig", {"iterations": 10, "restarts": 2})])
def test_same_seed_same_reconstruction(attack, overrides, cifar_npz):
    scenario = _scenario(cifar_npz, 4, label_known=attack != "idlg")
    runs = [run_attack(scenario, attack, overrides=overrides, seed=s)[1] for s in (5, 5, 6)]
    assert torch.equal(runs[0].images, runs[1].images) and runs[0].loss == runs[1].loss
    assert not torch.equal(runs[0].images, runs[2].images)


def test_ig_keeps_the_restart_with_the_lowest_own_loss(cifar_npz):
    record, _, _ = run_attack(_scenario(cifar_npz, 3), "ig", overrides={"iterations": 15, "restarts": 3})
    losses = record["attack_info"]["restart_losses"]
    assert len(losses) == 3 and record["attack_info"]["chosen_restart"] == losses.index(min(losses))
    assert record["attack_loss"] == min(losses)


def test_ig_schedule_and_the_papers_iteration_count_from_the_command_line():
    assert create_attack("ig").milestones() == [1800, 3000, 4200]
    attack = create_attack("ig", parse_overrides(["iterations=24000", "tv_weight=1e-6"]))
    assert attack.hp["iterations"] == 24000 and attack.hp["tv_weight"] == 1e-6
    assert attack.milestones() == [9000, 15000, 21000]


def test_optimisation_attacks_share_the_iterations_name():
    load_plugins()
    for name in ("dlg", "idlg", "ig"):
        assert "iterations" in ATTACKS.get(name).hyperparameters


@pytest.mark.parametrize("attack, key, value, text", [
    ("dlg", "iterations", "0", "iterations='0' is below its minimum 1"),
    ("dlg", "lr", "-1", "lr='-1' is below its minimum 0.0"),
    ("dlg", "lr", "0", "lr=0.0 is invalid"),
    ("dlg", "max_iter", "2.5", "max_iter='2.5'"),
    ("idlg", "history_size", "0", "history_size='0' is below its minimum 1"),
    ("ig", "iterations", "-3", "iterations='-3' is below its minimum 1"),
    ("ig", "restarts", "0", "restarts='0' is below its minimum 1"),
    ("ig", "restarts", "1001", "restarts='1001' is above its maximum 1000"),
    ("ig", "tv_weight", "-1e-4", "tv_weight='-1e-4' is below its minimum 0.0"),
    ("ig", "lr", "nan", "lr='nan' is not finite"),
    ("ig", "signed", "maybe", "signed='maybe'"),
])
def test_bad_hyperparameters_are_clear_errors(attack, key, value, text):
    with pytest.raises(InvalidSpecError) as excinfo:
        create_attack(attack, {key: value})
    assert text in str(excinfo.value)


def test_unknown_hyperparameter_names_the_accepted_ones(capsys, tmp_path):
    with pytest.raises(UnknownNameError, match="accepted: boxed, iterations, lr, restarts, signed, tv_weight"):
        create_attack("ig", {"iteration": "5"})
    assert main(["attack", "--attack", "dlg", "--model", "lenet-zhu", "--set", "iterations=zero",
                 "--out", str(tmp_path / "never")]) == 2
    assert "iterations='zero'" in capsys.readouterr().err and not (tmp_path / "never").exists()


# --- declarations (references, sources, compute) ---------------------------------------------------


@pytest.mark.parametrize("name", ["dlg", "idlg", "ig", "rgap"])
def test_attacks_declare_references_sources_and_label_needs(name):
    load_plugins()
    cls = ATTACKS.get(name)
    described = cls.describe()
    assert described["paper"] and described["code"].startswith("github.com/")
    assert described["needs_label"] is False
    for key, spec in described["hyperparameters"].items():
        assert spec["source"], key
    import importlib

    first_author = described["paper"].split()[0].rstrip(",")
    assert first_author in importlib.import_module(cls.__module__).__doc__  # the module docstring cites the paper


def test_rgap_reports_its_compute(cifar_npz):
    record, _, _ = run_attack(_scenario(cifar_npz, 3, model="cnn2_c1", split="train"), "rgap")
    assert record["evaluations"]["forward"] == 0 and record["evaluations"]["gradient"] == 0


def test_dlg_from_the_command_line_writes_a_record(cifar_npz, tmp_path):
    out = tmp_path / "dlg"
    assert main(["attack", "--attack", "dlg", "--model", "lenet-zhu", "--dataset", f"npz:{cifar_npz}",
                 "--split", "test", "--index", "5", "--set", "iterations=2", "--threads", "1",
                 "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["attack"]["code"] == "github.com/mit-han-lab/dlg"
    assert record["hyperparameters"]["iterations"] == 2 and record["evaluations"]["gradient"] >= 2
