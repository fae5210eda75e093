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
* :func:`label_from_gradients` — iDLG's label rule (Zhao et al., arXiv 2001.02610);
* :func:`labels_from_gradients` — a batch's labels (as a multiset) from the output bias gradient, the
  label-count rule of Wainakh et al. 2022 (LLG) and Geng et al. 2021;
* :func:`recover_labels` — the one an attack calls with the label unknown: the first for one image, the
  second for a batch (on a FedAvg weight delta both read the mean step gradient ``−Δ / (K η)``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import NotApplicableError
from ..threat import as_observation_list, check_same_model

_FORWARD_HOOK_DICTS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
                       "_forward_hooks_with_kwargs", "_forward_hooks_always_called")


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

    A FedAvg observation (``observation.local``: the client shared its weight delta ``Δ = θ_K − θ_0`` after K
    local SGD steps of learning rate η) is matched in gradient units, instance by instance: the images map to
    the mean step gradient ``(1/K) Σ_k g_k`` of the replayed steps (:meth:`_simulated_update`) and the target is
    the observed ``−Δ / (K η)`` (:func:`update_as_gradients`) — the same minimisers as matching ``Δ`` itself (the
    distance is only scaled by ``(K η)²``), but at the scale of a gradient, so that an optimiser's absolute
    tolerances mean what they mean on a gradient: with η = 1e-4 the squared distance of deltas is 1e-8 of the
    gradients', below ``torch.optim.LBFGS``'s ``tolerance_grad`` (1e-7), and DLG never left its initialisation
    (results/realistic/fedavg, first run at f0b0b28). Cosine distances (IG) are unchanged by the scale.

    ``targets``: the observed gradients (or a weight delta as gradients) stacked per instance. ``evaluations[b]``
    counts the calls that counted for instance ``b`` (``count`` mask; default all): each is one forward and one
    gradient.
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
        # the one-instance path calls a private copy of the model directly (functional_call's per-call walk over
        # the modules cost ~0.4 ms of a 2 ms IG step on cnn2_c2); its parameters are the leaves it differentiates,
        # so the observation's model is never touched. Its buffers may drift (BatchNorm running statistics in
        # train mode), which no output depends on: train mode normalises with the batch's own statistics. A model
        # that cannot be deep-copied takes functional_call on detached leaves (same numbers, slower).
        self._private = None
        self._leaves = {n: named[n].detach() for n in self.names}
        if len(observations) == 1 or any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            self._private, self._private_leaves = _private_copy(self.model, self.names)
        self.frozen = {n: p.detach() for n, p in named.items() if n not in self.params}
        self.buffers = {n: b.detach() for n, b in self.model.named_buffers()}
        self.loss_fn = first.loss_fn
        self.instances = len(observations)
        views = [update_as_gradients(o) for o in observations]
        self.targets = tuple(torch.stack([view[n].detach() for view in views]) for n in self.names)
        self.evaluations = [0] * self.instances

        def instance_loss(params, buffers, images, labels):
            logits = torch.func.functional_call(self.model, {**params, **self.frozen, **buffers}, (images,))
            return self.loss_fn(logits, labels)

        # torch.func's vmap of the double backward through batch_norm is off by ~2e-4 relative in float64
        # (convnet: vmap 0.0102234 vs plain autograd and central differences 0.0102216 for one directional
        # derivative of IG's loss): models with BatchNorm evaluate their instances one by one
        self.local = first.local  # FedAvg: the client's K local steps, simulated (check_same_model: all alike)
        self.vectorised = self.local is None and \
            not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
        self._per_instance_gradients = torch.func.vmap(torch.func.grad(instance_loss), in_dims=(None, 0, 0, 0))

    def __call__(self, images: Tensor, labels: Tensor, count: Tensor | None = None) -> tuple[Tensor, ...]:
        """Each instance's gradients at ``(images[b], labels[b])``, as a tuple ordered like ``names``."""
        if images.shape[0] != self.instances or labels.shape[0] != self.instances:
            raise ValueError(f"expected {self.instances} instances, got images {tuple(images.shape)} "
                             f"and labels {tuple(labels.shape)}")
        counted = range(self.instances) if count is None else torch.nonzero(count.cpu()).flatten().tolist()
        for b in counted:
            self.evaluations[b] += 1
        if self.instances == 1:  # a view, not a copy: stacking one tensor added a copy and a graph node per call
            return tuple(g.unsqueeze(0) for g in self._plain_gradients(images[0], labels[0]))
        if not self.vectorised:
            per_instance = [self._plain_gradients(images[b], labels[b]) for b in range(self.instances)]
            return tuple(torch.stack(grads) for grads in zip(*per_instance))
        buffers = {n: b.expand(self.instances, *b.shape).clone() for n, b in self.buffers.items()}
        grads = self._per_instance_gradients(self.params, buffers, images, labels)
        return tuple(grads[n] for n in self.names)

    def _plain_gradients(self, images: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        """One instance's gradients by plain ``torch.autograd.grad`` (differentiable when grad mode is on); for
        a FedAvg observation the mean step gradient of its replayed local steps (:meth:`_simulated_update`)."""
        if self.local is not None:
            return self._simulated_update(images, labels)
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            if self._private is not None:
                leaves = self._private_leaves
                logits = self._private(images)
            else:
                named = {n: p.requires_grad_(True) for n, p in self._leaves.items()}
                buffers = {n: b.clone() for n, b in self.buffers.items()}
                logits = torch.func.functional_call(self.model, {**named, **self.frozen, **buffers}, (images,))
                leaves = [named[n] for n in self.names]
            return torch.autograd.grad(self.loss_fn(logits, labels), leaves, create_graph=differentiable)


    def _simulated_update(self, images: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
        """The update a FedAvg client would share for ``(images, labels)``, in gradient units: its K local SGD
        steps (:class:`copa.threat.LocalTraining`: learning rate, the images of each step) replayed with
        ``functional_call`` from the weights the server sent, differentiable through every step when grad mode
        is on (the Inverting Gradients paper's attack on several local steps, Geiping et al., NeurIPS 2020,
        §6; inversefed ``loss_steps``), returned as the mean step gradient ``(1/K) Σ_k g_k``, which is
        ``−(θ_K − θ_0) / (K η)`` — summed directly rather than formed from ``θ_K − θ_0``, which avoids the
        cancellation (equal in exact arithmetic)."""
        local = self.local
        differentiable = torch.is_grad_enabled()
        with torch.enable_grad():
            current = {n: p.detach().requires_grad_(True) for n, p in self._leaves.items()}
            buffers = {n: b.clone() for n, b in self.buffers.items()}
            total: list[Tensor] | None = None
            for step in range(local.steps):
                chunk = local.chunk(step, images.shape[0])
                logits = torch.func.functional_call(self.model, {**current, **self.frozen, **buffers}, (images[chunk],))
                grads = torch.autograd.grad(self.loss_fn(logits, labels[chunk]), [current[n] for n in self.names],
                                            create_graph=differentiable)
                total = list(grads) if total is None else [t + g for t, g in zip(total, grads)]
                current = {n: current[n] - local.lr * g for n, g in zip(self.names, grads)}
        mean = [t / local.steps for t in total]
        return tuple(mean) if differentiable else tuple(m.detach() for m in mean)


def _private_copy(model: nn.Module, names: Sequence[str]) -> tuple[nn.Module | None, list[Tensor]]:
    """A deep copy of ``model`` whose parameters ``names`` are leaves requiring grad (the others frozen), firing
    the original's forward hooks (the same hook dicts: the runner counts forward calls with one); ``(None, [])``
    when the model cannot be deep-copied."""
    try:
        duplicate = copy.deepcopy(model)
    except Exception:  # noqa: BLE001 — any module a plug-in defines; the functional_call path still works
        return None, []
    for original, copied in zip(model.modules(), duplicate.modules(), strict=True):
        for hooks in _FORWARD_HOOK_DICTS:
            if hasattr(original, hooks):
                setattr(copied, hooks, getattr(original, hooks))
    parameters = dict(duplicate.named_parameters())
    wanted = set(names)
    for n, p in parameters.items():
        p.requires_grad_(n in wanted)
    return duplicate, [parameters[n] for n in names]


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


def update_as_gradients(observation) -> dict[str, Tensor]:
    """The observed update as gradients, by parameter name: the gradient itself (FedSGD), or for a weight delta
    after K local steps of learning rate η the mean step gradient ``−Δ / (K η)`` (θ_K − θ_0 = −η Σ_k g_k). The
    gradient-matching attacks match it (:class:`GradientModel`) and the label rules below read the output
    layer's signs and sizes from it; for K > 1 the step gradients are taken at K slightly different weights
    (and per-step images), so the label rules become approximations there."""
    grads = observation.gradient_dict()
    local = getattr(observation, "local", None)
    if local is None:
        return grads
    scale = -1.0 / (local.steps * local.lr)
    return {name: g * scale for name, g in grads.items()}


def recover_labels(observation) -> tuple[Tensor, dict]:
    """The labels an optimisation attack uses when the scenario keeps them unknown: iDLG's rule for one image
    (:func:`label_from_gradients`), the batch label-count rule for more (:func:`labels_from_gradients`).
    Raises :class:`~copa.errors.NotApplicableError` (with the reason) where the rule does not apply.
    Returns ``(labels of shape (B,), info)``; ``info["label_rule"]`` names the rule."""
    if observation.batch_size == 1:
        labels, info = label_from_gradients(observation)
        return labels, {"extracted_label": info["label"], "label_rule": info["rule"], "output_layer": info["layer"],
                        "label_sign_unique": info["unique_sign"]}
    labels, info = labels_from_gradients(observation)
    return labels, {"extracted_labels": labels.tolist(), "label_rule": info["rule"], "output_layer": info["layer"],
                    "label_counts": info["counts"]}


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
    grads = update_as_gradients(observation)
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


def _mean_probe_probabilities(observation, probes: int, seed: int) -> Tensor:
    """The model's average softmax over neutral inputs: mid-grey and ``probes`` seeded uniform-noise images
    in the valid box, mapped into the model's input space with the observation's public preprocessing.

    Runs under ``no_grad`` through ``functional_call`` with *cloned* buffers, so the observation's model
    (parameters, BatchNorm statistics, train/eval mode) is left exactly as it was."""
    model = observation.model
    lower, upper = observation.bounds()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    unit = torch.rand((probes, *observation.input_shape), generator=generator, dtype=observation.dtype)
    unit = torch.cat([torch.full((1, *observation.input_shape), 0.5, dtype=observation.dtype), unit])
    images = lower + unit.to(observation.device) * (upper - lower)
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    with torch.no_grad():
        logits = torch.func.functional_call(model, (params, buffers), (images,))
        return torch.softmax(logits.to(observation.dtype), dim=-1).mean(dim=0)


def labels_from_gradients(observation, probes: int = 16, seed: int = 0) -> tuple[Tensor, dict]:
    """The labels of a whole batch from its gradients, labels unknown: the bias-gradient label-count rule.

    Sources: Wainakh et al., "User-Level Label Leakage from Gradients in Federated Learning" (PoPETs 2022,
    arXiv 2105.09369; LLG: negative output-layer gradient entries mark the present classes, then counts
    from the gradient minus an estimated "impact" of the model's predictions, which LLG+ estimates with the
    model on dummy inputs) and Geng et al., "Towards General Deep Leakage in Federated Learning" (arXiv
    2110.09074: the label count ``B·(p̂ − g)`` from the output layer's gradient and the mean prediction
    estimated with the model). We apply the count to the output *bias* gradient (the weight gradient's
    structure with the penultimate activation replaced by 1, so no activation estimate is needed); the
    sign step is iDLG's argument (Zhao et al., arXiv 2001.02610) applied per class.

    Derivation. The client's loss is softmax cross-entropy averaged over its B images (``client_loss``), and
    the output layer's logits are ``z_b = W h_b + β``. Then, with ``p_b = softmax(z_b)``, the observed bias
    gradient is ``g_c = (1/B) Σ_b (p_bc − y_bc)``, so the number of images of class ``c`` is exactly

        ``n_c = Σ_b y_bc = B · (p̄_c − g_c)``,   ``p̄_c = (1/B) Σ_b p_bc``  (the batch's mean prediction).

    ``p̄`` is unknown (it depends on the private images); we estimate it by the model's mean softmax over
    ``1 + probes`` neutral inputs (mid-grey and seeded uniform noise in the valid image box), giving real
    estimates ``ñ_c = B · (p̂_c − g_c)``. They are turned into non-negative integer counts summing to B:

    1. every class with ``g_c < 0`` gets one image — exact whatever ``p̄`` is, because ``g_c < 0`` means
       ``Σ_b y_bc > Σ_b p_bc > 0`` (if more than B classes are negative, the B most negative are kept);
    2. the remaining ``B − (number assigned)`` images go one at a time to the class whose estimate exceeds
       its assigned count the most (``argmax_c ñ_c − n_c``; ties to the lower class id).

    Assumptions: softmax cross-entropy with the mean over the batch and hard labels (the benchmark's
    client); the last ``nn.Linear`` (:func:`last_linear`) has a bias whose gradient is observed and gives
    the logits directly (no output activation after it: a ChainNet whose last activation is not Identity is
    refused); the observed gradient is the true one (a defence that adds noise, prunes or quantises it
    breaks the exact step 1 and biases step 2). Step 1 alone recovers a batch of *distinct* labels when
    each present class has ``Σ_b p_bc < 1`` — near-uniform predictions with K ≫ B, as on the untrained
    tanh chains; lenet-zhu's DLG initialisation gives peaked predictions, and step 2 completes the classes
    step 1 misses. Step 2 (and so repeated labels) relies on ``p̂ ≈ p̄``, which holds best on untrained
    models (their predictions depend little on the input) and degrades as a model trains. With B = 1 the
    rule is iDLG's: the bias gradient's only negative entry (its ``argmin``), as in
    :func:`label_from_gradients`.

    Uses only the observation (gradients, model, public preprocessing), never ``observation.labels``.
    Returns ``(labels, info)``: ``labels`` a LongTensor of shape (B,), sorted ascending (the gradient of a
    batch carries no image order, so the labels form a multiset); ``info`` has ``counts`` (per class),
    ``estimated_counts`` (``ñ``), ``present`` (the negative classes of step 1), ``mean_probability``
    (``p̂``), ``rule``, ``layer``, ``probes``, ``seed``.
    """
    batch = int(observation.batch_size)
    if batch < 1:
        raise NotApplicableError(f"the batch label rule needs a batch of at least one image, got {batch}")
    name, layer = last_linear(observation)
    if layer.bias is None:
        raise NotApplicableError(f"the batch label rule reads the output bias gradient, but the last Linear "
                                 f"layer {name!r} of {observation.model_name!r} has no bias")
    grads = update_as_gradients(observation)
    if f"{name}.bias" not in grads:
        raise NotApplicableError(f"no observed gradient for the output bias {name + '.bias'!r}")
    activations = getattr(observation.model, "activations", None)
    if isinstance(activations, nn.ModuleList) and len(activations) and type(activations[-1]).__name__ != "Identity":
        raise NotApplicableError(f"the batch label rule needs the last Linear layer's output to be the logits, "
                                 f"but {observation.model_name!r} applies {type(activations[-1]).__name__} after it")
    g = grads[f"{name}.bias"].detach().reshape(-1).to(torch.float64).cpu()
    if g.numel() != observation.num_classes:
        raise NotApplicableError(f"the output bias gradient has {g.numel()} entries, not the "
                                 f"{observation.num_classes} classes")
    p_hat = _mean_probe_probabilities(observation, probes, seed).to(torch.float64).cpu()
    estimate = batch * (p_hat - g)

    counts = torch.zeros_like(g, dtype=torch.long)
    negative = torch.nonzero(g < 0).reshape(-1)
    if negative.numel() > batch:  # keep the B most negative (stable: ties to the lower class id)
        order = torch.sort(g[negative], stable=True).indices
        negative = negative[order[:batch]]
    counts[negative] = 1
    for _ in range(batch - int(counts.sum())):
        counts[int(torch.argmax(estimate - counts.to(torch.float64)))] += 1

    labels = torch.repeat_interleave(torch.arange(g.numel()), counts).to(observation.device)
    info = {"counts": counts.tolist(), "estimated_counts": estimate.tolist(),
            "present": sorted(int(c) for c in negative), "mean_probability": p_hat.tolist(),
            "rule": "bias-gradient label counts (negative entries, then B·(p̂ − g) by largest remainder)",
            "layer": name, "probes": probes, "seed": seed}
    return labels, info
