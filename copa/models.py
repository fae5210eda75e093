"""Target models: the COPA paper's chain CNNs, R-GAP's CNN6, DLG's LeNet, Inverting Gradients' ConvNet, ResNet-18.

Use :func:`create_model`; every model it returns carries ``model.copa_info`` (a :class:`ModelInfo`).

Chain models
------------
COPA (Chen & Campbell, arXiv 2111.10178) and R-GAP (Zhu & Blaschko, ICLR 2021) solve for the input
layer by layer, backwards, so they need a *chain*: convolutions without bias, each followed by an
invertible element-wise activation, and a final Linear layer with bias. :class:`ChainNet` builds such
a network from a one-line spec:

    spec   := layer (whitespace layer)*
    layer  := conv | hidden | final
    conv   := "c" OUT "k" KERNEL ["s" STRIDE] ["p" PADDING] ["b"] ":" ACT    Conv2d (no bias unless "b")
    hidden := "fc" WIDTH ":" ACT                                             Linear with bias to WIDTH
    final  := "fc" ":" ACT                                                   Linear with bias to num_classes
    ACT    := tanh | sigmoid | identity | softplus | relu | leakyrelu[SLOPE]

STRIDE defaults to 1, PADDING to 0, SLOPE to 0.2 (R-GAP's CNN6; ``leakyrelu0.01`` is PyTorch's
default). The parts of a conv token come in the order shown. Convolutions come first, the last layer
must be the final ``fc``, and the input is flattened before the first Linear; the Linear input sizes
follow from ``in_shape``. Example, COPA's ``cnn3_c1``: ``c6k3:tanh c3k4s2:tanh fc:identity``.

A chain architecture is added in one line::

    register_chain("my_cnn", "c8k3p1:tanh c4k3s2:tanh fc:identity", description="...", source="...")

and an anonymous one is built directly with ``create_model("chain:c8k3p1:tanh fc:identity")``.
``create_model("random-chain:SEED")`` builds the seeded random chain of :func:`random_chain_spec`
(depth 1–4, the population of the security-metric study; even seeds rank-deficient, odd full-rank).
Activation variants of a registered chain are named with a suffix (see :data:`ACTIVATION_SUFFIXES`):
``cnn2_c1-sigmoid`` replaces the activations of all layers but the last by ``sigmoid``.

Seeding
-------
Construction runs under ``torch.random.fork_rng`` with ``torch.manual_seed(seed)``: the same
``(name, seed)`` gives bit-identical weights and the caller's global RNG is left untouched.
"""

from __future__ import annotations

import functools
import math
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import DataUnavailableError, InvalidSpecError, NotApplicableError, UnknownNameError, unknown_name
from .registry import Registry

__all__ = [
    "ACTIVATION_SUFFIXES",
    "Activation",
    "ChainNet",
    "INIT_SCHEMES",
    "InvertingGradientsConvNet",
    "LayerCount",
    "LayerShape",
    "LayerSpec",
    "LayerTrace",
    "MODELS",
    "ModelInfo",
    "RANDOM_CHAIN_PREFIX",
    "chain_layer_counts",
    "chain_layer_shapes",
    "chain_not_chain_reason",
    "create_model",
    "format_chain_spec",
    "make_activation",
    "model_info",
    "parse_chain_spec",
    "random_chain_spec",
    "register_chain",
    "with_hidden_activation",
]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

COPA_PAPER = "Chen & Campbell, arXiv 2111.10178 (COPA), authors' targets.py"
RGAP_PAPER = "Zhu & Blaschko, ICLR 2021 (R-GAP), JunyiZhu-AI/R-GAP models/"
DLG_PAPER = "Zhu, Liu & Han, NeurIPS 2019 (DLG), mit-han-lab/dlg models/vision.py"
IG_PAPER = "Geiping et al., NeurIPS 2020 (Inverting Gradients), JonasGeiping/invertinggradients inversefed/nn/models.py"

CHAIN_GRAMMAR = (
    "layers separated by spaces: 'c{out}k{kernel}[s{stride}][p{padding}][b]:{act}' (Conv2d, bias only with 'b'), "
    "'fc{width}:{act}' (hidden Linear), and last 'fc:{act}' (Linear to num_classes); "
    "act is one of tanh, sigmoid, identity, softplus, relu, leakyrelu[slope]; "
    "example: 'c6k3:tanh c3k4s2:tanh fc:identity'"
)

DEFAULT_IN_SHAPE = (3, 32, 32)


# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------


class Activation(nn.Module):
    """An element-wise activation that also knows its inverse and derivative (as COPA needs).

    ``forward(z)`` maps pre-activations to activations, ``inverse(y)`` maps back (clipping at
    saturation), ``derivative(z)`` is σ'(z) evaluated at the pre-activation, and ``invertible`` says
    whether the inverse exists.
    """

    name: str = ""
    invertible: bool = True

    @property
    def token(self) -> str:
        """The spec token that builds this activation, e.g. ``'tanh'`` or ``'leakyrelu0.1'``."""
        return self.name

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.token if self.token != self.name else ""


class Tanh(Activation):
    """tanh; ``inverse`` clamps y into (-1, 1) by ``margin`` before atanh."""

    name = "tanh"
    margin = 1e-6

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.atanh(y.clamp(-1 + self.margin, 1 - self.margin))

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return 1 - torch.tanh(z) ** 2


class Sigmoid(Activation):
    """Logistic sigmoid; ``inverse`` clamps y into (0, 1) by ``margin`` before the logit."""

    name = "sigmoid"
    margin = 1e-6

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.logit(y, eps=self.margin)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)


class Identity(Activation):
    """No activation (a linear layer)."""

    name = "identity"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(z)


class LeakyReLU(Activation):
    """Leaky ReLU with ``slope`` > 0 on negative inputs (default 0.2, as in R-GAP's CNN6)."""

    name = "leakyrelu"
    default_slope = 0.2

    def __init__(self, slope: float = default_slope):
        super().__init__()
        if not (math.isfinite(slope) and slope > 0):
            raise InvalidSpecError(
                f"leakyrelu slope {slope!r} is invalid: use a finite slope > 0 (slope 0 is 'relu', not invertible)"
            )
        self.slope = float(slope)

    @property
    def token(self) -> str:
        return self.name if self.slope == self.default_slope else f"{self.name}{self.slope:g}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z, self.slope)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(y >= 0, y, y / self.slope)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.slope))


class Softplus(Activation):
    """softplus(z) = log(1 + e^z) with beta 1; ``inverse`` clamps y to ≥ ``margin`` (softplus > 0)."""

    name = "softplus"
    margin = 1e-6

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.softplus(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = y.clamp(min=self.margin)
        return y + torch.log(-torch.expm1(-y))  # log(e^y - 1), stable for large y

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z)


class ReLU(Activation):
    """ReLU. Not invertible: it maps every negative pre-activation to 0."""

    name = "relu"
    invertible = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotApplicableError("activation relu is not invertible (negative pre-activations all map to 0)")

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return (z > 0).to(z.dtype)


_ACTIVATION_CLASSES: dict[str, type[Activation]] = {
    cls.name: cls for cls in (Tanh, Sigmoid, Identity, Softplus, ReLU, LeakyReLU)
}
_LEAKY_RE = re.compile(r"leakyrelu(?P<slope>\d*\.?\d+)?")

#: Activation names accepted in specs and as model-name suffixes (``cnn2_c1-sigmoid``,
#: ``cnn2_c1-leakyrelu0.1``); a suffix replaces the activations of all but the last layer.
ACTIVATION_SUFFIXES: tuple[str, ...] = ("tanh", "sigmoid", "identity", "softplus", "leakyrelu", "leakyrelu<slope>", "relu")


def make_activation(token: str) -> Activation:
    """Build an activation from its spec token (``tanh``, ``leakyrelu0.01``, ...)."""
    if token in _ACTIVATION_CLASSES and token != "leakyrelu":
        return _ACTIVATION_CLASSES[token]()
    match = _LEAKY_RE.fullmatch(token)
    if match:
        slope = match["slope"]
        return LeakyReLU(float(slope)) if slope else LeakyReLU()
    raise InvalidSpecError(
        f"unknown activation {token!r}: accepted are tanh, sigmoid, identity, softplus, relu, "
        f"leakyrelu (slope 0.2) and leakyrelu<slope> (e.g. leakyrelu0.01)"
    )


# --------------------------------------------------------------------------------------------------
# Chain specs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One parsed layer of a chain spec.

    ``kind`` is ``"conv"`` or ``"fc"``; ``out`` is the conv's output channels or the hidden Linear's
    width (``None`` for the final Linear, whose width is num_classes).
    """

    kind: str
    out: int | None
    activation: str
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    bias: bool = False

    @property
    def is_final(self) -> bool:
        return self.kind == "fc" and self.out is None

    @property
    def token(self) -> str:
        """The canonical spec token of this layer."""
        if self.kind == "fc":
            return f"fc{'' if self.out is None else self.out}:{self.activation}"
        stride = f"s{self.stride}" if self.stride != 1 else ""
        padding = f"p{self.padding}" if self.padding != 0 else ""
        return f"c{self.out}k{self.kernel}{stride}{padding}{'b' if self.bias else ''}:{self.activation}"


_CONV_RE = re.compile(r"c(?P<out>\d+)k(?P<kernel>\d+)(?:s(?P<stride>\d+))?(?:p(?P<padding>\d+))?(?P<bias>b)?")
_FC_RE = re.compile(r"fc(?P<out>\d+)?")


def _spec_error(token: str, problem: str) -> InvalidSpecError:
    return InvalidSpecError(f"bad chain layer {token!r}: {problem}. Accepted grammar: {CHAIN_GRAMMAR}")


def parse_chain_spec(spec: str) -> list[LayerSpec]:
    """Parse a one-line chain spec (grammar in the module docstring) into :class:`LayerSpec` s."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidSpecError(f"chain spec {spec!r} is empty. Accepted grammar: {CHAIN_GRAMMAR}")
    tokens = spec.split()
    layers: list[LayerSpec] = []
    for index, token in enumerate(tokens):
        shape_part, colon, act = token.partition(":")
        if not colon or not act:
            raise _spec_error(token, "missing ':{activation}' after the layer")
        try:
            activation = make_activation(act).token
        except InvalidSpecError as err:
            raise _spec_error(token, str(err)) from None
        if conv := _CONV_RE.fullmatch(shape_part):
            sizes = {k: int(v) for k, v in conv.groupdict().items() if k != "bias" and v is not None}
            for key in ("out", "kernel", "stride"):
                if key in sizes and sizes[key] < 1:
                    raise _spec_error(token, f"{key} must be ≥ 1, got {sizes[key]}")
            if layers and layers[-1].kind == "fc":
                raise _spec_error(token, "a convolution cannot follow a Linear ('fc') layer")
            layers.append(LayerSpec("conv", activation=activation, bias=conv["bias"] is not None, **sizes))
        elif fc := _FC_RE.fullmatch(shape_part):
            out = None if fc["out"] is None else int(fc["out"])
            if out is not None and out < 1:
                raise _spec_error(token, f"width must be ≥ 1, got {out}")
            if out is None and index != len(tokens) - 1:
                raise _spec_error(token, "the output layer 'fc:{act}' must be the last layer")
            layers.append(LayerSpec("fc", out=out, activation=activation, bias=True))
        else:
            raise _spec_error(token, f"unknown layer {shape_part!r}")
    if not layers[-1].is_final:
        raise _spec_error(tokens[-1], "the last layer must be the output Linear 'fc:{act}' (to num_classes)")
    return layers


def format_chain_spec(layers: Sequence[LayerSpec]) -> str:
    """The canonical one-line spec of ``layers`` (inverse of :func:`parse_chain_spec`)."""
    return " ".join(layer.token for layer in layers)


def _as_layers(spec: str | Sequence[LayerSpec]) -> list[LayerSpec]:
    return parse_chain_spec(spec) if isinstance(spec, str) else list(spec)


def with_hidden_activation(spec: str | Sequence[LayerSpec], activation: str) -> list[LayerSpec]:
    """Replace the activation of every layer but the last by ``activation``."""
    token = make_activation(activation).token
    layers = _as_layers(spec)
    return [replace(layer, activation=token) for layer in layers[:-1]] + layers[-1:]


def chain_not_chain_reason(spec: str | Sequence[LayerSpec]) -> str | None:
    """Why ``spec`` is not a COPA/R-GAP chain, or ``None`` if it is one.

    A chain has bias-free convolutions, invertible activations and a final Linear with bias.
    """
    layers = _as_layers(spec)
    reasons = []
    biased = [str(i) for i, layer in enumerate(layers) if layer.kind == "conv" and layer.bias]
    if biased:
        layers_text = f"conv layer {biased[0]} has" if len(biased) == 1 else f"conv layers {', '.join(biased)} have"
        reasons.append(f"{layers_text} a bias (chains need bias-free convolutions)")
    for i, layer in enumerate(layers):
        if not make_activation(layer.activation).invertible:
            reasons.append(f"activation {layer.activation} (layer {i}) is not invertible")
    return "; ".join(reasons) or None


class LayerShape(NamedTuple):
    """Input and output shape of one weight layer: ``(C, H, W)`` for convs, ``(features,)`` for Linear."""

    input: tuple[int, ...]
    output: tuple[int, ...]


def _check_shape(in_shape: Any) -> tuple[int, int, int]:
    if (
        not isinstance(in_shape, (tuple, list))
        or len(in_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in in_shape)
    ):
        raise InvalidSpecError(f"in_shape {in_shape!r} is invalid: use 3 positive ints (channels, height, width)")
    return tuple(in_shape)  # type: ignore[return-value]


def _check_num_classes(num_classes: Any) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise InvalidSpecError(f"num_classes {num_classes!r} is invalid: use an int ≥ 1")
    return num_classes


def chain_layer_shapes(
    spec: str | Sequence[LayerSpec], in_shape: Sequence[int] = DEFAULT_IN_SHAPE, num_classes: int = 10
) -> list[LayerShape]:
    """Input/output shape of each weight layer of a chain, from Conv2d's output-size formula.

    Raises :class:`InvalidSpecError` naming the layer when its kernel is larger than its padded input.
    """
    layers = _as_layers(spec)
    shape: tuple[int, ...] = _check_shape(tuple(in_shape))
    _check_num_classes(num_classes)
    shapes = []
    for layer in layers:
        if layer.kind == "conv":
            channels, height, width = shape
            if min(height, width) + 2 * layer.padding < layer.kernel:
                raise _spec_error(
                    layer.token,
                    f"kernel {layer.kernel} is larger than its padded input "
                    f"{height + 2 * layer.padding}×{width + 2 * layer.padding} (input shape {shape})",
                )
            out = (
                layer.out,
                (height + 2 * layer.padding - layer.kernel) // layer.stride + 1,
                (width + 2 * layer.padding - layer.kernel) // layer.stride + 1,
            )
        else:
            shape = (math.prod(shape),)
            out = (num_classes if layer.out is None else layer.out,)
        shapes.append(LayerShape(shape, out))
        shape = out
    return shapes


@dataclass(frozen=True)
class LayerTrace:
    """What one weight layer saw in a forward pass: its input, pre-activation and output."""

    input: torch.Tensor
    pre_activation: torch.Tensor
    output: torch.Tensor


class ChainNet(nn.Module):
    """A chain of weight layers (Conv2d, then Linear), each followed by an element-wise activation.

    ``weight_layers[i]`` is followed by ``activations[i]``; the input is flattened before the first
    Linear. Built from a one-line spec (see the module docstring) with PyTorch's default init.
    """

    def __init__(
        self, spec: str | Sequence[LayerSpec], num_classes: int = 10, in_shape: Sequence[int] = DEFAULT_IN_SHAPE
    ):
        super().__init__()
        self.layers = _as_layers(spec)
        self.spec = format_chain_spec(self.layers)
        self.num_classes = _check_num_classes(num_classes)
        self.in_shape = _check_shape(tuple(in_shape))
        self._shapes = chain_layer_shapes(self.layers, self.in_shape, num_classes)
        self.weight_layers = nn.ModuleList()
        for layer, shape in zip(self.layers, self._shapes):
            if layer.kind == "conv":
                module: nn.Module = nn.Conv2d(
                    shape.input[0], layer.out, layer.kernel, stride=layer.stride, padding=layer.padding, bias=layer.bias
                )
            else:
                module = nn.Linear(shape.input[0], shape.output[0], bias=layer.bias)
            self.weight_layers.append(module)
        self.activations = nn.ModuleList(make_activation(layer.activation) for layer in self.layers)

    def layer_shapes(self) -> list[LayerShape]:
        """For each weight layer, its input and output shape (per example, without the batch dim)."""
        return list(self._shapes)

    @property
    def not_chain_reason(self) -> str | None:
        return chain_not_chain_reason(self.layers)

    @property
    def is_chain(self) -> bool:
        return self.not_chain_reason is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer, activation in zip(self.weight_layers, self.activations):
            if isinstance(layer, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            x = activation(layer(x))
        return x

    def trace(self, x: torch.Tensor) -> list[LayerTrace]:
        """Forward pass that keeps, per weight layer, the input (flattened for Linear), pre-activation and output."""
        traces = []
        for layer, activation in zip(self.weight_layers, self.activations):
            if isinstance(layer, nn.Linear) and x.dim() > 2:
                x = x.flatten(1)
            z = layer(x)
            y = activation(z)
            traces.append(LayerTrace(x, z, y))
            x = y
        return traces


# --------------------------------------------------------------------------------------------------
# Seeded random chains (the population study of the security metric)
# --------------------------------------------------------------------------------------------------

RANDOM_CHAIN_PREFIX = "random-chain:"
RANDOM_CHAIN_DEPTHS: tuple[int, ...] = (1, 2, 3, 4)
RANDOM_CHAIN_CHANNELS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
RANDOM_CHAIN_KERNELS: tuple[int, ...] = (2, 3, 4, 5)
RANDOM_CHAIN_STRIDES: tuple[int, ...] = (1, 2)
RANDOM_CHAIN_ACTIVATIONS: tuple[str, ...] = ("tanh", "sigmoid", "leakyrelu", "softplus")
RANDOM_CHAIN_MAX_UNKNOWNS = 4096
"""Bound on the unknowns ``C·(H+2p)·(W+2p)`` of every conv layer system of a random chain."""
RANDOM_CHAIN_MAX_ROWS = 12288
"""Bound on the rows (forward + gradient + padding) of every conv layer system of a random chain."""
RANDOM_CHAIN_ATTEMPTS = 20_000
"""Rejection-sampling draws per chain before :func:`random_chain_spec` gives up. At 3×32×32 the rarest
case, a depth-4 full-rank chain, is accepted about once in 900 draws (failure odds ~e⁻²²; 0.4 s)."""


class LayerCount(NamedTuple):
    """Rows and unknowns of one conv layer's system ``U = [A; K; P]``, counted as copa.layerwise counts them.

    ``unknowns`` = ``C·(H+2p)·(W+2p)`` (padded entries included), ``forward_rows`` = ``F·H'·W'``,
    ``gradient_rows`` = ``F·C·k²``, ``padding_rows`` = the padded entries; ``uncovered`` = interior
    entries that no kernel window reaches (zero columns of ``A`` and ``K``: stride > kernel, or
    ``(H + 2p − k) mod s`` trailing rows/columns past the last window, e.g. cnn2_c6).

    ``rank_bound`` bounds ``rank U`` by counting alone, following the block elimination of
    :func:`copa.layerwise.layer_rank` (``rank U = padding + C·rank K₁ + rank(A_int N)``):

    * ``K₁`` (one channel's gradient rows on the interior) splits by stride residue class: kernel
      offsets ``u ≡ a (mod s)`` only reach positions ``≡ a``, so
      ``rank K₁ ≤ Σ_{a,b} min(F·n_a·n_b, m_a·m_b)`` (``n_a`` offsets and ``m_a`` covered interior
      positions per axis in class ``a``);
    * on ``null(K)`` the forward rows satisfy the ``F·min(F, H'W')`` independent identities
      ``Σ_{p,q} δ[f,p,q]·(A x)[f',p,q] = Σ W[f']·(K x)[f] = 0`` (the ``F²`` dependent rows of
      copa.layerwise.security), so ``rank(A_int N) ≤ min(C·dim null K₁, F·H'W' − F·min(F, H'W'))``.

    On the COPA paper's chains the bound equals the measured rank; on random chains it is an upper
    bound (a negative ``predicted_deficiency`` is a sure deficiency), usually attained.
    """

    unknowns: int
    forward_rows: int
    gradient_rows: int
    padding_rows: int
    uncovered: int
    rank_bound: int

    @property
    def rows(self) -> int:
        return self.forward_rows + self.gradient_rows + self.padding_rows

    @property
    def count_deficient(self) -> bool:
        """More unknowns than rows: rank-deficient whatever the weights and ``δ``."""
        return self.unknowns > self.rows

    @property
    def predicted_deficiency(self) -> int:
        """``min(0, rank_bound − unknowns)``: the deficiency the counting predicts (≤ 0, as in the report)."""
        return min(0, self.rank_bound - self.unknowns)


def _axis_classes(size: int, padding: int, kernel: int, stride: int, out: int) -> list[tuple[int, int]]:
    """Per stride residue class ``a`` of one padded axis: (kernel offsets ``≡ a``, covered interior positions ``≡ a``)."""
    reached = {j * stride + t for j in range(out) for t in range(kernel)}
    covered = [i for i in range(padding, padding + size) if i in reached]
    return [(sum(1 for t in range(kernel) if t % stride == a), sum(1 for i in covered if i % stride == a))
            for a in range(stride)]


def chain_layer_counts(spec: str | Sequence[LayerSpec], in_shape: Sequence[int] = DEFAULT_IN_SHAPE) -> list[LayerCount]:
    """The :class:`LayerCount` of every conv layer of a chain (no weights needed; Linear layers are skipped)."""
    layers = _as_layers(spec)
    counts = []
    for layer, shape in zip(layers, chain_layer_shapes(layers, in_shape)):
        if layer.kind != "conv":
            continue
        (c, h, w), (f, ho, wo), p = shape.input, shape.output, layer.padding
        rows_h = _axis_classes(h, p, layer.kernel, layer.stride, ho)
        rows_w = _axis_classes(w, p, layer.kernel, layer.stride, wo)
        covered = sum(m for _, m in rows_h) * sum(m for _, m in rows_w)  # per channel
        k1_rank = sum(min(f * na * nb, ma * mb) for na, ma in rows_h for nb, mb in rows_w)
        unknowns, forward = c * (h + 2 * p) * (w + 2 * p), f * ho * wo
        projected = min(c * (covered - k1_rank), forward - f * min(f, ho * wo))
        counts.append(LayerCount(unknowns, forward, f * c * layer.kernel ** 2, unknowns - c * h * w,
                                 c * (h * w - covered), unknowns - c * h * w + c * k1_rank + projected))
    return counts


def _draw(rng: Any, options: Sequence[Any]) -> Any:
    """One of ``options``, uniformly, from one ``rng.random()`` double (the most stable NumPy stream)."""
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def _random_layers(rng: Any, depth: int) -> list[LayerSpec]:
    layers = []
    for _ in range(depth):
        kernel = _draw(rng, RANDOM_CHAIN_KERNELS)
        layers.append(LayerSpec(
            "conv", out=_draw(rng, RANDOM_CHAIN_CHANNELS), kernel=kernel, stride=_draw(rng, RANDOM_CHAIN_STRIDES),
            padding=_draw(rng, range(kernel // 2 + 1)), activation=_draw(rng, RANDOM_CHAIN_ACTIVATIONS)))
    return [*layers, LayerSpec("fc", out=None, activation="identity", bias=True)]


def _random_chain_counts(layers: list[LayerSpec], in_shape: tuple[int, int, int]) -> list[LayerCount] | None:
    """The layer counts if ``layers`` is a valid, bounded chain for ``in_shape``; else None."""
    try:
        counts = chain_layer_counts(layers, in_shape)
    except InvalidSpecError:  # a kernel larger than its padded input
        return None
    if any(c.unknowns > RANDOM_CHAIN_MAX_UNKNOWNS or c.rows > RANDOM_CHAIN_MAX_ROWS for c in counts):
        return None
    return counts


def random_chain_spec(seed: int, *, in_shape: Sequence[int] = DEFAULT_IN_SHAPE, deficient: bool | None = None) -> str:
    """The spec of the seeded random chain ``random-chain:SEED`` (population study of the security metric).

    Deterministic: a ``numpy.random.Generator`` (PCG64) seeded by ``seed`` alone (never a global RNG),
    drawn from with ``rng.random()`` only; the same ``(seed, in_shape, deficient)`` gives the same spec
    (``create_model`` then seeds the weights with its own ``seed``, as for every model).

    **Distribution.** The depth (number of convolutions) is uniform on 1–4 (one draw). Given the
    depth, every conv layer draws independently and uniformly: out-channels from
    ``RANDOM_CHAIN_CHANNELS`` (1, 2, 3, 4, 6, 8, 12, 16), kernel from 2–5, stride 1 or 2, padding from
    0..kernel//2, activation from tanh, sigmoid, leakyrelu (slope 0.2, R-GAP's CNN6 token), softplus
    (the invertible activations of the grammar but identity); then the final ``fc:identity``. This
    product distribution is conditioned, by rejection (the whole chain redrawn from the same
    generator, at most ``RANDOM_CHAIN_ATTEMPTS`` draws), on:

    * **validity** for ``in_shape``: every kernel fits its padded input, so every spatial size is ≥ 1;
    * **cost**: every conv layer system has ≤ ``RANDOM_CHAIN_MAX_UNKNOWNS`` = 4096 unknowns
      ``C·(H+2p)·(W+2p)`` and ≤ ``RANDOM_CHAIN_MAX_ROWS`` = 12288 rows (forward + gradient +
      padding). The least-squares solve factors the smaller Gram matrix (side ≤ 4096: ≤ 2.3·10¹⁰ flop
      for its Cholesky) after a sparse product over the rows. 4096 admits every first layer at
      3×32×32 (at most 3·36·36 = 3888 unknowns, padding 2). Measured (``copa attack --attack rgap
      --dataset sample --dtype float64``, OMP_NUM_THREADS=1, a second job on the 2-core machine):
      random-chain:7 3.8 s, random-chain:2 0.2 s, and the three costliest of seeds 0–199 by
      ``Σ min(rows, unknowns)³`` (15, 55, 183) 5–7 s for the attack, ~6 s more for the process
      start; the paper's cnn4_c3 (layers of 4704 and 4096 unknowns) takes 12 s, above every random chain;
    * **the stratum**: the chain is *deficient* when some conv layer's :class:`LayerCount` predicts a
      rank deficiency (``rank_bound < unknowns``: more unknowns than rows, interior pixels no window
      reaches, stride classes with fewer gradient rows than pixels, or too few forward rows once the
      ``F²`` dependent ones are taken off), *full-rank* otherwise. ``deficient=None`` (what
      ``random-chain:SEED`` uses) applies the scheme **even seeds → deficient, odd seeds → full-rank**,
      so every run of consecutive seeds is half and half; ``True``/``False`` force a stratum.

    The stratum is a design target from counting, not a measurement. ``rank_bound`` is an upper bound
    on the rank (checked against dense SVDs), so an even seed is always rank-deficient; an odd seed can
    still be deficient through structure the counting misses. Measured with
    :func:`copa.layerwise.security_report` on seeds 0–199: the stratum agrees with the report's
    ``any_deficient`` on 199 of 200 (seed 17, odd, has a layer with deficiency −16), and every layer's
    deficiency equals ``predicted_deficiency`` on 190 of the 200 chains. The study's analysis uses the
    measured ``any_deficient``, not the stratum.

    Raises :class:`InvalidSpecError` for a negative or non-int seed, or when no chain of the drawn
    depth fits ``in_shape`` within the attempts (only for very small inputs).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidSpecError(f"random chain seed {seed!r} is invalid: use a non-negative int")
    return _random_chain_spec(seed, _check_shape(tuple(in_shape)), seed % 2 == 0 if deficient is None else bool(deficient))


@functools.lru_cache(maxsize=1024)
def _random_chain_spec(seed: int, in_shape: tuple[int, int, int], want_deficient: bool) -> str:
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    depth = _draw(rng, RANDOM_CHAIN_DEPTHS)
    for _ in range(RANDOM_CHAIN_ATTEMPTS):
        layers = _random_layers(rng, depth)
        counts = _random_chain_counts(layers, in_shape)
        if counts is not None and any(c.predicted_deficiency < 0 for c in counts) == want_deficient:
            return format_chain_spec(layers)
    stratum = "deficient" if want_deficient else "full-rank"
    raise InvalidSpecError(
        f"no {stratum} random chain of depth {depth} fits input {in_shape} within {RANDOM_CHAIN_ATTEMPTS} draws "
        f"(seed {seed}; bounds: {RANDOM_CHAIN_MAX_UNKNOWNS} unknowns, {RANDOM_CHAIN_MAX_ROWS} rows per layer)")


def _random_chain_seed(name: str) -> int:
    text = name[len(RANDOM_CHAIN_PREFIX):]
    if not text.isascii() or not text.isdigit():
        raise InvalidSpecError(f"model name {name!r} is invalid: use random-chain:SEED with SEED a non-negative "
                               f"int (e.g. random-chain:7)")
    return int(text)


# --------------------------------------------------------------------------------------------------
# Other architectures
# --------------------------------------------------------------------------------------------------


class InvertingGradientsConvNet(nn.Module):
    """ConvNet of Inverting Gradients (Geiping et al., NeurIPS 2020; inversefed ``ConvNet``, width 64).

    Eight 3×3 convs (padding 1, with bias) each followed by BatchNorm and ReLU, widths w, 2w, 2w, 4w,
    4w, 4w, then MaxPool2d(3), two more 4w convs, MaxPool2d(3), flatten, Linear. The original's
    ``OrderedDict`` lists ``conv6`` twice, so only one ``conv6`` exists; layer names (and so
    state_dict keys) match the original. Its Linear has 36·w inputs for 32×32; here it is computed
    from ``in_shape``.
    """

    def __init__(self, width: int = 64, num_classes: int = 10, in_shape: Sequence[int] = DEFAULT_IN_SHAPE):
        super().__init__()
        channels, height, width_px = _check_shape(tuple(in_shape))
        pooled_h, pooled_w = height // 3 // 3, width_px // 3 // 3  # two MaxPool2d(3), stride 3, no padding
        if pooled_h < 1 or pooled_w < 1:
            raise InvalidSpecError(f"in_shape {tuple(in_shape)} is too small for convnet: it needs height and width ≥ 9")
        plan = [(channels, width), (width, 2 * width), (2 * width, 2 * width), (2 * width, 4 * width)]
        plan += [(4 * width, 4 * width)] * 4
        modules: list[tuple[str, nn.Module]] = []
        for i, (c_in, c_out) in enumerate(plan):
            modules += [
                (f"conv{i}", nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)),
                (f"bn{i}", nn.BatchNorm2d(c_out)),
                (f"relu{i}", nn.ReLU()),
            ]
            if i == 5:
                modules.append(("pool0", nn.MaxPool2d(3)))
        modules += [
            ("pool1", nn.MaxPool2d(3)),
            ("flatten", nn.Flatten()),
            ("linear", nn.Linear(4 * width * pooled_h * pooled_w, num_classes)),
        ]
        self.model = nn.Sequential(OrderedDict(modules))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _resnet18(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_shape[0] != 3:  # same first conv for other channel counts, with torchvision's init
        model.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


# --------------------------------------------------------------------------------------------------
# Model info, init, checkpoints
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """How a model was built: enough to rebuild it and to know which attacks apply."""

    name: str
    spec: str | None
    num_classes: int
    in_shape: tuple[int, int, int]
    seed: int | None
    init: str
    checkpoint: str | None
    is_chain: bool
    not_chain_reason: str | None
    source: str
    description: str = ""


def _uniform_init(model: nn.Module) -> None:
    """DLG's ``weights_init``: every weight and bias ~ U(-0.5, 0.5)."""
    with torch.no_grad():
        for module in model.modules():
            for attr in ("weight", "bias"):
                param = getattr(module, attr, None)
                if isinstance(param, torch.Tensor):
                    param.uniform_(-0.5, 0.5)


#: Initialisation schemes: name → (description, function applied after construction or None).
INIT_SCHEMES: dict[str, tuple[str, Callable[[nn.Module], None] | None]] = {
    "default": ("PyTorch default init", None),
    "uniform": ("U(-0.5, 0.5) weights and biases (DLG weights_init)", _uniform_init),
}


def _check_init(init: str) -> str:
    if init not in INIT_SCHEMES:
        raise InvalidSpecError(f"init {init!r} is unknown: accepted are {', '.join(sorted(INIT_SCHEMES))}")
    return init


def model_info(model: nn.Module) -> ModelInfo:
    """The :class:`ModelInfo` of a model from :func:`create_model` (or of any :class:`ChainNet`)."""
    info = getattr(model, "copa_info", None)
    if isinstance(info, ModelInfo):
        return info
    if isinstance(model, ChainNet):
        return ModelInfo(
            name=f"chain:{model.spec}", spec=model.spec, num_classes=model.num_classes, in_shape=model.in_shape,
            seed=None, init="unknown (not built by create_model)", checkpoint=None, is_chain=model.is_chain,
            not_chain_reason=model.not_chain_reason, source="user spec",
        )
    raise NotApplicableError(f"{type(model).__name__} has no copa_info: build it with copa.models.create_model")


def _first_few(items: list[str], sep: str = ", ", limit: int = 8) -> str:
    more = f"{sep}... ({len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


_UNSAFE_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_CHECKPOINT_ACCEPTED = "accepted: a file written by torch.save(model.state_dict(), PATH)"


def _checkpoint_problem(err: Exception) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` refused a checkpoint (torch's own message
    spans many lines and suggests ``weights_only=False``, which copa never uses: it runs arbitrary code)."""
    text = str(err)
    if unsafe := _UNSAFE_GLOBAL_RE.search(text):
        return (f"holds a pickled {unsafe[1]} object, not only tensors: it cannot be loaded with "
                f"weights_only=True (copa never unpickles arbitrary objects); {_CHECKPOINT_ACCEPTED}")
    if "Weights only load failed" in text or isinstance(err, pickle.UnpicklingError):
        detail = text.split("WeightsUnpickler error:")[-1] if "WeightsUnpickler error:" in text else ""
        detail = " ".join(detail.split()).split(" Check the documentation")[0]
        return (f"is not a PyTorch file of tensors: torch.load(weights_only=True) refuses it"
                f"{f' ({detail})' if detail else ''}; {_CHECKPOINT_ACCEPTED}")
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first_sentence = first_line.split(". ")[0].rstrip(".")
    detail = f"{type(err).__name__}: {first_sentence}" if first_sentence else type(err).__name__
    return f"is not a readable PyTorch file, it may be truncated or corrupted ({detail}); {_CHECKPOINT_ACCEPTED}"


def _load_checkpoint(model: nn.Module, path: str | Path, which: str = "the model") -> None:
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise InvalidSpecError(f"checkpoint {str(path)!r} is empty (0 bytes); {_CHECKPOINT_ACCEPTED}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what is wrong
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors for garbage or non-weights files
        raise InvalidSpecError(f"checkpoint {str(path)!r} {_checkpoint_problem(err)}") from None
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InvalidSpecError(
            f"checkpoint {str(path)!r} holds a {type(loaded).__name__}, not a state_dict of tensors "
            "(accepted: a state_dict, or a dict with it under 'state_dict' or 'model')"
        )
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = model.state_dict()
    problems = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if problems or missing or unexpected:
        parts = []
        if problems:
            parts.append("shape mismatch for " + _first_few(problems, "; "))
        if missing:
            parts.append("missing " + _first_few(missing))
        if unexpected:
            parts.append("unexpected " + _first_few(unexpected))
        raise InvalidSpecError(f"checkpoint {str(path)!r} does not fit {which}: {' | '.join(parts)}")
    model.load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# Registry and factory
# --------------------------------------------------------------------------------------------------


def _chain_factory(layers: list[LayerSpec]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
        return ChainNet(layers, num_classes=num_classes, in_shape=in_shape)

    return build


def register_chain(name: str, spec: str, *, description: str = "", source: str = "", init: str = "default") -> None:
    """Register a chain architecture under ``name`` from a one-line spec (grammar: module docstring).

    ``init`` is ``"default"`` (PyTorch default init) or ``"uniform"`` (U(-0.5, 0.5), DLG).
    """
    layers = parse_chain_spec(spec)
    reason = chain_not_chain_reason(layers)
    MODELS.register(
        name, _chain_factory(layers), spec=format_chain_spec(layers), description=description, source=source,
        init=_check_init(init), is_chain=reason is None, not_chain_reason=reason,
    )


def _split_activation_suffix(name: str) -> tuple[str, str] | None:
    base, dash, suffix = name.rpartition("-")
    if not dash or not base:
        return None
    try:
        make_activation(suffix)
    except InvalidSpecError:
        return None
    return base, suffix


def _unknown_model(name: str) -> UnknownNameError:
    """Unknown model name; for ``CHAIN-SUFFIX`` with a registered chain, also why the suffix is not accepted."""
    err = unknown_name(MODELS.kind, name, MODELS.names())
    base, dash, suffix = name.rpartition("-")
    if dash and base in MODELS and MODELS.entry(base).meta.get("spec"):
        try:
            make_activation(suffix)
        except InvalidSpecError as bad:
            reason = str(bad).split(":")[0] if suffix.startswith("leakyrelu") and suffix != "leakyrelu" else \
                f"unknown activation {suffix!r}"
            return UnknownNameError(f"{err} As an activation variant of {base!r}, '-{suffix}' is not accepted "
                                    f"({reason}): accepted suffixes are -tanh, -sigmoid, -identity, -softplus, "
                                    f"-relu, -leakyrelu, -leakyrelu<slope> (e.g. {base}-sigmoid).")
    return err


def create_model(
    name: str,
    num_classes: int = 10,
    in_shape: tuple[int, int, int] = DEFAULT_IN_SHAPE,
    seed: int = 0,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """Build model ``name`` under ``torch.manual_seed(seed)`` (caller's RNG untouched); load ``checkpoint``.

    ``name`` is a registered name (``MODELS.names()``), a registered chain with an activation suffix
    (``cnn2_c1-sigmoid``), ``chain:<spec>``, or ``random-chain:SEED`` (the chain
    :func:`random_chain_spec` samples for ``SEED`` and ``in_shape``; ``seed`` still seeds the weights).
    The result carries ``model.copa_info`` (for ``chain:``/``random-chain:`` names its ``spec`` is the chain's).
    """
    num_classes = _check_num_classes(num_classes)
    in_shape = _check_shape(in_shape)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidSpecError(f"seed {seed!r} is invalid: use an int")
    if not isinstance(name, str):
        raise InvalidSpecError(f"model name {name!r} is invalid: use a string")

    layers: list[LayerSpec] | None
    if name.startswith("chain:"):
        layers = parse_chain_spec(name[len("chain:"):])
        factory, meta = _chain_factory(layers), {"init": "default", "source": "user spec", "description": ""}
    elif name.startswith(RANDOM_CHAIN_PREFIX):
        chain_seed = _random_chain_seed(name)
        layers = parse_chain_spec(random_chain_spec(chain_seed, in_shape=in_shape))
        stratum = "deficient" if chain_seed % 2 == 0 else "full-rank"
        factory, meta = _chain_factory(layers), {
            "init": "default", "source": f"copa.models.random_chain_spec({chain_seed}, in_shape={in_shape})",
            "description": f"seeded random chain ({stratum} stratum: even seeds deficient, odd full-rank)"}
    else:
        if name in MODELS:
            entry = MODELS.entry(name)
            layers = None if entry.meta.get("spec") is None else parse_chain_spec(entry.meta["spec"])
        elif split := _split_activation_suffix(name):
            base, suffix = split
            entry = MODELS.entry(base)
            if entry.meta.get("spec") is None:
                raise NotApplicableError(
                    f"activation suffix '-{suffix}' in {name!r} only applies to chain models; "
                    f"{base!r} is not one (chains: {', '.join(n for n in MODELS.names() if MODELS.entry(n).meta.get('spec'))})"
                )
            layers = with_hidden_activation(entry.meta["spec"], suffix)
        else:
            raise _unknown_model(name)
        factory = entry.obj if layers is None else _chain_factory(layers)
        meta = entry.meta

    init_description, init_fn = INIT_SCHEMES[meta.get("init", "default")]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(num_classes=num_classes, in_shape=in_shape)
        if init_fn is not None:
            init_fn(model)
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint,
                         f"model {name!r} ({'x'.join(map(str, in_shape))} input, {num_classes} classes)")

    reason = chain_not_chain_reason(layers) if layers is not None else meta.get("not_chain_reason")
    model.copa_info = ModelInfo(
        name=name,
        spec=None if layers is None else format_chain_spec(layers),
        num_classes=num_classes,
        in_shape=in_shape,
        seed=seed,
        init=f"{init_description}, torch.manual_seed({seed})",
        checkpoint=None if checkpoint is None else str(checkpoint),
        is_chain=layers is not None and reason is None,
        not_chain_reason=reason if layers is not None else (reason or "not a chain architecture"),
        source=meta.get("source", ""),
        description=meta.get("description", ""),
    )
    return model


# --- the COPA paper's chains (authors' targets.py; input 3×32×32, 10 classes) --------------------
_COPA = dict(description="untrained tanh chain CNN from the COPA paper", source=COPA_PAPER)
register_chain("cnn2_c0", "c1k3s2:tanh fc:tanh", **_COPA)
register_chain("cnn2_c1", "c6k3:tanh fc:identity", **_COPA)
register_chain("cnn2_c2", "c6k4s2:tanh fc:identity", **_COPA)
register_chain("cnn2_c4", "c1k3:tanh fc:tanh", **_COPA)
register_chain("cnn2_c5", "c3k3p1:tanh fc:tanh", **_COPA)
register_chain("cnn2_c6", "c12k5s2:tanh fc:identity", **_COPA)
register_chain("cnn3_c1", "c6k3:tanh c3k4s2:tanh fc:identity", **_COPA)
register_chain("cnn3_c2", "c6k4s2:tanh c3k3s2:tanh fc:identity", **_COPA)
register_chain("cnn3_c3", "c6k3:tanh c9k3:tanh fc:identity", **_COPA)
register_chain("cnn3_c4", "c1k3:tanh c6k3:tanh fc:identity", **_COPA)
register_chain("cnn3_c8", "c9k3:tanh c3k4s2:tanh fc:tanh", **_COPA)
register_chain("cnn3_c9", "c5k3:tanh c7k3:tanh fc:tanh", **_COPA)
register_chain("cnn4_c1", "c6k3:tanh c5k4s2:tanh c3k4:tanh fc:identity", **_COPA)
register_chain("cnn4_c2", "c16k5:tanh c6k5s2:tanh c32k5p2:tanh fc:identity", **_COPA)
register_chain("cnn4_c3", "c6k5:tanh c16k5s2:tanh c16k5p2:tanh fc:identity", **_COPA)

# --- R-GAP's CNN6 / CNN6-d: bias-free convs, leaky ReLU 0.2. R-GAP's own head is a bias-free
# Linear(3200, 1) for binary labels; here it is the usual Linear with bias to num_classes.
register_chain(
    "cnn6",
    "c12k4s2p2:leakyrelu c36k3s2p1:leakyrelu c36k3p1:leakyrelu c36k3p1:leakyrelu c64k3s2p1:leakyrelu "
    "c128k3p1:leakyrelu fc:identity",
    description="R-GAP's 6-conv CNN (leaky ReLU 0.2, bias-free convs)", source=RGAP_PAPER,
)
register_chain(
    "cnn6-d",
    "c12k4s2p2:leakyrelu c20k3s2p1:leakyrelu c36k3p1:leakyrelu c36k3p1:leakyrelu c64k3s2p1:leakyrelu "
    "c128k3p1:leakyrelu fc:identity",
    description="R-GAP's CNN6-d: CNN6 with a 20-channel second conv (rank-deficient)", source=RGAP_PAPER,
)

# --- DLG's LeNet: convs with bias and sigmoid, plain Linear head, everything U(-0.5, 0.5).
register_chain(
    "lenet-zhu",
    "c12k5s2p2b:sigmoid c12k5s2p2b:sigmoid c12k5p2b:sigmoid fc:identity",
    description="DLG's LeNet (sigmoid, convs with bias, U(-0.5, 0.5) init); optimisation targets only",
    source=DLG_PAPER, init="uniform",
)

MODELS.register(
    "convnet",
    lambda num_classes, in_shape: InvertingGradientsConvNet(64, num_classes, in_shape),
    description="Inverting Gradients' ConvNet, width 64 (BatchNorm, ReLU, max pooling); optimisation targets only",
    source=IG_PAPER, init="default", is_chain=False, spec=None,
    not_chain_reason="uses BatchNorm, max pooling and ReLU (not invertible)",
)
MODELS.register(
    "resnet18",
    _resnet18,
    description="torchvision ResNet-18 (weights=None); optimisation targets only",
    source="He et al., CVPR 2016; torchvision.models.resnet18", init="default", is_chain=False, spec=None,
    not_chain_reason="residual connections, BatchNorm, pooling and ReLU (not invertible)",
)
