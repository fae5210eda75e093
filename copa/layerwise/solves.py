"""Least-squares solves of the layer systems: dense minimum-norm, Gram Cholesky (pivoted, LAPACK ``dpstrf``),
batched ``eigh`` on GPU, the shared per-layer blocks of a batch (:class:`LayerSystems`) and a PyTorch LSQR."""

from __future__ import annotations
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
import torch
from torch import Tensor
from ..errors import InvalidSpecError
from .geometry import ConvGeometry, DENSE_DTYPE, EPS64, as_map
from .operators import LayerOperator, LayerSystem, assemble, forward_entries, gradient_entries, padding_entries
import scipy.sparse
import numpy as np
from scipy.linalg import lapack, solve_triangular


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
        self.deltas = [as_map(d.detach(), (g.out_channels, *g.output), "delta").to(DENSE_DTYPE) for d in deltas]
        zero = torch.zeros(self.row_counts["padding"], dtype=DENSE_DTYPE, device=self.device)
        self.rhs = [torch.cat([as_map(z, (g.out_channels, *g.output), "z").reshape(-1).to(DENSE_DTYPE),
                               as_map(gr, (g.out_channels, g.in_channels, *g.kernel), "grad").reshape(-1)
                               .to(DENSE_DTYPE), zero]).to(self.device) for z, gr in zip(zs, grads)]
        self._shared_gram: dict[str, Tensor] | None = None
        self._gradient_blocks: dict[int, object] = {}  # K(δ_b), built on first use (solve, residual, projector)
        backend = backend or ("sparse" if self.device.type == "cpu" else "dense")
        if backend not in ("sparse", "dense") or (backend == "sparse" and self.device.type != "cpu"):
            raise InvalidSpecError(f"backend {backend!r} is invalid on {self.device.type}: accepted are 'dense' and, "
                                   "on CPU, 'sparse'")
        self._sparse = backend == "sparse"
        self.batched_factorisations = not self._sparse  # one batched eigh for all instances (dense backend)
        forward = assemble(forward_entries(weight, g), (g.forward_rows, g.unknowns), "sparse")
        padding = assemble(padding_entries(g, self.device), (self.row_counts["padding"], g.unknowns), "sparse")
        if self._sparse:
            self._a, self._p = _to_scipy_csr(forward), _to_scipy_csr(padding)
        else:
            self._a, self._p = forward.to_dense(), padding.to_dense()

    # -- per-instance blocks ---------------------------------------------------------------------
    def _k(self, b: int):
        if b not in self._gradient_blocks:
            k = assemble(gradient_entries(self.deltas[b], self.geometry), (self.geometry.gradient_rows,
                                                                              self.geometry.unknowns), "sparse")
            self._gradient_blocks[b] = _to_scipy_csr(k) if self._sparse else k.to_dense()
        return self._gradient_blocks[b]

    def _blocks(self, b: int):
        return [self._a, self._k(b), self._p]

    def matrix(self, b: int) -> Tensor:
        """``U_b`` as a coalesced sparse COO tensor (same rows as :func:`layer_system`)."""
        g, offset, parts = self.geometry, 0, []
        for entries, rows in ((forward_entries(self._weight, g), g.forward_rows),
                              (gradient_entries(self.deltas[b], g), g.gradient_rows),
                              (padding_entries(g, self.device), self.row_counts["padding"])):
            if rows:
                parts.append((entries[0] + offset, entries[1], entries[2]))
            offset += rows
        return assemble(tuple(torch.cat(t) for t in zip(*parts)), self.shape, "sparse")

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
