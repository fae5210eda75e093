"""The held-out evaluation: a seeded split of the random chains into halves A (fit) and B (held out), rules fitted
on A alone (the predictor of largest |ρ|, a threshold for "leaks"), reported on B and on the paper chains."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InvalidSpecError
from ...models import RANDOM_CHAIN_PREFIX
from .statistics import _correlation_columns, _pairs, spearman_rho


HELD_OUT_CANDIDATES = ("copa_index", "normalised_score", "propagated_image_fraction")
"""The predictors the held-out rule chooses from on half A (those of them in the study's predictors; all
its predictors if none is): the security metric's two numbers and the metric we propose from first principles
(how much of the image the layer-wise systems leave undetermined after propagation). Each is also fitted and
reported alone (held_out.csv, column ``chosen``), so the losers are reported too."""


def candidate_scatters(predictors: Sequence[str], metric: str) -> list[str]:
    """The held-out candidates (:data:`HELD_OUT_CANDIDATES`) among ``predictors`` other than ``metric`` (the
    plots' x axis): each gets its own scatter of the best attack's headline metric, ``scatter_best_by_PREDICTOR.png``, so
    the metrics the held-out half compares are seen side by side. One owner for the write_study files and the
    workflow rule's outputs."""
    return [p for p in HELD_OUT_CANDIDATES if p in predictors and p != metric]


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
