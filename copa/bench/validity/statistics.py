"""The study's statistics: Spearman ρ and Kendall τ-b with paired bootstrap intervals, Holm-adjusted p-values and
the Spearman partial correlation given the full-rank split, over architectures (pure functions, no I/O).

Statistics
----------
*Estimates*: Spearman ρ (Pearson correlation of average ranks, = ``scipy.stats.spearmanr``) and Kendall
τ-b (ties corrected, = ``scipy.stats.kendalltau``), computed on the architectures where both columns
are finite or ±inf (NaN rows are dropped pair by pair; a PSNR of +inf, an exact recovery, is the
largest rank). *Confidence intervals*: ``scipy.stats.bootstrap`` with ``paired=True`` — architectures
are resampled with replacement, each keeping its (predictor, outcome) pair — default method **BCa**
(bias-corrected and accelerated), ``n_resamples`` 9999, 95 %, seeded by ``random_state`` (every pair
of a table uses the same seed); where BCa is undefined (a degenerate bootstrap or jackknife
distribution) the percentile interval is reported instead and ``ci_method`` says so. *p-values*:
two-sided, from ``spearmanr`` (t approximation) and ``kendalltau`` (exact for small samples without
ties, else the normal approximation). *Multiplicity*: :func:`holm` (Holm–Bonferroni step-down) over
the family of all (predictor, outcome) pairs of one table, separately for ρ and for τ (two statistics
of the same hypotheses) and separately for each subset (all / deficient). ρ, τ, CI and p are NaN when
fewer than 3 architectures remain or either column is constant (e.g. ``any_deficient`` among the
deficient architectures).

*Partial correlation* (what a predictor adds beyond the full-rank split): :func:`partial_spearman_rho`, the
Spearman partial correlation of predictor and outcome given ``any_deficient`` — Fisher's first-order partial
correlation on average ranks, ``(ρxy − ρxz·ρyz)/√((1 − ρxz²)(1 − ρyz²))`` (Conover, *Practical Nonparametric
Statistics*, 1999), computed as the Pearson correlation of the ranks' residuals after a least-squares line on the
split (for a 0/1 control: each rank minus its group's mean rank). An outcome explained by the split alone gives
≈ 0; where predictor and outcome are both constant on the full-rank architectures (the normalised score is 0
there, and every exact recovery ties at ``exact_psnr``) it equals ρ among the deficient ones. Its interval is the
same paired bootstrap over (predictor, outcome, split) triples; its p-value the t test on n − 3 degrees of freedom
(``scipy.stats.t``), Holm-adjusted over a table's pairs. Reported for subset "all" (``partial_*`` columns), beside
the trivial predictors :data:`TRIVIAL_PREDICTORS`.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InvalidSpecError


STATISTICS = {"spearman": "rho", "kendall": "tau"}
"""The rank correlations of :func:`correlation`: name → the estimate's column prefix in the tables."""


def _scipy_stats():
    """``scipy.stats``, imported on first use: it takes ≈ 2 s to import, and this package is imported by every
    workflow run (workflow/rules/validity.smk) that may compute no statistic at all."""
    import scipy.stats  # deferred: see above

    return scipy.stats


def _ranks(x: np.ndarray, axis: int) -> np.ndarray:
    return _scipy_stats().rankdata(x, axis=axis)


def spearman_rho(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman ρ along ``axis`` (vectorised): the Pearson correlation of average ranks (NaN if one is constant)."""
    rx, ry = (np.moveaxis(_ranks(np.asarray(v, float), axis), axis, -1) for v in (x, y))
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))


def kendall_tau_b(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall τ-b along ``axis`` (vectorised; O(n²) memory per sample):
    ``Σ_{i<j} sign(xᵢ−xⱼ)·sign(yᵢ−yⱼ) / √(Σ_{i<j} |sign(xᵢ−xⱼ)| · Σ_{i<j} |sign(yᵢ−yⱼ)|)`` on ranks (so ±inf is
    fine); the denominator counts the pairs not tied in x, resp. y."""
    rx, ry = (np.moveaxis(_ranks(np.asarray(v, float), axis), axis, -1).astype(np.float32) for v in (x, y))
    i, j = np.triu_indices(rx.shape[-1], 1)  # each pair once; ranks are exact in float32 below 2²³ samples
    sx, sy = np.sign(rx[..., i] - rx[..., j]), np.sign(ry[..., i] - ry[..., j])
    concordance = (sx * sy).sum(-1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return concordance / np.sqrt(np.abs(sx).sum(-1, dtype=np.float64) * np.abs(sy).sum(-1, dtype=np.float64))


_STATISTIC_FUNCTIONS: dict[str, Callable[..., np.ndarray]] = {"spearman": spearman_rho, "kendall": kendall_tau_b}


def _residuals(values: np.ndarray, control: np.ndarray) -> np.ndarray:
    """``values`` minus their least-squares line on ``control`` (intercept and slope), along the last axis; a
    constant control leaves the values centred."""
    values, control = values - values.mean(-1, keepdims=True), control - control.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (values * control).sum(-1, keepdims=True) / (control ** 2).sum(-1, keepdims=True)
    return values - np.nan_to_num(slope, nan=0.0, posinf=0.0, neginf=0.0) * control


def partial_spearman_rho(x: np.ndarray, y: np.ndarray, z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman partial correlation of ``x`` and ``y`` given ``z`` along ``axis`` (vectorised): the Pearson
    correlation of the residuals of the average ranks of ``x`` and of ``y`` after a least-squares line on the
    ranks of ``z`` — Fisher's first-order partial correlation on ranks, ``(ρxy − ρxz·ρyz) / √((1 − ρxz²)(1 − ρyz²))``
    with Spearman ρ's (Conover, *Practical Nonparametric Statistics*, 3rd ed. 1999; = ``pingouin.partial_corr``
    with ``method="spearman"``). For a 0/1 ``z`` (the full-rank split) the residuals are the ranks minus their
    group's mean rank, so the result measures how ``x`` orders ``y`` *within* the groups, pooled. NaN where a
    residual is (numerically) zero, i.e. ``x`` or ``y`` is a function of ``z`` (e.g. ``x = z``)."""
    rx, ry, rz = (np.moveaxis(_ranks(np.asarray(v, float), axis), axis, -1) for v in (x, y, z))
    ex, ey = _residuals(rx, rz), _residuals(ry, rz)
    sx, sy = (ex ** 2).sum(-1), (ey ** 2).sum(-1)
    scale = rx.shape[-1] ** 3 * 1e-12  # ranks' sums of squares are O(n³): below this, a residual is rounding
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ex * ey).sum(-1) / np.sqrt(sx * sy)
    return np.where((sx > scale) & (sy > scale), rho, np.nan)


@dataclass(frozen=True)
class CorrelationResult:
    """One rank correlation: estimate, bootstrap CI (``ci_method`` says how), two-sided p-value, sample size."""

    statistic: str
    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    ci_method: str


def _pairs(x: Iterable[Any], y: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise InvalidSpecError(f"x and y must be 1-d and of equal length, got shapes {x.shape} and {y.shape}")
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def _p_value(statistic: str, x: np.ndarray, y: np.ndarray) -> float:
    stats = _scipy_stats()
    test = stats.spearmanr(x, y) if statistic == "spearman" else stats.kendalltau(x, y)
    return float(test.pvalue)


def _rng_keyword() -> str:
    return "rng" if "rng" in inspect.signature(_scipy_stats().bootstrap).parameters else "random_state"


def _bootstrap_ci(statistic: str, x: np.ndarray, y: np.ndarray, *, n_resamples: int, confidence_level: float,
                  method: str, random_state: int) -> tuple[float, float, str]:
    batch = max(1, int(8_000_000 // (x.size ** 2))) if statistic == "kendall" else None  # τ-b is O(n²) per resample
    return _paired_bootstrap_ci(_STATISTIC_FUNCTIONS[statistic], (x, y), batch=batch, n_resamples=n_resamples,
                                confidence_level=confidence_level, method=method, random_state=random_state)


def _paired_bootstrap_ci(function: Callable[..., np.ndarray], samples: tuple[np.ndarray, ...], *, batch: int | None,
                         n_resamples: int, confidence_level: float, method: str,
                         random_state: int) -> tuple[float, float, str]:
    """``scipy.stats.bootstrap`` of the vectorised ``function`` over the paired ``samples`` (architectures
    resampled with replacement, each keeping its values): ``method``'s interval, the percentile one where it is
    undefined, and the method used."""
    bootstrap = _scipy_stats().bootstrap
    for ci_method in dict.fromkeys([method, "percentile"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's DegenerateDataWarning: handled by the fallback below
            result = bootstrap(samples, function, paired=True, vectorized=True, n_resamples=n_resamples, batch=batch,
                               confidence_level=confidence_level, method=ci_method,
                               **{_rng_keyword(): np.random.default_rng(random_state)})
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        if not (math.isnan(low) or math.isnan(high)):
            return low, high, ci_method if ci_method == method else f"percentile ({method} undefined)"
    return math.nan, math.nan, "undefined (degenerate bootstrap distribution)"


def correlation(x: Iterable[Any], y: Iterable[Any], *, statistic: str = "spearman", n_resamples: int = 9999,
                confidence_level: float = 0.95, method: str = "BCa", random_state: int = 0) -> CorrelationResult:
    """Spearman ρ or Kendall τ-b of ``x`` and ``y`` with a paired bootstrap CI and a p-value (module docstring).

    ``method``: ``"BCa"`` (default), ``"percentile"`` or ``"basic"`` (scipy's); ``random_state`` seeds the
    resampling (the same seed gives the same interval). Pairs with a NaN are dropped; with fewer than 3
    pairs or a constant side everything but ``n`` is NaN.
    """
    if statistic not in STATISTICS:
        raise InvalidSpecError(f"statistic {statistic!r} is unknown: accepted are {', '.join(STATISTICS)}")
    x, y = _pairs(x, y)
    n = int(x.size)
    if n < 3 or np.unique(x).size < 2 or np.unique(y).size < 2:
        return CorrelationResult(statistic, math.nan, math.nan, math.nan, math.nan, n,
                                 "undefined (fewer than 3 pairs or a constant column)")
    estimate = float(_STATISTIC_FUNCTIONS[statistic](x, y))
    low, high, ci_method = _bootstrap_ci(statistic, x, y, n_resamples=n_resamples, confidence_level=confidence_level,
                                         method=method, random_state=random_state)
    return CorrelationResult(statistic, estimate, low, high, _p_value(statistic, x, y), n, ci_method)


PARTIAL = "partial"
"""The column prefix of the Spearman partial correlation given the full-rank split (:func:`partial_correlation`)."""


def partial_correlation(x: Iterable[Any], y: Iterable[Any], z: Iterable[Any], *, n_resamples: int = 9999,
                        confidence_level: float = 0.95, method: str = "BCa",
                        random_state: int = 0) -> CorrelationResult:
    """:func:`partial_spearman_rho` of ``x`` and ``y`` given ``z``, on the rows where all three are not NaN, with a
    paired bootstrap interval over the (x, y, z) triples as :func:`correlation`'s and the two-sided p-value of
    the partial correlation's t test, ``t = r·√((n − 3)/(1 − r²))`` on ``n − 3`` degrees of freedom (one
    controlled variable; ``scipy.stats.t``). NaN when fewer than 4 rows remain or the estimate is undefined."""
    columns = [np.asarray(list(v), dtype=float) for v in (x, y, z)]
    if len({c.shape for c in columns}) != 1 or columns[0].ndim != 1:
        raise InvalidSpecError(f"x, y and z must be 1-d and of equal length, got shapes {[c.shape for c in columns]}")
    keep = ~np.any([np.isnan(c) for c in columns], axis=0)
    x, y, z = (c[keep] for c in columns)
    n = int(x.size)
    estimate = float(partial_spearman_rho(x, y, z)) if n >= 4 else math.nan
    if math.isnan(estimate):
        return CorrelationResult("partial spearman", math.nan, math.nan, math.nan, math.nan, n,
                                 "undefined (fewer than 4 rows, or x or y a function of the control)")
    low, high, ci_method = _paired_bootstrap_ci(partial_spearman_rho, (x, y, z), batch=None, n_resamples=n_resamples,
                                                confidence_level=confidence_level, method=method,
                                                random_state=random_state)
    t = estimate * math.sqrt((n - 3) / max(1.0 - estimate ** 2, 1e-300))
    return CorrelationResult("partial spearman", estimate, low, high, float(2 * _scipy_stats().t.sf(abs(t), n - 3)), n,
                             ci_method)


def _correlation_columns(x: Iterable[Any], y: Iterable[Any], **options: Any) -> dict[str, Any]:
    """``n`` and, for ρ and τ, the estimate, CI, p-value and CI method as table columns (:func:`correlation`)."""
    columns: dict[str, Any] = {}
    for statistic, name in STATISTICS.items():
        result = correlation(x, y, statistic=statistic, **options)
        columns.update({"n": result.n, f"{statistic}_{name}": result.estimate, f"{statistic}_ci_low": result.ci_low,
                        f"{statistic}_ci_high": result.ci_high, f"{statistic}_p": result.p_value,
                        f"{statistic}_ci_method": result.ci_method})
    return columns


def holm(p_values: Iterable[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order: sorted ascending, ``p_(i)·(m − i + 1)``
    (i = 1..m), made monotone by a running maximum, capped at 1. NaN entries stay NaN and are not
    counted in the family size ``m``."""
    p = np.asarray(list(p_values), dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    return adjusted


def _partial_columns(x: pd.Series, y: pd.Series, z: pd.Series, control: str, **options: Any) -> dict[str, Any]:
    """:func:`partial_correlation` as table columns: ``partial_given`` (the control), ``partial_rho``, CI, p, CI
    method."""
    result = partial_correlation(x, y, z, **options)
    return {f"{PARTIAL}_given": control, f"{PARTIAL}_rho": result.estimate, f"{PARTIAL}_ci_low": result.ci_low,
            f"{PARTIAL}_ci_high": result.ci_high, f"{PARTIAL}_p": result.p_value,
            f"{PARTIAL}_ci_method": result.ci_method}


def correlation_table(table: pd.DataFrame, predictors: Sequence[str], outcomes: Sequence[str], *,
                      control: str | None = None, n_resamples: int = 9999, confidence_level: float = 0.95,
                      method: str = "BCa", random_state: int = 0) -> pd.DataFrame:
    """One row per (predictor, outcome): ``n``, for ρ and τ the estimate (``spearman_rho``, ``kendall_tau``),
    CI (``*_ci_low``, ``*_ci_high``), ``*_p`` and ``*_p_holm`` (Holm over this table's pairs, per
    statistic), and ``*_ci_method``. With ``control`` (a column, e.g. ``any_deficient``) also the Spearman partial
    correlation given it (:func:`partial_correlation`): ``partial_given``, ``partial_rho``, ``partial_ci_low``,
    ``partial_ci_high``, ``partial_p``, ``partial_p_holm`` (Holm over this table's pairs), ``partial_ci_method``.
    Booleans count as 0/1."""
    missing = [c for c in [*predictors, *outcomes, *([control] if control else [])] if c not in table.columns]
    if missing:
        raise InvalidSpecError(f"table lacks the columns {missing}")
    options = {"n_resamples": n_resamples, "confidence_level": confidence_level, "method": method,
               "random_state": random_state}
    frame = pd.DataFrame([{"predictor": predictor, "outcome": outcome,
                           **_correlation_columns(table[predictor].astype(float), table[outcome].astype(float),
                                                  **options),
                           **(_partial_columns(table[predictor].astype(float), table[outcome].astype(float),
                                               table[control].astype(float), control, **options) if control else {})}
                          for predictor in predictors for outcome in outcomes])
    for statistic in [*STATISTICS, *([PARTIAL] if control else [])]:
        frame.insert(frame.columns.get_loc(f"{statistic}_p") + 1, f"{statistic}_p_holm",
                     holm(frame[f"{statistic}_p"]) if len(frame) else [])
    return frame


def validity_tables(table: pd.DataFrame, predictors: Sequence[str], outcomes: Sequence[str], *,
                    deficient_column: str = "any_deficient", **options: Any) -> pd.DataFrame:
    """:func:`correlation_table` for all architectures (``subset`` "all", with the Spearman partial correlation
    given ``deficient_column``, the full-rank split: ``partial_*``) and for those whose ``deficient_column`` is
    true (``subset`` "deficient"; ``partial_*`` empty: the control is constant there, and the plain ρ is the
    within-group answer), stacked; Holm within each subset. ``options`` go to :func:`correlation_table`."""
    if deficient_column not in table.columns:
        raise InvalidSpecError(f"table lacks the column {deficient_column!r} (bool: some conv layer is rank-deficient)")
    deficient = table[table[deficient_column].fillna(False).astype(bool)]
    parts = [correlation_table(frame, predictors, outcomes, control=control, **options).assign(subset=subset)
             for subset, frame, control in (("all", table, deficient_column), ("deficient", deficient, None))]
    stacked = pd.concat(parts, ignore_index=True)
    return stacked[["subset", *[c for c in stacked.columns if c != "subset"]]]
