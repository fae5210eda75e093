"""Seeded random chains ``random-chain:SEED``: the population of the security-metric study (depth 1–4; even
seeds rank-deficient, odd full-rank where the draw allows)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..errors import InvalidSpecError
from .chains import DEFAULT_IN_SHAPE, LayerSpec, _as_layers, _check_shape, chain_layer_shapes, format_chain_spec


# --------------------------------------------------------------------------------------------------
# Seeded random chains (the population study of the security metric)
# --------------------------------------------------------------------------------------------------

RANDOM_CHAIN_PREFIX = "random-chain:"
RANDOM_CHAIN_DEPTHS: tuple[int, ...] = (1, 2, 3, 4)
RANDOM_CHAIN_CHANNELS: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16)
RANDOM_CHAIN_KERNELS: tuple[int, ...] = (2, 3, 4, 5)
RANDOM_CHAIN_STRIDES: tuple[int, ...] = (1, 2)
RANDOM_CHAIN_ACTIVATIONS: tuple[str, ...] = ("tanh", "sigmoid", "leakyrelu", "softplus")
RANDOM_CHAIN_MAX_UNKNOWNS = 4096
"""Bound on the unknowns ``C·(H+2p)·(W+2p)`` of every conv layer system of a random chain."""
RANDOM_CHAIN_MAX_ROWS = 12288
"""Bound on the rows (forward + gradient + padding) of every conv layer system of a random chain."""
RANDOM_CHAIN_ATTEMPTS = 20_000
"""Rejection-sampling draws per chain before :func:`random_chain_spec` gives up. At 3×32×32 the rarest
case, a depth-4 full-rank chain, is accepted about once in 900 draws (failure odds ~e⁻²²; 0.4 s)."""


class LayerCount(NamedTuple):
    """Rows and unknowns of one conv layer's system ``U = [A; K; P]``, counted as copa.layerwise counts them.

    ``unknowns`` = ``C·(H+2p)·(W+2p)`` (padded entries included), ``forward_rows`` = ``F·H'·W'``,
    ``gradient_rows`` = ``F·C·k²``, ``padding_rows`` = the padded entries; ``uncovered`` = interior
    entries that no kernel window reaches (zero columns of ``A`` and ``K``: stride > kernel, or
    ``(H + 2p − k) mod s`` trailing rows/columns past the last window, e.g. cnn2_c6).

    ``rank_bound`` bounds ``rank U`` by counting alone, following the block elimination of
    :func:`copa.layerwise.layer_rank` (``rank U = padding + C·rank K₁ + rank(A_int N)``):

    * ``K₁`` (one channel's gradient rows on the interior) splits by stride residue class: kernel
      offsets ``u ≡ a (mod s)`` only reach positions ``≡ a``, so
      ``rank K₁ ≤ Σ_{a,b} min(F·n_a·n_b, m_a·m_b)`` (``n_a`` offsets and ``m_a`` covered interior
      positions per axis in class ``a``);
    * on ``null(K)`` the forward rows satisfy the ``F·min(F, H'W')`` independent identities
      ``Σ_{p,q} δ[f,p,q]·(A x)[f',p,q] = Σ W[f']·(K x)[f] = 0`` (the ``F²`` dependent rows of
      copa.layerwise.security), so ``rank(A_int N) ≤ min(C·dim null K₁, F·H'W' − F·min(F, H'W'))``.

    On the COPA paper's chains the bound equals the measured rank; on random chains it is an upper
    bound (a negative ``predicted_deficiency`` is a sure deficiency), usually attained.
    """

    unknowns: int
    forward_rows: int
    gradient_rows: int
    padding_rows: int
    uncovered: int
    rank_bound: int

    @property
    def rows(self) -> int:
        return self.forward_rows + self.gradient_rows + self.padding_rows

    @property
    def count_deficient(self) -> bool:
        """More unknowns than rows: rank-deficient whatever the weights and ``δ``."""
        return self.unknowns > self.rows

    @property
    def predicted_deficiency(self) -> int:
        """``min(0, rank_bound − unknowns)``: the deficiency the counting predicts (≤ 0, as in the report)."""
        return min(0, self.rank_bound - self.unknowns)


def _axis_classes(size: int, padding: int, kernel: int, stride: int, out: int) -> list[tuple[int, int]]:
    """Per stride residue class ``a`` of one padded axis: (kernel offsets ``≡ a``, covered interior positions ``≡ a``)."""
    reached = {j * stride + t for j in range(out) for t in range(kernel)}
    covered = [i for i in range(padding, padding + size) if i in reached]
    return [(sum(1 for t in range(kernel) if t % stride == a), sum(1 for i in covered if i % stride == a))
            for a in range(stride)]


def chain_layer_counts(spec: str | Sequence[LayerSpec], in_shape: Sequence[int] = DEFAULT_IN_SHAPE) -> list[LayerCount]:
    """The :class:`LayerCount` of every conv layer of a chain (no weights needed; Linear layers are skipped)."""
    layers = _as_layers(spec)
    counts = []
    for layer, shape in zip(layers, chain_layer_shapes(layers, in_shape)):
        if layer.kind != "conv":
            continue
        (c, h, w), (f, ho, wo), p = shape.input, shape.output, layer.padding
        rows_h = _axis_classes(h, p, layer.kernel, layer.stride, ho)
        rows_w = _axis_classes(w, p, layer.kernel, layer.stride, wo)
        covered = sum(m for _, m in rows_h) * sum(m for _, m in rows_w)  # per channel
        k1_rank = sum(min(f * na * nb, ma * mb) for na, ma in rows_h for nb, mb in rows_w)
        unknowns, forward = c * (h + 2 * p) * (w + 2 * p), f * ho * wo
        projected = min(c * (covered - k1_rank), forward - f * min(f, ho * wo))
        counts.append(LayerCount(unknowns, forward, f * c * layer.kernel ** 2, unknowns - c * h * w,
                                 c * (h * w - covered), unknowns - c * h * w + c * k1_rank + projected))
    return counts


def _draw(rng: Any, options: Sequence[Any]) -> Any:
    """One of ``options``, uniformly, from one ``rng.random()`` double (the most stable NumPy stream)."""
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def _random_layers(rng: Any, depth: int) -> list[LayerSpec]:
    layers = []
    for _ in range(depth):
        kernel = _draw(rng, RANDOM_CHAIN_KERNELS)
        layers.append(LayerSpec(
            "conv", out=_draw(rng, RANDOM_CHAIN_CHANNELS), kernel=kernel, stride=_draw(rng, RANDOM_CHAIN_STRIDES),
            padding=_draw(rng, range(kernel // 2 + 1)), activation=_draw(rng, RANDOM_CHAIN_ACTIVATIONS)))
    return [*layers, LayerSpec("fc", out=None, activation="identity", bias=True)]


def _random_chain_counts(layers: list[LayerSpec], in_shape: tuple[int, int, int]) -> list[LayerCount] | None:
    """The layer counts if ``layers`` is a valid, bounded chain for ``in_shape``; else None."""
    try:
        counts = chain_layer_counts(layers, in_shape)
    except InvalidSpecError:  # a kernel larger than its padded input
        return None
    if any(c.unknowns > RANDOM_CHAIN_MAX_UNKNOWNS or c.rows > RANDOM_CHAIN_MAX_ROWS for c in counts):
        return None
    return counts


def random_chain_spec(seed: int, *, in_shape: Sequence[int] = DEFAULT_IN_SHAPE, deficient: bool | None = None) -> str:
    """The spec of the seeded random chain ``random-chain:SEED`` (population study of the security metric).

    Deterministic: a ``numpy.random.Generator`` (PCG64) seeded by ``seed`` alone (never a global RNG),
    drawn from with ``rng.random()`` only; the same ``(seed, in_shape, deficient)`` gives the same spec
    (``create_model`` then seeds the weights with its own ``seed``, as for every model).

    **Distribution.** The depth (number of convolutions) is uniform on 1–4 (one draw). Given the
    depth, every conv layer draws independently and uniformly: out-channels from
    ``RANDOM_CHAIN_CHANNELS`` (1, 2, 3, 4, 6, 8, 12, 16), kernel from 2–5, stride 1 or 2, padding from
    0..kernel//2, activation from tanh, sigmoid, leakyrelu (slope 0.2, R-GAP's CNN6 token), softplus
    (the invertible activations of the grammar but identity); then the final ``fc:identity``. This
    product distribution is conditioned, by rejection (the whole chain redrawn from the same
    generator, at most ``RANDOM_CHAIN_ATTEMPTS`` draws), on:

    * **validity** for ``in_shape``: every kernel fits its padded input, so every spatial size is ≥ 1;
    * **cost**: every conv layer system has ≤ ``RANDOM_CHAIN_MAX_UNKNOWNS`` = 4096 unknowns
      ``C·(H+2p)·(W+2p)`` and ≤ ``RANDOM_CHAIN_MAX_ROWS`` = 12288 rows (forward + gradient +
      padding). The least-squares solve factors the smaller Gram matrix (side ≤ 4096: ≤ 2.3·10¹⁰ flop
      for its Cholesky) after a sparse product over the rows. 4096 admits every first layer at
      3×32×32 (at most 3·36·36 = 3888 unknowns, padding 2). Measured (``copa attack --attack rgap
      --dataset sample --dtype float64``, OMP_NUM_THREADS=1, a second job on the 2-core machine):
      random-chain:7 3.8 s, random-chain:2 0.2 s, and the three costliest of seeds 0–199 by
      ``Σ min(rows, unknowns)³`` (15, 55, 183) 5–7 s for the attack, ~6 s more for the process
      start; the paper's cnn4_c3 (layers of 4704 and 4096 unknowns) takes 12 s, above every random chain;
    * **the stratum**: the chain is *deficient* when some conv layer's :class:`LayerCount` predicts a
      rank deficiency (``rank_bound < unknowns``: more unknowns than rows, interior pixels no window
      reaches, stride classes with fewer gradient rows than pixels, or too few forward rows once the
      ``F²`` dependent ones are taken off), *full-rank* otherwise. ``deficient=None`` (what
      ``random-chain:SEED`` uses) applies the scheme **even seeds → deficient, odd seeds → full-rank**,
      so every run of consecutive seeds is half and half; ``True``/``False`` force a stratum.

    The stratum is a design target from counting, not a measurement. ``rank_bound`` is an upper bound
    on the rank (checked against dense SVDs), so an even seed is always rank-deficient; an odd seed can
    still be deficient through structure the counting misses. Measured with
    :func:`copa.layerwise.security_report` on seeds 0–199: the stratum agrees with the report's
    ``any_deficient`` on 199 of 200 (seed 17, odd, has a layer with deficiency −16), and every layer's
    deficiency equals ``predicted_deficiency`` on 190 of the 200 chains. The study's analysis uses the
    measured ``any_deficient``, not the stratum.

    Raises :class:`InvalidSpecError` for a negative or non-int seed, or when no chain of the drawn
    depth fits ``in_shape`` within the attempts (only for very small inputs).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise InvalidSpecError(f"random chain seed {seed!r} is invalid: use a non-negative int")
    return _random_chain_spec(seed, _check_shape(tuple(in_shape)), seed % 2 == 0 if deficient is None else bool(deficient))


@functools.lru_cache(maxsize=1024)
def _random_chain_spec(seed: int, in_shape: tuple[int, int, int], want_deficient: bool) -> str:
    rng = np.random.Generator(np.random.PCG64(seed))
    depth = _draw(rng, RANDOM_CHAIN_DEPTHS)
    for _ in range(RANDOM_CHAIN_ATTEMPTS):
        layers = _random_layers(rng, depth)
        counts = _random_chain_counts(layers, in_shape)
        if counts is not None and any(c.predicted_deficiency < 0 for c in counts) == want_deficient:
            return format_chain_spec(layers)
    stratum = "deficient" if want_deficient else "full-rank"
    raise InvalidSpecError(
        f"no {stratum} random chain of depth {depth} fits input {in_shape} within {RANDOM_CHAIN_ATTEMPTS} draws "
        f"(seed {seed}; bounds: {RANDOM_CHAIN_MAX_UNKNOWNS} unknowns, {RANDOM_CHAIN_MAX_ROWS} rows per layer)")


def _random_chain_seed(name: str) -> int:
    text = name[len(RANDOM_CHAIN_PREFIX):]
    if not text.isascii() or not text.isdigit():
        raise InvalidSpecError(f"model name {name!r} is invalid: use random-chain:SEED with SEED a non-negative "
                               f"int (e.g. random-chain:7)")
    return int(text)
