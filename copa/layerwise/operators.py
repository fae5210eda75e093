"""The layer system ``U = [A; K(δ); P]`` as dense float64 matrices (index arithmetic, one ``index_put_`` per
block) and as matrix-free operators (``conv2d``/``unfold`` and their adjoints), one set of index conventions."""

from __future__ import annotations
from typing import NamedTuple
import torch
import torch.nn.functional as F
from torch import Tensor
from ..errors import InvalidSpecError
from .geometry import ConvGeometry, DENSE_DTYPE, as_map, check_weight


def _grid(*sizes: int, device) -> list[Tensor]:
    """``arange`` per axis, each shaped to broadcast over ``len(sizes)`` axes."""
    out = []
    for axis, size in enumerate(sizes):
        shape = [1] * len(sizes)
        shape[axis] = size
        out.append(torch.arange(size, device=device).view(shape))
    return out


def forward_entries(weight: Tensor, geometry: ConvGeometry) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of ``A``: ``A[(f,p,q), (c, s·p+u, s·q+v)] = W[f,c,u,v]``, by broadcasting."""
    check_weight(weight, geometry)
    g = geometry
    (kh, kw), (sh, sw), (hp, wp), (ho, wo) = g.kernel, g.stride, g.padded, g.output
    f, p, q, c, u, v = _grid(g.out_channels, ho, wo, g.in_channels, kh, kw, device=weight.device)
    rows = (f * ho + p) * wo + q
    cols = (c * hp + sh * p + u) * wp + sw * q + v
    rows, cols = torch.broadcast_tensors(rows, cols)
    values = weight.detach().to(DENSE_DTYPE)[:, None, None].expand(rows.shape)
    return rows.reshape(-1), cols.reshape(-1), values.reshape(-1)


def gradient_entries(delta: Tensor, geometry: ConvGeometry) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of ``K(δ)``: ``K[(f,c,u,v), (c, s·p+u, s·q+v)] = δ[f,p,q]``."""
    g = geometry
    (kh, kw), (sh, sw), (hp, wp), (ho, wo) = g.kernel, g.stride, g.padded, g.output
    delta = as_map(delta, (g.out_channels, ho, wo), "delta")
    f, c, u, v, p, q = _grid(g.out_channels, g.in_channels, kh, kw, ho, wo, device=delta.device)
    rows = ((f * g.in_channels + c) * kh + u) * kw + v
    cols = (c * hp + sh * p + u) * wp + sw * q + v
    rows, cols = torch.broadcast_tensors(rows, cols)
    values = delta.detach().to(DENSE_DTYPE)[:, None, None, None].expand(rows.shape)
    return rows.reshape(-1), cols.reshape(-1), values.reshape(-1)


def padding_entries(geometry: ConvGeometry, device) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, values) of ``P``: row ``k`` is 1 at the ``k``-th padded column."""
    cols = (~geometry.interior_mask(device)).reshape(-1).nonzero().squeeze(1)
    rows = torch.arange(cols.numel(), device=device)
    return rows, cols, torch.ones(cols.numel(), dtype=DENSE_DTYPE, device=device)


def assemble(entries: tuple[Tensor, Tensor, Tensor], shape: tuple[int, int], layout: str) -> Tensor:
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
    return assemble(forward_entries(weight, g), (g.forward_rows, g.unknowns), _check_layout(layout))


def gradient_matrix(delta: Tensor, geometry: ConvGeometry, *, layout: str = "dense") -> Tensor:
    """``K(δ)``: the weight gradient as a float64 linear map of the padded input.

    ``K[(f,c,u,v), (c, s·p+u, s·q+v)] = δ[f,p,q]``; shape ``(F·C·kh·kw, C·(H+2p)·(W+2p))``, so that
    ``K @ vec(pad(x)) == vec(∂ℓ/∂W)`` when ``δ = ∂ℓ/∂z`` for one example. ``delta``: ``F×H'×W'``.
    """
    g = geometry
    return assemble(gradient_entries(delta, g), (g.gradient_rows, g.unknowns), _check_layout(layout))


def padding_matrix(geometry: ConvGeometry, device: torch.device | str | None = None, *,
                   layout: str = "dense") -> Tensor:
    """``P``: one identity row per padded entry of ``x̃`` (in column order); ``0×n`` without padding."""
    g = geometry
    return assemble(padding_entries(g, device), (g.padding_rows, g.unknowns), _check_layout(layout))


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
    parts = [forward_entries(weight, g), gradient_entries(delta.to(dev), g)]
    rhs = [as_map(z, (g.out_channels, *g.output), "z").reshape(-1), as_map(
        grad, (g.out_channels, g.in_channels, *g.kernel), "grad").reshape(-1)]
    counts = {"forward": g.forward_rows, "gradient": g.gradient_rows, "padding": 0}
    if include_padding and g.padding_rows:
        parts.append(padding_entries(g, dev))
        rhs.append(torch.zeros(g.padding_rows))
        counts["padding"] = g.padding_rows
    offsets = [0, g.forward_rows, g.forward_rows + g.gradient_rows]
    entries = tuple(torch.cat(t) for t in zip(*[(r + o, c, v) for (r, c, v), o in zip(parts, offsets)]))
    matrix = assemble(entries, (sum(counts.values()), g.unknowns), _check_layout(layout))
    rhs = torch.cat([r.detach().to(dtype=DENSE_DTYPE, device=dev) for r in rhs])
    return LayerSystem(matrix, rhs, counts)






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


def grad_apply(x_padded: Tensor, delta: Tensor, geometry: ConvGeometry) -> Tensor:
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
        self.weight = check_weight(weight, g).detach().to(dtype)
        per_instance = delta.dim() == 4 and delta.shape[0] > 1
        shape = (delta.shape[0], g.out_channels, *g.output) if per_instance else (g.out_channels, *g.output)
        self.delta = as_map(delta.detach(), shape, "delta").to(dtype=dtype, device=weight.device)
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
        parts = [_conv_apply(xp, self.weight, g).flatten(1), grad_apply(xp, self.delta, g).flatten(1)]
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
        parts = [as_map(z, (g.out_channels, *g.output), "z").reshape(-1),
                 as_map(grad, (g.out_channels, g.in_channels, *g.kernel), "grad").reshape(-1)]
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
