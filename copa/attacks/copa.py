"""COPA (Chen & Campbell, arXiv 2111.10178) and COPA + gradient matching (BMVC 2022, arXiv 2210.13231).

Both run the layer-wise recursion of :mod:`copa.layerwise`. At every convolution ``i``:

1. **R-GAP step:** the minimum-norm least-squares solution ``x_LS`` of
   ``U_i x̃ = [A_i; K_i(δ_i); P_i] x̃ = [z_i; g_i; 0]``.
2. **Null-space stage** (``copa`` and ``copa-gm``, layers with ``nullity(U_i) > 0``): the priors
   move the solution only *inside the set of least-squares solutions*, ``x̃ = x_LS + Π_null v``,
   optimised over ``v`` with Adam. The data constraints therefore stay hard — what the gradients
   pin down is never moved (the authors' released ``hybrid.py`` adds them as a soft penalty instead,
   which loses the exact solution on full-rank layers: 150.7 → 33.3 dB on cnn2_c1) — and the priors
   act only on what the data leave free. A full-rank layer keeps its least-squares solution.
3. **Gradient-matching stage** (``copa-gm`` only): the cosine gradient-matching term of the
   sub-network from layer ``i`` to the output, against the *observed* gradients. On the set
   ``x_LS + null(U_i)`` of a *consistent* system this term is constant — ``A_i x̃ = z_i`` fixes
   every later activation and ``K_i(δ_i) x̃ = g_i`` fixes layer ``i``'s gradient — so gradient
   matching can only add information where the layer's system is *inconsistent*: where the
   reconstruction of a later, rank-deficient layer left ``z_i`` outside what layer ``i`` can
   produce (e.g. the image layer of cnn4_c1/cnn4_c2, whose 5400/12544 forward rows over-determine
   3072 pixels). So this stage runs only where the observation is not yet reproduced — relative
   gradient residual ``Σ_t‖∇_t − g_t‖² / Σ_t‖g_t‖² > consistency_tol`` over the sub-network — and then
   optimises ``x_i`` freely from the stage-2 solution with the authors' objective (cosine per
   parameter tensor + TV + their linear term ``‖U_i x̃ − b_i‖²/‖b_i‖²`` + our pull-back and box
   terms) and their per-layer schedule, except the image-layer TV weight of this free stage (0.01
   instead of 1; their TV 1 acts in the null-space stage — see ``gm_tv_image``). Where the observation is already reproduced (every
   full-rank chain, and every chain whose deficient layers sit on consistent systems, e.g. cnn2_c2)
   ``copa-gm`` returns exactly what ``copa`` returns: nothing the data determine is lost.
4. **Floor check** (``copa`` and ``copa-gm``, image layer, ours: issue 34; ``floor_check``). On deep rank-deficient
   chains the recursion amplifies errors: a deficient layer's minimum-norm choice leaves the next input outside
   the preceding activation's range, its inverse clips there (a sigmoid's logit at 1e-6 is −13.8), the
   inconsistent right-hand sides meet small singular values below, and the image comes out hundreds to
   thousands of times too large (544×, 22165× and 2198× the true image's norm on random-chain:4, :42, :50,
   CIFAR-10 train image 0; 94–99 % of it outside the pixel box: 5 dB, below the mean image's 12 dB).
   Each layer records the fraction of its reconstructed input outside what the layer below can produce
   (``outside_fraction``, ``outside_fraction_least_squares``: the detector). The decision is by the attack's own
   loss: the relative gradient residual of the whole network with the update's unknown positive scale fitted,
   ``min_s Σ_t‖s∇_t − g_t‖² / Σ_t‖g_t‖² = 1 − cos²`` (DP clipping scales a client's update by a factor the
   attacker does not know; the unscaled residual chose the blank image over 30 dB reconstructions there:
   docs/defences.md), of the layer-wise image and of the blank mid-grey image (the mean-image floor's guess, which knows nothing of the gradients).
   Where the blank image reproduces the observation better — or, if the image layer's least-squares solution
   lies outside the pixel box on more than ``amplified_fraction`` of its pixels (amplified), where it is not
   ``amplified_margin`` times worse — the layer-wise image is judged amplified noise: ``copa`` returns the
   blank image; ``copa-gm`` also runs two gradient-matching restarts on the whole network, from the blank image
   and from a uniform noise image in the pixel box (the two floors; ``fallback_steps`` of Inverting Gradients'
   recipe: signed Adam, cosine of the gradient vector + TV, box, step decay — Geiping et al., NeurIPS 2020), and
   returns the better by residual of the blank image and the two restarts' mean. The mean keeps what both
   restarts agree on — the directions the gradients determine — and halves what each carries over from its start
   where they do not; choosing one restart by the residual (or by their own objective, cosine + TV) fell below
   the blank image on random-chain:28 (or :50), where the two reproduce the observation equally well. Where the layer-wise image reproduces the
   observation better than the blank one (every chain where the recursion works) it is returned unchanged.

Per-layer objective terms (all in float64):

* **pull-back** (layers i ≥ 1): ``x_i`` is the output of layer i−1, so with ``z = σ_{i−1}⁻¹(x_i)``
  and ``x_{i−1}(x_i) = A_{i−1}⁺ z`` (its least-squares preimage, padding fixed at 0):
  ``‖z − A_{i−1} x_{i−1}‖² / ‖z‖²`` (``z`` must lie in the range of ``A_{i−1}``) plus
  ``‖K_{i−1}(δ_{i−1}) x_{i−1} − g_{i−1}‖² / ‖g_{i−1}‖²`` with ``δ_{i−1} = σ'_{i−1}(z) ⊙ A_iᵀ δ_i``
  (the preceding layer's observed gradient must be reproducible). We eliminate ``x_{i−1}`` by its
  least-squares preimage rather than optimising it jointly so that the penalty depends on ``x_i``
  alone and costs two matrix products per step.
* **TV prior** (anisotropic, mean absolute differences, as in ``hybrid.py``) on ``x_i``;
* **box** (image layer): squared distance of the image to the valid pixel box the preprocessing
  implies (the threat model's ``observation.bounds()``);
* **gradient matching** (``copa-gm``, stage 3): ``Σ_t (1 − cos(∇_t, g_t))`` over the parameter
  tensors of the sub-network from layer i to the output, with the label;
* **linear** (``copa-gm``, stage 3): ``(‖A_i x_i − z_i‖² + ‖K_i(δ_i) x_i − g_i‖²) / (‖z_i‖² + ‖g_i‖²)``,
  computed with convolutions (padding rows hold by construction: ``x_i`` is unpadded).

In each stage the iterate with the lowest objective — the stage's starting point included — is
kept (the attack's own loss; never the ground truth).
"""

from __future__ import annotations

import copy
import functools
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import layerwise
from ..errors import InvalidSpecError, NotApplicableError
from ..hyperparameters import STEP_CEILING, Hyperparameter
from ..layerwise import ChainContext, LayerProblem, NullProjector, chain_problem, check_solver, solve_backwards_batch
from . import progress
from .base import Attack, Reconstruction, register_attack
from .gradmatch import cosine_distance, per_tensor_cosine_distance, recover_labels, total_variation

HYBRID = "authors' hybrid.py (CangxiongChen/training-data-leakage)"
IG_CODE = "JonasGeiping/invertinggradients"


def _flat_sum(t: Tensor) -> Tensor:
    """Per-instance sum over everything but the leading instance dimension."""
    return t.flatten(1).sum(1)


class _PullBack:
    """The pull-back penalty of layer ``i`` from layer ``i − 1`` for the instances of a batch (see the
    module docstring): ``x`` ``(B, C, H, W)`` → ``(B,)``. ``A_{i−1}``'s decomposition depends on the
    weights only and is computed once for all instances."""

    def __init__(self, problems: list[LayerProblem], ctxs: list[ChainContext], x_start: Tensor):
        first, ctx = problems[0], ctxs[0]
        i = first.index
        self.prev = ctx.layers[i - 1]
        self.act = ctx.activations[i - 1]
        self.geometry = layerwise.ConvGeometry.from_conv(self.prev, ctx.input_shapes[i - 1][-2:])
        g = self.geometry
        self.weight = self.prev.weight
        # A_{i−1} on the unpadded input (padding entries are zero), sparse; its thin SVD comes from the
        # eigendecomposition of the smaller Gram matrix. A and Aᵀ are then applied as convolutions.
        a = layerwise.forward_matrix(self.weight, g, layout="sparse")
        if g.padding_rows:
            keep = g.interior_mask(a.device).reshape(-1).nonzero().squeeze(1)
            a = torch.index_select(a, 1, keep).coalesce()
        rows, cols = a.shape
        gram, side = layerwise.gram_matrix(a)
        eigenvalues, vectors = torch.linalg.eigh(gram.to(self.weight.device))
        eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1)
        rank = int((eigenvalues.sqrt() > eigenvalues[0].sqrt() * math.sqrt(max(rows, cols) * layerwise.EPS64)).sum())
        self.vectors, self.eigenvalues = vectors[:, :rank].contiguous(), eigenvalues[:rank]
        self.tall = side == "columns"  # vectors: right singular vectors (tall) or left ones (wide)
        # σ⁻¹(x_i) must lie in range(A_{i−1}); vacuous when A_{i−1} has full row rank.
        self.range_informative = rank < rows
        # x_{i−1} is a function of x_i only if A_{i−1} is injective (full column rank); otherwise the
        # min-norm preimage is an arbitrary choice and its gradient residual biases x_i (measured on
        # cnn4_c1 layer 2: relative error of x_2 0.79 → 1.85), so the gradient part is left out.
        self.injective = rank == cols
        self.grad_prev = torch.stack([c.grads[i - 1][0] for c in ctxs])
        self.grad_x = torch.stack([layerwise.input_gradient(p.delta, p.module.weight, p.geometry) for p in problems])
        # Fixed scales (from the starting point): normalising by the current ‖z‖² would let the optimiser
        # lower the penalty by inflating z, i.e. by pushing x_i into the activation's saturation.
        self.z_scale = _flat_sum(self.act.inverse(x_start).square()).clamp_min(1e-30)
        self.g_scale = _flat_sum(self.grad_prev.square()).clamp_min(1e-30)

    def _apply(self, x_prev: Tensor) -> Tensor:
        g = self.geometry
        return F.conv2d(x_prev.reshape(-1, g.in_channels, *g.input), self.weight, stride=g.stride, padding=g.padding)

    def _adjoint(self, z: Tensor) -> Tensor:
        g = self.geometry
        return torch.nn.grad.conv2d_input((z.shape[0], g.in_channels, *g.input), self.weight, z,
                                          stride=g.stride, padding=g.padding).flatten(1)

    def __call__(self, x_i: Tensor) -> Tensor:
        z = self.act.inverse(x_i)
        total = x_i.new_zeros(x_i.shape[0])
        if self.tall:  # A⁺z = V Λ⁻¹ Vᵀ Aᵀ z, then the range residual z − A A⁺ z
            x_prev = ((self._adjoint(z) @ self.vectors) / self.eigenvalues) @ self.vectors.T
            if self.range_informative:
                total = total + _flat_sum((z - self._apply(x_prev)).square()) / self.z_scale
        elif self.range_informative:  # wide but rank-deficient: project onto the left singular vectors
            flat = z.flatten(1)
            total = total + (flat - (flat @ self.vectors) @ self.vectors.T).square().sum(1) / self.z_scale
        if self.injective:
            g = self.geometry
            delta_prev = self.act.derivative(z) * self.grad_x
            predicted = layerwise.grad_apply(g.pad(x_prev.reshape(-1, g.in_channels, *g.input)), delta_prev, g)
            total = total + _flat_sum((predicted - self.grad_prev).square()) / self.g_scale
        return total

    @property
    def active(self) -> bool:
        return self.range_informative or self.injective

    def subset(self, members: list[int]) -> _PullBack:
        """The penalty of the instances ``members`` only (the weight-only decomposition is shared)."""
        if members == list(range(self.grad_prev.shape[0])):
            return self
        part = copy.copy(self)
        for name in ("grad_prev", "grad_x", "z_scale", "g_scale"):
            setattr(part, name, getattr(self, name)[members])
        return part


class _GradientMatch:
    """``Σ_t (1 − cos)`` between the sub-network's gradients at ``x_i`` and the observed ones, per instance.

    The sub-network from layer ``i`` to the output is a function of the (shared, detached) parameters;
    B instances' gradients come from ``torch.func.vmap`` over ``torch.func.grad`` (as
    :class:`copa.attacks.GradientModel`), one instance's from plain ``torch.autograd.grad``.
    """

    def __init__(self, problems: list[LayerProblem], ctxs: list[ChainContext], labels: list[Tensor] | None = None):
        labels = [c.labels for c in ctxs] if labels is None else labels
        if any(label is None for label in labels):
            raise ValueError("gradient matching needs the label")
        ctx, index = ctxs[0], problems[0].index
        self.layers = ctx.layers[index:]
        self.acts = ctx.activations[index:]
        self.params = [p.detach() for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        position = {id(layer.weight): (k, 0) for k, layer in enumerate(ctx.layers)}
        position |= {id(layer.bias): (k, 1) for k, layer in enumerate(ctx.layers) if layer.bias is not None}
        where = [position[id(p)] for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        self.targets = [torch.stack([c.grads[k][j] for c in ctxs]) for k, j in where]
        self.labels = torch.stack(list(labels))
        self.evaluations = 0  # per instance: every call evaluates every instance once
        self._per_instance = torch.func.vmap(torch.func.grad(self._loss), in_dims=(None, 0, 0))

    def _loss(self, params: list[Tensor], x_i: Tensor, labels: Tensor) -> Tensor:
        out, k = x_i.unsqueeze(0), 0
        for layer, act in zip(self.layers, self.acts):
            if isinstance(layer, torch.nn.Linear):
                out = F.linear(out.flatten(1), params[k], params[k + 1])
                k += 2
            else:
                out = F.conv2d(out, params[k], stride=layer.stride, padding=layer.padding)
                k += 1
            out = act(out)
        return F.cross_entropy(out, labels)

    def gradients(self, x_i: Tensor) -> tuple[Tensor, ...]:
        """Each instance's sub-network gradients at ``x_i`` ``(B, C, H, W)``, differentiable in ``x_i``."""
        self.evaluations += 1
        if x_i.shape[0] > 1:
            return tuple(self._per_instance(self.params, x_i, self.labels))
        with torch.enable_grad():
            params = [p.requires_grad_(True) for p in self.params]
            grads = torch.autograd.grad(self._loss(params, x_i[0], self.labels[0]), params,
                                        create_graph=x_i.requires_grad)
        return tuple(g.unsqueeze(0) for g in grads)

    def relative_residual(self, x_i: Tensor) -> list[float]:
        """``Σ_t ‖∇_t − g_t‖² / Σ_t ‖g_t‖²`` per instance: 0 where ``x_i`` reproduces the observation."""
        with torch.enable_grad():
            grads = self.gradients(x_i.detach())
        num = sum(_flat_sum((g.detach() - t).square()) for g, t in zip(grads, self.targets))
        den = sum(_flat_sum(t.square()) for t in self.targets)
        return [n / d if d > 0 else 0.0 for n, d in zip(num.tolist(), den.tolist())]

    def scale_free_residual(self, x_i: Tensor) -> list[float]:
        """``min_{s ≥ 0} Σ_t ‖s ∇_t − g_t‖² / Σ_t ‖g_t‖² = 1 − max(0, ⟨∇, g⟩)² / (‖∇‖² ‖g‖²)`` per instance (over
        the whole concatenated update): the relative residual once the update's one unknown positive scale is
        fitted. A client may scale its whole update by a factor the attacker does not know — DP-SGD clips it to
        norm C (Abadi et al., CCS 2016: a factor ``min(1, C/‖g‖)``), and FedAvg's learning rate scales it too — so
        the floor check compares candidates by this, not by :meth:`relative_residual` (under clipping the true
        image's gradient is far from the clipped update in norm while parallel to it: docs/defences.md). 0 where
        ``x_i`` reproduces the update up to scale; 1 where its gradient is orthogonal (or opposite) to it."""
        with torch.enable_grad():
            grads = self.gradients(x_i.detach())
        dot = sum(_flat_sum(g.detach() * t) for g, t in zip(grads, self.targets))
        own = sum(_flat_sum(g.detach().square()) for g in grads)
        den = sum(_flat_sum(t.square()) for t in self.targets)
        return [1.0 if d <= 0 or o <= 0 or v <= 0 else max(0.0, 1.0 - v * v / (o * d))
                for v, o, d in zip(dot.tolist(), own.tolist(), den.tolist())]

    def __call__(self, x_i: Tensor) -> Tensor:
        return per_tensor_cosine_distance(self.gradients(x_i), self.targets, batched=True)

    def subset(self, members: list[int]) -> _GradientMatch:
        """The same matching for the instances ``members`` only (its own evaluation count)."""
        part = copy.copy(self)
        part.targets = [t[members] for t in self.targets]
        part.labels = self.labels[members]
        part.evaluations = 0
        return part


class _LinearResidual:
    """The layer's equations as a penalty: ``(‖A x − z‖² + ‖K(δ) x − g‖²) / (‖z‖² + ‖g‖²)`` per instance."""

    def __init__(self, problems: list[LayerProblem]):
        first = problems[0]
        self.weight, self.geometry = first.module.weight, first.geometry
        self.stride, self.padding = first.module.stride, first.module.padding
        self.z = torch.stack([p.z for p in problems])
        self.delta = torch.stack([p.delta for p in problems])
        self.grad = torch.stack([p.grad_weight for p in problems])
        self.scale = (_flat_sum(self.z.square()) + _flat_sum(self.grad.square())).clamp_min(1e-300)

    def __call__(self, x_i: Tensor) -> Tensor:
        forward = F.conv2d(x_i, self.weight, stride=self.stride, padding=self.padding) - self.z
        gradient = layerwise.grad_apply(self.geometry.pad(x_i), self.delta, self.geometry) - self.grad
        return (_flat_sum(forward.square()) + _flat_sum(gradient.square())) / self.scale


def _signed_gradient_matching(match: _GradientMatch, start: Tensor, lower: Tensor, upper: Tensor, steps: int,
                               lr: float, tv: float) -> Tensor:
    """Inverting Gradients' optimisation (Geiping et al., NeurIPS 2020; inversefed, as ``baselines/
    inverting_gradients.py``) of B images ``(B, C, H, W)`` through the whole chain: Adam on the *sign* of the
    gradient of ``1 − cos(∇, g)`` (concatenated gradient vector) ``+ tv·TV``, the image clamped to the pixel box
    after every step, the step size ×0.1 at 3/8, 5/8 and 7/8 of the steps. Returns each instance's iterate of
    lowest objective, the start included (the attack's own loss), and that objective ``(B,)``."""
    x = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    milestones = sorted({steps * 3 // 8, steps * 5 // 8, steps * 7 // 8} - {0})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)

    def objective(images: Tensor) -> Tensor:
        value = cosine_distance(match.gradients(images), match.targets, batched=True)
        return value + tv * total_variation(images, batched=True) if tv > 0 else value

    best_value = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    best = x.detach().clone()
    with progress.stage(f"gradient-matching restart ({x.shape[0]})", total=steps) as bar:
        for step in range(steps + 1):
            optimizer.zero_grad()
            values = objective(x)
            current = values.detach()
            better = torch.isfinite(current) & (current < best_value)
            best_value = torch.where(better, current, best_value)
            best = torch.where(better.reshape(-1, *[1] * (x.dim() - 1)), x.detach(), best)
            if step == steps:
                break
            values.sum().backward()
            x.grad.sign_()
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                x.copy_(torch.maximum(torch.minimum(x, upper), lower))
            bar.step(loss=current)
    return best, best_value


def outside_fraction(x: Tensor, index: int, act, bound: tuple[Tensor, Tensor]) -> float:
    """The fraction of a reconstructed layer input ``x`` (C×H×W) that the layer below cannot produce: outside the
    open range of the preceding activation ``act`` (where its inverse clips), or at the image layer (``index``
    0) outside the valid pixel box ``bound``."""
    if index == 0:
        outside = (x < bound[0]) | (x > bound[1])
    else:
        outside = (act(act.inverse(x)) - x).abs() > 1e-9 * (1 + x.abs())
    return float(outside.to(torch.float64).mean())


def _record_outside_fraction(problems: list[LayerProblem], ctxs: list[ChainContext], refined, bounds) -> None:
    """The amplification diagnostic of each instance's layer (issue 34; only what the attacker has):
    :func:`outside_fraction` of the least-squares solution (``outside_fraction_least_squares``) and of the
    refined one (``outside_fraction``). Outside the activation's range its inverse clips and the next solve's
    right-hand side saturates (a sigmoid's logit at 1e-6 is −13.8)."""
    first = problems[0]
    g, index = first.geometry, first.index
    for b, (problem, (solution, info)) in enumerate(zip(problems, refined)):
        act = ctxs[b].activations[index - 1] if index > 0 else None
        for key, flat in (("outside_fraction_least_squares", problem.solution), ("outside_fraction", solution)):
            info[key] = outside_fraction(g.unpad(flat.reshape(g.in_channels, *g.padded)), index, act, bounds[b])


# Per-instance projector bases up to this size run their null-space stage in groups that fit it, on
# CPU: the stage's products stream each instance's basis every step, and on this project's machine
# (x86_64, 2 cores) one 22 MiB basis costs 2.5 ms per projection alone, 4.3 ms per instance two at a
# time and 11 ms per instance eight or more at a time (out of cache). Larger bases stream from memory
# either way and are batched whole; so is everything on CUDA.
CPU_STAGE_CACHE_BYTES = 32 * 2 ** 20


def _stage_chunks(problems: list[LayerProblem], members: list[int]) -> list[list[int]]:
    """``members`` (the problems' instance positions) in groups for the null-space stage (see above)."""
    if not members:
        return []
    first = problems[0]
    side_rows = first.systems.side == "rows"
    size = first.systems.shape[0] if side_rows else first.systems.shape[1]
    per_instance = size * max(int(p.solve_info.rank) for p in problems) * 8
    if first.delta.device.type != "cpu" or per_instance > CPU_STAGE_CACHE_BYTES:
        return [members]
    group = max(1, CPU_STAGE_CACHE_BYTES // per_instance)
    return [members[k:k + group] for k in range(0, len(members), group)]


def _minimise(objective, start: Tensor, steps: int, lr: float, stage: str = "Adam",
              ) -> tuple[Tensor, list[float], list[float]]:
    """Adam on ``objective(start + d)`` over ``d`` for B independent instances (leading dimension).

    ``objective`` returns one value per instance; Adam is element-wise, so one optimiser over the stacked
    ``d`` (gradient of the sum) is B independent Adam runs. Returns each instance's best point (the
    iterate of lowest objective, the start included), its value and the initial value.
    """
    d = torch.zeros_like(start, requires_grad=True)
    optimizer = torch.optim.Adam([d], lr=lr)
    initial = objective(start).detach()
    best_value, best_d = initial.clone(), torch.zeros_like(start)

    def keep_better(values: Tensor) -> None:
        nonlocal best_value, best_d
        better = torch.isfinite(values) & (values < best_value)
        best_value = torch.where(better, values, best_value)
        best_d = torch.where(better.reshape(-1, *[1] * (start.dim() - 1)), d.detach(), best_d)

    with progress.stage(stage, total=int(steps)) as bar:
        for _ in range(int(steps)):
            optimizer.zero_grad()
            values = objective(start + d)
            values.sum().backward()
            keep_better(values.detach())  # value at the iterate before this step
            optimizer.step()
            bar.step(loss=values.detach())
    if steps:
        with torch.no_grad():
            keep_better(objective(start + d))
    return (start + best_d).detach(), best_value.tolist(), initial.tolist()


class COPA(Attack):
    """COPA: layer-wise constrained optimisation with hard data constraints (see module docstring)."""

    name = "copa"
    paper = "Chen & Campbell, arXiv 2111.10178 (COPA)"
    code = "github.com/CangxiongChen/training-data-leakage"
    description = "layer-wise inversion: R-GAP step, then priors in the null space of each layer's system"
    needs_label = False
    batched = True
    hyperparameters = {
        "steps": Hyperparameter(1000, "ours: Adam steps of the null-space stage per rank-deficient layer "
                                      "(hybrid.py uses 1000 for deep layers)", minimum=0, maximum=STEP_CEILING),
        "lr": Hyperparameter(1e-3, f"{HYBRID}: torch.optim.Adam default lr", minimum=0.0),
        "tv_weight_image": Hyperparameter(1.0, f"{HYBRID}: TV weight 1 at the image layer", minimum=0.0),
        "tv_weight_hidden": Hyperparameter(0.1, f"{HYBRID}: TV weight 0.1 at deeper layers", minimum=0.0),
        "pullback_weight": Hyperparameter(1.0, "ours: weight of the pull-back penalty (layers ≥ 1)", minimum=0.0),
        "box_weight": Hyperparameter(1.0, "ours: weight of the pixel-box penalty at the image layer", minimum=0.0),
        "solver": Hyperparameter("normal", "ours: 'normal' (Gram Cholesky, fast) or 'lstsq' (LAPACK gelsd)"),
        "floor_check": Hyperparameter(True, "ours (issue 34): stage 4, the floor check — where the layer-wise image "
                                            "is judged worse than the blank mid-grey one (the mean-image floor's "
                                            "guess) by the whole network's scale-free gradient residual, copa returns "
                                            "the blank image and copa-gm the best of it and its gradient-matching "
                                            "restarts; false: the layer-wise image always"),
        "amplified_fraction": Hyperparameter(0.05, "ours (issue 34): the fraction of the image layer's least-squares "
                                                   "solution outside the pixel box above which the recursion counts as "
                                                   "amplified (rgap on 22 deficient chains of the metric-validity "
                                                   "study: ≤ 5.7 % where it beats the mean image, but cnn4_c3's "
                                                   "2.7–13.7 %; 16–93 % on random-chain:6, :8, :14, :56; docs/copa.md)",
                                             minimum=0.0, maximum=1.0),
        "amplified_margin": Hyperparameter(0.1, "ours (issue 34): an amplified layer-wise image is kept only where its "
                                                "residual is below this fraction of the blank image's (cnn4_c3: "
                                                "≤ 3.2e-3; random-chain:56: 0.22–3.1)", minimum=0.0),
    }

    def validate(self):
        check_solver(self.hp["solver"])
        if not self.hp["lr"] > 0:  # steps and weights: their ranges are declared above (minimum / maximum)
            raise InvalidSpecError(f"lr={self.hp['lr']!r} is invalid: expected > 0")

    def applicable(self, observation):
        return chain_problem(observation) or super().applicable(observation)

    # -- schedule -----------------------------------------------------------------------------------
    def layer_schedule(self, index: int) -> dict[str, float]:
        """Steps and weights of the gradient-matching stage for layer ``index`` (0 = image); none for COPA."""
        return {"steps": 0, "gm": 0.0, "tv": 0.0, "linear": 0.0}

    def tv_weight(self, index: int) -> float:
        return self.hp["tv_weight_image"] if index == 0 else self.hp["tv_weight_hidden"]

    def reconstruct(self, observation, generator):
        return self.reconstruct_batch([observation], [generator])[0]

    def reconstruct_batch(self, observations, generators):
        """B instances of one model in lockstep (:func:`copa.layerwise.solve_backwards_batch`); each layer's
        null-space and gradient-matching stages optimise all instances that need them in one vectorised
        Adam run (per-instance objectives, best iterates and stage decisions)."""
        bounds = [tuple(b.to(torch.float64)[0] for b in o.bounds()) for o in observations]
        evaluations = [0] * len(observations)
        start = time.perf_counter()
        labels = [self._check_label(o) for o in observations]
        solved = solve_backwards_batch(observations, functools.partial(self._refine, bounds=bounds, labels=labels,
                                                                       generators=generators,
                                                                       evaluations=evaluations),
                                       solver=self.hp["solver"])
        seconds = time.perf_counter() - start
        return [Reconstruction(images=x.to(o.dtype), labels=o.labels,
                               loss=sum(d.get("objective", 0.0) for d in ctx.layer_info),
                               forward_evals=n, gradient_evals=n,
                               info={"layers": ctx.layer_info, "seconds_total": seconds})
                for o, (x, ctx), n in zip(observations, solved, evaluations)]

    def _check_label(self, observation) -> Tensor | None:
        """The label the floor check evaluates gradients with: the observed one, else iDLG's rule
        (:func:`copa.attacks.gradmatch.recover_labels`); None where neither is available (no floor check)."""
        if observation.labels is not None or not self.hp["floor_check"]:
            return observation.labels
        try:
            return recover_labels(observation)[0]
        except NotApplicableError:
            return None

    def _refine(self, problems: list[LayerProblem], ctxs: list[ChainContext], *, bounds, labels, generators,
                evaluations: list[int]):
        """Stages 2 to 4 of the module docstring for one layer of every instance (one progress stage per layer)."""
        with progress.stage(f"layer {problems[0].index}"):
            refined = self._refine_layer(problems, ctxs, bounds=bounds, evaluations=evaluations)
            _record_outside_fraction(problems, ctxs, refined, bounds)
            if problems[0].index == 0 and self.hp["floor_check"]:
                refined = self._floor_check(problems, ctxs, refined, bounds=bounds, labels=labels,
                                            generators=generators, evaluations=evaluations)
            return refined

    def _floor_check(self, problems: list[LayerProblem], ctxs: list[ChainContext], refined, *, bounds, labels,
                     generators, evaluations: list[int]):
        """Stage 4: each instance's image is the candidate — the layer-wise image, the blank mid-grey image and
        (COPA-GM) the mean of the gradient-matching restarts of :meth:`_fallback_candidates` — that reproduces the
        observed gradients best (relative residual over the whole network). Instances without a label keep the
        layer-wise image."""
        g = problems[0].geometry
        members = [b for b, label in enumerate(labels) if label is not None]
        for b in set(range(len(problems))) - set(members):
            refined[b][1]["floor_check"] = {"chosen": "layer-wise", "reason": "skipped: no label"}
        if not members:
            return refined
        chosen = [problems[b] for b in members]
        match = _GradientMatch(chosen, [ctxs[b] for b in members], labels=[labels[b] for b in members])
        layerwise_images = torch.stack([g.unpad(refined[b][0].reshape(g.in_channels, *g.padded)) for b in members])
        lower = torch.stack([bounds[b][0] for b in members])
        upper = torch.stack([bounds[b][1] for b in members])
        blank = ((lower + upper) / 2).expand_as(layerwise_images).contiguous()
        candidates = {"layer-wise": layerwise_images, "blank": blank}
        residuals = {name: match.scale_free_residual(x) for name, x in candidates.items()}
        # amplified: the image layer's least-squares solution leaves the pixel box on more than amplified_fraction
        # of its pixels; its layer-wise image then counts only where it beats the blank one by a factor of
        # amplified_margin (the residual ratio), else it is judged worse than the blank one
        amplified = [refined[b][1]["outside_fraction_least_squares"] > self.hp["amplified_fraction"]
                     for b in members]
        margin = self.hp["amplified_margin"]
        worse = [k for k in range(len(members))
                 if residuals["layer-wise"][k] > residuals["blank"][k] * (margin if amplified[k] else 1.0)]
        extra = [0] * len(members)
        restarts, notes = self._fallback_candidates(match, candidates, worse, lower, upper,
                                                    [generators[members[k]] for k in worse])
        for name, (images, values, counts) in restarts.items():
            candidates[name] = images
            residuals[name] = values
            extra = [e + c for e, c in zip(extra, counts)]
        for k, b in enumerate(members):
            evaluations[b] += match.evaluations + extra[k]
            finite = {name: values[k] for name, values in residuals.items() if math.isfinite(values[k])}
            if k in worse:
                finite.pop("layer-wise", None)
            best = min(finite, key=finite.get) if finite else "layer-wise"
            refined[b][1]["floor_check"] = {"chosen": best, "amplified": amplified[k], "worse_than_blank": k in worse,
                                            **{f"residual_{name}": values[k] for name, values in residuals.items()},
                                            **notes[k]}
            if best != "layer-wise":
                refined[b] = (g.pad(candidates[best][k]).reshape(-1), refined[b][1])
        return refined

    def _fallback_candidates(self, match, candidates, worse, lower, upper, generators) -> tuple[dict, list[dict]]:
        """More candidates for the instances ``worse`` (positions in ``match``) whose layer-wise image
        reproduces the observation worse than the blank one, as ``name: (images, residuals, evaluations)``
        over all of ``match``'s instances (residual inf where not run), and per instance the facts to record
        (``floor_check``); none for COPA (see COPA-GM)."""
        return {}, [{} for _ in range(len(candidates["blank"]))]

    def _refine_layer(self, problems: list[LayerProblem], ctxs: list[ChainContext], *, bounds,
                      evaluations: list[int]):
        first = problems[0]
        g, index = first.geometry, first.index
        infos: list[dict[str, Any]] = [{} for _ in problems]
        solutions = [p.solution for p in problems]

        def unflat(x_flat: Tensor) -> Tensor:
            return g.unpad(x_flat.reshape(x_flat.shape[0], g.in_channels, *g.padded))

        @functools.cache
        def pull_back() -> _PullBack | None:
            """Built on first use, for every instance: full-rank, consistent layers never pay for its
            eigendecomposition; its scales come from the least-squares solutions."""
            if index == 0 or self.hp["pullback_weight"] <= 0:
                return None
            penalty = _PullBack(problems, ctxs, unflat(torch.stack([p.solution for p in problems])))
            return penalty if penalty.active else None

        def priors_for(members: list[int]):
            """The prior terms (TV, box, pull-back) of the instances ``members``."""
            pull = pull_back()
            pull = pull.subset(members) if pull is not None else None
            lower = torch.stack([bounds[b][0] for b in members])
            upper = torch.stack([bounds[b][1] for b in members])

            def priors(x: Tensor, tv: float) -> Tensor:
                total = tv * total_variation(x, batched=True)
                if index == 0 and self.hp["box_weight"] > 0:
                    below, above = (lower - x).clamp_min(0), (x - upper).clamp_min(0)
                    total = total + self.hp["box_weight"] * (below.square() + above.square()).flatten(1).mean(1)
                if pull is not None:
                    total = total + self.hp["pullback_weight"] * pull(x)
                return total
            return priors

        # stage 2: the priors inside the null space of U_i, for the instances whose system leaves one
        members = [b for b, p in enumerate(problems) if p.nullity > 0]
        for chunk in (_stage_chunks([problems[b] for b in members], members) if self.hp["steps"] > 0 else []):
            x_ls = torch.stack([solutions[b] for b in chunk])
            priors = priors_for(chunk)
            project = NullProjector([problems[b] for b in chunk])
            tv = self.tv_weight(index)
            point, values, initials = _minimise(lambda v: priors(unflat(x_ls + project(v)), tv),
                                                torch.zeros_like(x_ls), self.hp["steps"], self.hp["lr"],
                                                stage=f"layer {index} null space ({len(chunk)} of {len(problems)})")
            refined = (x_ls + project(point)).detach()
            for k, b in enumerate(chunk):
                solutions[b] = refined[k]
                infos[b].update(objective_initial=initials[k], objective=values[k], steps=int(self.hp["steps"]))
        # stage 3: gradient matching where the observation is not yet reproduced
        schedule = self.layer_schedule(index)
        if schedule["gm"] > 0:
            x_start = unflat(torch.stack(solutions))
            residuals = _GradientMatch(problems, ctxs).relative_residual(x_start)
            for b, residual in enumerate(residuals):
                infos[b]["gm_residual_initial"] = residual
                evaluations[b] += 1
            members = [b for b, r in enumerate(residuals) if r > self.hp["consistency_tol"]]
            if schedule["steps"] == 0 or not members:
                for b, r in enumerate(residuals):
                    infos[b]["gm_stage"] = ("skipped: the observation is reproduced (nothing for gradient matching "
                                            "to add)" if r <= self.hp["consistency_tol"] else "skipped: 0 steps")
            else:
                for b in set(range(len(problems))) - set(members):
                    infos[b]["gm_stage"] = "skipped: the observation is reproduced (nothing for gradient matching to add)"
                chosen = [problems[b] for b in members]
                match = _GradientMatch(chosen, [ctxs[b] for b in members])
                linear = _LinearResidual(chosen)
                start = x_start[members]
                priors = priors_for(members)

                def objective(x: Tensor) -> Tensor:
                    return schedule["gm"] * match(x) + schedule["linear"] * linear(x) + priors(x, schedule["tv"])

                point, values, initials = _minimise(objective, start, schedule["steps"], self.hp["lr"],
                                                    stage=f"layer {index} gradient matching ({len(members)} of "
                                                          f"{len(problems)})")
                finals = match.relative_residual(point)
                for k, b in enumerate(members):
                    solutions[b] = g.pad(point[k]).reshape(-1)
                    infos[b].update(gm_stage="ran", gm_objective_initial=initials[k], gm_objective=values[k],
                                    gm_steps=int(schedule["steps"]), gm_residual_final=finals[k],
                                    objective=infos[b].get("objective", 0.0) + values[k])
                    evaluations[b] += match.evaluations
        return list(zip(solutions, infos))


class COPAGradientMatching(COPA):
    """COPA + cosine gradient matching over the sub-network (the BMVC-22 "hybrid"); see module docstring."""

    name = "copa-gm"
    paper = "Chen & Campbell, BMVC 2022, arXiv 2210.13231 (COPA + gradient matching)"
    description = ("COPA, then cosine gradient matching over the sub-network at layers whose system the "
                   "observation leaves inconsistent")
    needs_label = True
    hyperparameters = {
        **COPA.hyperparameters,
        "consistency_tol": Hyperparameter(1e-12, "ours: relative gradient residual below which the observation "
                                                 "counts as reproduced (float64 solves reach ~1e-20)", minimum=0.0),
        "steps_image": Hyperparameter(10000, f"{HYBRID}: n_iter_dlg_1st = 10000 at the image layer",
                                      minimum=0, maximum=STEP_CEILING),
        "steps_layer1": Hyperparameter(8000, f"{HYBRID}: 4 × n_iter_dlg (2000) at layer 1",
                                       minimum=0, maximum=STEP_CEILING),
        "steps_deeper": Hyperparameter(1000, f"{HYBRID}: n_iter_dlg // 2 at layers ≥ 2",
                                       minimum=0, maximum=STEP_CEILING),
        "gm_weight_image": Hyperparameter(1.0, f"{HYBRID}: cosine weight 1 at the image layer", minimum=0.0),
        "gm_weight_layer1": Hyperparameter(1.0, f"{HYBRID}: cosine weight 1 at layer 1", minimum=0.0),
        "gm_weight_deeper": Hyperparameter(10.0, f"{HYBRID}: cosine weight 10 at layers ≥ 2", minimum=0.0),
        "gm_tv_image": Hyperparameter(0.01, f"ours: {HYBRID} uses TV weight 1 at the image layer; we keep 1 in "
                                            "the null-space stage (tv_weight_image) but in the free gradient-"
                                            "matching stage it traded data fit for smoothness (cnn4_c2, CIFAR-10 "
                                            "train 0: 15.9 → 14.0 dB; 0.01: 16.9 dB)", minimum=0.0),
        "gm_tv_layer1": Hyperparameter(1.0, f"{HYBRID}: TV weight 1 at layer 1", minimum=0.0),
        "gm_tv_deeper": Hyperparameter(0.1, f"{HYBRID}: TV weight 0.1 at layers ≥ 2", minimum=0.0),
        "linear_weight_image": Hyperparameter(0.05, f"{HYBRID}: linear-constraint weight 0.05 at the image layer",
                                              minimum=0.0),
        "linear_weight_layer1": Hyperparameter(0.1, f"{HYBRID}: linear-constraint weight 0.1 at layer 1",
                                               minimum=0.0),
        "linear_weight_deeper": Hyperparameter(1.0, f"{HYBRID}: linear-constraint weight 1 at layers ≥ 2",
                                               minimum=0.0),
        "fallback_steps": Hyperparameter(4800, f"ours (issue 34): iterations of the floor check's two gradient-"
                                               f"matching restarts (from the blank and from a uniform noise image) "
                                               f"where the layer-wise image is judged worse than the blank one; "
                                               f"{IG_CODE}'s DEFAULT_CONFIG max_iterations=4800; 0: none",
                                         minimum=0, maximum=STEP_CEILING),
        "fallback_lr": Hyperparameter(0.1, f"{IG_CODE} (Inverting Gradients): step size 0.1 of its signed Adam",
                                      minimum=0.0),
        "fallback_tv": Hyperparameter(1e-4, f"{IG_CODE} inversefed/options.py: --tv default 1e-4", minimum=0.0),
    }

    def validate(self):
        super().validate()
        if not (math.isfinite(self.hp["fallback_lr"]) and self.hp["fallback_lr"] > 0):
            raise InvalidSpecError(f"fallback_lr={self.hp['fallback_lr']!r} is invalid: expected a finite number > 0")

    def _fallback_candidates(self, match, candidates, worse, lower, upper, generators) -> dict[str, tuple]:
        """The gradient-matching restarts (stage 4 of the module docstring) of the instances ``worse``: Inverting
        Gradients' recipe on the whole network from the two floors' images — the blank one and a uniform noise
        image in the pixel box, drawn from the instance's generator — in one vectorised run, and their mean as the
        one candidate (module docstring, stage 4); each restart's residual and objective are recorded. The other
        instances get their layer-wise image and an infinite residual (never chosen)."""
        steps = int(self.hp["fallback_steps"])
        notes = [{} for _ in range(len(candidates["blank"]))]
        if not worse or steps == 0:
            return {}, notes
        blank = candidates["blank"][worse]
        noise = torch.stack([torch.rand(blank.shape[1:], generator=g, dtype=torch.float64) for g in generators])
        noise = lower[worse] + (upper[worse] - lower[worse]) * noise.to(blank.device)
        part = match.subset(worse + worse)
        restarts, restart_objectives = _signed_gradient_matching(
            part, torch.cat([blank, noise]), torch.cat([lower[worse]] * 2), torch.cat([upper[worse]] * 2), steps,
            self.hp["fallback_lr"], self.hp["fallback_tv"])
        n = len(worse)
        mean = (restarts[:n] + restarts[n:]) / 2
        own = match.subset(worse)
        residuals = own.scale_free_residual(mean)
        each, restart_objectives = part.scale_free_residual(restarts), restart_objectives.tolist()
        images = candidates["layer-wise"].clone()
        values, counts = [math.inf] * images.shape[0], [0] * images.shape[0]
        for j, k in enumerate(worse):
            images[k] = mean[j]
            values[k], counts[k] = residuals[j], part.evaluations + own.evaluations
            notes[k] = {f"{what}_restart from {start}": numbers[r * n + j]
                        for what, numbers in (("residual", each), ("objective", restart_objectives))
                        for r, start in enumerate(("blank", "noise"))}
        return {"mean of the gradient-matching restarts": (images, values, counts)}, notes

    def layer_schedule(self, index: int) -> dict[str, float]:
        key = "image" if index == 0 else "layer1" if index == 1 else "deeper"
        return {"steps": self.hp[f"steps_{key}"], "gm": self.hp[f"gm_weight_{key}"], "tv": self.hp[f"gm_tv_{key}"],
                "linear": self.hp[f"linear_weight_{key}"]}


register_attack(COPA)
register_attack(COPAGradientMatching)
