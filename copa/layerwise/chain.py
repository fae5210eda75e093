"""Chains (Chen & Campbell, arXiv 2111.10178): the one chain check, the last layer's closed form, δ propagation
and the per-layer analysis of a chain model at an input."""

from __future__ import annotations
from dataclasses import dataclass, field
import torch
from torch import Tensor, nn
from ..threat import client_loss
from ..errors import InvalidSpecError, NotApplicableError
from .geometry import ConvGeometry, DENSE_DTYPE
from .operators import input_gradient
from ..models import ChainNet
import copy


def fc_input_from_gradients(grad_weight: Tensor, grad_bias: Tensor, *, min_bias_ratio: float = 1e-6) -> Tensor:
    """Input of a Linear layer with bias from its gradients, for one example.

    ``∂ℓ/∂W = (∂ℓ/∂b) xᵀ``, so every row ``r`` with ``∂ℓ/∂b[r] ≠ 0`` gives ``x = g_W[r]/g_b[r]``;
    the least-squares combination of all usable rows is
    ``x = Σ_r g_b[r] g_W[r] / Σ_r g_b[r]²`` (rows weighted by ``g_b[r]²``, so rows with tiny
    ``g_b`` barely count). Rows with ``|g_b[r]| < min_bias_ratio · max|g_b|`` are left out
    (default 1e-6: only rows that are zero up to rounding). Batched over leading dims
    (``(..., K, D)``, ``(..., K)``); raises :class:`NotApplicableError` if every ``g_b`` is zero.
    """
    gb = grad_bias
    if gb.shape != grad_weight.shape[:-1]:
        raise InvalidSpecError(f"bias gradient of shape {tuple(gb.shape)} does not fit weight gradient of shape "
                               f"{tuple(grad_weight.shape)}")
    scale = gb.abs().amax(dim=-1, keepdim=True)
    if bool((scale == 0).any()):
        raise NotApplicableError("every bias gradient of the last layer is zero: its input cannot be recovered "
                                 "from the gradients (the loss is at a stationary point)")
    gb = torch.where(gb.abs() >= min_bias_ratio * scale, gb, torch.zeros_like(gb))
    num = (gb.unsqueeze(-1) * grad_weight).sum(-2)
    return num / gb.square().sum(-1, keepdim=True)


def propagate_delta(delta: Tensor, layer: nn.Module, activation: nn.Module, pre_activation: Tensor) -> Tensor:
    """``δ`` of the previous layer from ``δ`` of ``layer``: ``σ'(z_prev) ⊙ ∂ℓ/∂x`` with ``∂ℓ/∂x = Wᵀ δ``.

    ``layer`` is a Linear (``∂ℓ/∂x = δ W``, reshaped to ``pre_activation``'s shape, i.e. the flatten
    is undone) or a Conv2d (``conv_transpose2d``); ``activation`` is the previous layer's activation
    (a :class:`copa.models.Activation` with ``derivative``) and ``pre_activation`` its input ``z_prev``.
    """
    if isinstance(layer, nn.Linear):
        grad_x = delta @ layer.weight.to(delta.dtype)
    elif isinstance(layer, nn.Conv2d):
        g = ConvGeometry.from_conv(layer, pre_activation.shape[-2:])
        grad_x = input_gradient(delta, layer.weight, g)
    else:
        raise NotApplicableError(f"cannot propagate δ through {type(layer).__name__}")
    grad_x = grad_x.reshape(pre_activation.shape)
    return activation.derivative(pre_activation.to(delta.dtype)) * grad_x


@dataclass
class LayerAnalysis:
    """One weight layer in a forward/backward pass of one example (batch dim kept, size 1).

    ``input`` is what the layer saw (flattened for Linear), ``pre_activation`` ``z``, ``delta``
    ``∂ℓ/∂z``, ``grad_weight`` ``∂ℓ/∂W`` (and ``grad_bias``), ``geometry`` for convolutions.
    """

    index: int
    kind: str
    module: nn.Module
    activation: nn.Module
    input: Tensor
    pre_activation: Tensor
    delta: Tensor
    grad_weight: Tensor
    grad_bias: Tensor | None
    geometry: ConvGeometry | None

    @property
    def weight(self) -> Tensor:
        return self.module.weight.detach()


@dataclass
class ChainAnalysis:
    """Every weight layer of a chain at one input (see :func:`analyse_chain`)."""

    layers: list[LayerAnalysis]
    loss: float
    labels: Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def conv_layers(self) -> list[LayerAnalysis]:
        return [layer for layer in self.layers if layer.kind == "conv"]


CHAIN_DEFINITION = "bias-free convolutions with invertible activations and a final Linear with bias"


def chain_reason(model: nn.Module) -> str | None:
    """``None`` if ``model`` is a chain (:class:`copa.models.ChainNet` with ``is_chain``), else why not."""

    if not isinstance(model, ChainNet):
        return f"a {type(model).__name__}, not a ChainNet (layer-wise inversion needs {CHAIN_DEFINITION})"
    if not model.is_chain:
        return model.not_chain_reason
    return None


def check_chain(model: nn.Module, name: str | None = None):
    """The one chain check of R-GAP, COPA and the security metric: return the model, or raise
    :class:`NotApplicableError` "NAME is not a chain: REASON"."""
    reason = chain_reason(model)
    if reason is not None:
        label = name or getattr(getattr(model, "copa_info", None), "name", None) or type(model).__name__
        raise NotApplicableError(f"{label} is not a chain: {reason}")
    return model


def analyse_chain(model: nn.Module, inputs: Tensor, labels: Tensor, *,
                  dtype: torch.dtype = DENSE_DTYPE) -> ChainAnalysis:
    """Forward and backward pass of a chain on one example, keeping what the layer systems need.

    ``inputs`` ``1×C×H×W`` in model space (already preprocessed), ``labels`` ``(1,)``. The loss is the
    client's cross-entropy (mean reduction); ``δ_i = ∂ℓ/∂z_i`` comes from autograd (the same as
    :func:`propagate_delta` applied from the last layer down). Runs on a float64 copy of the model
    by default, on ``inputs``' device; the model itself is not modified.
    """

    check_chain(model)
    if inputs.dim() != 4 or inputs.shape[0] != 1:
        raise InvalidSpecError(f"analyse_chain needs one example (1×C×H×W); got shape {tuple(inputs.shape)}")
    net = copy.deepcopy(model).to(device=inputs.device, dtype=dtype)
    x = inputs.detach().to(dtype)
    traces = net.trace(x)
    zs = [t.pre_activation for t in traces]
    logits = traces[-1].output
    loss = client_loss(logits, labels.to(inputs.device))
    params = [p for layer in net.weight_layers for p in layer.parameters()]
    grads = torch.autograd.grad(loss, zs + params)
    deltas, param_grads = grads[:len(zs)], list(grads[len(zs):])
    layers = []
    for i, (layer, act, trace) in enumerate(zip(net.weight_layers, net.activations, traces)):
        gw = param_grads.pop(0)
        gb = param_grads.pop(0) if layer.bias is not None else None
        kind = "conv" if isinstance(layer, nn.Conv2d) else "fc"
        geometry = ConvGeometry.from_conv(layer, trace.input.shape[-2:]) if kind == "conv" else None
        layers.append(LayerAnalysis(i, kind, layer, act, trace.input.detach(), trace.pre_activation.detach(),
                                    deltas[i].detach(), gw.detach(), None if gb is None else gb.detach(), geometry))
    return ChainAnalysis(layers, float(loss.detach()), labels.detach().clone())
