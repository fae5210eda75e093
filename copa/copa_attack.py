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

import functools
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import linalg
from .attacks import Attack, Hyperparameter, Reconstruction, register_attack
from .errors import InvalidSpecError
from .gradmatch import per_tensor_cosine_distance, total_variation
from .layerwise import ChainContext, LayerProblem, solve_backwards

HYBRID = "authors' hybrid.py (CangxiongChen/training-data-leakage)"


class _PullBack:
    """The pull-back penalty of layer ``i`` from layer ``i − 1`` (see the module docstring)."""

    def __init__(self, problem: LayerProblem, ctx: ChainContext, x_start: Tensor):
        i = problem.index
        self.prev = ctx.layers[i - 1]
        self.act = ctx.activations[i - 1]
        self.geometry = linalg.ConvGeometry.from_conv(self.prev, ctx.input_shapes[i - 1][-2:])
        g = self.geometry
        self.weight = self.prev.weight
        # A_{i−1} on the unpadded input (padding entries are zero), sparse; its thin SVD comes from the
        # eigendecomposition of the smaller Gram matrix. A and Aᵀ are then applied as convolutions.
        a = linalg.forward_matrix(self.weight, g, layout="sparse")
        if g.padding_rows:
            keep = g.interior_mask(a.device).reshape(-1).nonzero().squeeze(1)
            a = torch.index_select(a, 1, keep).coalesce()
        rows, cols = a.shape
        gram, side = linalg.gram_matrix(a)
        eigenvalues, vectors = torch.linalg.eigh(gram.to(self.weight.device))
        eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1)
        rank = int((eigenvalues.sqrt() > eigenvalues[0].sqrt() * math.sqrt(max(rows, cols) * linalg.EPS64)).sum())
        self.vectors, self.eigenvalues = vectors[:, :rank].contiguous(), eigenvalues[:rank]
        self.tall = side == "columns"  # vectors: right singular vectors (tall) or left ones (wide)
        # σ⁻¹(x_i) must lie in range(A_{i−1}); vacuous when A_{i−1} has full row rank.
        self.range_informative = rank < rows
        # x_{i−1} is a function of x_i only if A_{i−1} is injective (full column rank); otherwise the
        # min-norm preimage is an arbitrary choice and its gradient residual biases x_i (measured on
        # cnn4_c1 layer 2: relative error of x_2 0.79 → 1.85), so the gradient part is left out.
        self.injective = rank == cols
        self.grad_prev = ctx.grads[i - 1][0]
        self.grad_x = linalg.input_gradient(problem.delta, problem.module.weight, problem.geometry)
        # Fixed scales (from the starting point): normalising by the current ‖z‖² would let the optimiser
        # lower the penalty by inflating z, i.e. by pushing x_i into the activation's saturation.
        self.z_scale = self.act.inverse(x_start).square().sum().clamp_min(1e-30)
        self.g_scale = self.grad_prev.square().sum().clamp_min(1e-30)

    def _apply(self, x_prev: Tensor) -> Tensor:
        g = self.geometry
        return F.conv2d(x_prev.reshape(1, g.in_channels, *g.input), self.weight, stride=g.stride, padding=g.padding)

    def _adjoint(self, z: Tensor) -> Tensor:
        g = self.geometry
        return torch.nn.grad.conv2d_input((1, g.in_channels, *g.input), self.weight, z.reshape(1, *z.shape),
                                          stride=g.stride, padding=g.padding).reshape(-1)

    def __call__(self, x_i: Tensor) -> Tensor:
        z = self.act.inverse(x_i)
        total = x_i.new_zeros(())
        if self.tall:  # A⁺z = V Λ⁻¹ Vᵀ Aᵀ z, then the range residual z − A A⁺ z
            x_prev = self.vectors @ ((self.vectors.T @ self._adjoint(z)) / self.eigenvalues)
            if self.range_informative:
                total = total + (z - self._apply(x_prev)[0]).square().sum() / self.z_scale
        elif self.range_informative:  # wide but rank-deficient: project onto the left singular vectors
            flat = z.reshape(-1)
            total = total + (flat - self.vectors @ (self.vectors.T @ flat)).square().sum() / self.z_scale
        if self.injective:
            delta_prev = self.act.derivative(z) * self.grad_x.reshape(z.shape)
            g = self.geometry
            predicted = torch.nn.grad.conv2d_weight(x_prev.reshape(1, g.in_channels, *g.input),
                                                    tuple(self.grad_prev.shape), delta_prev.unsqueeze(0),
                                                    stride=g.stride, padding=g.padding)
            total = total + (predicted - self.grad_prev).square().sum() / self.g_scale
        return total

    @property
    def active(self) -> bool:
        return self.range_informative or self.injective


class _GradientMatch:
    """``Σ_t (1 − cos)`` between the sub-network's gradients at ``x_i`` and the observed ones."""

    def __init__(self, problem: LayerProblem, ctx: ChainContext):
        if ctx.labels is None:
            raise ValueError("gradient matching needs the label")
        self.layers = ctx.layers[problem.index:]
        self.acts = ctx.activations[problem.index:]
        self.params = [p for layer in self.layers for p in (layer.weight, layer.bias) if p is not None]
        observed = {id(layer.weight): g for layer, (g, _) in zip(ctx.layers, ctx.grads)}
        observed |= {id(layer.bias): gb for layer, (_, gb) in zip(ctx.layers, ctx.grads) if layer.bias is not None}
        self.targets = [observed[id(p)] for p in self.params]
        self.labels = ctx.labels
        self.evaluations = 0

    def gradients(self, x_i: Tensor, create_graph: bool) -> tuple[Tensor, ...]:
        params = [p.detach().requires_grad_(True) for p in self.params]
        out, k = x_i.unsqueeze(0), 0
        for layer, act in zip(self.layers, self.acts):
            if isinstance(layer, torch.nn.Linear):
                out = F.linear(out.flatten(1), params[k], params[k + 1])
                k += 2
            else:
                out = F.conv2d(out, params[k], stride=layer.stride, padding=layer.padding)
                k += 1
            out = act(out)
        loss = F.cross_entropy(out, self.labels)
        self.evaluations += 1
        return torch.autograd.grad(loss, params, create_graph=create_graph)

    def relative_residual(self, x_i: Tensor) -> float:
        """``Σ_t ‖∇_t − g_t‖² / Σ_t ‖g_t‖²`` at ``x_i``: 0 when ``x_i`` reproduces the observation."""
        with torch.enable_grad():
            grads = self.gradients(x_i.detach(), create_graph=False)
        num = sum(float((g - t).square().sum()) for g, t in zip(grads, self.targets))
        den = sum(float(t.square().sum()) for t in self.targets)
        return num / den if den > 0 else 0.0

    def __call__(self, x_i: Tensor) -> Tensor:
        grads = self.gradients(x_i, create_graph=True)
        return per_tensor_cosine_distance(grads, self.targets)


class _LinearResidual:
    """The layer's equations as a penalty: ``(‖A x − z‖² + ‖K(δ) x − g‖²) / (‖z‖² + ‖g‖²)``."""

    def __init__(self, problem: LayerProblem):
        self.weight = problem.module.weight
        self.stride, self.padding = problem.module.stride, problem.module.padding
        self.z, self.delta, self.grad = problem.z, problem.delta, problem.grad_weight
        self.scale = (self.z.square().sum() + self.grad.square().sum()).clamp_min(1e-300)

    def __call__(self, x_i: Tensor) -> Tensor:
        x = x_i.unsqueeze(0)
        forward = F.conv2d(x, self.weight, stride=self.stride, padding=self.padding)[0] - self.z
        gradient = torch.nn.grad.conv2d_weight(x, tuple(self.grad.shape), self.delta.unsqueeze(0),
                                               stride=self.stride, padding=self.padding) - self.grad
        return (forward.square().sum() + gradient.square().sum()) / self.scale


def _minimise(objective, start: Tensor, steps: int, lr: float) -> tuple[Tensor, float, float]:
    """Adam on ``objective(start + d)`` over ``d``; returns the best point, its value and the initial value."""
    d = torch.zeros_like(start, requires_grad=True)
    optimizer = torch.optim.Adam([d], lr=lr)
    initial = float(objective(start).detach())
    best_value, best_d = initial, torch.zeros_like(start)
    for _ in range(int(steps)):
        optimizer.zero_grad()
        value = objective(start + d)
        value.backward()
        current = float(value.detach())
        if math.isfinite(current) and current < best_value:  # value at the iterate before this step
            best_value, best_d = current, d.detach().clone()
        optimizer.step()
    if steps:
        final = float(objective(start + d).detach())
        if math.isfinite(final) and final < best_value:
            best_value, best_d = final, d.detach().clone()
    return (start + best_d).detach(), best_value, initial


class COPA(Attack):
    """COPA: layer-wise constrained optimisation with hard data constraints (see module docstring)."""

    name = "copa"
    paper = "Chen & Campbell, arXiv 2111.10178 (COPA)"
    code = "github.com/CangxiongChen/training-data-leakage"
    description = "layer-wise inversion: R-GAP step, then priors in the null space of each layer's system"
    needs_label = False
    hyperparameters = {
        "steps": Hyperparameter(1000, "ours: Adam steps of the null-space stage per rank-deficient layer "
                                      "(hybrid.py uses 1000 for deep layers)"),
        "lr": Hyperparameter(1e-3, f"{HYBRID}: torch.optim.Adam default lr"),
        "tv_weight_image": Hyperparameter(1.0, f"{HYBRID}: TV weight 1 at the image layer"),
        "tv_weight_hidden": Hyperparameter(0.1, f"{HYBRID}: TV weight 0.1 at deeper layers"),
        "pullback_weight": Hyperparameter(1.0, "ours: weight of the pull-back penalty (layers ≥ 1)"),
        "box_weight": Hyperparameter(1.0, "ours: weight of the pixel-box penalty at the image layer"),
        "solver": Hyperparameter("normal", "ours: 'normal' (Gram Cholesky, fast) or 'lstsq' (LAPACK gelsd)"),
    }

    def validate(self):
        from .layerwise import check_solver

        check_solver(self.hp["solver"])
        steps = {k: v for k, v in self.hp.items() if k.startswith("steps")}
        if min(steps.values()) < 0 or self.hp["lr"] <= 0:
            raise InvalidSpecError(f"{steps}, lr={self.hp['lr']}: need steps ≥ 0 and lr > 0")
        weights = {k: v for k, v in self.hp.items() if "weight" in k}
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise InvalidSpecError(f"{negative}: weights must be ≥ 0")

    def applicable(self, observation):
        from .layerwise import chain_problem

        return chain_problem(observation) or super().applicable(observation)

    # -- schedule -----------------------------------------------------------------------------------
    def layer_schedule(self, index: int) -> dict[str, float]:
        """Steps and weights of the gradient-matching stage for layer ``index`` (0 = image); none for COPA."""
        return {"steps": 0, "gm": 0.0, "tv": 0.0, "linear": 0.0}

    def tv_weight(self, index: int) -> float:
        return self.hp["tv_weight_image"] if index == 0 else self.hp["tv_weight_hidden"]

    def reconstruct(self, observation, generator):
        lower, upper = (b.to(torch.float64) for b in observation.bounds())
        counters = {"gradient_evals": 0}

        def refine(problem: LayerProblem, ctx: ChainContext):
            return self._refine(problem, ctx, lower[0], upper[0], counters)

        start = time.perf_counter()
        x, ctx = solve_backwards(observation, refine, solver=self.hp["solver"])
        info = {"layers": ctx.layer_info, "seconds_total": time.perf_counter() - start}
        return Reconstruction(images=x.to(observation.dtype), labels=observation.labels,
                              loss=sum(d.get("objective", 0.0) for d in ctx.layer_info),
                              forward_evals=counters["gradient_evals"], gradient_evals=counters["gradient_evals"],
                              info=info)

    def _refine(self, problem: LayerProblem, ctx: ChainContext, lower: Tensor, upper: Tensor,
                counters: dict[str, int]) -> tuple[Tensor, dict[str, Any]]:
        g = problem.geometry

        def unflat(x_flat: Tensor) -> Tensor:
            return g.unpad(x_flat.reshape(g.in_channels, *g.padded))

        @functools.cache
        def pull_back() -> _PullBack | None:
            """Built on first use: full-rank, consistent layers never pay for its eigendecomposition."""
            if problem.index == 0 or self.hp["pullback_weight"] <= 0:
                return None
            penalty = _PullBack(problem, ctx, unflat(problem.solution))
            return penalty if penalty.active else None

        def priors(x: Tensor, tv: float) -> Tensor:
            pull = pull_back()
            total = tv * total_variation(x)
            if problem.index == 0 and self.hp["box_weight"] > 0:
                below, above = (lower - x).clamp_min(0), (x - upper).clamp_min(0)
                total = total + self.hp["box_weight"] * (below.square() + above.square()).mean()
            if pull is not None:
                total = total + self.hp["pullback_weight"] * pull(x)
            return total

        info: dict[str, Any] = {}
        solution = problem.solution
        if problem.nullity > 0 and self.hp["steps"] > 0:
            x_ls, tv = problem.solution, self.tv_weight(problem.index)
            point, value, initial = _minimise(lambda v: priors(unflat(x_ls + problem.project_null(v)), tv),
                                              torch.zeros_like(x_ls), self.hp["steps"], self.hp["lr"])
            solution = (x_ls + problem.project_null(point)).detach()
            info.update(objective_initial=initial, objective=value, steps=int(self.hp["steps"]))
        schedule = self.layer_schedule(problem.index)
        if schedule["gm"] > 0:
            match = _GradientMatch(problem, ctx)
            x_start = unflat(solution)
            residual = match.relative_residual(x_start)
            info["gm_residual_initial"] = residual
            if residual <= self.hp["consistency_tol"] or schedule["steps"] == 0:
                info["gm_stage"] = "skipped: the observation is reproduced (nothing for gradient matching to add)" \
                    if residual <= self.hp["consistency_tol"] else "skipped: 0 steps"
            else:
                linear = _LinearResidual(problem)

                def objective(x: Tensor) -> Tensor:
                    return (schedule["gm"] * match(x) + schedule["linear"] * linear(x)
                            + priors(x, schedule["tv"]))

                point, value, initial = _minimise(objective, x_start, schedule["steps"], self.hp["lr"])
                solution = g.pad(point).reshape(-1)
                info.update(gm_stage="ran", gm_objective_initial=initial, gm_objective=value,
                            gm_steps=int(schedule["steps"]), gm_residual_final=match.relative_residual(point),
                            objective=info.get("objective", 0.0) + value)
            counters["gradient_evals"] += match.evaluations
        return solution, info


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
                                                 "counts as reproduced (float64 solves reach ~1e-20)"),
        "steps_image": Hyperparameter(10000, f"{HYBRID}: n_iter_dlg_1st = 10000 at the image layer"),
        "steps_layer1": Hyperparameter(8000, f"{HYBRID}: 4 × n_iter_dlg (2000) at layer 1"),
        "steps_deeper": Hyperparameter(1000, f"{HYBRID}: n_iter_dlg // 2 at layers ≥ 2"),
        "gm_weight_image": Hyperparameter(1.0, f"{HYBRID}: cosine weight 1 at the image layer"),
        "gm_weight_layer1": Hyperparameter(1.0, f"{HYBRID}: cosine weight 1 at layer 1"),
        "gm_weight_deeper": Hyperparameter(10.0, f"{HYBRID}: cosine weight 10 at layers ≥ 2"),
        "gm_tv_image": Hyperparameter(0.01, f"ours: {HYBRID} uses TV weight 1 at the image layer; we keep 1 in "
                                            "the null-space stage (tv_weight_image) but in the free gradient-"
                                            "matching stage it traded data fit for smoothness (cnn4_c2, CIFAR-10 "
                                            "train 0: 15.9 → 14.0 dB; 0.01: 16.9 dB)"),
        "gm_tv_layer1": Hyperparameter(1.0, f"{HYBRID}: TV weight 1 at layer 1"),
        "gm_tv_deeper": Hyperparameter(0.1, f"{HYBRID}: TV weight 0.1 at layers ≥ 2"),
        "linear_weight_image": Hyperparameter(0.05, f"{HYBRID}: linear-constraint weight 0.05 at the image layer"),
        "linear_weight_layer1": Hyperparameter(0.1, f"{HYBRID}: linear-constraint weight 0.1 at layer 1"),
        "linear_weight_deeper": Hyperparameter(1.0, f"{HYBRID}: linear-constraint weight 1 at layers ≥ 2"),
    }

    def layer_schedule(self, index: int) -> dict[str, float]:
        key = "image" if index == 0 else "layer1" if index == 1 else "deeper"
        return {"steps": self.hp[f"steps_{key}"], "gm": self.hp[f"gm_weight_{key}"], "tv": self.hp[f"gm_tv_{key}"],
                "linear": self.hp[f"linear_weight_{key}"]}

    def validate(self):
        super().validate()
        if not self.hp["consistency_tol"] >= 0:
            raise InvalidSpecError(f"consistency_tol={self.hp['consistency_tol']!r} is invalid: expected ≥ 0")


register_attack(COPA)
register_attack(COPAGradientMatching)
