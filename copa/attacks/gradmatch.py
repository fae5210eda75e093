"""Gradient-matching building blocks shared by DLG, iDLG, Inverting Gradients (and COPA-GM).

An optimisation attack proposes images (and labels) for B independent instances at once, computes
the gradients each client would have sent for them — :class:`GradientModel`, ``torch.func.vmap`` over
``torch.func.grad`` of ``functional_call`` on the observation's model with *detached* parameters, so
the observation is never modified — and compares them with the observed gradients (``batched=True``:
one distance per instance):

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

from ..errors import NotApplicableError
from ..threat import as_observation_list, check_same_model


class GradientModel:
    """The observations' shared model as a function of B independent attack instances' images.

    ``GradientModel([obs_1, …, obs_B])`` — observations of the *same* model and weights (checked), e.g.
    B clients' images under one global model — maps images of shape ``B × n × C × H × W`` (each
    instance's batch of ``n`` images) and labels (``B × n`` class ids or ``B × n × K`` soft labels) to
    each instance's parameter gradients, every tensor with a leading instance dimension ``B``. The
    per-instance gradients come from ``torch.func.vmap`` over ``torch.func.grad`` of the client's loss
    (``functional_call`` on *detached* parameters), so an attack optimises B independent instances in
    one vectorised computation and the result is differentiable in the images. One instance (B = 1)
    takes plain ``torch.autograd.grad`` instead (vmap's overhead buys nothing there), so the tests that
    compare batched with sequential runs compare the vectorised path with the plain one. Models with
    BatchNorm also take the plain path, instance by instance (``vectorised`` False): vmap's second
    derivative through ``batch_norm`` disagrees with autograd and finite differences (see below).
    Buffers (BatchNorm statistics a train-mode forward updates) are copied per instance and per call,
    so calling it never changes ``observation.model``; the model stays in the client's mode (train).

    ``targets``: the observed gradients stacked per instance. ``evaluations[b]`` counts the calls that
    counted for instance ``b`` (``count`` mask; default all): each is one forward and one gradient.
    """

    def __init__(self, observations):
        observations = as_observation_list(observations)
        first = observations[0]
        check_same_model(observations)
        self.model = first.model
        self.names = tuple(first.parameter_names)
        named = dict(self.model.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise NotApplicableError(f"observed gradient for {missing[0]!r} has no parameter in the model")
        self.params = {n: named[n].detach() for n in self.names}
        self._leaves = {n: named[n].detach() for n in self.names}  # the one-instance path differentiates these
        self.frozen = {n: p.detach() for n, p in named.items() if n not in self.params}
        self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        self.loss_fn = first.loss_fn
        self.instances = len(observations)
        self.targets = tuple(torch.stack([o.gradients[k].detach() for o in observations])
                             for k in range(len(self.names)))
        self.evaluations = [0] * self.instances

        def instance_loss(params, buffers, images, labels):
            logits = torch.func.functional_call(self.model, {**params, **self.frozen, **buffers}, (images,))
            return self.loss_fn(logits, labels)

        # torch.func's vmap of the double backward through batch_norm is off by ~2e-4 relative in float64
        # (convnet: vmap 0.0102234 vs plain autograd and central differences 0.0102216 for one directional
        # derivative of IG's loss): models with BatchNorm evaluate their instances one by one
        self.vectorised = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self._per_instance_gradients = torch.func.vmap(torch.func.grad(instance_loss), in_dims=(None, 0, 0, 0))

    def __call__(self, images: Tensor, labels: Tensor, count: Tensor | None = None) -> tuple[Tensor, ...]:
        """Each instance's gradients at ``(images[b], labels[b])``, as a tuple ordered like ``names``."""
        if images.shape[0] != self.instances or labels.shape[0] != self.instances:
            raise ValueError(f"expected {self.instances} instances, got images {tuple(images.shape)} "
                             f"and labels {tuple(labels.shape)}")
        counted = range(self.instances) if count is None else torch.nonzero(count.cpu()).flatten().tolist()
        for b in counted:
            self.evaluations[b] += 1
        if self.instances == 1 or not self.vectorised:
            per_instance = [self._plain_gradients(images[b], labels[b]) for b in range(self.instances)]
            return tuple(torch.stack(grads) for grads in zip(*per_instance))
        buffers = {n: b.expand(self.instances, *b.shape).clone() for n, b in self.buffers.items()}
        grads = self._per_instance_gradients(self.params, buffers, images, labels)
        return tuple(grads[n] for n in self.names)

    def _plain_gradients(self, images: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        """One instance's gradients by plain ``torch.autograd.grad`` (differentiable when grad mode is on)."""
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            leaves = {n: p.requires_grad_(True) for n, p in self._leaves.items()}
            buffers = {n: b.clone() for n, b in self.buffers.items()}
            logits = torch.func.functional_call(self.model, {**leaves, **self.frozen, **buffers}, (images,))
            return torch.autograd.grad(self.loss_fn(logits, labels), [leaves[n] for n in self.names],
                                       create_graph=differentiable)


def parameter_gradients(observation, images: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    """The gradients the client would send for ``(images, labels)`` (one instance, no batch dimension added)."""
    with torch.no_grad():  # values only: no graph for a second derivative
        return tuple(g[0] for g in GradientModel([observation])(images.unsqueeze(0), labels.unsqueeze(0)))


def _total(t: Tensor, batched: bool) -> Tensor:
    return t.flatten(1).sum(1) if batched else t.sum()


def squared_l2_distance(grads: Sequence[Tensor], targets: Sequence[Tensor], batched: bool = False) -> Tensor:
    """DLG's distance: ``Σ_t ‖g_t − t_t‖²`` over all parameter tensors (mit-han-lab/dlg ``main.py``).

    ``batched=True``: every tensor has a leading instance dimension; returns one distance per instance.
    """
    return sum(_total((g - t).square(), batched) for g, t in zip(grads, targets, strict=True))


def cosine_distance(grads: Sequence[Tensor], targets: Sequence[Tensor], batched: bool = False) -> Tensor:
    """Inverting Gradients' distance: ``1 − ⟨g, t⟩ / (‖g‖ ‖t‖)`` of the concatenated gradient vectors.

    As inversefed's ``reconstruction_costs(cost_fn='sim', indices='def', weights='equal')``; the norm
    product is floored at the dtype's smallest normal number so an all-zero gradient gives 1, not NaN.
    ``batched=True``: per instance (leading dimension), as :func:`squared_l2_distance`.
    """
    dot = sum(_total(g * t, batched) for g, t in zip(grads, targets, strict=True))
    g_norm = sum(_total(g.square(), batched) for g in grads).sqrt()
    t_norm = sum(_total(t.square(), batched) for t in targets).sqrt()
    return 1 - dot / (g_norm * t_norm).clamp_min(torch.finfo(dot.dtype).tiny)


def per_tensor_cosine_distance(grads: Sequence[Tensor], targets: Sequence[Tensor], eps: float = 1e-10,
                               batched: bool = False) -> Tensor:
    """``Σ_t (1 − cos(g_t, t_t))`` per parameter tensor (inversefed ``cost_fn='simlocal'``, eps 1e-10).

    ``batched=True``: every tensor has a leading instance dimension; returns one distance per instance.
    """
    start, dim = (1, 1) if batched else (0, 0)
    return sum(1 - torch.nn.functional.cosine_similarity(g.flatten(start), t.flatten(start), dim=dim, eps=eps)
               for g, t in zip(grads, targets, strict=True))


def total_variation(x: Tensor, batched: bool = False) -> Tensor:
    """Anisotropic TV, mean |horizontal| + mean |vertical| differences (inversefed ``metrics.total_variation``).

    ``batched=True``: the means are taken per instance (leading dimension); returns one value per instance.
    """
    dx, dy = (x[..., :, 1:] - x[..., :, :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()
    if batched:
        return dx.flatten(1).mean(1) + dy.flatten(1).mean(1)
    return dx.mean() + dy.mean()


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
