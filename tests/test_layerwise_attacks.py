"""R-GAP and COPA through the shared layer-wise recursion, on a real CIFAR-10 image."""

import pytest

from copa.bench import run_attack
from copa.threat import Scenario


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
