"""R-GAP and COPA through the shared layer-wise recursion, on a real CIFAR-10 image."""

import pytest

from copa.bench import run_attack
from copa.threat import Scenario

pytestmark = pytest.mark.usefixtures("single_thread")


def _run(model, attack, dataset, overrides=None, **scenario):
    return run_attack(Scenario(model=model, dataset=dataset, indices=scenario.pop("indices", (3,)),
                               dtype="float64", **scenario), attack, overrides=overrides)[0]


def test_rgap_and_copa_are_exact_on_a_full_rank_chain(cifar_npz):
    for attack in ("rgap", "copa"):
        record = _run("cnn2_c1", attack, f"npz:{cifar_npz}", {"steps": 10} if attack == "copa" else None)
        assert record["status"] == "ok"
        assert record["metrics"]["mean"]["psnr"] >= 60, attack


def test_copa_improves_on_the_rgap_step_where_the_system_is_rank_deficient(cifar_npz):
    rgap = _run("cnn2_c2", "rgap", f"npz:{cifar_npz}")
    copa = _run("cnn2_c2", "copa", f"npz:{cifar_npz}", {"steps": 150})
    layer = copa["attack_info"]["layers"][0]
    assert layer["nullity"] == 1470  # the COPA index of cnn2_c2 (one conv layer, weight 1)
    assert layer["objective"] < layer["objective_initial"]
    assert copa["metrics"]["mean"]["psnr"] > rgap["metrics"]["mean"]["psnr"] + 3


@pytest.mark.parametrize("model, reason", [("lenet-zhu", "bias"), ("resnet18", "not a chain"),
                                           ("convnet", "not a chain")])
def test_non_chains_are_not_applicable(model, reason):
    for attack in ("rgap", "copa", "copa-gm"):
        record = _run(model, attack, "sample", indices=(0,) if model != "resnet18" else (0, 1))
        assert record["status"] == "not-applicable" and reason in record["reason"]


def test_a_batchnorm_model_with_batch_1_is_a_clear_error():
    from copa.errors import InvalidSpecError

    with pytest.raises(InvalidSpecError, match="batch of 1"):
        Scenario(model="resnet18", indices=(0,)).build()


def test_batches_are_not_applicable():
    record = _run("cnn2_c1", "copa", "sample", indices=(0, 1))
    assert record["status"] == "not-applicable" and "batch size 2" in record["reason"]


def test_copa_gm_needs_the_label():
    record = _run("cnn2_c1", "copa-gm", "sample", indices=(0,), label_known=False)
    assert record["status"] == "not-applicable" and "label" in record["reason"]


def test_copa_gm_equals_copa_where_the_observation_is_reproduced(cifar_npz):
    """cnn2_c2: the layer system is consistent, so gradient matching is constant on x_LS + null(U)."""
    scenario = Scenario(model="cnn2_c2", dataset=f"npz:{cifar_npz}", indices=(3,), dtype="float64",
                        input_shape="3x16x16")
    copa_record, copa_rec, _ = run_attack(scenario, "copa", overrides={"steps": 30})
    gm_record, gm_rec, _ = run_attack(scenario, "copa-gm", overrides={"steps": 30, "steps_image": 50})
    layer = gm_record["attack_info"]["layers"][0]
    assert layer["gm_residual_initial"] < 1e-20 and layer["gm_stage"].startswith("skipped")
    assert (gm_rec.images == copa_rec.images).all()


def test_copa_gm_corrects_an_inconsistent_image_layer(cifar_npz):
    """cnn4_c1: the deficient layer 1 leaves z_0 outside the range of A_0; gradient matching acts there."""
    base = {"model": "cnn4_c1", "dataset": f"npz:{cifar_npz}", "indices": (3,), "dtype": "float64",
            "input_shape": "3x16x16"}
    rgap = run_attack(Scenario(**base), "rgap")[0]
    gm = run_attack(Scenario(**base), "copa-gm", overrides={"steps": 50, "steps_layer1": 0, "steps_image": 150})[0]
    image_layer = gm["attack_info"]["layers"][-1]
    assert image_layer["layer"] == 0 and image_layer["nullity"] == 0
    assert image_layer["gm_stage"] == "ran" and image_layer["gm_residual_initial"] > 1e-6
    assert image_layer["gm_objective"] < image_layer["gm_objective_initial"]
    assert gm["metrics"]["mean"]["psnr"] > rgap["metrics"]["mean"]["psnr"]


def test_the_pull_back_penalty_vanishes_at_the_true_hidden_input(cifar_npz):
    """Layer 1 of cnn4_c1: the true x_1 = σ(A_0 x_0) satisfies the pull-back (A_0 is injective)."""
    from copa.attacks import copa as copa_attack
    from copa.layerwise import solve_backwards
    from copa.layerwise import analyse_chain

    obs, truth = Scenario(model="cnn4_c1", dataset=f"npz:{cifar_npz}", indices=(3,), dtype="float64",
                          input_shape="3x16x16").build()
    analysis = analyse_chain(obs.model, truth.preprocess.apply(truth.images01).double(), truth.labels)
    values = {}

    def refine(problem, ctx):
        if problem.index == 1:
            g = problem.geometry
            least_squares = g.unpad(problem.solution.reshape(1, g.in_channels, *g.padded))
            pull = copa_attack._PullBack([problem], [ctx], least_squares)
            assert pull.injective and pull.range_informative
            true_x1 = analysis.layers[1].input[0]
            values["truth"] = float(pull(true_x1.unsqueeze(0))[0])
            values["least_squares"] = float(pull(least_squares)[0])
        return problem.solution, {}

    solve_backwards(obs, refine)
    assert values["truth"] < 1e-2 * values["least_squares"]
