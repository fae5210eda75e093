"""The linear algebra of layer-wise gradient inversion (R-GAP, COPA): operators, solves, ranks.

R-GAP (Zhu & Blaschko, ICLR 2021) and COPA (Chen & Campbell, arXiv 2111.10178) recover the input of
a chain network layer by layer, backwards. For a bias-free convolution with input ``x`` (``C×H×W``),
weight ``W`` (``F×C×kh×kw``), stride ``s`` and zero padding ``p``, let ``x̃`` be ``x`` zero-padded to
``C×(H+2p)×(W+2p)``: the unknowns are all of ``x̃``, padded entries included, as in both papers'
code. Writing ``z = conv(x, W)`` for the pre-activation, ``δ = ∂ℓ/∂z`` and ``g = ∂ℓ/∂W``, three
blocks of linear equations hold:

* forward rows ``A x̃ = vec(z)`` — ``A`` is the convolution as a matrix
  (``F·H'·W'`` rows, see :func:`forward_matrix`);
* gradient rows ``K(δ) x̃ = vec(g)`` with
  ``g[f,c,u,v] = Σ_{p,q} δ[f,p,q] · x̃[c, s·p+u, s·q+v]`` (``F·C·kh·kw`` rows, :func:`gradient_matrix`);
* padding rows ``P x̃ = 0``, one identity row per padded entry (:func:`padding_matrix`).

``U = [A; K; P]`` and ``[z; g; 0]`` make the layer's system (:func:`layer_system`). Columns are
``vec(x̃)`` in PyTorch's row-major ``(c, row, col)`` order, rows are ``vec(z)``, ``vec(g)`` in
``(f, c, u, v)`` order, then the padded entries in increasing column order (the order of R-GAP's
``circulant_w``/``aggregate_g``/``padding_constraints``).

Two paths, one set of operators:

* **dense** float64 matrices, built with index arithmetic and one ``index_put_`` per block (no Python
  loop over pixels or channels), for ranks, null spaces and exact min-norm least squares
  (:func:`solve_dense`, :func:`numerical_rank`, :func:`null_space`);
* **matrix-free**: :class:`LayerOperator` applies ``U`` with ``conv2d`` and ``unfold`` and ``Uᵀ``
  with ``conv_transpose2d`` and ``fold``; :func:`lsqr` (a PyTorch LSQR, so it runs on CUDA too)
  solves without materialising ``U`` (:func:`solve_matrix_free`), e.g. a 3×224×224 input.

:func:`layer_rank` computes ``rank(U)`` exactly by block elimination, which is what makes the COPA
security metric (:mod:`copa.security`) cheap; :func:`analyse_chain` gives, for a chain model and an
input, every layer's ``x``, ``z``, ``δ``, ``W`` and ``∂ℓ/∂W``; :func:`fc_input_from_gradients` is the
closed form for the last Linear layer's input and :func:`propagate_delta` passes ``δ`` one layer down.

Numerical rank convention (for every SVD here): singular values ``σ > σ_max · max(m, n) · ε``
with ``ε`` the machine epsilon of float64 (2.2e-16) count — NumPy's ``matrix_rank`` default and
LAPACK ``gelsd``'s ``rcond`` default in ``torch.linalg.lstsq``. Ranks taken from a Gram matrix
(``solve_dense(method="normal")``, large blocks in :func:`layer_rank`) can only resolve
``σ > √(N·ε)·σ_max`` and use that threshold. COPA's released code uses an
absolute tolerance ``1e-10`` instead (``np.linalg.matrix_rank(U, tol=1e-10)`` in ``hybrid.py``);
both give the same ranks on the paper's models because the rank drops are exact identities (see
:mod:`copa.security`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import InvalidSpecError, NotApplicableError

__all__ = [
    "ChainAnalysis",
    "ConvGeometry",
    "LayerAnalysis",
    "LayerOperator",
    "LayerRank",
    "LayerSystem",
    "LayerSystems",
    "RankInfo",
    "SolveInfo",
    "analyse_chain",
    "fc_input_from_gradients",
    "forward_matrix",
    "gradient_matrix",
    "input_gradient",
    "layer_rank",
    "layer_ranks",
    "layer_system",
    "lsqr",
    "null_space",
    "numerical_rank",
    "padding_matrix",
    "propagate_delta",
    "rank_tolerance",
    "solve_dense",
    "gram_matrix",
    "gram_singular_values",
    "solve_matrix_free",
    "svdvals",
    "DENSE_DTYPE",
    "EPS64",
    "GRAM_THRESHOLD",
]

DENSE_DTYPE = torch.float64
EPS64 = torch.finfo(torch.float64).eps


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise InvalidSpecError(f"{name} {value!r} is invalid: give an int or a pair of ints")
    return pair  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one bias-free, zero-padded ``Conv2d`` (groups 1, dilation 1) applied to one image.

    ``input`` is ``(H, W)`` of the unpadded input, ``padded`` ``(H+2p, W+2p)`` and ``output``
    ``(H', W')``. The counts below are those of :func:`layer_system`'s blocks.
    """

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    input: tuple[int, int]

    def __post_init__(self):
        for name in ("kernel", "stride", "padding", "input"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        sizes = (self.in_channels, self.out_channels, *self.kernel, *self.stride, *self.input)
        if min(sizes) < 1 or min(self.padding) < 0:
            raise InvalidSpecError(f"convolution geometry {self} has a non-positive size")
        if min(self.output) < 1:
            raise InvalidSpecError(f"kernel {self.kernel} does not fit the padded input {self.padded}")

    @classmethod
    def from_conv(cls, module: nn.Module, in_hw: Sequence[int]) -> ConvGeometry:
        """The geometry of ``module`` (an ``nn.Conv2d``) on inputs of spatial size ``in_hw``."""
        if not isinstance(module, nn.Conv2d):
            raise NotApplicableError(f"{type(module).__name__} is not a Conv2d")
        problems = []
        if module.groups != 1:
            problems.append(f"groups={module.groups}")
        if tuple(module.dilation) != (1, 1):
            problems.append(f"dilation={tuple(module.dilation)}")
        if module.padding_mode != "zeros":
            problems.append(f"padding_mode={module.padding_mode!r}")
        if isinstance(module.padding, str):
            problems.append(f"padding={module.padding!r}")
        if problems:
            raise NotApplicableError(f"convolution {module} is not supported ({', '.join(problems)}): the layer "
                                     "systems need groups 1, dilation 1 and numeric zero padding")
        return cls(module.in_channels, module.out_channels, tuple(module.kernel_size), tuple(module.stride),
                   tuple(module.padding), _pair(tuple(in_hw), "input size"))

    @property
    def padded(self) -> tuple[int, int]:
        return (self.input[0] + 2 * self.padding[0], self.input[1] + 2 * self.padding[1])

    @property
    def output(self) -> tuple[int, int]:
        (hp, wp), (kh, kw), (sh, sw) = self.padded, self.kernel, self.stride
        return ((hp - kh) // sh + 1, (wp - kw) // sw + 1)

    @property
    def unknowns(self) -> int:
        """Entries of the padded input ``x̃``: the columns of ``U``."""
        return self.in_channels * self.padded[0] * self.padded[1]

    @property
    def interior_unknowns(self) -> int:
        return self.in_channels * self.input[0] * self.input[1]

    @property
    def forward_rows(self) -> int:
        return self.out_channels * self.output[0] * self.output[1]

    @property
    def gradient_rows(self) -> int:
        return self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]

    @property
    def padding_rows(self) -> int:
        return self.unknowns - self.interior_unknowns

    @property
    def rows(self) -> int:
        return self.forward_rows + self.gradient_rows + self.padding_rows

    @property
    def output_padding(self) -> tuple[int, int]:
        """Rows/columns of ``x̃`` past the last kernel window (never touched by the convolution)."""
        (hp, wp), (kh, kw), (sh, sw), (ho, wo) = self.padded, self.kernel, self.stride, self.output
        return (hp - (ho - 1) * sh - kh, wp - (wo - 1) * sw - kw)

    def interior_mask(self, device: torch.device | str | None = None) -> Tensor:
        """Boolean ``C×(H+2p)×(W+2p)`` mask, True on the real (unpadded) entries of ``x̃``."""
        (ph, pw), (h, w) = self.padding, self.input
        mask = torch.zeros(self.in_channels, *self.padded, dtype=torch.bool, device=device)
        mask[:, ph:ph + h, pw:pw + w] = True
        return mask

    def pad(self, x: Tensor) -> Tensor:
        """``(..., C, H, W)`` → ``(..., C, H+2p, W+2p)`` with zeros."""
        ph, pw = self.padding
        return F.pad(x, (pw, pw, ph, ph)) if ph or pw else x

    def unpad(self, x_padded: Tensor) -> Tensor:
        """``(..., C, H+2p, W+2p)`` (or flat ``(..., unknowns)``) → ``(..., C, H, W)``."""
        if x_padded.shape[-1] == self.unknowns and (x_padded.dim() < 3 or x_padded.shape[-3:] != (
                self.in_channels, *self.padded)):
            x_padded = x_padded.reshape(*x_padded.shape[:-1], self.in_channels, *self.padded)
        (ph, pw), (h, w) = self.padding, self.input
        return x_padded[..., ph:ph + h, pw:pw + w]

    def describe(self) -> str:
        c, f, (kh, kw), (sh, sw), (ph, pw) = self.in_channels, self.out_channels, self.kernel, self.stride, self.padding
        return (f"conv {c}→{f} k{kh}x{kw} s{sh}x{sw} p{ph}x{pw} on {c}x{self.input[0]}x{self.input[1]} "
                f"→ {f}x{self.output[0]}x{self.output[1]}")


def _check_weight(weight: Tensor, geometry: ConvGeometry) -> Tensor:
    expected = (geometry.out_channels, geometry.in_channels, *geometry.kernel)
    if tuple(weight.shape) != expected:
        raise InvalidSpecError(f"weight of shape {tuple(weight.shape)} does not fit {geometry.describe()} "
                               f"(expected {expected})")
    return weight


def _as_map(t: Tensor, shape: tuple[int, ...], what: str) -> Tensor:
    """Accept ``shape`` or ``(1, *shape)`` or a flat vector; return ``shape``."""
    if t.numel() != math.prod(shape):
        raise InvalidSpecError(f"{what} of shape {tuple(t.shape)} does not fit the layer (expected {shape}, "
                               "one example)")
    return t.reshape(shape)


# --------------------------------------------------------------------------------------------------
# Dense operators
# --------------------------------------------------------------------------------------------------


def _grid(*sizes: int, device) -> list[Tensor]:
    """``arange`` per axis, each shaped to broadcast over ``len(sizes)`` axes."""
    out = []
    for axis, size in enumerate(sizes):
        shape = [1] * len(sizes)
        shape[axis] = size
        out.append(torch.arange(size, device=device).view(shape))
    return out


def _forward_entries(weight: Tensor, geometry: ConvGeometry) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of ``A``: ``A[(f,p,q), (c, s·p+u, s·q+v)] = W[f,c,u,v]``, by broadcasting."""
    _check_weight(weight, geometry)
    g = geometry
    (kh, kw), (sh, sw), (hp, wp), (ho, wo) = g.kernel, g.stride, g.padded, g.output
    f, p, q, c, u, v = _grid(g.out_channels, ho, wo, g.in_channels, kh, kw, device=weight.device)
    rows = (f * ho + p) * wo + q
    cols = (c * hp + sh * p + u) * wp + sw * q + v
    rows, cols = torch.broadcast_tensors(rows, cols)
    values = weight.detach().to(DENSE_DTYPE)[:, None, None].expand(rows.shape)
    return rows.reshape(-1), cols.reshape(-1), values.reshape(-1)


def _gradient_entries(delta: Tensor, geometry: ConvGeometry) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of ``K(δ)``: ``K[(f,c,u,v), (c, s·p+u, s·q+v)] = δ[f,p,q]``."""
    g = geometry
    (kh, kw), (sh, sw), (hp, wp), (ho, wo) = g.kernel, g.stride, g.padded, g.output
    delta = _as_map(delta, (g.out_channels, ho, wo), "delta")
    f, c, u, v, p, q = _grid(g.out_channels, g.in_channels, kh, kw, ho, wo, device=delta.device)
    rows = ((f * g.in_channels + c) * kh + u) * kw + v
    cols = (c * hp + sh * p + u) * wp + sw * q + v
    rows, cols = torch.broadcast_tensors(rows, cols)
    values = delta.detach().to(DENSE_DTYPE)[:, None, None, None].expand(rows.shape)
    return rows.reshape(-1), cols.reshape(-1), values.reshape(-1)


def _padding_entries(geometry: ConvGeometry, device) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of ``P``: row ``k`` is 1 at the ``k``-th padded column."""
    cols = (~geometry.interior_mask(device)).reshape(-1).nonzero().squeeze(1)
    rows = torch.arange(cols.numel(), device=device)
    return rows, cols, torch.ones(cols.numel(), dtype=DENSE_DTYPE, device=device)


def _assemble(entries: tuple[Tensor, Tensor, Tensor], shape: tuple[int, int], layout: str) -> Tensor:
    rows, cols, values = entries
    if layout == "sparse":
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=False).coalesce()
    matrix = torch.zeros(shape, dtype=DENSE_DTYPE, device=values.device)
    matrix.index_put_((rows, cols), values)  # entries are distinct: no accumulation needed
    return matrix


def _check_layout(layout: str) -> str:
    if layout not in ("dense", "sparse"):
        raise InvalidSpecError(f"layout {layout!r} is invalid: accepted are 'dense' and 'sparse'")
    return layout


def forward_matrix(weight: Tensor, geometry: ConvGeometry, *, layout: str = "dense") -> Tensor:
    """``A``: the convolution as a float64 matrix over the padded input.

    ``A[(f,p,q), (c, s·p+u, s·q+v)] = W[f,c,u,v]``; shape ``(F·H'·W', C·(H+2p)·(W+2p))``, so that
    ``A @ vec(pad(x)) == vec(conv2d(x, W, stride=s, padding=p))``. ``layout="sparse"`` gives a
    coalesced ``torch.sparse_coo_tensor`` with the same entries.
    """
    g = geometry
    return _assemble(_forward_entries(weight, g), (g.forward_rows, g.unknowns), _check_layout(layout))


def gradient_matrix(delta: Tensor, geometry: ConvGeometry, *, layout: str = "dense") -> Tensor:
    """``K(δ)``: the weight gradient as a float64 linear map of the padded input.

    ``K[(f,c,u,v), (c, s·p+u, s·q+v)] = δ[f,p,q]``; shape ``(F·C·kh·kw, C·(H+2p)·(W+2p))``, so that
    ``K @ vec(pad(x)) == vec(∂ℓ/∂W)`` when ``δ = ∂ℓ/∂z`` for one example. ``delta``: ``F×H'×W'``.
    """
    g = geometry
    return _assemble(_gradient_entries(delta, g), (g.gradient_rows, g.unknowns), _check_layout(layout))


def padding_matrix(geometry: ConvGeometry, device: torch.device | str | None = None, *,
                   layout: str = "dense") -> Tensor:
    """``P``: one identity row per padded entry of ``x̃`` (in column order); ``0×n`` without padding."""
    g = geometry
    return _assemble(_padding_entries(g, device), (g.padding_rows, g.unknowns), _check_layout(layout))


class LayerSystem(NamedTuple):
    """A layer's dense system ``matrix @ vec(x̃) ≈ rhs`` and its block sizes (forward, gradient, padding)."""

    matrix: Tensor
    rhs: Tensor
    row_counts: dict[str, int]


def layer_system(weight: Tensor, delta: Tensor, z: Tensor, grad: Tensor, geometry: ConvGeometry,
                 *, include_padding: bool = True, layout: str = "dense") -> LayerSystem:
    """Stack ``U = [A; K(δ); P]`` and ``[vec(z); vec(g); 0]`` (float64, on ``weight``'s device).

    ``z`` is the layer's pre-activation (``F×H'×W'``), ``grad`` the observed weight gradient
    (``F×C×kh×kw``). ``include_padding=False`` leaves out ``P`` (then the padded entries are free).
    ``layout="sparse"``: ``U`` as a coalesced sparse COO tensor (never materialised densely).
    """
    g = geometry
    dev = weight.device
    parts = [_forward_entries(weight, g), _gradient_entries(delta.to(dev), g)]
    rhs = [_as_map(z, (g.out_channels, *g.output), "z").reshape(-1), _as_map(
        grad, (g.out_channels, g.in_channels, *g.kernel), "grad").reshape(-1)]
    counts = {"forward": g.forward_rows, "gradient": g.gradient_rows, "padding": 0}
    if include_padding and g.padding_rows:
        parts.append(_padding_entries(g, dev))
        rhs.append(torch.zeros(g.padding_rows))
        counts["padding"] = g.padding_rows
    offsets = [0, g.forward_rows, g.forward_rows + g.gradient_rows]
    entries = tuple(torch.cat(t) for t in zip(*[(r + o, c, v) for (r, c, v), o in zip(parts, offsets)]))
    matrix = _assemble(entries, (sum(counts.values()), g.unknowns), _check_layout(layout))
    rhs = torch.cat([r.detach().to(dtype=DENSE_DTYPE, device=dev) for r in rhs])
    return LayerSystem(matrix, rhs, counts)


# --------------------------------------------------------------------------------------------------
# Matrix-free operators
# --------------------------------------------------------------------------------------------------


def _conv_apply(x_padded: Tensor, weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """``A x̃``: ``(B, C, Hp, Wp)`` → ``(B, F, H', W')``."""
    return F.conv2d(x_padded, weight, stride=geometry.stride)


def _conv_adjoint(y: Tensor, weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """``Aᵀ y``: ``(B, F, H', W')`` → ``(B, C, Hp, Wp)``."""
    return F.conv_transpose2d(y, weight, stride=geometry.stride, output_padding=geometry.output_padding)


def _delta_rows(delta: Tensor, geometry: ConvGeometry) -> Tensor:
    """``δ`` as ``(F, H'·W')``, or ``(B, F, H'·W')`` for one ``δ`` per instance (``B×F×H'×W'``)."""
    lead = delta.shape[:-3] if delta.dim() == 4 else ()
    return delta.reshape(*lead, geometry.out_channels, -1)


def _grad_apply(x_padded: Tensor, delta: Tensor, geometry: ConvGeometry) -> Tensor:
    """``K(δ) x̃`` = the weight gradient: ``(B, C, Hp, Wp)`` → ``(B, F, C, kh, kw)``; ``δ`` shared or one
    per instance (``B×F×H'×W'``)."""
    g = geometry
    patches = F.unfold(x_padded, g.kernel, stride=g.stride)  # (B, C·kh·kw, H'·W')
    out = torch.matmul(_delta_rows(delta, g), patches.transpose(1, 2))  # (B, F, C·kh·kw)
    return out.reshape(x_padded.shape[0], g.out_channels, g.in_channels, *g.kernel)


def _grad_adjoint(r: Tensor, delta: Tensor, geometry: ConvGeometry) -> Tensor:
    """``K(δ)ᵀ r``: ``(B, F, C, kh, kw)`` → ``(B, C, Hp, Wp)`` (sum of δ-weighted kernel windows); ``δ``
    shared or one per instance."""
    g = geometry
    cols = torch.matmul(_delta_rows(delta, g).transpose(-1, -2), r.reshape(r.shape[0], g.out_channels, -1))
    return F.fold(cols.transpose(1, 2), g.padded, g.kernel, stride=g.stride)


def input_gradient(delta: Tensor, weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """``∂ℓ/∂x = Aᵀ δ`` without the padded entries: ``(..., F, H', W')`` → ``(..., C, H, W)``."""
    lead = delta.shape[:-3]
    y = delta.reshape(-1, geometry.out_channels, *geometry.output)
    return geometry.unpad(_conv_adjoint(y, weight.to(y.dtype), geometry)).reshape(*lead, geometry.in_channels,
                                                                                  *geometry.input)


class LayerOperator:
    """``U = [A; K(δ); P]`` of one layer as a matrix-free linear operator on ``vec(x̃)``.

    ``matvec(x)`` maps ``(..., n)`` to ``(..., m)`` with ``conv2d`` (forward rows), ``unfold`` and a
    matmul with ``δ`` (gradient rows) and a gather (padding rows); ``rmatvec(y)`` maps ``(..., m)``
    to ``(..., n)`` with ``conv_transpose2d``, ``fold`` and a scatter — the exact adjoint. Same
    row order as :func:`layer_system`. Works in ``dtype`` (float64 by default) on ``weight``'s device.
    ``delta`` of shape ``B×F×H'×W'`` makes B operators ``U_b = [A; K(δ_b); P]`` of shared weights at once:
    ``matvec``/``rmatvec`` then take ``(B, n)``/``(B, m)``, row ``b`` for operator ``b``.
    """

    def __init__(self, weight: Tensor, delta: Tensor, geometry: ConvGeometry, *, include_padding: bool = True,
                 dtype: torch.dtype = DENSE_DTYPE):
        g = geometry
        self.geometry = g
        self.weight = _check_weight(weight, g).detach().to(dtype)
        per_instance = delta.dim() == 4 and delta.shape[0] > 1
        shape = (delta.shape[0], g.out_channels, *g.output) if per_instance else (g.out_channels, *g.output)
        self.delta = _as_map(delta.detach(), shape, "delta").to(dtype=dtype, device=weight.device)
        self.dtype = dtype
        self.device = weight.device
        self.include_padding = include_padding and g.padding_rows > 0
        self._padded_index = (~g.interior_mask(self.device)).reshape(-1).nonzero().squeeze(1)
        self.row_counts = {"forward": g.forward_rows, "gradient": g.gradient_rows,
                           "padding": g.padding_rows if self.include_padding else 0}
        self.shape = (sum(self.row_counts.values()), g.unknowns)

    def matvec(self, x: Tensor) -> Tensor:
        g = self.geometry
        lead = x.shape[:-1]
        xp = x.to(self.dtype).reshape(-1, g.in_channels, *g.padded)
        parts = [_conv_apply(xp, self.weight, g).flatten(1), _grad_apply(xp, self.delta, g).flatten(1)]
        if self.include_padding:
            parts.append(xp.flatten(1)[:, self._padded_index])
        return torch.cat(parts, dim=1).reshape(*lead, self.shape[0])

    def rmatvec(self, y: Tensor) -> Tensor:
        g = self.geometry
        lead = y.shape[:-1]
        y = y.to(self.dtype).reshape(-1, self.shape[0])
        nf, ng, _ = self.row_counts.values()
        out = _conv_adjoint(y[:, :nf].reshape(-1, g.out_channels, *g.output), self.weight, g)
        out = out + _grad_adjoint(y[:, nf:nf + ng].reshape(-1, g.out_channels, g.in_channels, *g.kernel),
                                  self.delta, g)
        out = out.flatten(1)
        if self.include_padding:
            out = out.index_add(1, self._padded_index, y[:, nf + ng:])
        return out.reshape(*lead, self.shape[1])

    def rhs(self, z: Tensor, grad: Tensor) -> Tensor:
        """``[vec(z); vec(g); 0]`` in this operator's dtype and row order."""
        g = self.geometry
        parts = [_as_map(z, (g.out_channels, *g.output), "z").reshape(-1),
                 _as_map(grad, (g.out_channels, g.in_channels, *g.kernel), "grad").reshape(-1)]
        if self.include_padding:
            parts.append(torch.zeros(g.padding_rows, device=self.device))
        return torch.cat([p.to(dtype=self.dtype, device=self.device) for p in parts])

    def column_norms(self) -> Tensor:
        """``‖U e_j‖`` for every column, from two transposed convolutions (for preconditioning)."""
        g = self.geometry
        ones_f = torch.ones(1, g.out_channels, *g.output, dtype=self.dtype, device=self.device)
        sq = _conv_adjoint(ones_f, self.weight.square(), g)  # Σ over windows of W²
        ones_k = torch.ones(1, g.out_channels, g.in_channels, *g.kernel, dtype=self.dtype, device=self.device)
        sq = sq + _grad_adjoint(ones_k, self.delta.square(), g)  # Σ over windows of δ²
        sq = sq.flatten()
        if self.include_padding:
            sq = sq.index_add(0, self._padded_index, torch.ones_like(self._padded_index, dtype=self.dtype))
        return sq.sqrt()

    def dense(self) -> Tensor:
        """Materialise ``U`` (for checks on small layers): same as :func:`layer_system`'s matrix."""
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self.matvec(eye).T


# --------------------------------------------------------------------------------------------------
# Solves
# --------------------------------------------------------------------------------------------------


@dataclass
class SolveInfo:
    """How a solve went. ``rank``/``singular_values``/``tolerance`` for dense solves; ``iterations``,
    ``converged`` and ``stop_reason`` for iterative ones; ``residual_norm`` = ‖U x − b‖ for both."""

    method: str
    residual_norm: float
    rank: int | None = None
    singular_values: Tensor | None = None
    tolerance: float | None = None
    iterations: int | None = None
    converged: bool | None = None
    stop_reason: str = ""
    seconds: float = 0.0


def rank_tolerance(singular_values: Tensor, shape: Sequence[int], rtol: float | None = None) -> float:
    """Absolute threshold on singular values: ``σ_max · rtol``, ``rtol`` defaulting to ``max(m, n)·ε₆₄``."""
    if rtol is None:
        rtol = max(shape[-2:]) * EPS64
    smax = float(singular_values.detach().max()) if singular_values.numel() else 0.0
    return smax * rtol


def _to_scipy_csr(matrix: Tensor):
    """A CPU float64 matrix (dense or sparse COO) as a ``scipy.sparse.csr_matrix``."""
    import scipy.sparse

    if matrix.is_sparse:
        m = matrix.coalesce()
        idx, vals = m.indices().numpy(), m.values().to(DENSE_DTYPE).numpy()
    else:
        nz = matrix.nonzero()
        idx, vals = nz.T.numpy(), matrix[nz[:, 0], nz[:, 1]].to(DENSE_DTYPE).numpy()
    return scipy.sparse.csr_matrix((vals, (idx[0], idx[1])), shape=tuple(matrix.shape))


def gram_matrix(matrix: Tensor) -> tuple[Tensor, str]:
    """The smaller Gram matrix of ``matrix`` (dense or sparse COO), dense float64.

    Returns ``(UᵀU, "columns")`` if ``m ≥ n`` else ``(UUᵀ, "rows")``. On CPU the product is taken
    with SciPy's sparse CSR kernels (layer systems are 1–5 % dense); on CUDA densely with cuBLAS.
    """
    m, n = matrix.shape
    side = "columns" if m >= n else "rows"
    if matrix.device.type == "cpu" and (matrix.is_sparse or int(torch.count_nonzero(matrix)) < 0.25 * m * n):
        s = _to_scipy_csr(matrix)
        g = (s.T @ s) if side == "columns" else (s @ s.T)
        return torch.from_numpy(g.toarray()), side
    a = matrix.to_dense().to(DENSE_DTYPE) if matrix.is_sparse else matrix.to(DENSE_DTYPE)
    return (a.T @ a if side == "columns" else a @ a.T), side


def _matmul(matrix: Tensor, other: Tensor, transpose: bool = False) -> Tensor:
    """``matrix @ other`` (or ``matrixᵀ @ other``) for dense or sparse ``matrix``."""
    a = matrix.t() if transpose else matrix
    return torch.sparse.mm(a, other) if a.is_sparse else a @ other


def gram_singular_values(matrix: Tensor) -> Tensor:
    """Singular values (descending) as square roots of the eigenvalues of the smaller Gram matrix.

    Much cheaper than an SVD for the tall or wide, sparse layer systems, but only accurate down to
    about ``√ε₆₄ · σ_max`` (1.5e-8 relative): eigenvalues carry an absolute error of order
    ``ε·σ_max²``. Use it for condition numbers, not for ranks near that resolution.
    """
    gram, _ = gram_matrix(matrix)
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()


def solve_dense(matrix: Tensor, rhs: Tensor, *, rcond: float | None = None,
                method: str = "lstsq") -> tuple[Tensor, SolveInfo]:
    """Least-squares solution of ``matrix @ x ≈ rhs`` in float64, by a direct method.

    ``method="lstsq"`` (default, the reference; what R-GAP and COPA's code do with
    ``np.linalg.lstsq``): the minimum-norm least-squares solution from an SVD — LAPACK ``gelsd``
    on CPU (``torch.linalg.lstsq``), an explicit thin SVD on CUDA (PyTorch has no ``gelsd`` there).
    Singular values ``≤ σ_max · rcond`` count as zero, ``rcond`` defaulting to ``max(m, n)·ε₆₄``.

    ``method="normal"`` (fast): Cholesky of the smaller Gram matrix ``G`` (``UᵀU`` for tall,
    ``UUᵀ`` for wide systems; :func:`gram_matrix`, sparse products on CPU). On CPU with LAPACK's
    pivoted Cholesky ``dpstrf`` (rank from its default pivot tolerance ``N·ε·max G_kk``, i.e.
    singular values below about ``√(N·ε)·σ_max`` count as zero); on CUDA with ``eigh`` and the same
    threshold. Exact minimum-norm least squares when ``U`` has full rank; when it is
    rank-deficient, tall systems get the minimum-norm least-squares solution (the basic solution
    with the null space projected out) and wide systems the minimum-norm solution of the ``rank``
    independent equations the pivoting selects — the same as ``lstsq`` whenever the system is
    consistent (exact data). Errors grow like ``cond(U)²·ε`` instead of ``cond(U)·ε``.

    ``matrix`` may be a sparse COO tensor for ``"normal"``. ``rhs``: ``(m,)`` or ``(m, k)``.
    """
    if method not in ("lstsq", "normal"):
        raise InvalidSpecError(f"dense solve method {method!r} is invalid: accepted are 'lstsq' and 'normal'")
    start = time.perf_counter()
    b = rhs.to(dtype=DENSE_DTYPE, device=matrix.device)
    vector = b.dim() == 1
    b2 = b[:, None] if vector else b
    if method == "normal":
        x, info = _solve_normal(matrix, b2)
    else:
        a = (matrix.to_dense() if matrix.is_sparse else matrix).to(DENSE_DTYPE)
        if rcond is None:
            rcond = max(a.shape) * EPS64
        if a.device.type == "cpu":
            result = torch.linalg.lstsq(a, b2, rcond=rcond, driver="gelsd")
            x, sv, rank, name = result.solution, result.singular_values, int(result.rank), "lstsq (LAPACK gelsd)"
        else:
            u, sv, vh = torch.linalg.svd(a, full_matrices=False)
            rank = int((sv > (sv[0] * rcond if sv.numel() else 0.0)).sum())
            x = vh[:rank].T @ ((u[:, :rank].T @ b2) / sv[:rank, None])
            name = "lstsq (thin SVD)"
        tol = float(sv.max()) * rcond if sv.numel() else 0.0
        info = SolveInfo(name, 0.0, rank=rank, singular_values=sv, tolerance=tol)
    info.residual_norm = float(torch.linalg.vector_norm(_matmul(matrix, x) - b2))
    info.seconds = time.perf_counter() - start
    return (x[:, 0] if vector else x), info


def _solve_normal(a: Tensor, b: Tensor) -> tuple[Tensor, SolveInfo]:
    gram, side = gram_matrix(a)
    wide = side == "rows"
    rhs = b if wide else _matmul(a, b, transpose=True)
    if gram.device.type != "cpu":
        (y, rank, tol, sv), = _solve_grams_eigh(gram[None], rhs[None])
        name = "normal equations (eigh)"
    else:
        y, rank, tol = _solve_gram_pivoted(gram, rhs, minimum_norm=not wide)
        name, sv = "normal equations (LAPACK dpstrf)", None
    x = _matmul(a, y, transpose=True) if wide else y
    return x, SolveInfo(name, 0.0, rank=rank, singular_values=sv, tolerance=tol)


def _solve_gram_pivoted(gram: Tensor, rhs: Tensor, *, minimum_norm: bool) -> tuple[Tensor, int, float]:
    """``G y = rhs`` for a CPU PSD Gram matrix by LAPACK's pivoted Cholesky ``dpstrf``: ``(y, rank, tol)``.

    Rank from ``dpstrf``'s default pivot tolerance ``N·ε·max G_kk``; the basic solution on the ``rank``
    pivoted equations, projected onto the row space when ``minimum_norm`` (tall systems: the
    minimum-norm least-squares solution). ``rhs``: ``(N, k)``.
    """
    import numpy as np
    from scipy.linalg import lapack, solve_triangular

    k = gram.shape[0]
    factor, piv, rank, _ = lapack.dpstrf(gram.numpy(), lower=1, tol=-1.0)
    piv = piv - 1
    tol = k * EPS64 * float(gram.diagonal().max())
    l11 = factor[:rank, :rank]  # solve_triangular reads only the lower triangle (dpstrf leaves junk above)
    r = rhs.numpy()[piv[:rank]]
    w = solve_triangular(l11, solve_triangular(l11, r, lower=True), lower=True, trans="T")
    yp = np.zeros((k, rhs.shape[1]))
    yp[:rank] = w
    if rank < k and minimum_norm:
        # basic solution → minimum norm: project out null(G) = span of Pᵀ[-L11⁻ᵀ L21ᵀ; I]
        z = np.vstack([-solve_triangular(l11, factor[rank:, :rank].T, lower=True, trans="T"),
                       np.eye(k - rank)])
        yp -= z @ np.linalg.solve(z.T @ z, z.T @ yp)
    y = np.empty_like(yp)
    y[piv] = yp
    return torch.from_numpy(y), int(rank), tol


def _solve_grams_eigh(grams: Tensor, rhs: Tensor) -> list[tuple[Tensor, int, float, Tensor]]:
    """``G_b y_b = rhs_b`` for a stack of PSD Gram matrices by one batched ``eigh`` (CUDA path).

    Eigenvalues ``≤ N·ε·λ_max`` count as zero (the threshold of :func:`_solve_gram_pivoted`); returns per
    instance ``(y, rank, tolerance, singular values descending)``.
    """
    ev, vecs = torch.linalg.eigh(grams)
    out = []
    for b in range(grams.shape[0]):
        tol = grams.shape[-1] * EPS64 * float(ev[b].max().clamp_min(0))
        keep = ev[b] > tol
        top = vecs[b][:, keep]
        out.append((top @ ((top.T @ rhs[b]) / ev[b][keep, None]), int(keep.sum()), tol,
                    ev[b].flip(0).clamp_min(0).sqrt()))
    return out


class LayerSystems:
    """The layer systems ``U_b x̃_b = [z_b; g_b; 0]``, ``U_b = [A; K(δ_b); P]``, of one convolution for B
    instances that share the weights (R-GAP/COPA on B clients' images under one global model).

    ``A`` and ``P`` depend on the weights only: they and their part of the smaller Gram matrix are built
    once — ``AᵀA + PᵀP`` for tall systems (``UᵀU = AᵀA + K(δ)ᵀK(δ) + PᵀP``), the blocks ``AAᵀ``, ``APᵀ``,
    ``PPᵀ`` for wide ones — and each instance adds only its blocks with ``K(δ_b)``. :meth:`solve` is
    :func:`solve_dense` on every ``U_b`` (same methods and rank thresholds): ``"normal"`` factors each
    instance's Gram matrix with ``dpstrf`` on CPU and all instances' Gram matrices in one batched
    ``eigh`` on CUDA (in chunks of at most ``chunk_bytes``); ``"lstsq"`` (the reference) solves each
    dense ``U_b`` with ``gelsd``. ``backend``: ``"sparse"`` (SciPy CSR products and ``dpstrf``; the CPU
    default) or ``"dense"`` (torch dense products and the batched ``eigh``; the default elsewhere).
    """

    def __init__(self, weight: Tensor, geometry: ConvGeometry, deltas: Sequence[Tensor], zs: Sequence[Tensor],
                 grads: Sequence[Tensor], *, include_padding: bool = True, chunk_bytes: int = 2 ** 31,
                 backend: str | None = None):
        g = geometry
        self.geometry, self.device = g, weight.device
        self.instances = len(deltas)
        if not (len(zs) == len(grads) == self.instances and self.instances):
            raise ValueError(f"need as many z and gradients as δ (got {len(deltas)}, {len(zs)}, {len(grads)})")
        self.include_padding = include_padding and g.padding_rows > 0
        self.row_counts = {"forward": g.forward_rows, "gradient": g.gradient_rows,
                           "padding": g.padding_rows if self.include_padding else 0}
        self.shape = (sum(self.row_counts.values()), g.unknowns)
        self.side = "columns" if self.shape[0] >= self.shape[1] else "rows"
        self.chunk_bytes = chunk_bytes
        self._weight = weight
        self.deltas = [_as_map(d.detach(), (g.out_channels, *g.output), "delta").to(DENSE_DTYPE) for d in deltas]
        zero = torch.zeros(self.row_counts["padding"], dtype=DENSE_DTYPE, device=self.device)
        self.rhs = [torch.cat([_as_map(z, (g.out_channels, *g.output), "z").reshape(-1).to(DENSE_DTYPE),
                               _as_map(gr, (g.out_channels, g.in_channels, *g.kernel), "grad").reshape(-1)
                               .to(DENSE_DTYPE), zero]).to(self.device) for z, gr in zip(zs, grads)]
        self._shared_gram: dict[str, Tensor] | None = None
        self._gradient_blocks: dict[int, object] = {}  # K(δ_b), built on first use (solve, residual, projector)
        backend = backend or ("sparse" if self.device.type == "cpu" else "dense")
        if backend not in ("sparse", "dense") or (backend == "sparse" and self.device.type != "cpu"):
            raise InvalidSpecError(f"backend {backend!r} is invalid on {self.device.type}: accepted are 'dense' and, "
                                   "on CPU, 'sparse'")
        self._sparse = backend == "sparse"
        self.batched_factorisations = not self._sparse  # one batched eigh for all instances (dense backend)
        forward = _assemble(_forward_entries(weight, g), (g.forward_rows, g.unknowns), "sparse")
        padding = _assemble(_padding_entries(g, self.device), (self.row_counts["padding"], g.unknowns), "sparse")
        if self._sparse:
            self._a, self._p = _to_scipy_csr(forward), _to_scipy_csr(padding)
        else:
            self._a, self._p = forward.to_dense(), padding.to_dense()

    # -- per-instance blocks ---------------------------------------------------------------------
    def _k(self, b: int):
        if b not in self._gradient_blocks:
            k = _assemble(_gradient_entries(self.deltas[b], self.geometry), (self.geometry.gradient_rows,
                                                                              self.geometry.unknowns), "sparse")
            self._gradient_blocks[b] = _to_scipy_csr(k) if self._sparse else k.to_dense()
        return self._gradient_blocks[b]

    def _blocks(self, b: int):
        return [self._a, self._k(b), self._p]

    def matrix(self, b: int) -> Tensor:
        """``U_b`` as a coalesced sparse COO tensor (same rows as :func:`layer_system`)."""
        g, offset, parts = self.geometry, 0, []
        for entries, rows in ((_forward_entries(self._weight, g), g.forward_rows),
                              (_gradient_entries(self.deltas[b], g), g.gradient_rows),
                              (_padding_entries(g, self.device), self.row_counts["padding"])):
            if rows:
                parts.append((entries[0] + offset, entries[1], entries[2]))
            offset += rows
        return _assemble(tuple(torch.cat(t) for t in zip(*parts)), self.shape, "sparse")

    def system(self, b: int) -> LayerSystem:
        return LayerSystem(self.matrix(b), self.rhs[b], dict(self.row_counts))

    def matvec(self, b: int, x: Tensor) -> Tensor:
        """``U_b x`` for ``x`` of shape ``(n,)`` or ``(n, k)``."""
        blocks = self._blocks(b)
        if self._sparse:
            return torch.from_numpy(_scipy_vstack(blocks) @ x.numpy())
        return torch.cat([blk @ x for blk in blocks])

    def rmatvec(self, b: int, y: Tensor) -> Tensor:
        """``U_bᵀ y`` for ``y`` of shape ``(m,)`` or ``(m, k)``."""
        blocks = self._blocks(b)
        if self._sparse:
            return torch.from_numpy(_scipy_vstack(blocks).T @ y.numpy())
        return torch.cat(blocks).T @ y

    def _shared(self) -> dict[str, Tensor]:
        if self._shared_gram is None:
            a, p = self._a, self._p

            def dense(m):
                return torch.from_numpy(m.toarray()) if self._sparse else m

            if self.side == "columns":
                self._shared_gram = {"AtA+PtP": dense(a.T @ a + p.T @ p)}
            else:
                self._shared_gram = {"AAt": dense(a @ a.T), "APt": dense(a @ p.T), "PPt": dense(p @ p.T)}
        return self._shared_gram

    def gram(self, b: int) -> Tensor:
        """The smaller Gram matrix of ``U_b`` (``U_bᵀU_b`` if tall, ``U_bU_bᵀ`` if wide), dense float64."""
        shared, k = self._shared(), self._k(b)

        def dense(m):
            return torch.from_numpy(m.toarray() if hasattr(m, "toarray") else m) if self._sparse else m

        if self.side == "columns":
            return shared["AtA+PtP"] + dense(k.T @ k)
        nf, ng, _ = self.row_counts.values()
        out = torch.empty(self.shape[0], self.shape[0], dtype=DENSE_DTYPE, device=self.device)
        ka, kk, kp = dense(k @ self._a.T), dense(k @ k.T), dense(k @ self._p.T)
        f, gr, pd = slice(0, nf), slice(nf, nf + ng), slice(nf + ng, None)
        out[f, f], out[f, pd], out[pd, pd] = shared["AAt"], shared["APt"], shared["PPt"]
        out[pd, f] = shared["APt"].T
        out[gr, f], out[f, gr], out[gr, gr], out[gr, pd], out[pd, gr] = ka, ka.T, kk, kp, kp.T
        return out

    # -- solves ----------------------------------------------------------------------------------
    def solve(self, *, method: str = "normal", rcond: float | None = None) -> list[tuple[Tensor, SolveInfo]]:
        """Minimum-norm least squares for every instance: ``[(vec(x̃_b), SolveInfo)]`` as :func:`solve_dense`."""
        if method not in ("lstsq", "normal"):
            raise InvalidSpecError(f"dense solve method {method!r} is invalid: accepted are 'lstsq' and 'normal'")
        if method == "lstsq":
            return [solve_dense(self.matrix(b).to_dense(), self.rhs[b], rcond=rcond, method="lstsq")
                    for b in range(self.instances)]
        results: list[tuple[Tensor, SolveInfo]] = []
        wide = self.side == "rows"
        if self._sparse:  # LAPACK has no batched pivoted Cholesky: one instance after the other
            for b in range(self.instances):
                start = time.perf_counter()
                rhs = self.rhs[b][:, None] if wide else self.rmatvec(b, self.rhs[b][:, None])
                y, rank, tol = _solve_gram_pivoted(self.gram(b), rhs, minimum_norm=not wide)
                results.append(self._finish(b, y, SolveInfo("normal equations (LAPACK dpstrf)", 0.0, rank=rank,
                                                            tolerance=tol), start))
            return results
        k = self.shape[0] if wide else self.shape[1]
        per_chunk = max(1, self.chunk_bytes // (3 * k * k * 8))
        for first in range(0, self.instances, per_chunk):
            start = time.perf_counter()
            members = range(first, min(first + per_chunk, self.instances))
            grams = torch.stack([self.gram(b) for b in members])
            rhs = torch.stack([self.rhs[b][:, None] if wide else self.rmatvec(b, self.rhs[b][:, None])
                               for b in members])
            solved = _solve_grams_eigh(grams, rhs)
            del grams
            for b, (y, rank, tol, sv) in zip(members, solved):
                info = SolveInfo("normal equations (batched eigh)", 0.0, rank=rank, singular_values=sv, tolerance=tol)
                results.append(self._finish(b, y, info, start, share=len(members)))
        return results

    def _finish(self, b: int, y: Tensor, info: SolveInfo, start: float, share: int = 1) -> tuple[Tensor, SolveInfo]:
        x = (self.rmatvec(b, y) if self.side == "rows" else y)[:, 0]
        info.residual_norm = float(torch.linalg.vector_norm(self.matvec(b, x) - self.rhs[b]))
        info.seconds = (time.perf_counter() - start) / share
        return x, info


def _scipy_vstack(blocks):
    import scipy.sparse

    return scipy.sparse.vstack([blk for blk in blocks if blk.shape[0]], format="csr")


def lsqr(matvec: Callable[[Tensor], Tensor], rmatvec: Callable[[Tensor], Tensor], b: Tensor, *,
         atol: float = 1e-12, btol: float = 1e-12, max_iter: int | None = None, x0: Tensor | None = None,
         n: int | None = None) -> tuple[Tensor, SolveInfo]:
    """LSQR (Paige & Saunders 1982) in PyTorch: least squares ``min ‖U x − b‖`` from products with
    ``U`` and ``Uᵀ`` only, on whatever device ``b`` lives.

    Started from ``x0 = 0`` it converges to the minimum-norm least-squares solution, like the dense
    pseudo-inverse. Stopping rules and their ``atol``/``btol`` meaning follow SciPy's
    ``scipy.sparse.linalg.lsqr`` (no damping): stop when ``‖r‖ ≤ btol·‖b‖ + atol·‖U‖·‖x‖``
    (consistent system) or ``‖Uᵀr‖ ≤ atol·‖U‖·‖r‖`` (least-squares optimum), ``‖U‖`` estimated from
    the bidiagonalisation. ``max_iter`` defaults to ``2·n``.
    """
    start = time.perf_counter()
    if x0 is None:
        x = None
        u = b.clone()
    else:
        x = x0.clone()
        u = b - matvec(x)
    bnorm = float(torch.linalg.vector_norm(b))
    beta = float(torch.linalg.vector_norm(u))
    if beta == 0.0:
        v = rmatvec(u)
        x = torch.zeros_like(v) if x is None else x
        return x, SolveInfo("lsqr", 0.0, iterations=0, converged=True, stop_reason="b is zero",
                            seconds=time.perf_counter() - start)
    u = u / beta
    v = rmatvec(u)
    if x is None:
        x = torch.zeros_like(v)
    n = v.numel() if n is None else n
    max_iter = 2 * n if max_iter is None else max_iter
    alpha = float(torch.linalg.vector_norm(v))
    if alpha == 0.0:
        return x, SolveInfo("lsqr", beta, iterations=0, converged=True, stop_reason="Uᵀb is zero",
                            seconds=time.perf_counter() - start)
    v = v / alpha
    w = v.clone()
    phibar, rhobar = beta, alpha
    anorm2 = 0.0
    xnorm = 0.0
    rnorm = beta
    reason, converged, it = "iteration limit reached", False, 0
    for it in range(1, max_iter + 1):
        u = matvec(v).sub_(u, alpha=alpha)
        beta = float(torch.linalg.vector_norm(u))
        anorm2 += alpha * alpha + beta * beta
        if beta > 0:
            u.div_(beta)
        v = rmatvec(u).sub_(v, alpha=beta)
        alpha = float(torch.linalg.vector_norm(v))
        if alpha > 0:
            v.div_(alpha)
        rho = math.hypot(rhobar, beta)
        c, s = rhobar / rho, beta / rho
        theta = s * alpha
        rhobar = -c * alpha
        phi = c * phibar
        phibar = s * phibar
        x.add_(w, alpha=phi / rho)
        w.mul_(-theta / rho).add_(v)
        rnorm = phibar
        arnorm = phibar * alpha * abs(c)
        anorm = math.sqrt(anorm2)
        xnorm = float(torch.linalg.vector_norm(x)) if it % 10 == 0 or rnorm <= btol * bnorm * 10 else xnorm
        if rnorm <= btol * bnorm + atol * anorm * xnorm:
            xnorm = float(torch.linalg.vector_norm(x))
            if rnorm <= btol * bnorm + atol * anorm * xnorm:
                reason, converged = "consistent: ‖r‖ ≤ btol·‖b‖ + atol·‖U‖·‖x‖", True
                break
        if rnorm == 0.0 or arnorm <= atol * anorm * rnorm:
            reason, converged = "least squares: ‖Uᵀr‖ ≤ atol·‖U‖·‖r‖", True
            break
        if alpha == 0.0:
            reason, converged = "Krylov space exhausted", True
            break
    return x, SolveInfo("lsqr", float(rnorm), iterations=it, converged=converged, stop_reason=reason,
                        seconds=time.perf_counter() - start)


def solve_matrix_free(op: LayerOperator, rhs: Tensor, *, tol: float = 1e-12, max_iter: int | None = None,
                      precondition: bool = False) -> tuple[Tensor, SolveInfo]:
    """Solve ``op @ x ≈ rhs`` with :func:`lsqr` (``atol = btol = tol``) without forming the matrix.

    Returns ``vec(x̃)`` (padded layout; :meth:`ConvGeometry.unpad` gives the image). With
    ``precondition=True`` columns are scaled to unit norm first (faster on badly scaled systems);
    the least-squares solution is the same when it is unique, but for rank-deficient systems the
    result is then the minimum of the *scaled* norm, not the minimum-norm solution.
    The reported ``residual_norm`` is recomputed as ``‖U x − b‖``.
    """
    b = rhs.to(dtype=op.dtype, device=op.device)
    if precondition:
        d = op.column_norms()
        d = torch.where(d > 0, 1.0 / d, torch.ones_like(d))
        y, info = lsqr(lambda v: op.matvec(v * d), lambda r: op.rmatvec(r) * d, b, atol=tol, btol=tol,
                       max_iter=max_iter)
        x = y * d
        info.method = "lsqr (column-scaled)"
    else:
        x, info = lsqr(op.matvec, op.rmatvec, b, atol=tol, btol=tol, max_iter=max_iter)
    info.residual_norm = float(torch.linalg.vector_norm(op.matvec(x) - b))
    return x, info


# --------------------------------------------------------------------------------------------------
# Ranks and null spaces
# --------------------------------------------------------------------------------------------------


class RankInfo(NamedTuple):
    """Numerical rank, all singular values (descending) and the absolute tolerance used."""

    rank: int
    singular_values: Tensor
    tolerance: float


def numerical_rank(matrix: Tensor, *, rtol: float | None = None) -> RankInfo:
    """Rank of a dense matrix from its float64 singular values (:func:`svdvals`).

    Counts ``σ > σ_max · rtol`` with ``rtol`` defaulting to ``max(m, n)·ε₆₄`` — the convention of
    ``numpy.linalg.matrix_rank`` and of LAPACK ``gelsd`` in :func:`solve_dense`.
    """
    sv = svdvals(matrix)
    tol = rank_tolerance(sv, matrix.shape, rtol)
    return RankInfo(int((sv > tol).sum()), sv, tol)


def null_space(matrix: Tensor, *, rtol: float | None = None) -> Tensor:
    """Orthonormal basis (``n×k`` columns) of the null space of a dense matrix, from its SVD.

    Same rank convention as :func:`numerical_rank`. For COPA's ``x = x_LS + N c``.
    """
    a = matrix.to(DENSE_DTYPE)
    m, n = a.shape
    if m >= n:
        _, sv, vh = torch.linalg.svd(a, full_matrices=False)
        rank = int((sv > rank_tolerance(sv, a.shape, rtol)).sum())
        return vh[rank:].T.contiguous()
    _, sv, vh = torch.linalg.svd(a, full_matrices=False)
    rank = int((sv > rank_tolerance(sv, a.shape, rtol)).sum())
    # complete the row space basis vh[:rank] to an orthonormal basis of R^n
    q, _ = torch.linalg.qr(vh[:rank].T, mode="complete")
    return q[:, rank:].contiguous()


@dataclass
class LayerRank:
    """``rank(U)`` of one layer by exact block elimination (see :func:`layer_rank`).

    ``rank = padding_rank + gradient_rank + forward_rank``. Singular values are those of ``K₁``
    and of the projected forward block (``None`` where its rank came from a pivoted Cholesky);
    tolerances are absolute thresholds on singular values of each block. ``rank_gap`` is the
    smallest ratio, over the blocks, of the last kept to the first dropped singular value (or its
    pivoted-Cholesky estimate): ≫ 1e3 means the rank does not depend on the tolerance; ``inf`` when
    nothing was dropped numerically (every missing rank is a dimension count). ``seconds``: wall
    time (from :func:`layer_ranks`, the batch's divided by its size).
    """

    rank: int
    unknowns: int
    padding_rank: int
    gradient_rank: int
    forward_rank: int
    gradient_singular_values: Tensor
    forward_singular_values: Tensor | None
    gradient_tolerance: float
    forward_tolerance: float
    forward_method: str
    rank_gap: float
    seconds: float = 0.0

    @property
    def deficiency(self) -> int:
        return self.rank - self.unknowns


GRAM_THRESHOLD = 1500
"""Blocks whose smaller side exceeds this get their rank from the Gram matrix, not an SVD."""


def _sv_gap(sv: Tensor, rank: int) -> float:
    if 0 < rank < sv.numel():
        dropped = float(sv[rank])
        return float(sv[rank - 1]) / dropped if dropped > 0 else math.inf
    return math.inf


def svdvals(matrix: Tensor) -> Tensor:
    """Singular values (descending) in float64; a very tall or wide matrix is first reduced to the
    triangular factor of its QR decomposition (same singular values, backward stable, several times
    faster than LAPACK's SVD of the full rectangle)."""
    a = matrix.to(DENSE_DTYPE)
    m, n = a.shape
    if m > 1.5 * n:
        a = torch.linalg.qr(a, mode="r").R
    elif n > 1.5 * m:
        a = torch.linalg.qr(a.T, mode="r").R
    return torch.linalg.svdvals(a)


def _svd_rank(matrix: Tensor, rtol: float | None) -> tuple[int, Tensor, float, float]:
    sv = svdvals(matrix)
    tol = rank_tolerance(sv, matrix.shape, rtol)
    rank = int((sv > tol).sum())
    return rank, sv, tol, _sv_gap(sv, rank)


def _psd_rank(gram: Tensor, rtol: float | None) -> tuple[int, Tensor | None, float, float, str]:
    """Rank of ``B`` from its Gram matrix ``G = BᵀB`` (or ``BBᵀ``): (rank, σ or None, σ-tolerance, gap, method).

    CPU: LAPACK's pivoted Cholesky ``dpstrf`` with its default stop ``pivot ≤ N·ε·max G_kk``; the
    pivots ``√G_kk`` estimate singular values (rank-revealing), and the gap is
    ``√(last kept pivot / largest remaining pivot)``. CUDA: ``eigvalsh``. Either way singular values
    are resolved down to about ``√(N·ε₆₄)·σ_max``, so the threshold on ``σ`` is
    ``σ_max · max(√(N·ε₆₄), rtol)``.
    """
    n = gram.shape[0]
    floor = math.sqrt(n * EPS64)
    rel = floor if rtol is None else max(floor, rtol)
    if gram.device.type == "cpu":
        from scipy.linalg import lapack

        g = gram.numpy()
        diag = g.diagonal().copy()
        dmax = float(diag.max()) if n else 0.0
        factor, piv, rank, _ = lapack.dpstrf(g, lower=1, tol=(rel ** 2) * dmax)
        piv = piv - 1
        kept = factor.diagonal()[:rank] ** 2
        gap = math.inf
        if 0 < rank < n:
            rest = diag[piv[rank:]] - (factor[rank:, :rank] ** 2).sum(1)
            worst = float(rest.max())
            gap = math.sqrt(float(kept.min()) / worst) if worst > 0 else math.inf
        return int(rank), None, rel * math.sqrt(dmax), gap, "pivoted Cholesky of the Gram matrix (LAPACK dpstrf)"
    sv = torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()
    tol = float(sv[0]) * rel if sv.numel() else 0.0
    rank = int((sv > tol).sum())
    return rank, sv, tol, _sv_gap(sv, rank), "eigenvalues of the Gram matrix (eigvalsh)"


def _interior_forward_gram(weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """``A_intᵀ A_int`` (interior columns only), dense ``(C·H·W)²``, from a sparse product on CPU."""
    import scipy.sparse

    g = geometry
    rows, cols, values = _forward_entries(weight, g)
    position = torch.full((g.unknowns,), -1, dtype=torch.long)
    position[g.interior_mask().reshape(-1)] = torch.arange(g.interior_unknowns)
    cols = position[cols]
    keep = cols >= 0
    a = scipy.sparse.csr_matrix((values[keep].numpy(), (rows[keep].numpy(), cols[keep].numpy())),
                                shape=(g.forward_rows, g.interior_unknowns))
    return torch.from_numpy((a.T @ a).toarray())


def layer_rank(weight: Tensor, delta: Tensor, geometry: ConvGeometry, *, rtol: float | None = None) -> LayerRank:
    """``rank([A; K(δ); P])`` by exact block elimination, far cheaper than an SVD of ``U``.

    Three exact identities (``⊗`` is the Kronecker product, ``N`` an orthonormal null-space basis):

    1. the padding rows are identity rows on the padded columns, so
       ``rank U = #padded + rank [A_int; K_int]`` with ``A_int``, ``K_int`` the interior columns;
    2. ``K_int = Π (I_C ⊗ K₁)`` up to a row permutation ``Π``: every input channel sees the same
       ``(F·kh·kw) × (H·W)`` matrix ``K₁`` of shifted copies of ``δ``; so
       ``rank K_int = C · rank K₁``;
    3. ``rank [A; B] = rank B + rank (A N_B)``: project the forward rows onto the null space of the
       gradient rows, ``N_B = I_C ⊗ N₁`` with ``N₁`` the null space of ``K₁``.

    ``rank K₁`` comes from its SVD (at most ``F·kh·kw × H·W``). The projected forward block
    ``B = A_int (I_C ⊗ N₁)`` (``F·H'·W' × C·dim N₁``) is formed with one grouped convolution of the
    null-space images; its rank comes from ``svdvals`` when its smaller side is at most
    :data:`GRAM_THRESHOLD`, else from its smaller Gram matrix (:func:`_psd_rank`). For tall large
    ``B`` on CPU, ``B`` is never formed: ``rank [A_int; K_int] = rank(A_intᵀA_int + s·I_C⊗K₁ᵀK₁)``
    for any ``s > 0`` (null spaces of PSD summands intersect), with ``A_intᵀA_int`` from a sparse
    product and ``s`` equalising the largest diagonal entries of the two terms.
    Each block's threshold is relative to that block, so the result does not depend on the scale
    of ``δ`` relative to ``W``. SVD thresholds: ``σ > σ_max · max(m, n) · ε₆₄`` (``rtol`` overrides
    ``max(m, n)·ε₆₄``); Gram thresholds: see :func:`_psd_rank`.

    The batch of one of :func:`layer_ranks`: ``layer_ranks(weight, [delta], geometry, rtol=rtol)[0]``.
    """
    return layer_ranks(weight, [delta], geometry, rtol=rtol)[0]


def _delta_batch(deltas: Sequence[Tensor] | Tensor, geometry: ConvGeometry, device: torch.device) -> Tensor:
    """``B×F×H'×W'`` float64 on ``device`` from a list of δ's (each as :func:`layer_rank` takes one) or
    a ``B×F×H'×W'`` (or ``B×(F·H'·W')``) tensor."""
    shape = (geometry.out_channels, *geometry.output)
    if isinstance(deltas, Tensor):
        if deltas.dim() < 2 or math.prod(deltas.shape[1:]) != math.prod(shape):
            raise InvalidSpecError(f"deltas of shape {tuple(deltas.shape)} do not fit the layer (expected "
                                   f"B×{'×'.join(map(str, shape))})")
        return deltas.detach().reshape(deltas.shape[0], *shape).to(dtype=DENSE_DTYPE, device=device)
    items = list(deltas)
    if not all(isinstance(d, Tensor) for d in items):
        raise InvalidSpecError(f"deltas must be tensors (a list of F×H'×W' maps or one B×F×H'×W' tensor); got "
                               f"{sorted({type(d).__name__ for d in items if not isinstance(d, Tensor)})}")
    if not items:
        return torch.zeros((0, *shape), dtype=DENSE_DTYPE, device=device)
    return torch.stack([_as_map(d.detach(), shape, "delta").to(dtype=DENSE_DTYPE, device=device) for d in items])


def layer_ranks(weight: Tensor, deltas: Sequence[Tensor] | Tensor, geometry: ConvGeometry, *,
                rtol: float | None = None) -> list[LayerRank]:
    """:func:`layer_rank` for ``B`` δ's of the same layer (same weight), e.g. one per image.

    ``deltas``: a list of ``F×H'×W'`` maps (or ``1×F×H'×W'``, or flat) or one ``B×F×H'×W'`` tensor;
    returns one :class:`LayerRank` per δ, in order (``[]`` for none). What depends on the weight
    alone is done once: the interior forward Gram ``A_intᵀA_int`` (built on first use, only if an
    instance takes that path) and the per-channel convolution weights that form ``B``. The ``B``
    matrices ``K₁(δ)`` share one shape: they are built with one scatter and decomposed in one
    batched ``torch.linalg.svd``; the rest (``N₁``, the projected forward block and its rank) is per
    instance. Same ranks as per-δ :func:`layer_rank` calls (the same operations per instance);
    each result's ``seconds`` is the batch's wall time divided by ``B``.
    """
    start = time.perf_counter()
    g = geometry
    dev = weight.device
    w = _check_weight(weight, g).detach().to(DENSE_DTYPE)
    d = _delta_batch(deltas, g, dev)
    batch = d.shape[0]
    if batch == 0:
        return []
    (ph, pw), (h, wd) = g.padding, g.input
    c_in, hw, m = g.in_channels, h * wd, g.forward_rows
    # K₁: the gradient rows of one channel, restricted to interior columns. Its entries are entries of δ at
    # fixed positions: find which (from δ = 0, 1, 2, ...) once and scatter every instance's δ at once.
    one = ConvGeometry(1, g.out_channels, g.kernel, g.stride, g.padding, g.input)
    rows, cols, slot = _gradient_entries(torch.arange(d[0].numel(), dtype=DENSE_DTYPE, device=dev), one)
    k1 = torch.zeros(batch, one.gradient_rows, one.unknowns, dtype=DENSE_DTYPE, device=dev)
    k1[:, rows, cols] = d.reshape(batch, -1)[:, slot.long()]
    k1 = k1.reshape(batch, -1, *g.padded)[..., ph:ph + h, pw:pw + wd].reshape(batch, -1, hw)
    _, s1, v1h = torch.linalg.svd(k1, full_matrices=True)
    # weight-only work, shared by the instances
    conv_weight = w.transpose(0, 1).reshape(c_in * g.out_channels, 1, *g.kernel)  # per input channel
    forward_gram, forward_gram_max = None, 0.0  # A_intᵀA_int, on first use
    results = []
    for i in range(batch):
        tol1 = rank_tolerance(s1[i], k1.shape[-2:], rtol)
        r1 = int((s1[i] > tol1).sum())
        gaps = [_sv_gap(s1[i], r1)]
        null1 = v1h[i, r1:]  # (k, H·W): orthonormal basis of null(K₁), as rows
        k = null1.shape[0]
        s2, tol2, r2, method = None, 0.0, 0, "none (the gradient rows determine the interior)"
        if k > 0:
            n_b, n_int = c_in * k, g.interior_unknowns
            if (min(m, n_b) > GRAM_THRESHOLD and m >= n_b and dev.type == "cpu"
                    and n_int ** 3 / 3 < m * n_b ** 2 + n_b ** 3 / 3):  # cheaper than forming BᵀB
                # tall and large: rank [A_int; K_int] = rank(A_intᵀA_int + s·I_C⊗K₁ᵀK₁) for any s > 0 (a sum
                # of PSD Gram matrices), with s equalising the two blocks' scales; avoids forming B at all
                if forward_gram is None:
                    forward_gram = _interior_forward_gram(w, g)
                    forward_gram_max = float(forward_gram.diagonal().max())
                kk = k1[i].T @ k1[i]
                scale = forward_gram_max / max(float(kk.diagonal().max()), 1e-300)
                gram = forward_gram if i == batch - 1 else forward_gram.clone()  # the last one may consume it
                gram.view(c_in, hw, c_in, hw).diagonal(dim1=0, dim2=2).add_(scale * kk[..., None])
                r_all, s2, tol2, gap2, method = _psd_rank(gram, rtol)
                r2 = r_all - c_in * r1
                method += ", of A_intᵀA_int + s·I⊗K₁ᵀK₁"
            else:
                # columns (c, j) of B: the convolution of image N₁[j] placed in input channel c
                images = g.pad(null1.reshape(k, 1, h, wd))
                per_channel = F.conv2d(images, conv_weight, stride=g.stride)  # (k, C·F, H', W')
                b = per_channel.reshape(k, c_in, -1).permute(2, 1, 0).reshape(m, c_in * k)
                if min(b.shape) <= GRAM_THRESHOLD:
                    r2, s2, tol2, gap2 = _svd_rank(b, rtol)
                    method = "svdvals"
                else:
                    r2, s2, tol2, gap2, method = _psd_rank(b.T @ b if m >= c_in * k else b @ b.T, rtol)
            gaps.append(gap2)
        rank = g.padding_rows + c_in * r1 + r2
        results.append(LayerRank(rank, g.unknowns, g.padding_rows, c_in * r1, r2, s1[i], s2, tol1, tol2, method,
                                 min(gaps)))
    seconds = (time.perf_counter() - start) / batch
    for result in results:
        result.seconds = seconds
    return results


# --------------------------------------------------------------------------------------------------
# Last layer, δ propagation, chain analysis
# --------------------------------------------------------------------------------------------------


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


def _check_chain(model: nn.Module) -> None:
    from .models import ChainNet

    if not isinstance(model, ChainNet):
        raise NotApplicableError(f"{type(model).__name__} is not a chain network (COPA/R-GAP need a ChainNet: "
                                 "bias-free convolutions with invertible activations and a final Linear with bias)")
    if not model.is_chain:
        raise NotApplicableError(f"model {model.spec!r} is not a COPA/R-GAP chain: {model.not_chain_reason}")


def analyse_chain(model: nn.Module, inputs: Tensor, labels: Tensor, *,
                  dtype: torch.dtype = DENSE_DTYPE) -> ChainAnalysis:
    """Forward and backward pass of a chain on one example, keeping what the layer systems need.

    ``inputs`` ``1×C×H×W`` in model space (already preprocessed), ``labels`` ``(1,)``. The loss is the
    client's cross-entropy (mean reduction); ``δ_i = ∂ℓ/∂z_i`` comes from autograd (the same as
    :func:`propagate_delta` applied from the last layer down). Runs on a float64 copy of the model
    by default, on ``inputs``' device; the model itself is not modified.
    """
    import copy

    _check_chain(model)
    if inputs.dim() != 4 or inputs.shape[0] != 1:
        raise InvalidSpecError(f"analyse_chain needs one example (1×C×H×W); got shape {tuple(inputs.shape)}")
    net = copy.deepcopy(model).to(device=inputs.device, dtype=dtype)
    x = inputs.detach().to(dtype)
    traces = net.trace(x)
    zs = [t.pre_activation for t in traces]
    logits = traces[-1].output
    loss = F.cross_entropy(logits, labels.to(inputs.device))
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
