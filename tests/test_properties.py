"""Property-based tests (hypothesis): over random small chain specs, including invalid ones, the COPA
security metric and R-GAP either run or raise the documented error — a :class:`copa.errors.CopaError`
(:class:`InvalidSpecError` for a spec or shape that cannot be built, :class:`NotApplicableError` for a
model that is not a chain, :class:`UnknownNameError` for names) — never an unexplained exception from
torch, NumPy or Python (ValueError, RuntimeError, IndexError, ZeroDivisionError, ...).
The contract is in docs/reliability.md ("Error contract").
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from copa.errors import CopaError
from copa.models import create_model, parse_chain_spec

pytestmark = pytest.mark.usefixtures("single_thread")

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CHAIN_ACTIVATIONS = ["tanh", "sigmoid", "identity", "softplus", "leakyrelu", "leakyrelu0.1"]
BREAKAGES = ["zero size", "bad activation", "relu", "conv bias", "conv after fc", "no final fc", "stray token",
             "tiny input", "odd channels"]


@st.composite
def conv_token(draw, zero_size: bool = False) -> str:
    low = 0 if zero_size else 1  # 0 channels, kernel or stride: invalid
    token = f"c{draw(st.integers(low, 4))}k{draw(st.integers(low, 5))}"
    if draw(st.booleans()):
        token += f"s{draw(st.integers(low, 3))}"
    if draw(st.booleans()):
        token += f"p{draw(st.integers(0, 3))}"
    return f"{token}:{draw(st.sampled_from(CHAIN_ACTIVATIONS))}"


@st.composite
def scenario(draw) -> tuple[str, tuple[int, int, int]]:
    """A chain spec and an input shape: most are valid chains (convs, sometimes a hidden Linear, the final
    Linear) on inputs of 1 or 3 channels and 3..16 pixels; about one in three is broken in one way
    (BREAKAGES): sizes of 0, unknown or non-invertible activations, conv biases, layers out of order, no
    final Linear, stray tokens, inputs smaller than a kernel, channel counts the data cannot be fitted to."""
    broken = draw(st.sampled_from([None, None, *BREAKAGES]))
    tokens = draw(st.lists(conv_token(zero_size=broken == "zero size"), min_size=0, max_size=3))
    if draw(st.integers(0, 5)) == 0:
        tokens.append(f"fc{draw(st.integers(1, 8))}:{draw(st.sampled_from(CHAIN_ACTIVATIONS))}")
    tokens.append(f"fc:{draw(st.sampled_from(['identity', 'tanh', 'sigmoid']))}")
    where = draw(st.integers(0, len(tokens) - 1))
    if broken in ("bad activation", "relu"):
        name = "relu" if broken == "relu" else draw(st.sampled_from(["tanhh", "leakyrelu0", "leakyrelu-1", ""]))
        tokens[where] = tokens[where].rpartition(":")[0] + ":" + name
    elif broken == "conv bias" and tokens[0].startswith("c"):
        tokens[0] = tokens[0].replace(":", "b:", 1)
    elif broken == "conv after fc":
        tokens = tokens[::-1]
    elif broken == "no final fc":
        tokens = tokens[:-1]
    elif broken == "stray token":
        tokens.insert(where, draw(st.sampled_from(["c3:tanh", "k3", "fc:", "c3k3", "fc-1:tanh", "c3k3s1p1bb:tanh"])))
    channels = draw(st.sampled_from([2, 4] if broken == "odd channels" else [1, 3]))
    sizes = st.integers(1, 3) if broken == "tiny input" else st.integers(3, 16)
    return " ".join(tokens), (channels, draw(sizes), draw(sizes))


def run_or_documented_error(fn):
    """Call ``fn``; a CopaError is the documented outcome. Anything else fails the test (with its type)."""
    try:
        return fn()
    except CopaError as err:
        message = str(err)
        assert message and "\n" not in message, f"not a one-line message: {message!r}"  # the CLI prints one line
        return None


@SETTINGS
@given(case=scenario())
def test_parsing_and_building_raise_only_documented_errors(case):
    spec, shape = case
    model = run_or_documented_error(lambda: create_model(f"chain:{spec}", in_shape=shape))
    if model is None:
        return
    layers = parse_chain_spec(spec)
    # what was built is what the spec says: output shape and layer count
    assert len(model.weight_layers) == len(layers)
    with torch.no_grad():
        logits = model(torch.zeros(1, *shape))
    assert logits.shape == (1, 10)


@SETTINGS
@given(case=scenario(), random_delta=st.booleans())
def test_security_metric_runs_or_raises_a_documented_error(case, random_delta):
    spec, shape = case
    from copa.layerwise.security import security_report

    report = run_or_documented_error(lambda: security_report(
        f"chain:{spec}", input_shape=shape, condition=False, delta_source="random" if random_delta else "image"))
    if report is None:
        return
    assert report.copa_index <= 0
    assert 0.0 <= report.normalised_score <= 1.0 + 1e-12
    assert all(layer.deficiency <= 0 and layer.rank >= 0 for layer in report.layers)
    assert math.isfinite(report.normalised_score)


@SETTINGS
@given(case=scenario(), solver=st.sampled_from(["normal", "lstsq"]))
def test_rgap_runs_or_raises_a_documented_error(case, solver):
    spec, shape = case
    from copa.attacks import create_attack
    from copa.threat import Scenario

    attack = create_attack("rgap", {"solver": solver})
    built = run_or_documented_error(lambda: Scenario(model=f"chain:{spec}", dataset="sample", input_shape=shape,
                                                     dtype="float64").build())
    if built is None:
        return
    observation, truth = built
    reason = attack.applicable(observation)
    if reason is not None:
        assert isinstance(reason, str) and reason  # recorded as not-applicable with this reason
        return
    reconstruction = run_or_documented_error(lambda: attack.reconstruct(observation, torch.Generator().manual_seed(0)))
    if reconstruction is None:
        return
    assert reconstruction.images.shape == truth.images01.shape
