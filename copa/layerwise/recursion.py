"""Layer-wise reconstruction backwards from the output: the recursion R-GAP and COPA share.

For a chain (bias-free convolutions, invertible activations, final Linear with bias; see
:mod:`copa.models`) and one observed example:

1. **Last (FC) layer, closed form** (Chen & Campbell, arXiv 2111.10178, Sec. 3; R-GAP's "bias trick"):
   ``∂ℓ/∂W = δ xᵀ`` and ``∂ℓ/∂b = δ``, so ``x = g_W[r]/g_b[r]`` for every row with a usable
   ``g_b[r]``, combined by least squares (:func:`copa.layerwise.fc_input_from_gradients`);
   ``∂ℓ/∂x = Wᵀ δ`` is passed down.
2. **Each convolution i, backwards:** ``z_i = σ_i⁻¹(x̂_{i+1})`` (clipped at saturation by the
   activation's ``inverse``), ``δ_i = σ_i'(z_i) ⊙ ∂ℓ/∂x_{i+1}``; the layer system
   ``[A_i; K_i(δ_i); P_i] x̃_i = [z_i; g_i; 0]`` (:func:`copa.layerwise.layer_system`) is solved by
   minimum-norm least squares in float64 (the R-GAP step). A ``refine`` callback (COPA) may then move
   the solution inside the set of least-squares solutions ``x_LS + null(U_i)``;
   ``∂ℓ/∂x_i = A_iᵀ δ_i`` is passed down.

Only the observation is used: weights, observed gradients and (for refinements that need it) the
label. Batch size 1, as in both papers; :func:`solve_backwards_batch` runs B such observations of one
model in lockstep (shared weight-only work, one vectorised refinement per layer).
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .chain import fc_input_from_gradients
from .geometry import ConvGeometry
from .operators import LayerOperator, LayerSystem, input_gradient
from .solves import LayerSystems, SolveInfo
from ..errors import InvalidSpecError, NotApplicableError
from ..threat import as_observation_list, check_same_model
from .chain import check_chain


@dataclass
class LayerProblem:
    """Everything known about conv layer ``index`` when it is solved (float64, on the model's device)."""

    index: int
    module: nn.Conv2d
    geometry: ConvGeometry
    z: Tensor                       # σ⁻¹ of the next layer's reconstructed input, F×H'×W'
    delta: Tensor                   # ∂ℓ/∂z, F×H'×W'
    grad_weight: Tensor             # observed ∂ℓ/∂W
    systems: LayerSystems    # this layer's systems of every instance of the batch (shared A, P)
    instance: int                   # which of them is this problem's
    solution: Tensor                # minimum-norm least-squares x̃ (padded, flat)
    solve_info: SolveInfo

    @property
    def system(self) -> LayerSystem:
        """``U``, the right-hand side and the row counts of this instance (``U`` sparse)."""
        return self.systems.system(self.instance)

    @functools.cached_property
    def _null_projector(self) -> NullProjector:
        return NullProjector([self])

    def project_null(self, v: Tensor) -> Tensor:
        """Project a flat vector onto the null space of ``U`` (differentiable; :class:`NullProjector`)."""
        return self._null_projector(v.unsqueeze(0))[0]

    @property
    def nullity(self) -> int:
        """Dimension of ``null(U)`` (unknowns − rank of the least-squares solve; no basis needed)."""
        return self.geometry.unknowns - int(self.solve_info.rank)


class NullProjector:
    """``Π_null(U_b)`` for the problems of one layer (B instances) at once: ``v`` ``(B, n)`` → ``(B, n)``,
    differentiable, from one eigendecomposition of each instance's smaller Gram matrix.

    Tall ``U`` (``m ≥ n``): an orthonormal row-space basis ``V_b`` (``n × rank_b``), ``Π v = v − V Vᵀ v``.
    Wide ``U``: ``Π v = v − Uᵀ Q Λ⁻¹ Qᵀ U v`` with ``U Uᵀ = Q Λ Qᵀ`` (rank part) and ``U``, ``Uᵀ``
    applied matrix-free (convolutions, :class:`copa.layerwise.LayerOperator` with one ``δ`` per instance):
    the ``n × rank`` basis is never formed (cnn4_c2 layer 1: 12544 × 3228), so a step costs two
    convolutions and two ``rank``-sized products instead of two dense ``n × rank`` products. Instances
    of smaller rank are padded with zero columns (``Λ`` with ones), which add exact zeros. With the
    systems' dense backend (CUDA) the eigendecompositions of all instances run as one batched ``eigh``
    (in chunks of the systems' ``chunk_bytes``); on CPU one after the other (LAPACK has no batched form).
    """

    def __init__(self, problems: list[LayerProblem]):
        first = problems[0]
        systems, self.side = first.systems, first.systems.side
        ranks = [int(p.solve_info.rank) for p in problems]
        size = systems.shape[0] if self.side == "rows" else systems.shape[1]
        like = {"dtype": torch.float64, "device": first.delta.device}
        self.bases = torch.zeros(len(problems), size, max(ranks), **like)
        self.eigenvalues = torch.ones(len(problems), max(ranks), **like)
        members = [b for b, rank in enumerate(ranks) if rank > 0]
        chunk = max(1, systems.chunk_bytes // (3 * size * size * 8)) if systems.batched_factorisations else 1
        for first_member in range(0, len(members), chunk):
            part = members[first_member:first_member + chunk]
            grams = [problems[b].systems.gram(problems[b].instance) for b in part]
            if len(part) > 1:
                eigenvalues, vectors = torch.linalg.eigh(torch.stack(grams))
            else:  # one instance: the unbatched call
                eigenvalues, vectors = (t.unsqueeze(0) for t in torch.linalg.eigh(grams[0]))
            del grams
            for k, b in enumerate(part):
                rank = ranks[b]
                self.bases[b, :, :rank] = vectors[k, :, size - rank:]
                self.eigenvalues[b, :rank] = eigenvalues[k, size - rank:].clamp_min(torch.finfo(torch.float64).tiny)
            del eigenvalues, vectors
        self.operator = None
        if self.side == "rows":
            self.operator = LayerOperator(first.module.weight, torch.stack([p.delta for p in problems]),
                                                 first.geometry)

    def __call__(self, v: Tensor) -> Tensor:
        if self.side == "columns":
            return v - torch.bmm(self.bases, torch.bmm(self.bases.transpose(1, 2), v.unsqueeze(2))).squeeze(2)
        coefficients = torch.bmm(self.bases.transpose(1, 2), self.operator.matvec(v).unsqueeze(2)).squeeze(2)
        return v - self.operator.rmatvec(torch.bmm(self.bases, (coefficients / self.eigenvalues).unsqueeze(2))
                                         .squeeze(2))


Refine = Callable[[LayerProblem, "ChainContext"], tuple[Tensor, dict[str, Any]]]
BatchRefine = Callable[[list[LayerProblem], list["ChainContext"]], list[tuple[Tensor, dict[str, Any]]]]


@dataclass
class ChainContext:
    """The chain, in float64, with its observed gradients, as the recursion walks it."""

    model: nn.Module                       # float64 copy of the observed model
    grads: list[tuple[Tensor, Tensor | None]]  # observed (∂ℓ/∂W, ∂ℓ/∂b) per weight layer
    labels: Tensor | None
    input_shapes: list[tuple[int, ...]]
    reconstructed: dict[int, Tensor] = field(default_factory=dict)  # layer index -> reconstructed input
    layer_info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layers(self) -> list[nn.Module]:
        return list(self.model.weight_layers)

    @property
    def activations(self) -> list[nn.Module]:
        return list(self.model.activations)


SOLVERS = {"normal": "Cholesky of the smaller Gram matrix (fast; exact when the data are consistent)",
           "lstsq": "LAPACK gelsd, the papers' np.linalg.lstsq (several times slower)"}


def check_solver(name: str) -> None:
    """Raise a clear error unless ``name`` is one of :data:`SOLVERS` (shared by R-GAP and COPA)."""
    if name not in SOLVERS:
        raise InvalidSpecError(f"solver={name!r} is invalid: accepted are {', '.join(repr(k) for k in SOLVERS)}")


def chain_problem(observation) -> str | None:
    """``None`` if layer-wise inversion applies to the observation, else the reason it does not."""
    try:
        chain_context(observation, gather=False)
    except NotApplicableError as exc:
        return str(exc)
    return None


def chain_context(observation, dtype: torch.dtype = torch.float64, *, gather: bool = True,
                  net: nn.Module | None = None) -> ChainContext | None:
    """Check that the observation's model is a chain COPA/R-GAP can solve and gather its gradients.

    ``gather=False`` only checks (raises :class:`NotApplicableError` with the reason) and returns None.
    ``net``: the float64 copy of the model to use (instances of one batch share it); made if None.
    """
    model = check_chain(observation.model, observation.model_name)
    kinds = [isinstance(layer, nn.Conv2d) for layer in model.weight_layers]
    if not all(kinds[:-1]) or kinds[-1]:
        raise NotApplicableError(f"{observation.model_name} has hidden Linear layers; this implementation solves "
                                 "convolutions followed by one final Linear layer")
    if observation.batch_size != 1:
        raise NotApplicableError(f"batch size {observation.batch_size}: layer-wise inversion reconstructs one "
                                 "example per observed gradient (the papers' setting)")
    if not gather:
        return None
    by_param = {id(p): g for p, g in zip(model.parameters(), observation.gradients)}
    if net is None:
        net = copy.deepcopy(model).to(dtype)
        for p in net.parameters():
            p.requires_grad_(False)
    grads = []
    for layer in model.weight_layers:
        gw = by_param[id(layer.weight)].to(dtype)
        gb = by_param[id(layer.bias)].to(dtype) if layer.bias is not None else None
        grads.append((gw, gb))
    shapes = [tuple(s.input) for s in model.layer_shapes()]
    labels = observation.labels
    return ChainContext(net, grads, labels, shapes)


def solve_backwards(observation, refine: Refine | None = None, *, rcond: float | None = None,
                    solver: str = "normal") -> tuple[Tensor, ChainContext]:
    """Run the recursion on one observation: :func:`solve_backwards_batch` on a batch of one, with a
    per-instance ``refine(problem, context) -> (solution, diagnostics)``."""
    batch_refine = None if refine is None else (lambda problems, contexts: [refine(problems[0], contexts[0])])
    return solve_backwards_batch([observation], batch_refine, rcond=rcond, solver=solver)[0]


def solve_backwards_batch(observations, refine: BatchRefine | None = None, *, rcond: float | None = None,
                          solver: str = "normal") -> list[tuple[Tensor, ChainContext]]:
    """Run the recursion for B instances (observations of one model and weights) in lockstep, layer by
    layer; returns each instance's reconstructed input (1×C×H×W, float64) and context.

    Per convolution the B systems share ``A`` and ``P`` (:class:`copa.layerwise.LayerSystems` builds them and
    their Gram blocks once) and are solved by minimum-norm least squares, instance by instance on CPU, in
    one batched ``eigh`` on CUDA. ``refine(problems, contexts)`` is then called once with all B problems
    of the layer (a vectorised refinement treats them together) and returns each refined padded solution
    (flat, float64) and a dict of diagnostics; it is called for full-rank layers too
    (``problem.nullity == 0``), where COPA returns the solution unchanged and COPA-GM may still correct
    an inconsistent system. ``solver``: ``"normal"`` (default; Cholesky of the smaller Gram matrix, fast,
    exact when the data are consistent) or ``"lstsq"`` (LAPACK gelsd, the papers' ``np.linalg.lstsq``;
    several times slower), see :func:`copa.layerwise.solve_dense`.
    """
    observations = as_observation_list(observations)
    check_same_model(observations)
    first = chain_context(observations[0])
    ctxs = [first] + [chain_context(o, net=first.model) for o in observations[1:]]
    layers, acts = first.layers, first.activations
    last = len(layers) - 1
    xs_next, grads_x = [], []
    for ctx in ctxs:
        gw, gb = ctx.grads[last]
        x_fc = fc_input_from_gradients(gw, gb)
        ctx.reconstructed[last] = x_fc
        if last > 0:
            x_next = x_fc.reshape(_output_shape(ctx, last - 1))
            xs_next.append(x_next)
            grads_x.append((gb @ layers[last].weight).reshape(x_next.shape))  # δ of the final layer is g_b (batch 1)
    if last == 0:  # only the final Linear: its input is the flattened image
        return [(ctx.reconstructed[last].reshape(1, *ctx.model.in_shape), ctx) for ctx in ctxs]
    for i in range(last - 1, -1, -1):
        module, act = layers[i], acts[i]
        geometry = ConvGeometry.from_conv(module, first.input_shapes[i][-2:])
        zs = [act.inverse(x) for x in xs_next]
        deltas = [act.derivative(z) * gx for z, gx in zip(zs, grads_x)]
        systems = LayerSystems(module.weight, geometry, deltas, zs, [ctx.grads[i][0] for ctx in ctxs])
        problems = [LayerProblem(i, module, geometry, z, delta, ctx.grads[i][0], systems, b, solution, info)
                    for b, (ctx, z, delta, (solution, info))
                    in enumerate(zip(ctxs, zs, deltas, systems.solve(method=solver, rcond=rcond)))]
        refined = (refine(problems, ctxs) if refine is not None
                   else [(problem.solution, {}) for problem in problems])
        xs_next, grads_x = [], []
        for ctx, problem, (solution, extra) in zip(ctxs, problems, refined, strict=True):
            info = problem.solve_info
            rhs_norm = float(torch.linalg.vector_norm(problem.systems.rhs[problem.instance]))
            details: dict[str, Any] = {"layer": i, "unknowns": geometry.unknowns, "rank": info.rank,
                                       "residual_least_squares": info.residual_norm, "nullity": problem.nullity,
                                       # ‖U x̃ − v‖/‖v‖ of the least-squares solve (0 for a consistent system;
                                       # > 0 when a defence or an earlier layer's error makes v leave range(U))
                                       "rhs_norm": rhs_norm,
                                       "residual_relative": (info.residual_norm / rhs_norm if rhs_norm > 0
                                                             else (0.0 if info.residual_norm == 0 else math.inf))}
            details.update(extra)
            ctx.layer_info.append(details)
            x_i = geometry.unpad(solution.reshape(geometry.in_channels, *geometry.padded))
            ctx.reconstructed[i] = x_i
            xs_next.append(x_i)
            grads_x.append(input_gradient(problem.delta, module.weight, geometry))
    return [(ctx.reconstructed[0].reshape(1, *ctx.input_shapes[0]), ctx) for ctx in ctxs]


def _output_shape(ctx: ChainContext, i: int) -> tuple[int, ...]:
    """Shape of conv layer ``i``'s output (the next layer's unflattened input)."""
    if i + 1 < len(ctx.input_shapes) and len(ctx.input_shapes[i + 1]) == 3:
        return ctx.input_shapes[i + 1]
    layer = ctx.layers[i]
    geometry = ConvGeometry.from_conv(layer, ctx.input_shapes[i][-2:])
    return (geometry.out_channels, *geometry.output)
