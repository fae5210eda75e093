"""The layer-wise wing: the linear algebra that R-GAP, COPA and the COPA security metric share.

Modules: :mod:`.geometry` (convolution geometry), :mod:`.operators` (the layer system, dense and
matrix-free), :mod:`.solves` (least squares, LSQR, the shared blocks of a batch), :mod:`.ranks` (ranks
and null spaces), :mod:`.chain` (the chain check, the last layer's closed form, chain analysis),
:mod:`.recursion` (the backwards recursion) and :mod:`.security` (the security metric).

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
security metric (:mod:`copa.layerwise.security`) cheap; :func:`analyse_chain` gives, for a chain model and an
input, every layer's ``x``, ``z``, ``δ``, ``W`` and ``∂ℓ/∂W``; :func:`fc_input_from_gradients` is the
closed form for the last Linear layer's input and :func:`propagate_delta` passes ``δ`` one layer down.

Numerical rank convention (for every SVD here): singular values ``σ > σ_max · max(m, n) · ε``
with ``ε`` the machine epsilon of float64 (2.2e-16) count — NumPy's ``matrix_rank`` default and
LAPACK ``gelsd``'s ``rcond`` default in ``torch.linalg.lstsq``. Ranks taken from a Gram matrix
(``solve_dense(method="normal")``, large blocks in :func:`layer_rank`) can only resolve
``σ > √(N·ε)·σ_max`` and use that threshold. COPA's released code uses an
absolute tolerance ``1e-10`` instead (``np.linalg.matrix_rank(U, tol=1e-10)`` in ``hybrid.py``);
both give the same ranks on the paper's models because the rank drops are exact identities (see
:mod:`copa.layerwise.security`).
"""


from __future__ import annotations

from .geometry import (  # noqa: F401
    ConvGeometry,
    DENSE_DTYPE,
    EPS64,
)
from .operators import (  # noqa: F401
    LayerOperator,
    LayerSystem,
    forward_matrix,
    grad_apply,
    gradient_matrix,
    input_gradient,
    layer_system,
    padding_matrix,
)
from .solves import (  # noqa: F401
    LayerSystems,
    SolveInfo,
    gram_matrix,
    gram_singular_values,
    lsqr,
    rank_tolerance,
    solve_dense,
    solve_matrix_free,
)
from .ranks import (  # noqa: F401
    GRAM_THRESHOLD,
    LayerRank,
    RankInfo,
    layer_rank,
    layer_ranks,
    null_space,
    numerical_rank,
    svdvals,
)
from .chain import (  # noqa: F401
    CHAIN_DEFINITION,
    ChainAnalysis,
    LayerAnalysis,
    analyse_chain,
    chain_reason,
    check_chain,
    fc_input_from_gradients,
    propagate_delta,
)
from .recursion import (  # noqa: F401
    BatchRefine,
    ChainContext,
    LayerProblem,
    NullProjector,
    Refine,
    SOLVERS,
    chain_context,
    chain_problem,
    check_solver,
    solve_backwards,
    solve_backwards_batch,
)
from .security import (  # noqa: F401
    DELTA_SOURCES,
    LayerSecurity,
    SecurityReport,
    copa_index,
    security_report,
    security_reports,
)

__all__ = [
    "ConvGeometry",
    "DENSE_DTYPE",
    "EPS64",
    "LayerOperator",
    "LayerSystem",
    "forward_matrix",
    "grad_apply",
    "gradient_matrix",
    "input_gradient",
    "layer_system",
    "padding_matrix",
    "LayerSystems",
    "SolveInfo",
    "gram_matrix",
    "gram_singular_values",
    "lsqr",
    "rank_tolerance",
    "solve_dense",
    "solve_matrix_free",
    "GRAM_THRESHOLD",
    "LayerRank",
    "RankInfo",
    "layer_rank",
    "layer_ranks",
    "null_space",
    "numerical_rank",
    "svdvals",
    "CHAIN_DEFINITION",
    "ChainAnalysis",
    "LayerAnalysis",
    "analyse_chain",
    "chain_reason",
    "check_chain",
    "fc_input_from_gradients",
    "propagate_delta",
    "BatchRefine",
    "ChainContext",
    "LayerProblem",
    "NullProjector",
    "Refine",
    "SOLVERS",
    "chain_context",
    "chain_problem",
    "check_solver",
    "solve_backwards",
    "solve_backwards_batch",
    "DELTA_SOURCES",
    "LayerSecurity",
    "SecurityReport",
    "copa_index",
    "security_report",
    "security_reports",
]
