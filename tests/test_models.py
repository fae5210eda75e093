"""Tests of copa.models: the architectures, chain specs, activations, seeding and checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from copa.errors import CopaError, DataUnavailableError, InvalidSpecError, NotApplicableError, UnknownNameError
from copa.models import (
    MODELS,
    ChainNet,
    ModelInfo,
    chain_layer_shapes,
    create_model,
    make_activation,
    model_info,
    parse_chain_spec,
    register_chain,
)

# The COPA paper's chains, written out independently of the specs in copa/models.py
# (Chen & Campbell, arXiv 2111.10178, authors' targets.py): convs as (in, out, kernel, stride, padding),
# the FC input size, and the activation after each layer.
PAPER_CHAINS = {
    "cnn2_c0": ([(3, 1, 3, 2, 0)], 225, ["tanh", "tanh"]),
    "cnn2_c1": ([(3, 6, 3, 1, 0)], 5400, ["tanh", "identity"]),
    "cnn2_c2": ([(3, 6, 4, 2, 0)], 1350, ["tanh", "identity"]),
    "cnn2_c4": ([(3, 1, 3, 1, 0)], 900, ["tanh", "tanh"]),
    "cnn2_c5": ([(3, 3, 3, 1, 1)], 3072, ["tanh", "tanh"]),
    "cnn2_c6": ([(3, 12, 5, 2, 0)], 2352, ["tanh", "identity"]),
    "cnn3_c1": ([(3, 6, 3, 1, 0), (6, 3, 4, 2, 0)], 588, ["tanh", "tanh", "identity"]),
    "cnn3_c2": ([(3, 6, 4, 2, 0), (6, 3, 3, 2, 0)], 147, ["tanh", "tanh", "identity"]),
    "cnn3_c3": ([(3, 6, 3, 1, 0), (6, 9, 3, 1, 0)], 7056, ["tanh", "tanh", "identity"]),
    "cnn3_c4": ([(3, 1, 3, 1, 0), (1, 6, 3, 1, 0)], 4704, ["tanh", "tanh", "identity"]),
    "cnn3_c8": ([(3, 9, 3, 1, 0), (9, 3, 4, 2, 0)], 588, ["tanh", "tanh", "tanh"]),
    "cnn3_c9": ([(3, 5, 3, 1, 0), (5, 7, 3, 1, 0)], 5488, ["tanh", "tanh", "tanh"]),
    "cnn4_c1": ([(3, 6, 3, 1, 0), (6, 5, 4, 2, 0), (5, 3, 4, 1, 0)], 363, ["tanh"] * 3 + ["identity"]),
    "cnn4_c2": ([(3, 16, 5, 1, 0), (16, 6, 5, 2, 0), (6, 32, 5, 1, 2)], 4608, ["tanh"] * 3 + ["identity"]),
    "cnn4_c3": ([(3, 6, 5, 1, 0), (6, 16, 5, 2, 0), (16, 16, 5, 1, 2)], 2304, ["tanh"] * 3 + ["identity"]),
}
# R-GAP's CNN6 and CNN6-d (Zhu & Blaschko, ICLR 2021), leaky ReLU 0.2 after every conv.
RGAP_CONVS = {
    "cnn6": [(3, 12, 4, 2, 2), (12, 36, 3, 2, 1), (36, 36, 3, 1, 1), (36, 36, 3, 1, 1), (36, 64, 3, 2, 1), (64, 128, 3, 1, 1)],
    "cnn6-d": [(3, 12, 4, 2, 2), (12, 20, 3, 2, 1), (20, 36, 3, 1, 1), (36, 36, 3, 1, 1), (36, 64, 3, 2, 1), (64, 128, 3, 1, 1)],
}
CHAINS = [*PAPER_CHAINS, *RGAP_CONVS]
NOT_CHAINS = ["lenet-zhu", "convnet", "resnet18"]
INVERTIBLE = ["tanh", "sigmoid", "identity", "softplus", "leakyrelu", "leakyrelu0.01"]


def conv_params(conv: nn.Conv2d) -> tuple[int, int, int, int, int]:
    return conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0], conv.padding[0]


def activation_names(model: ChainNet) -> list[str]:
    return [act.token for act in model.activations]


def weights_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def temporary_model_name():
    """A model name that the test may register; removed from the registry afterwards."""
    name = "test_tiny_chain"
    yield name
    MODELS._entries.pop(name, None)


# --- every model ----------------------------------------------------------------------------------


def test_registry_holds_the_expected_models():
    assert set(CHAINS + NOT_CHAINS) <= set(MODELS.names())


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_builds_and_forwards(name):
    model = create_model(name, num_classes=7)
    info = model.copa_info
    assert isinstance(info, ModelInfo) and model_info(model) is info
    assert info.name == name and info.num_classes == 7 and info.in_shape == (3, 32, 32) and info.seed == 0
    out = model(torch.randn(2, *info.in_shape))
    assert out.shape == (2, 7)
    entry = MODELS.entry(name)
    assert entry.meta["description"] and entry.meta["source"] and entry.meta["is_chain"] == info.is_chain


@pytest.mark.parametrize("name", ["cnn3_c1", "lenet-zhu", "convnet", "resnet18", "cnn6"])
def test_models_build_for_one_channel_28x28(name):
    model = create_model(name, num_classes=3, in_shape=(1, 28, 28))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 3)


# --- chain architectures --------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_CHAINS)
def test_paper_chains_match_the_table(name):
    convs, fc_in, activations = PAPER_CHAINS[name]
    model = create_model(name)
    *conv_layers, fc = model.weight_layers
    assert [conv_params(c) for c in conv_layers] == convs
    assert all(c.bias is None for c in conv_layers)
    assert isinstance(fc, nn.Linear) and fc.in_features == fc_in and fc.out_features == 10 and fc.bias is not None
    assert activation_names(model) == activations
    assert len(model.activations) == len(model.weight_layers)


@pytest.mark.parametrize("name", RGAP_CONVS)
def test_rgap_cnn6_structure(name):
    model = create_model(name)
    *conv_layers, fc = model.weight_layers
    assert [conv_params(c) for c in conv_layers] == RGAP_CONVS[name]
    assert all(c.bias is None for c in conv_layers)
    assert fc.in_features == 3200 and fc.bias is not None  # 128 × 5 × 5
    assert [a.token for a in model.activations] == ["leakyrelu"] * 6 + ["identity"]
    assert all(a.slope == 0.2 for a in model.activations[:-1])


def test_layer_shapes_of_cnn3_c1():
    model = create_model("cnn3_c1")
    assert model.layer_shapes() == [((3, 32, 32), (6, 30, 30)), ((6, 30, 30), (3, 14, 14)), ((588,), (10,))]
    assert chain_layer_shapes("c6k3:tanh c3k4s2:tanh fc:identity", (3, 32, 32), 10) == model.layer_shapes()
    traces = model.trace(torch.randn(2, 3, 32, 32))
    assert [tuple(t.input.shape[1:]) for t in traces] == [s.input for s in model.layer_shapes()]
    assert [tuple(t.output.shape[1:]) for t in traces] == [s.output for s in model.layer_shapes()]
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model.trace(x)[-1].output, model(x))


@pytest.mark.parametrize("name", CHAINS)
def test_chains_are_flagged_chains(name):
    info = create_model(name).copa_info
    assert info.is_chain and info.not_chain_reason is None and info.spec


@pytest.mark.parametrize("name", NOT_CHAINS)
def test_non_chains_are_flagged_with_a_reason(name):
    info = create_model(name).copa_info
    assert not info.is_chain and info.not_chain_reason


def test_lenet_zhu_reason_and_relu_reason():
    assert "bias" in create_model("lenet-zhu").copa_info.not_chain_reason
    info = create_model("cnn2_c1-relu").copa_info
    assert not info.is_chain and "relu" in info.not_chain_reason and "not invertible" in info.not_chain_reason


def test_lenet_zhu_is_dlgs_lenet():
    model = create_model("lenet-zhu")
    *convs, fc = model.weight_layers
    assert [conv_params(c) for c in convs] == [(3, 12, 5, 2, 2), (12, 12, 5, 2, 2), (12, 12, 5, 1, 2)]
    assert all(c.bias is not None for c in convs)
    assert fc.in_features == 768
    assert activation_names(model) == ["sigmoid"] * 3 + ["identity"]
    params = torch.cat([p.flatten() for p in model.parameters()])
    assert params.abs().max() <= 0.5
    # U(-0.5, 0.5) everywhere, not PyTorch's default (which is U(±1/sqrt(fan_in)) ≈ ±0.115 for conv 0)
    assert convs[0].weight.abs().max() > 0.4 and fc.weight.abs().max() > 0.4 and convs[0].bias.abs().max() > 0.1
    assert "U(-0.5, 0.5)" in model.copa_info.init
    mnist = create_model("lenet-zhu", in_shape=(1, 28, 28))
    assert mnist.weight_layers[-1].in_features == 588


def test_convnet_is_inverting_gradients_convnet():
    model = create_model("convnet")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    widths = [(c.in_channels, c.out_channels) for c in convs]
    assert widths == [(3, 64), (64, 128), (128, 128), (128, 256)] + [(256, 256)] * 4
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 8
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert model.model.linear.in_features == 36 * 64
    assert "model.conv7.weight" in model.state_dict()  # inversefed's state_dict keys


def test_resnet18_with_one_input_channel():
    model = create_model("resnet18", num_classes=4, in_shape=(1, 32, 32))
    assert model.conv1.in_channels == 1 and model.fc.out_features == 4


# --- activation suffixes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix, hidden",
    [("sigmoid", "sigmoid"), ("softplus", "softplus"), ("identity", "identity"), ("tanh", "tanh"),
     ("leakyrelu", "leakyrelu"), ("leakyrelu0.1", "leakyrelu0.1")],
)
def test_activation_suffix_replaces_hidden_activations_only(suffix, hidden):
    base = create_model("cnn3_c8")  # tanh everywhere, also in the last layer
    variant = create_model(f"cnn3_c8-{suffix}")
    assert activation_names(variant) == [hidden, hidden, "tanh"]
    assert weights_equal(base, variant)
    assert variant.copa_info.is_chain and variant.copa_info.name == f"cnn3_c8-{suffix}"
    assert variant.copa_info.spec.split()[-1] == "fc:tanh"


def test_leakyrelu_suffix_slopes():
    assert create_model("cnn2_c1-leakyrelu").activations[0].slope == 0.2
    assert create_model("cnn2_c1-leakyrelu0.1").activations[0].slope == 0.1
    assert create_model("cnn6-d-tanh").copa_info.spec.count("tanh") == 6


def test_suffix_on_non_chain_and_unknown_suffix():
    with pytest.raises(NotApplicableError, match="resnet18"):
        create_model("resnet18-tanh")
    with pytest.raises(UnknownNameError, match="cnn2_c1-swish"):
        create_model("cnn2_c1-swish")


# --- activations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("token", INVERTIBLE)
def test_activation_inverse_and_derivative(token):
    act = make_activation(token)
    assert act.invertible
    z = torch.linspace(-4, 4, 101, dtype=torch.float64)
    assert torch.allclose(act.inverse(act(z)), z, atol=1e-6)
    z = z.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(act(z).sum(), z)
    assert torch.allclose(act.derivative(z.detach()), autograd)


def test_leakyrelu_default_slope_is_rgaps():
    act = make_activation("leakyrelu")
    assert act.slope == 0.2 and act(torch.tensor([-1.0])).item() == pytest.approx(-0.2)
    assert make_activation("leakyrelu0.01").slope == 0.01


@pytest.mark.parametrize("token", ["tanh", "sigmoid", "softplus"])
def test_inverse_clips_at_saturation(token):
    act = make_activation(token)
    y = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    assert torch.isfinite(act.inverse(y)).all()


def test_relu_is_not_invertible():
    relu = make_activation("relu")
    assert not relu.invertible
    with pytest.raises(NotApplicableError, match="relu"):
        relu.inverse(torch.ones(3))
    z = torch.tensor([-1.0, 2.0])
    assert torch.equal(relu.derivative(z), torch.tensor([0.0, 1.0]))


# --- seeding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn3_c1", "lenet-zhu", "convnet"])
def test_same_seed_same_weights_different_seed_different_weights(name):
    assert weights_equal(create_model(name, seed=3), create_model(name, seed=3))
    assert not weights_equal(create_model(name, seed=3), create_model(name, seed=4))


def test_caller_rng_untouched_and_ignored():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = create_model("cnn2_c1")
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    assert weights_equal(first, create_model("cnn2_c1"))


# --- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_checkpoint_round_trip(tmp_path, wrap):
    trained = create_model("cnn3_c1", seed=1)
    path = tmp_path / "weights.pt"
    state = trained.state_dict()
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    loaded = create_model("cnn3_c1", seed=0, checkpoint=path)
    assert weights_equal(loaded, trained)
    assert not weights_equal(loaded, create_model("cnn3_c1", seed=0))
    assert loaded.copa_info.checkpoint == str(path)


def test_checkpoint_shape_mismatch_names_parameters(tmp_path):
    path = tmp_path / "cnn2_c1.pt"
    torch.save(create_model("cnn2_c1").state_dict(), path)
    with pytest.raises(InvalidSpecError) as err:
        create_model("cnn2_c2", checkpoint=path)
    message = str(err.value)
    assert "weight_layers.0.weight" in message and "(6, 3, 4, 4)" in message and "(6, 3, 3, 3)" in message
    assert "weight_layers.1.weight" in message and "(10, 1350)" in message and "(10, 5400)" in message


def test_checkpoint_missing_file(tmp_path):
    with pytest.raises(DataUnavailableError, match="nope.pt"):
        create_model("cnn2_c1", checkpoint=tmp_path / "nope.pt")


def test_checkpoint_garbage_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InvalidSpecError, match="garbage.pt"):
        create_model("cnn2_c1", checkpoint=path)
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(InvalidSpecError, match="list.pt"):
        create_model("cnn2_c1", checkpoint=path)


# --- specs and registration -----------------------------------------------------------------------


def test_parse_chain_spec_defaults():
    conv, fc = parse_chain_spec("c6k3:tanh fc:identity")
    assert (conv.kind, conv.out, conv.kernel, conv.stride, conv.padding, conv.bias) == ("conv", 6, 3, 1, 0, False)
    assert fc.is_final and fc.bias
    (conv,) = parse_chain_spec("c4k5s2p1b:leakyrelu0.01 fc:tanh")[:1]
    assert (conv.stride, conv.padding, conv.bias, conv.activation) == (2, 1, True, "leakyrelu0.01")


def test_hidden_linear_layer():
    model = create_model("chain:c4k3:tanh fc16:sigmoid fc:identity", num_classes=5)
    assert [s.output for s in model.layer_shapes()] == [(4, 30, 30), (16,), (5,)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize(
    "spec, bad",
    [
        ("c6k3:tanh fc:swish", "fc:swish"),
        ("c0k3:tanh fc:identity", "c0k3:tanh"),
        ("c6k3s0:tanh fc:identity", "c6k3s0:tanh"),
        ("c6k3:tanh", "c6k3:tanh"),  # the last layer must be fc
        ("x7:tanh fc:identity", "x7:tanh"),
        ("c6k3 fc:identity", "c6k3"),  # no activation
        ("c6k3:tanh fc16:tanh c3k3:tanh fc:identity", "c3k3:tanh"),  # conv after a Linear
        ("fc:tanh fc:identity", "fc:tanh"),  # output layer not last
        ("c6k40:tanh fc:identity", "c6k40:tanh"),  # kernel larger than the 32×32 input
        ("c6k3:leakyrelu0 fc:identity", "leakyrelu0"),
        ("", "empty"),
    ],
)
def test_spec_errors_name_the_bad_token(spec, bad):
    with pytest.raises(InvalidSpecError) as err:
        create_model(f"chain:{spec}")
    assert bad in str(err.value)


def test_spec_errors_show_the_grammar():
    with pytest.raises(InvalidSpecError, match=r"c\{out\}k\{kernel\}"):
        parse_chain_spec("c6k3:tanh q:identity")


def test_register_chain_one_liner(temporary_model_name):
    register_chain(temporary_model_name, "c4k3p1:tanh c2k3s2:tanh fc:identity", description="tiny", source="test")
    model = create_model(temporary_model_name, num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert model.weight_layers[-1].in_features == 2 * 15 * 15  # (32 - 3) // 2 + 1 = 15
    assert model.copa_info.is_chain and model.copa_info.source == "test"
    assert MODELS.entry(temporary_model_name).meta["is_chain"]
    with pytest.raises(CopaError, match="already registered"):
        register_chain(temporary_model_name, "c4k3:tanh fc:identity")


def test_register_chain_rejects_bad_spec_and_init(temporary_model_name):
    with pytest.raises(InvalidSpecError, match="q3"):
        register_chain(temporary_model_name, "q3:tanh fc:identity")
    with pytest.raises(InvalidSpecError, match="xavier"):
        register_chain(temporary_model_name, "c4k3:tanh fc:identity", init="xavier")
    assert temporary_model_name not in MODELS


# --- bad arguments --------------------------------------------------------------------------------


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownNameError, match=r"unknown model 'cnn3_c7'\. Did you mean 'cnn3_c"):
        create_model("cnn3_c7")


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(InvalidSpecError, match="num_classes"):
        create_model("cnn2_c1", num_classes=num_classes)


@pytest.mark.parametrize("in_shape", [(3, 32), (3, 0, 32), (3, 32, 32, 1), (3, 32.0, 32), "3x32x32"])
def test_bad_in_shape(in_shape):
    with pytest.raises(InvalidSpecError, match="in_shape"):
        create_model("cnn2_c1", in_shape=in_shape)


def test_convnet_rejects_tiny_input():
    with pytest.raises(InvalidSpecError, match="convnet"):
        create_model("convnet", in_shape=(3, 8, 8))
