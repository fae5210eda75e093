"""Gradient-matching building blocks shared by DLG, iDLG, Inverting Gradients (and COPA-GM).

An optimisation attack proposes images (and labels), computes the gradients the client would have
sent for them — :func:`parameter_gradients`, through ``torch.func.functional_call`` on the
observation's model with *detached* copies of its parameters, so the observation is never
modified — and compares them with the observed gradients:

* :func:`squared_l2_distance` — DLG (Zhu et al., NeurIPS 2019, ``main.py``: ``((gx - gy) ** 2).sum()``
  summed over all parameter tensors);
* :func:`cosine_distance` — Inverting Gradients (Geiping et al., NeurIPS 2020, inversefed
  ``reconstruction_costs(cost_fn='sim')``: one minus the cosine of the concatenated gradient vector);
* :func:`per_tensor_cosine_distance` — ``Σ_t (1 − cos_t)`` (inversefed ``cost_fn='simlocal'``,
  COPA-GM's matching term);
* :func:`total_variation` — Inverting Gradients' prior (inversefed ``metrics.total_variation``);
* :func:`label_from_gradients` — iDLG's label rule (Zhao et al., arXiv 2001.02610).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .errors import NotApplicableError


class GradientModel:
    """The observation's model as a function of an image batch, returning per-parameter gradients.

    Holds detached views of the parameters the observation has gradients for (in the observation's
    order) and copies of the buffers (BatchNorm statistics a train-mode forward would update), so
    calling it never changes ``observation.model``. The model stays in the client's mode (train).
    ``evaluations`` counts calls: each is one forward and one parameter gradient.
    """

    def __init__(self, observation):
        self.model = observation.model
        self.names = tuple(observation.parameter_names)
        named = dict(self.model.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise NotApplicableError(f"observed gradient for {missing[0]!r} has no parameter in the model")
        self.params = {n: named[n].detach().requires_grad_(True) for n in self.names}
        self.frozen = {n: p.detach() for n, p in named.items() if n not in self.params}
        self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        self.loss_fn = observation.loss_fn
        self.evaluations = 0

    def logits(self, images: Tensor) -> Tensor:
        buffers = {n: b.clone() for n, b in self.buffers.items()}  # a train-mode forward may update these
        return torch.func.functional_call(self.model, {**self.params, **self.frozen, **buffers}, (images,))

    def __call__(self, images: Tensor, labels: Tensor, create_graph: bool = True) -> tuple[Tensor, ...]:
        """Gradients of the client's loss at ``(images, labels)``; ``labels``: class ids (N) or soft (N×K)."""
        self.evaluations += 1
        loss = self.loss_fn(self.logits(images), labels)
        params = [self.params[n] for n in self.names]
        return torch.autograd.grad(loss, params, create_graph=create_graph)


def parameter_gradients(observation, images: Tensor, labels: Tensor, create_graph: bool = True) -> tuple[Tensor, ...]:
    """One-off :class:`GradientModel` call: the gradients the client would send for ``(images, labels)``."""
    return GradientModel(observation)(images, labels, create_graph=create_graph)


def squared_l2_distance(grads: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """DLG's distance: ``Σ_t ‖g_t − t_t‖²`` over all parameter tensors (mit-han-lab/dlg ``main.py``)."""
    return sum((g - t).square().sum() for g, t in zip(grads, targets, strict=True))


def cosine_distance(grads: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
    """Inverting Gradients' distance: ``1 − ⟨g, t⟩ / (‖g‖ ‖t‖)`` of the concatenated gradient vectors.

    As inversefed's ``reconstruction_costs(cost_fn='sim', indices='def', weights='equal')``; the norm
    product is floored at the dtype's smallest normal number so an all-zero gradient gives 1, not NaN.
    """
    dot = sum((g * t).sum() for g, t in zip(grads, targets, strict=True))
    g_norm = sum(g.square().sum() for g in grads).sqrt()
    t_norm = sum(t.square().sum() for t in targets).sqrt()
    return 1 - dot / (g_norm * t_norm).clamp_min(torch.finfo(dot.dtype).tiny)


def per_tensor_cosine_distance(grads: Sequence[Tensor], targets: Sequence[Tensor], eps: float = 1e-10) -> Tensor:
    """``Σ_t (1 − cos(g_t, t_t))`` per parameter tensor (inversefed ``cost_fn='simlocal'``, eps 1e-10)."""
    return sum(1 - torch.nn.functional.cosine_similarity(g.flatten(), t.flatten(), dim=0, eps=eps)
               for g, t in zip(grads, targets, strict=True))


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic TV, mean |horizontal| + mean |vertical| differences (inversefed ``metrics.total_variation``)."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


def last_linear(observation) -> tuple[str, nn.Linear]:
    """The model's output layer: the last ``nn.Linear`` module, which must map to ``num_classes`` logits."""
    found = [(name, m) for name, m in observation.model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise NotApplicableError(f"model {observation.model_name!r} has no Linear output layer to read the label from")
    name, layer = found[-1]
    if layer.out_features != observation.num_classes:
        raise NotApplicableError(f"the last Linear layer {name!r} of {observation.model_name!r} has "
                                 f"{layer.out_features} outputs, not the {observation.num_classes} classes")
    return name, layer


def label_from_gradients(observation) -> tuple[Tensor, dict]:
    """iDLG's label rule (Zhao, Mopuri & Bilen, arXiv 2001.02610, §3; PatrickZH/Improved-Deep-Leakage-from-Gradients).

    For one image and softmax cross-entropy, the output layer's gradients are ``∂ℓ/∂b = p − onehot(y)``
    and ``∂ℓ/∂W = (p − onehot(y)) hᵀ`` (``h``: the layer's input). ``p − onehot(y)`` has exactly one
    negative entry, at the true label (as long as ``p_y < 1``), so:

    * with a bias: ``y = argmin ∂ℓ/∂b`` (its single negative entry);
    * without: the row sums ``(p_i − y_i) Σ_j h_j`` — iDLG takes ``argmin`` (``iDLG.py``), which holds when
      ``Σ_j h_j > 0`` (non-negative penultimate activations such as sigmoid or ReLU outputs). We take the
      entry whose sign differs from all others, which is the same when ``Σ_j h_j > 0`` and also covers
      ``Σ_j h_j < 0``; with two classes (no odd one out) we fall back to iDLG's ``argmin``.

    An output activation after the Linear layer that is strictly increasing (tanh, sigmoid) keeps these
    signs. Batch size 1 only. Returns ``(labels of shape (1,), info)``.
    """
    if observation.batch_size != 1:
        raise NotApplicableError(f"iDLG's label rule needs batch size 1, got {observation.batch_size}")
    name, layer = last_linear(observation)
    grads = observation.gradient_dict()
    if layer.bias is not None and f"{name}.bias" in grads:
        scores = grads[f"{name}.bias"].detach().reshape(-1)
        label, rule = int(torch.argmin(scores)), "argmin of the output bias gradient"
    elif f"{name}.weight" in grads:
        scores = grads[f"{name}.weight"].detach().sum(dim=1)
        negative, positive = scores < 0, scores > 0
        if int(negative.sum()) == 1 or scores.numel() < 3:
            label, rule = int(torch.argmin(scores)), "argmin of the output weight gradient's row sums"
        elif int(positive.sum()) == 1:
            label, rule = int(torch.argmax(scores)), "the only positive row sum of the output weight gradient"
        else:
            label, rule = int(torch.argmin(scores)), "argmin of the output weight gradient's row sums"
    else:
        raise NotApplicableError(f"no observed gradient for the output layer {name!r}")
    odd_sign = int((scores < 0).sum()) == 1 or int((scores > 0).sum()) == 1
    info = {"label": label, "rule": rule, "layer": name, "unique_sign": odd_sign}
    return torch.tensor([label], device=observation.device), info
