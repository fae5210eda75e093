"""Layer-wise reconstruction backwards from the output: the recursion R-GAP and COPA share.

For a chain (bias-free convolutions, invertible activations, final Linear with bias; see
:mod:`copa.models`) and one observed example:

1. **Last (FC) layer, closed form** (Chen & Campbell, arXiv 2111.10178, Sec. 3; R-GAP's "bias trick"):
   ``∂ℓ/∂W = δ xᵀ`` and ``∂ℓ/∂b = δ``, so ``x = g_W[r]/g_b[r]`` for every row with a usable
   ``g_b[r]``, combined by least squares (:func:`copa.linalg.fc_input_from_gradients`);
   ``∂ℓ/∂x = Wᵀ δ`` is passed down.
2. **Each convolution i, backwards:** ``z_i = σ_i⁻¹(x̂_{i+1})`` (clipped at saturation by the
   activation's ``inverse``), ``δ_i = σ_i'(z_i) ⊙ ∂ℓ/∂x_{i+1}``; the layer system
   ``[A_i; K_i(δ_i); P_i] x̃_i = [z_i; g_i; 0]`` (:func:`copa.linalg.layer_system`) is solved by
   minimum-norm least squares in float64 (the R-GAP step). A ``refine`` callback (COPA) may then move
   the solution inside the set of least-squares solutions ``x_LS + null(U_i)``;
   ``∂ℓ/∂x_i = A_iᵀ δ_i`` is passed down.

Only the observation is used: weights, observed gradients and (for refinements that need it) the
label. Batch size 1, as in both papers.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import linalg
from .errors import InvalidSpecError, NotApplicableError


@dataclass
class LayerProblem:
    """Everything known about conv layer ``index`` when it is solved (float64, on the model's device)."""

    index: int
    module: nn.Conv2d
    geometry: linalg.ConvGeometry
    z: Tensor                       # σ⁻¹ of the next layer's reconstructed input, F×H'×W'
    delta: Tensor                   # ∂ℓ/∂z, F×H'×W'
    grad_weight: Tensor             # observed ∂ℓ/∂W
    system: linalg.LayerSystem      # U, rhs, row counts
    solution: Tensor                # minimum-norm least-squares x̃ (padded, flat)
    solve_info: linalg.SolveInfo

    @functools.cached_property
    def _null_projector(self) -> tuple[str, Tensor, Tensor | None, linalg.LayerOperator | None]:
        """What :meth:`project_null` needs, from one eigendecomposition of the smaller Gram matrix.

        Tall ``U`` (``m ≥ n``): an orthonormal row-space basis ``V`` (``n × rank``), ``Π v = v − V Vᵀ v``.
        Wide ``U``: ``Π v = v − Uᵀ Q Λ⁻¹ Qᵀ U v`` with ``U Uᵀ = Q Λ Qᵀ`` (rank part) and ``U``, ``Uᵀ``
        applied matrix-free (convolutions, :class:`copa.linalg.LayerOperator`): the ``n × rank``
        basis is never formed (cnn4_c2 layer 1: 12544 × 3228), so a step costs two convolutions and
        two ``rank``-sized products instead of two dense ``n × rank`` products.
        """
        rank = int(self.solve_info.rank)
        gram, side = linalg.gram_matrix(self.system.matrix)
        eigenvalues, vectors = torch.linalg.eigh(gram.to(self.system.matrix.device))
        top, lam = vectors[:, gram.shape[0] - rank:], eigenvalues[gram.shape[0] - rank:]
        if side == "columns":
            return "basis", top.contiguous(), None, None
        operator = linalg.LayerOperator(self.module.weight, self.delta, self.geometry)
        return "rows", top.contiguous(), lam.clamp_min(torch.finfo(torch.float64).tiny), operator

    def project_null(self, v: Tensor) -> Tensor:
        """Project a flat vector onto the null space of ``U`` (differentiable)."""
        if int(self.solve_info.rank) == 0:
            return v
        side, top, lam, operator = self._null_projector
        if side == "basis":
            return v - top @ (top.T @ v)
        coefficients = (top.T @ operator.matvec(v)) / lam
        return v - operator.rmatvec(top @ coefficients)

    @property
    def nullity(self) -> int:
        """Dimension of ``null(U)`` (unknowns − rank of the least-squares solve; no basis needed)."""
        return self.geometry.unknowns - int(self.solve_info.rank)


Refine = Callable[[LayerProblem, "ChainContext"], tuple[Tensor, dict[str, Any]]]


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


def chain_context(observation, dtype: torch.dtype = torch.float64, *, gather: bool = True) -> ChainContext | None:
    """Check that the observation's model is a chain COPA/R-GAP can solve and gather its gradients.

    ``gather=False`` only checks (raises :class:`NotApplicableError` with the reason) and returns None.
    """
    from .models import ChainNet

    model = observation.model
    if not isinstance(model, ChainNet):
        raise NotApplicableError(f"{observation.model_name} is not a chain network (layer-wise inversion needs "
                                 "bias-free convolutions with invertible activations and a final Linear with bias)")
    if not model.is_chain:
        raise NotApplicableError(f"{observation.model_name} is not a chain: {model.not_chain_reason}")
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
    """Run the recursion; returns the reconstructed input (1×C×H×W, float64) and the context.

    ``refine(problem, context)`` is called for every convolution after its least-squares step and
    returns the refined padded solution (flat, float64) and a dict of diagnostics; it is called for
    full-rank layers too (``problem.nullity == 0``), where COPA returns the solution unchanged and
    COPA-GM may still correct an inconsistent system. ``solver``:
    ``"normal"`` (default; Cholesky of the smaller Gram matrix, fast, exact when the data are
    consistent) or ``"lstsq"`` (LAPACK gelsd, the papers' ``np.linalg.lstsq``; several times slower),
    see :func:`copa.linalg.solve_dense`.
    """
    ctx = chain_context(observation)
    layers, acts = ctx.layers, ctx.activations
    last = len(layers) - 1
    gw, gb = ctx.grads[last]
    x_fc = linalg.fc_input_from_gradients(gw, gb)
    ctx.reconstructed[last] = x_fc
    delta = gb  # ∂ℓ/∂z of the final layer (batch 1)
    if last == 0:  # only the final Linear: its input is the flattened image
        return x_fc.reshape(1, *ctx.model.in_shape), ctx
    x_next = x_fc.reshape(_output_shape(ctx, last - 1))
    grad_x = (delta @ layers[last].weight).reshape(x_next.shape)
    for i in range(last - 1, -1, -1):
        module, act = layers[i], acts[i]
        geometry = linalg.ConvGeometry.from_conv(module, ctx.input_shapes[i][-2:])
        z = act.inverse(x_next)
        delta = act.derivative(z) * grad_x
        system = linalg.layer_system(module.weight, delta, z, ctx.grads[i][0], geometry)
        solution, info = linalg.solve_dense(system.matrix, system.rhs, rcond=rcond, method=solver)
        problem = LayerProblem(i, module, geometry, z, delta, ctx.grads[i][0], system, solution, info)
        details: dict[str, Any] = {"layer": i, "unknowns": geometry.unknowns, "rank": info.rank,
                                   "residual_least_squares": info.residual_norm}
        details["nullity"] = problem.nullity
        if refine is not None:
            solution, extra = refine(problem, ctx)
            details.update(extra)
        ctx.layer_info.append(details)
        x_i = geometry.unpad(solution.reshape(geometry.in_channels, *geometry.padded))
        ctx.reconstructed[i] = x_i
        grad_x = linalg.input_gradient(delta, module.weight, geometry)
        x_next = x_i
    return ctx.reconstructed[0].reshape(1, *ctx.input_shapes[0]), ctx


def _output_shape(ctx: ChainContext, i: int) -> tuple[int, ...]:
    """Shape of conv layer ``i``'s output (the next layer's unflattened input)."""
    if i + 1 < len(ctx.input_shapes) and len(ctx.input_shapes[i + 1]) == 3:
        return ctx.input_shapes[i + 1]
    layer = ctx.layers[i]
    geometry = linalg.ConvGeometry.from_conv(layer, ctx.input_shapes[i][-2:])
    return (geometry.out_channels, *geometry.output)
