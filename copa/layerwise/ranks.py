"""Numerical ranks and null spaces of the layer systems, exact by block elimination (what makes the COPA
security metric cheap); the rank conventions are in :mod:`copa.layerwise`."""

from __future__ import annotations
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple
import torch
import torch.nn.functional as F
from torch import Tensor
from ..errors import InvalidSpecError
from .geometry import ConvGeometry, DENSE_DTYPE, EPS64, as_map, check_weight
from .operators import forward_entries, gradient_entries
from .solves import rank_tolerance
from scipy.linalg import lapack
import scipy.sparse


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


def _svd_rank(matrix: Tensor, rtol: float | None, scale: float = 0.0) -> tuple[int, Tensor, float, float]:
    """Rank from the singular values; ``scale``: a reference σ below which the threshold may not fall
    (the block's own σ_max is no reference when the block is zero up to rounding)."""
    sv = svdvals(matrix)
    tol = max(rank_tolerance(sv, matrix.shape, rtol), rank_tolerance(torch.tensor([scale]), matrix.shape, rtol))
    rank = int((sv > tol).sum())
    return rank, sv, tol, _sv_gap(sv, rank)


def _psd_rank(gram: Tensor, rtol: float | None, scale: float = 0.0) -> tuple[int, Tensor | None, float, float, str]:
    """Rank of ``B`` from its Gram matrix ``G = BᵀB`` (or ``BBᵀ``): (rank, σ or None, σ-tolerance, gap, method).

    CPU: LAPACK's pivoted Cholesky ``dpstrf`` with its default stop ``pivot ≤ N·ε·max G_kk``; the
    pivots ``√G_kk`` estimate singular values (rank-revealing), and the gap is
    ``√(last kept pivot / largest remaining pivot)``. CUDA: ``eigvalsh``. Either way singular values
    are resolved down to about ``√(N·ε₆₄)·σ_max``, so the threshold on ``σ`` is
    ``max(σ_max, scale) · max(√(N·ε₆₄), rtol)`` (``scale``: as in :func:`_svd_rank`).
    """
    n = gram.shape[0]
    floor = math.sqrt(n * EPS64)
    rel = floor if rtol is None else max(floor, rtol)
    if gram.device.type == "cpu":

        g = gram.numpy()
        diag = g.diagonal().copy()
        dmax = max(float(diag.max()) if n else 0.0, scale ** 2)
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
    tol = max(float(sv[0]) if sv.numel() else 0.0, scale) * rel
    rank = int((sv > tol).sum())
    return rank, sv, tol, _sv_gap(sv, rank), "eigenvalues of the Gram matrix (eigvalsh)"


def _largest_row_norm(weight: Tensor, geometry: ConvGeometry) -> float:
    """The largest row norm of ``A_int`` (the forward rows on interior columns), a lower bound of its σ_max."""
    g = geometry
    rows, cols, values = forward_entries(weight, g)
    interior = g.interior_mask().reshape(-1).to(cols.device)[cols]
    squares = torch.zeros(g.forward_rows, dtype=DENSE_DTYPE, device=values.device)
    squares.index_add_(0, rows[interior], values[interior].to(DENSE_DTYPE) ** 2)
    return float(squares.max().sqrt()) if squares.numel() else 0.0


def _interior_forward_gram(weight: Tensor, geometry: ConvGeometry) -> Tensor:
    """``A_intᵀ A_int`` (interior columns only), dense ``(C·H·W)²``, from a sparse product on CPU."""

    g = geometry
    rows, cols, values = forward_entries(weight, g)
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
    of ``δ`` relative to ``W``; the projected forward block's is at least relative to the largest row
    norm of ``A_int`` (a lower bound of its σ_max): a block that is zero up to rounding (when ``null K₁``
    meets only columns the forward rows barely see) has rank 0, not the rank of its rounding noise. SVD thresholds: ``σ > σ_max · max(m, n) · ε₆₄`` (``rtol`` overrides
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
    return torch.stack([as_map(d.detach(), shape, "delta").to(dtype=DENSE_DTYPE, device=device) for d in items])


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
    w = check_weight(weight, g).detach().to(DENSE_DTYPE)
    d = _delta_batch(deltas, g, dev)
    batch = d.shape[0]
    if batch == 0:
        return []
    (ph, pw), (h, wd) = g.padding, g.input
    c_in, hw, m = g.in_channels, h * wd, g.forward_rows
    # K₁: the gradient rows of one channel, restricted to interior columns. Its entries are entries of δ at
    # fixed positions: find which (from δ = 0, 1, 2, ...) once and scatter every instance's δ at once.
    one = ConvGeometry(1, g.out_channels, g.kernel, g.stride, g.padding, g.input)
    rows, cols, slot = gradient_entries(torch.arange(d[0].numel(), dtype=DENSE_DTYPE, device=dev), one)
    k1 = torch.zeros(batch, one.gradient_rows, one.unknowns, dtype=DENSE_DTYPE, device=dev)
    k1[:, rows, cols] = d.reshape(batch, -1)[:, slot.long()]
    k1 = k1.reshape(batch, -1, *g.padded)[..., ph:ph + h, pw:pw + wd].reshape(batch, -1, hw)
    _, s1, v1h = torch.linalg.svd(k1, full_matrices=True)
    # weight-only work, shared by the instances
    conv_weight = w.transpose(0, 1).reshape(c_in * g.out_channels, 1, *g.kernel)  # per input channel
    forward_gram, forward_gram_max = None, 0.0  # A_intᵀA_int, on first use
    forward_scale = _largest_row_norm(w, g)  # ≤ σ_max(A_int): the reference scale of the projected block
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
                r_all, s2, tol2, gap2, method = _psd_rank(gram, rtol)  # A_intᵀA_int sets its own scale
                r2 = r_all - c_in * r1
                method += ", of A_intᵀA_int + s·I⊗K₁ᵀK₁"
            else:
                # columns (c, j) of B: the convolution of image N₁[j] placed in input channel c
                images = g.pad(null1.reshape(k, 1, h, wd))
                per_channel = F.conv2d(images, conv_weight, stride=g.stride)  # (k, C·F, H', W')
                b = per_channel.reshape(k, c_in, -1).permute(2, 1, 0).reshape(m, c_in * k)
                if min(b.shape) <= GRAM_THRESHOLD:
                    r2, s2, tol2, gap2 = _svd_rank(b, rtol, forward_scale)
                    method = "svdvals"
                else:
                    r2, s2, tol2, gap2, method = _psd_rank(b.T @ b if m >= c_in * k else b @ b.T, rtol, forward_scale)
            gaps.append(gap2)
        rank = g.padding_rows + c_in * r1 + r2
        results.append(LayerRank(rank, g.unknowns, g.padding_rows, c_in * r1, r2, s1[i], s2, tol1, tol2, method,
                                 min(gaps)))
    seconds = (time.perf_counter() - start) / batch
    for result in results:
        result.seconds = seconds
    return results
