"""The chain grammar: a one-line spec of a chain CNN (``c6k3:tanh fc:identity``), its layers' shapes, and
:class:`ChainNet`, the module built from it (COPA, Chen & Campbell, arXiv 2111.10178)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import InvalidSpecError
from .activations import make_activation


CHAIN_GRAMMAR = (
    "layers separated by spaces: 'c{out}k{kernel}[s{stride}][p{padding}][b]:{act}' (Conv2d, bias only with 'b'), "
    "'fc{width}:{act}' (hidden Linear), and last 'fc:{act}' (Linear to num_classes); "
    "act is one of tanh, sigmoid, identity, softplus, relu, leakyrelu[slope]; "
    "example: 'c6k3:tanh c3k4s2:tanh fc:identity'"
)

DEFAULT_IN_SHAPE = (3, 32, 32)

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
