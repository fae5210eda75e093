"""Is the COPA security metric valid? Rank correlations of architecture predictors with leakage.

The library of the population study (issue "The security metric on trial"): pure functions over pandas
frames and numpy arrays, no I/O — except :func:`write_study`, the workflow's rule ``validity``, which reads
the security entries and the leaderboard and writes the study's files. The study attacks many architectures — the seeded random chains
``random-chain:SEED`` of :func:`copa.models.random_chain_spec` and the paper's chains — and asks whether
the security report predicts how much the best attack recovers.

* :func:`predictors_from_security` — the predictors of one architecture from its security report
  (``SecurityReport.to_dict()``); :data:`PREDICTORS` lists them.
* :func:`architecture_table` — one row per architecture: its predictors, the mean PSNR and SSIM of every
  attack (``psnr:ATTACK``, ``ssim:ATTACK``) and the best attack (``best_psnr`` = the largest mean PSNR
  over the attacks, ``best_ssim`` = that attack's mean SSIM, ``best_attack``). PSNR stands for the headline
  metric (:data:`copa.metrics.DEFAULT_HEADLINE_METRIC`, or the config's ``headline_metric``; the best is the
  smallest for a metric where lower is better), SSIM for the other metrics the study's outcomes name
  (:func:`study_metrics`); the metric registry gives their labels, units and directions.
* :func:`correlation` / :func:`correlation_table` / :func:`validity_tables` — Spearman ρ and Kendall τ-b
  with bootstrap confidence intervals over architectures and Holm-adjusted p-values, for all
  architectures and for the rank-deficient ones alone.
* :func:`held_out_split` / :func:`held_out_evaluation` — fit a rule (choose a predictor, a threshold for
  "leaks") on half A of the random chains only, report it on half B and on the paper chains.
* :func:`verdict` — the verdict paragraph, generated from the numbers by :data:`VERDICT_RULES`;
  :func:`write_study` — architectures.csv, predictors.csv, held_out.csv, validity.md and the scatter plots
  (:func:`copa.bench.plots.validity_scatter`); :func:`rebuild_study` — the same files from a published
  architectures.csv alone (``python -m copa.bench.validity``, :func:`main`: no attack, no security report).

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InvalidSpecError
from ..metrics import DEFAULT_HEADLINE_METRIC, metric_info, metric_order
from ..models import RANDOM_CHAIN_PREFIX
from .leaderboard import board_metrics

__all__ = ["EXPECTED_SIGN", "HELD_OUT_CANDIDATES", "PARTIAL", "PREDICTORS", "STATISTICS", "TRIVIAL_PREDICTORS",
           "VERDICT_RULES", "CorrelationResult", "FittedRule", "HeldOutSplit", "architecture_table",
           "choose_predictor", "correlation", "correlation_table", "fit_threshold", "held_out_evaluation",
           "held_out_split", "holm", "kendall_tau_b", "partial_correlation", "partial_spearman_rho",
           "predictors_from_security", "published_run_facts", "rebuild_study", "spearman_rho", "study_markdown",
           "study_metrics", "study_table", "tie_exact_recoveries", "validity_tables", "verdict", "verdict_rules",
           "write_study"]

PREDICTORS: dict[str, str] = {
    "copa_index": "COPA index (≤ 0; 0 = every layer uniquely solvable, the leakiest)",
    "normalised_score": "weighted fraction of undetermined unknowns, in [0, 1] (0 = leakiest)",
    "any_deficient": "some conv layer is rank-deficient (bool)",
    "image_layer_deficiency": "undetermined dimensions of the image layer, −deficiency of layer 0 (≥ 0)",
    "total_deficiency": "undetermined dimensions summed over the conv layers, Σ −deficiency (≥ 0)",
    "max_layer_deficiency_fraction": "max over conv layers of −deficiency / unknowns, in [0, 1]",
    "log10_condition_max": "log10 of the largest conv-layer condition number (NaN if not computed)",
    "log10_condition_image": "log10 of the image layer's condition number (NaN if not computed)",
    "propagated_image_fraction": "fraction of the image's pixels left undetermined once every layer passes its "
                                 "undetermined directions down (copa.layerwise.security.propagated_free_dimensions; "
                                 "ours), in [0, 1] (0 = leakiest)",
    "depth": "number of conv layers",
    "parameters": "number of model parameters",
}
"""The predictors of :func:`predictors_from_security`, with their meaning."""

TRIVIAL_PREDICTORS: dict[str, str] = {
    "any_deficient": "the one bit 'some conv layer is rank-deficient' — the full-rank split; fitted as a rule, "
                     "'full rank leaks'",
    "total_deficiency": "the plain count of undetermined dimensions, summed over the conv layers",
}
"""The baselines the security metric's every claim is stated beside (issue "Sharper science"): two predictors of
:data:`PREDICTORS` that need nothing but the per-layer rank deficiencies of the report, no weighting by depth and no
propagation. The study computes them like any predictor (correlation tables, bootstrap intervals) and fits and
reports each on the held-out halves beside the candidates (held_out.csv, ``role`` "trivial baseline"); the
partial correlation given ``any_deficient`` (:func:`partial_correlation`) says what a predictor adds beyond the
full-rank split. A new baseline is one entry here (and, if new, one in :data:`PREDICTORS`)."""

STATISTICS = {"spearman": "rho", "kendall": "tau"}
"""The rank correlations of :func:`correlation`: name → the estimate's column prefix in the tables."""


# --------------------------------------------------------------------------------------------------
# Predictors and the per-architecture table


def _as_float(value: Any) -> float:
    """A report number as float: None → NaN, the strings ``"inf"``/``"-inf"`` of ``to_dict`` → ±inf."""
    if value is None:
        return math.nan
    return float(value)


def _log10(value: float) -> float:
    return math.nan if math.isnan(value) else (math.inf if math.isinf(value) else math.log10(value))


def predictors_from_security(report: Mapping[str, Any], model: Any = None) -> dict[str, float | bool | int]:
    """The predictors (:data:`PREDICTORS`) of one architecture from its ``SecurityReport.to_dict()``.

    ``propagated_image_fraction``: :func:`copa.layerwise.security.propagated_image_dimensions`' undetermined
    over pixels; NaN for reports without ``forward_rank``.
    Deficiencies are counted as undetermined dimensions (``−deficiency`` of the report, ≥ 0) over the
    conv layers (the Linear layers are solved in closed form). Condition numbers: ``log10`` of the
    largest over the conv layers (NaN if any conv layer has none, e.g. ``condition=False``; ``inf`` if
    one is ``inf``) and of the image layer (layer 0). ``parameters``: ``sum(p.numel())`` of ``model``
    when given, else from the report — a conv layer's gradient rows are its weights (chains have no
    conv bias), a Linear layer's gradient rows plus its forward rows are its weights plus bias.
    """
    layers = list(report.get("layers") or [])
    conv = [layer for layer in layers if layer.get("kind") == "conv"]
    from ..layerwise.security import propagated_image_dimensions

    free = [-int(layer["deficiency"]) for layer in conv]
    propagated = propagated_image_dimensions(layers)
    conditions = [_as_float(layer.get("condition_number")) for layer in conv]
    image = conv[0] if conv and layers[0] is conv[0] else None
    if model is not None:
        parameters = int(sum(p.numel() for p in model.parameters()))
    else:
        parameters = int(sum(layer["gradient_rows"] + (layer["forward_rows"] if layer["kind"] == "fc" else 0)
                             for layer in layers))
    return {
        "copa_index": int(report["copa_index"]),
        "normalised_score": float(report["normalised_score"]),
        "any_deficient": any(f > 0 for f in free),
        "image_layer_deficiency": free[0] if image is not None else 0,
        "total_deficiency": int(sum(free)),
        "max_layer_deficiency_fraction": max((f / layer["unknowns"] for f, layer in zip(free, conv)), default=0.0),
        "log10_condition_max": math.nan if not conditions or any(map(math.isnan, conditions))
        else _log10(max(conditions)),
        "log10_condition_image": _log10(conditions[0]) if image is not None else math.nan,
        "propagated_image_fraction": math.nan if propagated is None else propagated[0] / propagated[1],
        "depth": len(conv),
        "parameters": parameters,
    }


def architecture_table(board: pd.DataFrame, predictors: pd.DataFrame | Mapping[str, Mapping[str, Any]], *,
                       metrics: Sequence[str] = (), headline: str = DEFAULT_HEADLINE_METRIC) -> pd.DataFrame:
    """One row per architecture: ``model``, its predictors, ``METRIC:ATTACK`` per metric and attack,
    ``best_HEADLINE`` (the best mean of the ``headline`` metric over the attacks: the largest, or the smallest
    where lower is better), ``best_METRIC`` for the others (that attack's mean), ``best_attack``.

    ``board``: one row per (model, attack) cell with each metric's mean in the column ``METRIC_mean`` (the
    leaderboard's). ``metrics``: the headline metric's and the others' columns to take, headline first (default:
    every metric of the board). ``predictors``: a frame with a ``model`` column, or
    ``{model: predictors_from_security(...)}``. Models in only one of the two are kept (NaN where missing); a
    model whose attacks all lack the headline metric has ``best_*`` NaN and ``best_attack`` missing.
    """
    metrics = list(dict.fromkeys([headline, *(metrics or board_metrics(board))]))
    columns = {metric: f"{metric}_mean" for metric in metrics}
    missing = {"model", "attack", *columns.values()} - set(board.columns)
    if missing:
        raise InvalidSpecError(f"board lacks the columns {sorted(missing)} (expected model, attack, "
                               f"{', '.join(columns.values())})")
    pred = (predictors.copy() if isinstance(predictors, pd.DataFrame)
            else pd.DataFrame([{"model": name, **values} for name, values in predictors.items()]))
    if "model" not in pred.columns:
        raise InvalidSpecError("predictors lack a 'model' column")
    attacks = list(dict.fromkeys(board["attack"]))
    wide = board.pivot_table(index="model", columns="attack", values=list(columns.values()), aggfunc="first",
                             dropna=False)
    out = pd.DataFrame(index=pd.Index(list(dict.fromkeys([*pred["model"], *board["model"]])), name="model"))
    for metric, column in columns.items():
        for attack in attacks:
            out[f"{metric}:{attack}"] = wide[column][attack].reindex(out.index).astype(float)
    values = out[[f"{headline}:{a}" for a in attacks]].to_numpy(float)
    has = ~np.all(np.isnan(values), axis=1)
    ranked = metric_info(headline).sign * values  # the best attack has the largest
    best = np.where(has, np.argmax(np.where(np.isnan(values), -np.inf, ranked), axis=1), -1)
    out["best_attack"] = [attacks[i] if i >= 0 else None for i in best]
    out[best_outcome(headline)] = [values[r, i] if i >= 0 else np.nan for r, i in enumerate(best)]
    for metric in metrics[1:]:
        out[best_outcome(metric)] = [out[f"{metric}:{attacks[i]}"].iloc[r] if i >= 0 else np.nan
                                     for r, i in enumerate(best)]
    return pred.merge(out.reset_index(), on="model", how="outer", sort=False)


def best_outcome(metric: str) -> str:
    """``best_METRIC``: the column of the best attack's mean ``metric`` (:func:`architecture_table`)."""
    return f"best_{metric}"


def outcome_metric(outcome: str) -> str:
    """The metric an outcome names: ``best_psnr`` → psnr, ``ssim:rgap`` → ssim."""
    return outcome.split(":", 1)[0] if ":" in outcome else outcome.removeprefix("best_")


def study_metrics(outcomes: Iterable[str], headline: str = DEFAULT_HEADLINE_METRIC) -> list[str]:
    """The metrics of the study's tables: the ``headline`` metric, then those the ``outcomes`` name in the
    tables' column order (:func:`copa.metrics.metric_order`) — psnr, ssim for the published study."""
    return list(dict.fromkeys([headline, *metric_order(outcome_metric(o) for o in outcomes)]))


# --------------------------------------------------------------------------------------------------
# Rank correlations with bootstrap intervals


def _ranks(x: np.ndarray, axis: int) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, axis=axis)


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
    from scipy import stats

    test = stats.spearmanr(x, y) if statistic == "spearman" else stats.kendalltau(x, y)
    return float(test.pvalue)


def _rng_keyword() -> str:
    from scipy.stats import bootstrap

    return "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"


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
    from scipy.stats import bootstrap

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
    from scipy import stats

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
    return CorrelationResult("partial spearman", estimate, low, high, float(2 * stats.t.sf(abs(t), n - 3)), n,
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


# --------------------------------------------------------------------------------------------------
# Held-out evaluation


@dataclass(frozen=True)
class HeldOutSplit:
    """A seeded split of the architectures: random chains into halves ``a`` (fit) and ``b`` (held out),
    every other architecture (the paper's chains) in ``paper``. Disjoint; together they are the input."""

    a: tuple[str, ...]
    b: tuple[str, ...]
    paper: tuple[str, ...]
    seed: int

    def subsets(self) -> dict[str, tuple[str, ...]]:
        return {"A (fit)": self.a, "B (held out)": self.b, "paper": self.paper}


def _random_chain_key(name: str) -> tuple[int, str]:
    seed = name[len(RANDOM_CHAIN_PREFIX):]
    return (int(seed), name) if seed.isdigit() else (-1, name)


def held_out_split(models: Iterable[str], *, seed: int = 0) -> HeldOutSplit:
    """Split ``models`` (names): those starting with ``random-chain:`` are ordered by their seed, permuted
    with ``numpy.random.default_rng(seed)``, and cut in half (``a`` gets ``n // 2``, ``b`` the rest);
    the others are ``paper``. Duplicates are dropped; each part is sorted (random chains by seed)."""
    names = list(dict.fromkeys(models))
    chains = sorted((m for m in names if m.startswith(RANDOM_CHAIN_PREFIX)), key=_random_chain_key)
    order = np.random.default_rng(seed).permutation(len(chains))
    half = len(chains) // 2
    a = sorted((chains[i] for i in order[:half]), key=_random_chain_key)
    b = sorted((chains[i] for i in order[half:]), key=_random_chain_key)
    return HeldOutSplit(tuple(a), tuple(b), tuple(sorted(m for m in names if not m.startswith(RANDOM_CHAIN_PREFIX))),
                        seed)


@dataclass(frozen=True)
class FittedRule:
    """A rule fitted on half A: the score ``Σ weights[c]·table[c]`` and, for a binary rule, a threshold:
    an architecture is predicted to leak when ``sign·score ≥ sign·threshold``. ``sign`` is the fitted
    direction (+1: a higher score means more leakage). ``fit`` holds what the fitter saw on A."""

    weights: Mapping[str, float]
    sign: int = 1
    threshold: float | None = None
    description: str = ""
    fit: Mapping[str, Any] = field(default_factory=dict)

    def score(self, table: pd.DataFrame) -> np.ndarray:
        return sum(weight * table[column].to_numpy(float) for column, weight in self.weights.items())

    def predict_leaks(self, table: pd.DataFrame) -> np.ndarray:
        if self.threshold is None:
            raise InvalidSpecError("this rule has no threshold: fit one with fit_threshold")
        return self.sign * self.score(table) >= self.sign * self.threshold


def choose_predictor(train: pd.DataFrame, predictors: Sequence[str], outcome: str = "best_psnr") -> FittedRule:
    """The predictor with the largest ``|Spearman ρ|`` with ``outcome`` on ``train`` (the first on ties; NaN ρ
    never wins), as a rule of weight 1 and the sign of its ρ."""
    rhos = {}
    for predictor in predictors:
        x, y = _pairs(train[predictor], train[outcome])
        rhos[predictor] = float(spearman_rho(x, y)) if x.size >= 3 else math.nan
    ranked = [p for p in predictors if not math.isnan(rhos[p])]
    if not ranked:
        raise InvalidSpecError(f"no predictor of {list(predictors)} has a defined Spearman ρ with {outcome!r} "
                               f"on the {len(train)} training architectures")
    best = max(ranked, key=lambda p: abs(rhos[p]))
    return FittedRule({best: 1.0}, sign=1 if rhos[best] >= 0 else -1,
                      description=f"{best} (largest |Spearman ρ| with {outcome} on the fit half)",
                      fit={"spearman_rho": rhos, "n": len(train)})


def _balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    rates = [float(np.mean(predicted[truth == label] == label)) for label in (True, False) if np.any(truth == label)]
    return float(np.mean(rates)) if rates else math.nan


def _leaks(value: np.ndarray, leak_threshold: float, leak_sign: int) -> np.ndarray:
    """"Leaks": ``value ≥ leak_threshold`` (``leak_sign`` +1: higher is more recovered, PSNR), or ``≤`` (−1:
    lower is, e.g. MSE)."""
    return leak_sign * value >= leak_sign * leak_threshold


def fit_threshold(train: pd.DataFrame, rule: FittedRule | str, outcome: str = "best_psnr", *,
                  leak_threshold: float, leak_sign: int = 1) -> FittedRule:
    """Fit the binary rule "leaks" (``outcome ≥ leak_threshold``; ``≤`` with ``leak_sign`` −1, for an outcome
    where lower is better) on ``train``: the threshold (a midpoint between consecutive distinct scores, or ±inf)
    and, if ``rule`` is a column name, the direction that maximise the balanced accuracy (ties: the first in the
    order sign +1 then −1, thresholds ascending). A :class:`FittedRule` keeps its score and sign and gets the
    threshold."""
    base = FittedRule({rule: 1.0}) if isinstance(rule, str) else rule
    signs = (1, -1) if isinstance(rule, str) else (base.sign,)
    score, value = base.score(train), train[outcome].to_numpy(float)
    keep = ~(np.isnan(score) | np.isnan(value))
    score, leaks = score[keep], _leaks(value[keep], leak_threshold, leak_sign)
    levels = np.unique(score)
    candidates = np.concatenate([[-np.inf], (levels[:-1] + levels[1:]) / 2, [np.inf]])
    best = max(((_balanced_accuracy(leaks, sign * score >= sign * t), sign, t) for sign in signs for t in candidates),
               key=lambda item: item[0])
    return FittedRule(base.weights, sign=best[1], threshold=float(best[2]),
                      description=f"{base.description or next(iter(base.weights))}: leaks when "
                                  f"{'≥' if best[1] > 0 else '≤'} {best[2]:.6g} ({outcome} "
                                  f"{'≥' if leak_sign > 0 else '≤'} {leak_threshold:g} = leaks)",
                      fit={**base.fit, "balanced_accuracy": best[0], "leak_threshold": leak_threshold,
                           "n_threshold": int(keep.sum())})


def held_out_evaluation(table: pd.DataFrame, split: HeldOutSplit, fit: Callable[[pd.DataFrame], FittedRule], *,
                        outcome: str = "best_psnr", leak_threshold: float | None = None, leak_sign: int = 1,
                        n_resamples: int = 9999, confidence_level: float = 0.95, method: str = "BCa",
                        random_state: int = 0) -> tuple[FittedRule, pd.DataFrame]:
    """Fit ``fit(table restricted to split.a)`` on half A only; report the rule on A, B and the paper chains.

    ``fit`` is any function of the fit half returning a :class:`FittedRule`, e.g.
    ``lambda t: choose_predictor(t, ["copa_index", "normalised_score"])`` or, for a binary rule,
    ``lambda t: fit_threshold(t, choose_predictor(t, preds), leak_threshold=20)``. One row per subset:
    ``subset``, ``models``, ``n``, ρ and τ of the rule's score with ``outcome`` (estimate, CI, p, CI
    method) and, with ``leak_threshold`` and a rule that has a threshold, ``accuracy`` and
    ``balanced_accuracy`` of "leaks" (``outcome ≥ leak_threshold``; ``≤`` with ``leak_sign`` −1) and ``leaks``
    (how many do).
    """
    by_model = table.set_index("model", drop=False)
    unknown = [m for names in split.subsets().values() for m in names if m not in by_model.index]
    if unknown:
        raise InvalidSpecError(f"the split names models the table lacks: {unknown[:5]}")
    rule = fit(by_model.loc[list(split.a)].reset_index(drop=True))
    options = {"n_resamples": n_resamples, "confidence_level": confidence_level, "method": method,
               "random_state": random_state}
    rows = []
    for subset, names in split.subsets().items():
        part = by_model.loc[list(names)].reset_index(drop=True)
        row: dict[str, Any] = {"subset": subset, "models": len(part),
                               **_correlation_columns(rule.score(part), part[outcome], **options)}
        if leak_threshold is not None and rule.threshold is not None:
            value, predicted = part[outcome].to_numpy(float), rule.predict_leaks(part)
            keep = ~(np.isnan(value) | np.isnan(rule.score(part)))
            truth = _leaks(value[keep], leak_threshold, leak_sign)
            row.update({"leaks": int(truth.sum()),
                        "accuracy": float(np.mean(predicted[keep] == truth)) if keep.any() else math.nan,
                        "balanced_accuracy": _balanced_accuracy(truth, predicted[keep])})
        rows.append(row)
    return rule, pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The study's files (the workflow's rule validity): the one function here that reads and writes


HELD_OUT_CANDIDATES = ("copa_index", "normalised_score", "propagated_image_fraction")
"""The predictors the held-out rule chooses from on half A (those of them in the study's predictors; all
its predictors if none is): the security metric's two numbers and the metric we propose from first principles
(how much of the image the layer-wise systems leave undetermined after propagation). Each is also fitted and
reported alone (held_out.csv, column ``chosen``), so the losers are reported too."""
EXPECTED_SIGN: dict[str, int] = {"copa_index": 1, "normalised_score": -1, "any_deficient": -1,
                                 "image_layer_deficiency": -1, "total_deficiency": -1,
                                 "max_layer_deficiency_fraction": -1, "log10_condition_max": -1,
                                 "log10_condition_image": -1, "propagated_image_fraction": -1}
"""The sign of ρ with a leakage outcome where higher is better (PSNR, SSIM: higher = more recovered) if the metric
is right: a COPA index nearer 0, a lower score, fewer undetermined dimensions, a better conditioning leak more;
reversed for an outcome where lower is better (:func:`expected_sign`). ``depth`` and ``parameters`` have no stated
direction."""


def expected_sign(predictor: str, outcome: str) -> int | None:
    """:data:`EXPECTED_SIGN` of ``predictor`` with ``outcome``, reversed when the outcome's metric is better
    lower (MSE, LPIPS); None for a predictor without a stated direction."""
    sign = EXPECTED_SIGN.get(predictor)
    return None if sign is None else sign * metric_info(outcome_metric(outcome)).sign


def outcome_words(outcome: str, headline: str = DEFAULT_HEADLINE_METRIC) -> str:
    """The verdict's words for ``outcome``: ``best_psnr, the mean PSNR of the best attack per architecture``."""
    metric, label = outcome_metric(outcome), metric_info(outcome_metric(outcome)).label
    if outcome != best_outcome(metric):
        return outcome
    if metric == headline:
        return f"{outcome}, the mean {label} of the best attack per architecture"
    return f"{outcome}, the mean {label} of the attack with the best mean {metric_info(headline).label}"


def _threshold_text(metric: str, value: float) -> str:
    """``20 dB``: a value of ``metric`` with its unit."""
    unit = metric_info(metric).unit
    return f"{value:g} {unit}" if unit else f"{value:g}"


def _leak_text(headline: str, leak_threshold: float) -> str:
    """``best_psnr ≥ 20 dB``: what "leaks" means."""
    return (f"{best_outcome(headline)} {'≥' if metric_info(headline).sign > 0 else '≤'} "
            f"{_threshold_text(headline, leak_threshold)}")
ALPHA = 0.05
"""The level of the verdict's Holm-adjusted p-values (with 95 % intervals)."""
STUDY_TABLES = ("architectures.csv", "predictors.csv", "held_out.csv", "validity.md")


def candidate_scatters(predictors: Sequence[str], metric: str) -> list[str]:
    """The held-out candidates (:data:`HELD_OUT_CANDIDATES`) among ``predictors`` other than ``metric`` (the
    plots' x axis): each gets its own scatter of the best attack's headline metric, ``scatter_best_by_PREDICTOR.png``, so
    the metrics the held-out half compares are seen side by side. One owner for the write_study files and the
    workflow rule's outputs."""
    return [p for p in HELD_OUT_CANDIDATES if p in predictors and p != metric]


def verdict_rules(headline: str = DEFAULT_HEADLINE_METRIC) -> str:
    """How the verdict is decided (validity.md's section), for the study's ``headline`` metric."""
    best, info = best_outcome(headline), metric_info(headline)
    reversed_note = f", reversed for {info.label}, where lower is better" if info.sign < 0 else ""
    return (
        "The verdict is generated from the tables by fixed rules. It judges one predictor, the workflow's "
        "security metric (config `plots.security_metric`; if it is not among the predictors, the first of "
        f"copa_index / normalised_score that is, else the first predictor), against one outcome, `{best}` "
        "(else the first outcome), on each subset (all architectures; the rank-deficient ones), from the Spearman row of "
        "predictors.csv: **predicts / ranks** when the 95 % BCa interval of ρ excludes 0 on the side the "
        f"metric claims (EXPECTED_SIGN: ρ < 0 for the normalised score, > 0 for the COPA index{reversed_note}) and the "
        f"Holm-adjusted p < {ALPHA:g}; **in the wrong direction** when the interval excludes 0 on the other "
        f"side and Holm p < {ALPHA:g}; **weak evidence** when the interval excludes 0 but Holm p ≥ {ALPHA:g}; "
        "**does not predict / rank** when the interval includes 0; **cannot be judged** when ρ is undefined "
        "(fewer than 3 architectures or a constant column). The two clauses are joined by *and* when both "
        "are positive or both are not, else by *but*. The held-out sentence reports the rule fitted on half "
        "A only (held_out.csv) on half B and on the paper chains, as measured; the candidates' sentence each "
        "candidate's |ρ| on half A (which chose) and its ρ on half B, winner and losers alike. **Beside the trivial "
        "predictors** (TRIVIAL_PREDICTORS: any_deficient, the full-rank split; total_deficiency, the plain count of "
        f"undetermined dimensions): their ρ over all architectures stands beside the metric's; then, for `{best}` and "
        f"each attack's mean {info.label}, the metric's Spearman partial ρ given the full-rank split, judged by the same rule "
        "on its 95 % BCa interval and Holm p (Holm over the table's pairs): **adds** (beyond the full-rank split), "
        "**adds in the wrong direction**, **weak evidence** or **adds nothing**; total_deficiency's partial ρ follows "
        "for comparison. Last, every rule of held_out.csv — the candidates and the trivial baselines, each fitted on "
        "half A alone — with its balanced accuracy on half B and on the paper chains.")


VERDICT_RULES = verdict_rules()
"""How the verdict is decided, for the default headline metric (:func:`verdict_rules`)."""


def _judgement(row: Mapping[str, Any] | None, expected: int | None, prefix: str = "spearman") -> str:
    """``predicts``, ``reversed``, ``weak``, ``none`` or ``undefined`` (see :data:`VERDICT_RULES`) of the estimate
    ``PREFIX_rho`` with its CI and Holm p (``prefix``: ``spearman`` or :data:`PARTIAL`)."""
    columns = (f"{prefix}_rho", f"{prefix}_ci_low", f"{prefix}_ci_high")
    if row is None or any(c not in row or math.isnan(float(row[c])) for c in columns):
        return "undefined"
    low, high = float(row[f"{prefix}_ci_low"]), float(row[f"{prefix}_ci_high"])
    if low <= 0 <= high:
        return "none"
    if not float(row[f"{prefix}_p_holm"]) < ALPHA:
        return "weak"
    side = 1 if low > 0 else -1
    return "predicts" if expected is None or side == expected else "reversed"


def _rho_text(row: Mapping[str, Any]) -> str:
    return (f"ρ = {format_number(row['spearman_rho'])}, 95 % CI [{format_number(row['spearman_ci_low'])}, "
            f"{format_number(row['spearman_ci_high'])}], Holm p = {_fmt_p(row['spearman_p_holm'])}, n = {int(row['n'])}")


def format_number(value: Any, digits: int = 2) -> str:
    from .leaderboard import format_number as fmt

    return fmt(float(value), digits)


def _fmt_p(value: Any) -> str:
    value = float(value)
    return "–" if math.isnan(value) else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")


def _interval(row: Mapping[str, Any], prefix: str = "spearman") -> str:
    """``ρ [low, high]`` of the estimate ``PREFIX_rho``."""
    return (f"{format_number(row[f'{prefix}_rho'])} [{format_number(row[f'{prefix}_ci_low'])}, "
            f"{format_number(row[f'{prefix}_ci_high'])}]")


BEYOND_WORDS = {"predicts": "adds", "reversed": "adds in the wrong direction",
                "weak": f"weak evidence (the CI excludes 0, Holm p ≥ {ALPHA:g})",
                "none": "adds nothing (the CI includes 0)", "undefined": "undefined"}
"""The verdict's words for what a predictor adds beyond the full-rank split, by :func:`_judgement` of its partial ρ."""


def _beside_trivial(correlations: pd.DataFrame, predictor: str, outcome: str, per_attack: Sequence[str],
                    baselines: Sequence[str]) -> str:
    """The verdict's sentences on the trivial predictors (:data:`VERDICT_RULES`): their ρ over all architectures
    beside ``predictor``'s, and ``predictor``'s partial ρ given the full-rank split with ``outcome`` and each of
    ``per_attack`` (and each baseline's, for comparison). Empty without the rows or the partial columns."""
    frame = correlations.set_index(["subset", "predictor", "outcome"])
    outcomes = list(dict.fromkeys([outcome, *per_attack]))

    def row(name: str, what: str) -> Mapping[str, Any] | None:
        key = ("all", name, what)
        return frame.loc[key].to_dict() if key in frame.index else None

    text = ""
    metric = row(predictor, outcome)
    shown = [b for b in baselines if row(b, outcome) is not None]
    if metric is not None and shown:
        text += (f" Beside the trivial predictors over all architectures, with {outcome}: "
                 + ", ".join(f"{b} ρ = {_interval(row(b, outcome))}" for b in shown)
                 + f", against {predictor}'s {_interval(metric)}.")
    if metric is None or f"{PARTIAL}_rho" not in metric:
        return text
    given = metric.get(f"{PARTIAL}_given", "the full-rank split")
    clauses = []
    for what in outcomes:
        found = row(predictor, what)
        if found is not None:
            clauses.append(f"with {what} {_interval(found, PARTIAL)}, "
                           f"{BEYOND_WORDS[_judgement(found, expected_sign(predictor, what), PARTIAL)]}")
    text += (f" What {predictor} adds beyond the full-rank split (Spearman partial ρ given {given}, 95 % CI, "
             f"Holm-adjusted): " + "; ".join(clauses) + ".")
    for baseline in baselines:
        partials = [(what, row(baseline, what)) for what in outcomes]
        partials = [(what, r) for what, r in partials if r is not None and not math.isnan(float(r[f"{PARTIAL}_rho"]))]
        if partials:
            text += (f" {baseline}'s partial ρ, for comparison: "
                     + ", ".join(f"{what} {_interval(r, PARTIAL)}" for what, r in partials) + ".")
    return text


def _classification_beside_trivial(candidates: pd.DataFrame) -> str:
    """The verdict's sentence comparing every rule of held_out.csv — candidates and trivial baselines, each
    fitted on half A alone — by balanced accuracy on half B and on the paper chains."""
    if "role" not in candidates or "balanced_accuracy" not in candidates:
        return ""
    rows = candidates.set_index(["predictor", "subset"])

    def accuracy(name: str) -> str:
        values = [format_number(rows.loc[(name, subset), "balanced_accuracy"]) if (name, subset) in rows.index
                  else "–" for subset in ("B (held out)", "paper")]
        return " / ".join(values)

    def rule(name: str) -> str:
        first = rows.loc[name].iloc[0]
        return f"leaks when {'≥' if int(first['sign']) > 0 else '≤'} {float(first['threshold']):.6g}"

    names = {role: list(dict.fromkeys(candidates.loc[candidates["role"] == role, "predictor"]))
             for role in ("candidate", "trivial baseline")}
    if not names["trivial baseline"]:
        return ""
    return (" As leak / no-leak rules fitted on half A alone, balanced accuracy on half B / on the paper chains: "
            + ", ".join(f"{n} {accuracy(n)}" for n in names["candidate"]) + "; the trivial "
            + ", ".join(f"{n} ({rule(n)}) {accuracy(n)}" for n in names["trivial baseline"]) + ".")


def verdict(correlations: pd.DataFrame, held: pd.DataFrame | None, rule: FittedRule | None, *, predictor: str,
            outcome: str, leak_threshold: float, candidates: pd.DataFrame | None = None,
            per_attack: Sequence[str] = (), baselines: Sequence[str] = (),
            headline: str = DEFAULT_HEADLINE_METRIC) -> str:
    """The verdict paragraph from the study's numbers (:data:`VERDICT_RULES`): ``correlations`` is
    :func:`validity_tables`' frame, ``held`` and ``rule`` :func:`held_out_evaluation`'s (None: not evaluated),
    ``candidates`` held_out.csv's rows of every candidate and baseline (``predictor``, ``subset``, ``role``,
    ``spearman_*``; None or one candidate: no candidates' sentence). ``baselines``: the trivial predictors
    (:data:`TRIVIAL_PREDICTORS`) to state the metric beside; ``per_attack``: the outcomes (e.g. ``psnr:ATTACK``)
    on which the partial correlation given the full-rank split is reported besides ``outcome``; ``headline``: the
    study's headline metric (the held-out rule's outcome is its ``best_*``)."""
    expected = expected_sign(predictor, outcome)
    rows = {subset: correlations[(correlations["subset"] == subset) & (correlations["predictor"] == predictor)
                                 & (correlations["outcome"] == outcome)] for subset in ("all", "deficient")}
    found = {s: (r.iloc[0].to_dict() if len(r) else None) for s, r in rows.items()}
    judged = {s: _judgement(found[s], expected) for s in found}
    what = {"all": ("predicts leakage", "over all architectures"),
            "deficient": ("ranks leakage", "among the rank-deficient architectures")}
    clauses = []
    for subset, (verb, where) in what.items():
        row, judgement = found[subset], judged[subset]
        if judgement == "undefined":
            clauses.append(f"cannot be judged {where} (ρ undefined: fewer than 3 architectures or a constant column)")
            continue
        numbers = _rho_text(row)
        clauses.append({"predicts": f"{verb} {where} ({numbers})",
                        "reversed": f"{verb} {where} in the wrong direction ({numbers})",
                        "weak": f"gives only weak evidence that it {verb} {where} ({numbers}: the CI excludes 0, "
                                f"but Holm p ≥ {ALPHA:g})",
                        "none": f"does not {verb.replace('predicts', 'predict').replace('ranks', 'rank')} {where} "
                                f"({numbers}: the CI includes 0)"}[judgement])
    positive = [judged[s] == "predicts" for s in ("all", "deficient")]
    joint = " and " if positive[0] == positive[1] else " but "
    label = {"copa_index": "The COPA index", "normalised_score": "The normalised security score"}.get(
        predictor, f"The predictor {predictor}")
    text = f"{label} {clauses[0]}{joint}{clauses[1]}. Leakage: {outcome_words(outcome, headline)}."
    if rule is not None and held is not None and len(held):
        by = held.set_index("subset")

        def accuracy(subset: str) -> str:
            if subset not in by.index or "balanced_accuracy" not in by:
                return "–"
            row = by.loc[subset]
            return f"{format_number(row['balanced_accuracy'])} (n = {int(row['n'])}, of which {int(row['leaks'])} leak)"

        b = by.loc["B (held out)"] if "B (held out)" in by.index else None
        text += (f" Fitted on half A of the random chains only, the rule “{rule.description}” classifies "
                 f"leaking ({_leak_text(headline, leak_threshold)}) with balanced accuracy "
                 f"{accuracy('B (held out)')} on the held-out half B and {accuracy('paper')} on the paper chains")
        text += (f"; its score's ρ on B is {format_number(b['spearman_rho'])} (95 % CI [{format_number(b['spearman_ci_low'])}, "
                 f"{format_number(b['spearman_ci_high'])}])." if b is not None else ".")
    else:
        text += " The held-out rule was not evaluated (see below)."
    text += _beside_trivial(correlations, predictor, outcome, per_attack, baselines)
    every_rule = candidates
    if candidates is not None and "role" in candidates:
        candidates = candidates[candidates["role"] == "candidate"]
    if rule is not None and candidates is not None and "predictor" in candidates \
            and candidates["predictor"].nunique() > 1:
        rows = candidates.set_index(["predictor", "subset"])
        names = list(dict.fromkeys(candidates["predictor"]))
        chosen = next(iter(rule.weights))

        def rho(name: str, subset: str, interval: bool) -> str:
            if (name, subset) not in rows.index:
                return "–"
            row = rows.loc[(name, subset)]
            if not interval:
                return format_number(abs(float(row["spearman_rho"])))
            return (f"{format_number(row['spearman_rho'])} [{format_number(row['spearman_ci_low'])}, "
                    f"{format_number(row['spearman_ci_high'])}]")

        text += (f" Candidates compared on half A by |ρ| with {best_outcome(headline)}: "
                 + ", ".join(f"{n} {rho(n, 'A (fit)', False)}" for n in names) + f" — half A chose {chosen}; on the "
                 "held-out half B their ρ (95 % CI) are " + ", ".join(f"{n} {rho(n, 'B (held out)', True)}"
                                                                     for n in names) + ".")
    if rule is not None and every_rule is not None:
        text += _classification_beside_trivial(every_rule)
    return text


def tie_exact_recoveries(table: pd.DataFrame, exact_psnr: float | None,
                         headline: str = DEFAULT_HEADLINE_METRIC) -> pd.DataFrame:
    """``table`` with every outcome of the ``headline`` metric (``best_psnr``, ``psnr:ATTACK``) better than
    ``exact_psnr`` set to it (above it; below it for a metric where lower is better).

    A layer-wise attack on a full-rank chain recovers the image exactly; its PSNR (120–290 dB in float64,
    or +inf) then measures rounding, not leakage, and would order the exact recoveries at random in every
    rank statistic. At ``exact_psnr`` they tie. ``None``: the table unchanged (a copy)."""
    out = table.copy()
    if exact_psnr is None:
        return out
    bound = {"upper" if metric_info(headline).sign > 0 else "lower": float(exact_psnr)}
    for column in [c for c in out.columns if c == best_outcome(headline) or str(c).startswith(f"{headline}:")]:
        out[column] = out[column].astype(float).clip(**bound)
    return out


def _undefended(board: pd.DataFrame) -> pd.DataFrame:
    from ..threat.defences import NoDefence

    if "defence" not in board.columns:
        return board
    rows = board[board["defence"] == NoDefence.name]
    if rows.empty:
        raise InvalidSpecError(f"the leaderboard has no undefended rows (defence {NoDefence.name!r}); its defences: "
                               f"{sorted(set(board['defence'].astype(str)))}")
    return rows


def study_table(entries: Sequence[Mapping[str, Any]], board: pd.DataFrame, *, metrics: Sequence[str] = (),
                headline: str = DEFAULT_HEADLINE_METRIC) -> tuple[pd.DataFrame, dict[str, str]]:
    """:func:`architecture_table` of the security entries' predictors and ``board`` (``metrics``, ``headline``:
    its), with ``status`` (ok or excluded) and ``reason``; and the excluded architectures → reason: not
    applicable (the entry's reason), no security entry, or no ok run of any attack (``best_psnr`` NaN)."""
    ok = {e["model"]: predictors_from_security(e["report"]) for e in entries if e["status"] == "ok"}
    excluded = {e["model"]: e.get("reason") or "not applicable" for e in entries if e["status"] != "ok"}
    table = architecture_table(board, ok, metrics=metrics, headline=headline)
    for model, best in zip(table["model"], table[best_outcome(headline)]):
        if model not in ok and model not in excluded:
            excluded[model] = "no security entry"
        elif model in ok and math.isnan(float(best)):
            excluded[model] = "no ok run of any attack"
    table["status"] = ["ok" if m not in excluded else "excluded" for m in table["model"]]
    table["reason"] = [excluded.get(m) for m in table["model"]]
    return table, excluded


def _cell(column: str, value: Any) -> str:
    """A Markdown cell of the architecture table: counts as integers, the score with 3 decimals."""
    if not isinstance(value, float):
        return str(value)
    if column in ("copa_index", "depth", "parameters", "total_deficiency", "image_layer_deficiency") \
            and value.is_integer():
        return str(int(value))
    return format_number(value, 3 if column == "normalised_score" else 2)


def _correlation_cells(frame: pd.DataFrame, keys: Sequence[str], partial: bool = False) -> list[list[str]]:
    """Markdown rows: the ``keys`` columns, then n, ρ [CI], Holm p of ρ, τ [CI], Holm p of τ; with ``partial``
    also the partial ρ given the full-rank split [CI] and its Holm p."""
    def interval(row: pd.Series, statistic: str) -> str:
        estimate = row[f"{statistic}_{STATISTICS.get(statistic, 'rho')}"]
        return f"{format_number(estimate)} [{format_number(row[f'{statistic}_ci_low'])}, {format_number(row[f'{statistic}_ci_high'])}]"

    statistics = [*STATISTICS, *([PARTIAL] if partial else [])]
    return [[*(str(row[k]) for k in keys), str(int(row["n"])),
             *(cell for statistic in statistics
               for cell in (interval(row, statistic), _fmt_p(row.get(f"{statistic}_p_holm", row[f"{statistic}_p"]))))]
            for _, row in frame.iterrows()]


def _beside_trivial_rows(correlations: pd.DataFrame, predictors: Sequence[str]) -> list[list[str]]:
    """Markdown rows of validity.md's "beside the trivial predictors" table: per outcome, each of ``predictors``'s
    ρ over all architectures, partial ρ given the full-rank split with its Holm p, and ρ among the deficient."""
    frame = correlations.set_index(["subset", "predictor", "outcome"])
    rows = []
    for outcome in dict.fromkeys(correlations["outcome"]):
        for predictor in predictors:
            every, deficient = (frame.loc[key] if (key := (subset, predictor, outcome)) in frame.index else None
                                for subset in ("all", "deficient"))
            if every is None:
                continue
            partial = f"{PARTIAL}_rho" in every and not math.isnan(float(every[f"{PARTIAL}_rho"]))
            rows.append([outcome, predictor + (" (trivial)" if predictor in TRIVIAL_PREDICTORS else ""),
                         _interval(every), _interval(every, PARTIAL) if partial else "–",
                         _fmt_p(every[f"{PARTIAL}_p_holm"]) if partial else "–",
                         _interval(deficient) if deficient is not None
                         and not math.isnan(float(deficient["spearman_rho"])) else "–",
                         str(int(deficient["n"])) if deficient is not None else "–"])
    return rows


def study_markdown(title: str, meta: Mapping[str, str], text: str, architectures: pd.DataFrame,
                   correlations: pd.DataFrame, held: pd.DataFrame, rule: FittedRule | None, *,
                   excluded: Mapping[str, str], attacks: Sequence[str], settings: Mapping[str, Any],
                   held_out_note: str | None = None, metric: str = "normalised_score",
                   baselines: Sequence[str] = (), metrics: Sequence[str] = (),
                   headline: str = DEFAULT_HEADLINE_METRIC) -> str:
    """validity.md: the verdict paragraph first, the run's facts, the rules, then every table; ``metric``: the
    plots' x axis; ``baselines``: the trivial predictors every candidate is shown beside; ``metrics``: the
    study's (:func:`study_metrics`), ``headline`` first."""
    metrics = list(dict.fromkeys([headline, *metrics]))
    info = metric_info(headline)
    from tabulate import tabulate

    from .leaderboard import markdown_header

    lines = markdown_header(title, dict(meta))
    lines[2:2] = [text, ""]
    lines += ["", "## How the verdict is decided", "", verdict_rules(headline), "",
              ("Statistics (copa.bench.validity): Spearman ρ and Kendall τ-b over architectures, paired "
               f"bootstrap BCa 95 % intervals ({settings['n_resamples']} resamples, seed {settings['seed']}), "
               "two-sided p-values Holm-adjusted over the predictor × outcome pairs of each subset. Outcomes are "
               "means over each cell's ok runs of the undefended leaderboard; the best attack is the one with "
               f"the {'largest' if info.sign > 0 else 'smallest'} mean {info.label} per architecture. Partial ρ: "
               "Spearman partial correlation given the "
               "full-rank split (any_deficient), the Pearson correlation of the ranks' residuals after a line on "
               "the split — within-group ordering, pooled (copa.bench.validity.partial_spearman_rho) — with the same "
               "bootstrap and a t test on n − 3 degrees of freedom, Holm-adjusted over the table's pairs."), ""]
    if baselines and f"{PARTIAL}_rho" in correlations:
        shown_predictors = [*[p for p in HELD_OUT_CANDIDATES if p in set(correlations["predictor"])], *baselines]
        lines += ["## Beside the trivial predictors", "",
                  ("Every candidate metric beside the trivial predictors (copa.bench.validity.TRIVIAL_PREDICTORS: "
                   + "; ".join(f"{name} — {TRIVIAL_PREDICTORS[name]}" for name in baselines) + "), per outcome: "
                   "Spearman ρ over all architectures, the partial ρ given the full-rank split (what a predictor "
                   "adds beyond it; undefined for any_deficient itself) and ρ among the rank-deficient "
                   "architectures alone. 95 % BCa intervals."), "",
                  tabulate(_beside_trivial_rows(correlations, shown_predictors),
                           headers=["outcome", "predictor", "ρ, all [95 % CI]", "partial ρ given full rank [95 % CI]",
                                    "Holm p (partial)", "ρ, deficient [95 % CI]", "n deficient"],
                           tablefmt="github", disable_numparse=True), ""]
    shown = ["model", "held_out", *[c for c in ("copa_index", "normalised_score", "any_deficient", "depth")
                                    if c in architectures], "best_attack", *map(best_outcome, metrics),
             *[f"{headline}:{a}" for a in attacks if f"{headline}:{a}" in architectures]]
    included = architectures[architectures["status"] == "ok"]
    lines += [f"## Architectures ({len(included)} in the study)", "",
              tabulate([[_cell(column, value) for column, value in zip(shown, row)]
                        for row in included[shown].itertuples(index=False)],
                       headers=shown, tablefmt="github", disable_numparse=True), ""]
    lines += ["Excluded: " + ("; ".join(f"{m} ({reason})" for m, reason in excluded.items()) or "none") + ".", ""]
    headers = ["predictor", "outcome", "n", "Spearman ρ [95 % CI]", "Holm p (ρ)", "Kendall τ [95 % CI]", "Holm p (τ)"]
    for subset, heading in (("all", "all architectures"), ("deficient", "rank-deficient architectures")):
        part = correlations[correlations["subset"] == subset]
        partial = subset == "all" and f"{PARTIAL}_rho" in part
        lines += [f"## Rank correlations: {heading}", "",
                  tabulate(_correlation_cells(part, ["predictor", "outcome"], partial=partial),
                           headers=headers + (["partial ρ given full rank [95 % CI]", "Holm p (partial)"]
                                              if partial else []),
                           tablefmt="github", disable_numparse=True), ""]
    lines += ["## Held-out evaluation", ""]
    if rule is None:
        lines += [f"Not evaluated: {held_out_note}.", ""]
    else:
        roles = held["role"] if "role" in held else pd.Series("candidate", index=held.index)
        trivial = list(dict.fromkeys(held.loc[roles != "candidate", "predictor"]))
        lines += [(f"Rule fitted on half A only (seed {settings['seed']}): {rule.description}. Balanced accuracy "
                   f"on A: {format_number(rule.fit.get('balanced_accuracy', math.nan))}. Every candidate "
                   f"({', '.join(dict.fromkeys(held.loc[roles == 'candidate', 'predictor']))}) is also fitted on "
                   "half A alone and reported on B and the paper chains; ✓ marks the one half A chose (largest |ρ| "
                   "on A)." + (f" The trivial baselines ({', '.join(trivial)}; marked “trivial”) are fitted and "
                               "reported the same way: the rules the candidates must beat." if trivial else "")), "",
                  tabulate([[("✓ " if row.get("chosen") else "") + str(row["predictor"])
                             + (" (trivial)" if row.get("role", "candidate") != "candidate" else ""), *cells,
                             format_number(row.get("accuracy", math.nan)),
                             format_number(row.get("balanced_accuracy", math.nan)), str(row.get("leaks", "–")),
                             format_number(row.get("threshold", math.nan), 4)]
                            for cells, (_, row) in zip(_correlation_cells(held, ["subset"]), held.iterrows())],
                           headers=["candidate", "subset", "n", "ρ (score) [95 % CI]", "p (ρ)", "τ [95 % CI]", "p (τ)",
                                    "accuracy", "balanced accuracy", "leak", "threshold (fitted on A)"],
                           tablefmt="github", disable_numparse=True), ""]
    others = candidate_scatters(list(dict.fromkeys(correlations["predictor"])), metric)
    lines += ["## Plots", "", f"Against {metric}: scatter_best.png (the best attack), "
              + ", ".join(f"scatter_{a}.png" for a in attacks) + "; the best attack against the other held-out "
              "candidates: " + (", ".join(f"scatter_best_by_{p}.png" for p in others) or "none")
              + ". One point per architecture, labelled (rcN = random-chain:N).", ""]
    return "\n".join(lines)


def write_study(security_paths: Iterable[str | Path], board_csv: str | Path, out_dir: str | Path,
                settings: Mapping[str, Any], *, meta: Mapping[str, str] | None = None,
                attacks: Sequence[str] | None = None, metric: str = "normalised_score", psnr_cap: float = 100.0,
                title: str = "The security metric on trial", headline: str = DEFAULT_HEADLINE_METRIC) -> dict[str, Path]:
    """Run the study and write its files into ``out_dir``, each atomically; return them by name.

    ``security_paths``: the security entries (:func:`copa.bench.pipeline.security_entry`); not-applicable
    ones are excluded with their reason, as are architectures without an ok run of any attack or without
    an entry. ``board_csv``: leaderboard.csv (its undefended rows). ``settings``: the config's ``validity``
    section (``predictors``, ``outcomes``, ``seed``, ``n_resamples``, ``leak_threshold``, ``exact_psnr``:
    :func:`tie_exact_recoveries` before every statistic; architectures.csv keeps the measured means). ``meta``: header
    facts (command, config hash, dataset, ...) over those the entries give (commits, devices, versions).
    ``metric``: the predictor the verdict judges and the plots' x axis. Files: architectures.csv,
    predictors.csv (:func:`validity_tables`, with the partial correlation given the full-rank split),
    held_out.csv (:func:`held_out_evaluation` with the predictor of :data:`HELD_OUT_CANDIDATES` of largest |ρ| on
    half A and a threshold for ``best_psnr ≥ leak_threshold``; one block of rows per candidate and per
    :data:`TRIVIAL_PREDICTORS` baseline, each fitted on A alone, ``role`` saying which, ``chosen`` marking the
    winner), validity.md (:func:`verdict` first), scatter_ATTACK.png, scatter_best.png and
    scatter_best_by_PREDICTOR.png for the other candidates (:func:`candidate_scatters`). ``headline``: the
    config's headline metric (PSNR above; ``best_psnr`` is ``best_HEADLINE``); the tables hold it and the other
    metrics the outcomes name (:func:`study_metrics`).
    """
    from .leaderboard import read_security_entries
    from .record import versions_text

    entries = read_security_entries(security_paths)
    board = _undefended(pd.read_csv(board_csv))
    attacks = list(attacks or dict.fromkeys(board["attack"]))
    metrics = study_metrics(settings["outcomes"], headline)
    table, excluded = study_table(entries, board[board["attack"].isin(attacks)], metrics=metrics, headline=headline)
    provenance = pd.DataFrame([{"git_commit": e.get("git_commit"), "device": e.get("device"),
                                "versions": versions_text(e.get("versions")), "dataset": e.get("dataset"),
                                "split": e.get("split", "–")} for e in entries],
                              columns=["git_commit", "device", "versions", "dataset", "split"])
    return _write_study_files(table, excluded, provenance, out_dir, settings, meta=meta, attacks=attacks,
                              metric=metric, psnr_cap=psnr_cap, title=title, headline=headline)


STUDY_INPUT_COLUMNS = ("model", "best_attack", "status", "reason")
"""The columns of a published architectures.csv that :func:`rebuild_study` reads besides the predictors and, for
each of the study's metrics (:func:`study_metrics`), ``best_METRIC`` and the attacks' ``METRIC:ATTACK``; the
others (``held_out``, ``leaks``, ``predicted_leaks``) are recomputed."""


def rebuild_study(architectures_csv: str | Path, out_dir: str | Path, settings: Mapping[str, Any], *,
                  meta: Mapping[str, str] | None = None, attacks: Sequence[str] | None = None,
                  metric: str = "normalised_score", psnr_cap: float = 100.0,
                  title: str = "The security metric on trial", headline: str = DEFAULT_HEADLINE_METRIC) -> dict[str, Path]:
    """:func:`write_study`'s files again from a published ``architectures.csv`` alone, without the security
    entries or the leaderboard (runs/ is not published): its rows are :func:`study_table`'s — every predictor
    computed from the security reports, each attack's mean PSNR and SSIM of the undefended leaderboard, the best
    attack, the status and the reason of an exclusion — so every statistic, the held-out rule and the verdict are
    recomputed from the numbers the run measured. ``attacks``: default, every ``HEADLINE:ATTACK`` column. A predictor
    of ``settings`` the file lacks is an error (a new predictor needs the security reports: :func:`write_study`).
    ``meta``: the header's facts (the rebuild's command, the run's commit ...); the header's commit, device and
    versions are the rebuild's own."""
    from ..provenance import git_commit, package_versions
    from .record import versions_text

    published = pd.read_csv(architectures_csv)
    attacks = list(attacks or [c.split(":", 1)[1] for c in published.columns if c.startswith(f"{headline}:")])
    metrics = study_metrics(settings["outcomes"], headline)
    needed = [*STUDY_INPUT_COLUMNS[:2], *map(best_outcome, metrics), *STUDY_INPUT_COLUMNS[2:], *settings["predictors"],
              *(f"{m}:{a}" for m in metrics for a in attacks)]
    if "any_deficient" not in needed:
        needed.append("any_deficient")
    missing = [c for c in needed if c not in published.columns]
    if missing:
        raise InvalidSpecError(f"{architectures_csv} lacks the columns {missing}: rebuild from the security "
                               "entries and the leaderboard instead (write_study)")
    kept = {*needed, *PREDICTORS}  # every predictor the file has, as study_table keeps them
    table = published[[c for c in published.columns if c in kept]].copy()  # the published order
    table["any_deficient"] = table["any_deficient"].map(
        lambda v: v if isinstance(v, bool) or pd.isna(v) else str(v).strip().lower() == "true").astype("boolean")
    table["reason"] = table["reason"].astype(object).where(table["reason"].notna(), None)
    excluded = {m: r or "excluded" for m, s, r in zip(table["model"], table["status"], table["reason"]) if s != "ok"}
    provenance = pd.DataFrame([{"git_commit": git_commit(), "device": "cpu (statistics only: no model, no attack)",
                                "versions": versions_text(package_versions()), "dataset": "–", "split": "–"}])
    return _write_study_files(table, excluded, provenance, out_dir, settings, meta=meta, attacks=attacks,
                              metric=metric, psnr_cap=psnr_cap, title=title, headline=headline)


def _write_study_files(table: pd.DataFrame, excluded: Mapping[str, str], provenance: pd.DataFrame,
                       out_dir: str | Path, settings: Mapping[str, Any], *, meta: Mapping[str, str] | None,
                       attacks: Sequence[str], metric: str, psnr_cap: float, title: str,
                       headline: str) -> dict[str, Path]:
    """The study's statistics on :func:`study_table`'s ``table`` and its files (:func:`write_study`); the one
    writer of :func:`write_study` and :func:`rebuild_study`."""
    from ..errors import CopaError
    from ..io import atomic_write, atomic_write_text
    from . import plots
    from .leaderboard import run_metadata

    predictors, outcomes = list(settings["predictors"]), list(settings["outcomes"])
    seed, n_resamples = int(settings.get("seed", 0)), int(settings.get("n_resamples", 9999))
    leak_threshold = float(settings.get("leak_threshold", 20.0))
    exact_psnr = settings.get("exact_psnr")
    info, outcome, metrics = metric_info(headline), best_outcome(headline), study_metrics(outcomes, headline)
    study = tie_exact_recoveries(table[table["status"] == "ok"].reset_index(drop=True), exact_psnr, headline)
    options = {"n_resamples": n_resamples, "random_state": seed}
    correlations = validity_tables(study, predictors, outcomes, **options)
    split = held_out_split(study["model"], seed=seed)
    candidates = [p for p in HELD_OUT_CANDIDATES if p in predictors] or predictors
    baselines = [p for p in TRIVIAL_PREDICTORS if p in predictors and p not in candidates]

    def fitter(names: Sequence[str]) -> Callable[[pd.DataFrame], FittedRule]:
        return lambda t: fit_threshold(t, choose_predictor(t, names, outcome), outcome,
                                       leak_threshold=leak_threshold, leak_sign=info.sign)

    rule, held, note = None, pd.DataFrame({"note": []}), None
    try:
        rule, _ = held_out_evaluation(study, split, fitter(candidates), outcome=outcome,
                                      leak_threshold=leak_threshold, leak_sign=info.sign, **options)
        chosen = next(iter(rule.weights))
        parts = []
        # each candidate and each trivial baseline fitted on half A alone: the winner, the losers and the rules
        # they must beat, reported alike
        for name, role in [*((c, "candidate") for c in candidates), *((b, "trivial baseline") for b in baselines)]:
            try:
                alone, part = held_out_evaluation(study, split, fitter([name]), outcome=outcome,
                                                  leak_threshold=leak_threshold, leak_sign=info.sign, **options)
            except CopaError:
                continue
            parts.append(part.assign(predictor=name, role=role, chosen=name == chosen, rule=alone.description,
                                     sign=alone.sign, threshold=alone.threshold, leak_threshold=leak_threshold,
                                     seed=seed))
        held = pd.concat(parts, ignore_index=True)
    except CopaError as exc:
        note = str(exc)
        held = pd.DataFrame({"note": [f"not evaluated: {note}"]})
    chosen_rows = held[held["chosen"]] if rule is not None else None
    halves = {m: subset for subset, names in split.subsets().items() for m in names}
    table = table.copy()
    table.insert(1, "held_out", [halves.get(m, "–") for m in table["model"]])
    table["leaks"] = [bool(_leaks(v, leak_threshold, info.sign)) if not math.isnan(v) else None
                      for v in table[outcome]]
    if rule is not None:
        scores = rule.score(table)
        table["predicted_leaks"] = [None if math.isnan(s) else bool(rule.sign * s >= rule.sign * rule.threshold)
                                    for s in scores]
    verdict_predictor = metric if metric in predictors else candidates[0]
    verdict_outcome = outcome if outcome in outcomes else outcomes[0]
    text = verdict(correlations, chosen_rows, rule, predictor=verdict_predictor, outcome=verdict_outcome,
                   leak_threshold=leak_threshold, candidates=held if rule is not None else None,
                   per_attack=[o for o in outcomes if o.startswith(f"{headline}:")], baselines=baselines,
                   headline=headline)
    exact = None if exact_psnr is None else _threshold_text(headline, float(exact_psnr))
    header = run_metadata(provenance, extra={**(meta or {}), "design": (
        f"{len(study)} architectures ({int(study['any_deficient'].sum())} rank-deficient), attacks "
        f"{', '.join(attacks)}; predictors {', '.join(predictors)}; outcomes {', '.join(outcomes)}; leaks: "
        f"{_leak_text(headline, leak_threshold)}" + ("" if exact is None else (
            f"; exact recoveries: a mean {info.label} {'≥' if info.sign > 0 else '≤'} {exact} counts as {exact} "
            "(tied) in every statistic; the tables show the measured means")))})
    out = Path(out_dir)
    paths = {name: out / name for name in STUDY_TABLES}
    atomic_write(paths["architectures.csv"], lambda p: table.to_csv(p, index=False))
    atomic_write(paths["predictors.csv"], lambda p: correlations.to_csv(p, index=False))
    atomic_write(paths["held_out.csv"], lambda p: held.to_csv(p, index=False))
    atomic_write_text(paths["validity.md"], study_markdown(
        title, header, text, table, correlations, held, rule, excluded=excluded, attacks=attacks,
        settings={"seed": seed, "n_resamples": n_resamples}, held_out_note=note, metric=metric,
        baselines=baselines, metrics=metrics, headline=headline))
    by = correlations.set_index(["subset", "predictor", "outcome"])

    def rhos(outcome: str, predictor: str) -> str:
        parts = []
        for subset in ("all", "deficient"):
            key = (subset, predictor, outcome)
            if key in by.index:
                row = by.loc[key]
                parts.append(f"{subset}: ρ = {format_number(row['spearman_rho'])} [{format_number(row['spearman_ci_low'])}, "
                             f"{format_number(row['spearman_ci_high'])}]")
        return "; ".join(parts)

    cap = psnr_cap if exact_psnr is None or info.sign < 0 else min(psnr_cap, float(exact_psnr))
    for name, column, what, x in [("best", outcome, "best attack", metric),
                                  *((a, f"{headline}:{a}", a, metric) for a in attacks),
                                  *((f"best_by_{p}", outcome, "best attack", p)
                                    for p in candidate_scatters(predictors, metric))]:
        paths[f"scatter_{name}.png"] = plots.validity_scatter(
            study, out / f"scatter_{name}.png", x=x, y=column, psnr_cap=cap, y_label=f"mean {{label}} of {what}",
            title=f"{what}: mean {info.label} vs {x} over {len(study)} architectures"
                  + (f" — Spearman {rhos(column, x)}" if rhos(column, x) else ""), headline=headline)
    return paths


# --------------------------------------------------------------------------------------------------
# python -m copa.bench.validity: the study again from a published architectures.csv


def published_run_facts(validity_md: str | Path) -> dict[str, str]:
    """The header facts (``- **key**: value``) of a published validity.md, without ``design``; those of a rebuilt
    one (keys ``run's KEY``) are read back as ``KEY``, so a rebuild of a rebuild names the same run."""
    facts: dict[str, str] = {}
    for line in Path(validity_md).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            break
        if line.startswith("- **") and "**: " in line:
            key, value = line[4:].split("**: ", 1)
            facts[key] = value.strip().strip("`")
    rebuilt = {k[len("run's "):]: v for k, v in facts.items() if k.startswith("run's ")}
    if rebuilt:  # the run's own facts, and those a rebuild copies unchanged
        rebuilt.update({k: facts[k] for k in RUN_FACTS_KEPT if k in facts})
    return {k: v for k, v in (rebuilt or facts).items() if k not in ("design", "input")}


RUN_FACTS_KEPT = ("config hash", "images per cell", "dataset")
"""Header facts of the run that a rebuilt validity.md states as they were (the others, e.g. commit, device and
date, are the rebuild's, and the run's appear as ``run's KEY``)."""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m copa.bench.validity ARCHITECTURES_CSV --config RUN_CONFIG --out DIR``: :func:`rebuild_study` with
    the run's validated config (its ``validity``, ``attacks``, ``plots``, ``headline_metric`` and ``title``) and the facts of the
    validity.md beside the input (:func:`published_run_facts`) carried into the header as ``run's KEY``."""
    import argparse
    import shlex
    import sys

    import yaml

    parser = argparse.ArgumentParser(prog="python -m copa.bench.validity",
                                     description="rebuild the security metric's validity study from a published "
                                                 "architectures.csv (no attack, no security report)")
    parser.add_argument("architectures", type=Path, help="a published validity/architectures.csv")
    parser.add_argument("--config", type=Path, required=True, help="the run's validated config (RESULTS/config.yaml)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the study's files")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text(encoding="utf-8"))
    beside = args.architectures.parent / "validity.md"
    run = published_run_facts(beside) if beside.is_file() else {}
    command = shlex.join(["python", "-m", "copa.bench.validity", *(sys.argv[1:] if argv is None else argv)])
    headline = config.get("headline_metric") or DEFAULT_HEADLINE_METRIC
    labels = " / ".join(metric_info(m).label for m in study_metrics(config["validity"]["outcomes"], headline))
    meta = {"command": command, **{key: run[key] for key in RUN_FACTS_KEPT if key in run},
            "input": f"{args.architectures} (the run's predictors and mean {labels} per attack; statistics "
                     "recomputed, no attack or security report rerun)",
            **{f"run's {key}": value for key, value in run.items() if key not in RUN_FACTS_KEPT}}
    plots_section = config.get("plots") or {}
    written = rebuild_study(args.architectures, args.out, config["validity"], meta=meta, attacks=config["attacks"],
                            metric=plots_section.get("security_metric", "normalised_score"),
                            psnr_cap=float(plots_section.get("psnr_cap", 100.0)),
                            title=config["title"] + " — validity of the security metric", headline=headline)
    print("wrote", *written.values(), sep="\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
