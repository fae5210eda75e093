"""What the study measures per architecture: the predictors from its security report (:data:`PREDICTORS`, the
trivial ones among them), and the architecture table — each attack's mean of every study metric and the best
attack (``best_psnr`` = the best mean of the headline metric, PSNR by default, :func:`study_metrics`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...errors import InvalidSpecError
from ...layerwise.security import propagated_image_dimensions
from ...metrics import DEFAULT_HEADLINE_METRIC, metric_info, metric_order
from ..leaderboard import board_metrics


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
                       metrics: Sequence[str] = (), headline: str = DEFAULT_HEADLINE_METRIC,
                       floors: Sequence[str] = ()) -> pd.DataFrame:
    """One row per architecture: ``model``, its predictors, ``METRIC:ATTACK`` per metric and attack,
    ``best_HEADLINE`` (the best mean of the ``headline`` metric over the attacks: the largest, or the smallest
    where lower is better), ``best_METRIC`` for the others (that attack's mean), ``best_attack``.

    ``board``: one row per (model, attack) cell with each metric's mean in the column ``METRIC_mean`` (the
    leaderboard's). ``metrics``: the headline metric's and the others' columns to take, headline first (default:
    every metric of the board). ``predictors``: a frame with a ``model`` column, or
    ``{model: predictors_from_security(...)}``. Models in only one of the two are kept (NaN where missing); a
    model whose attacks all lack the headline metric has ``best_*`` NaN and ``best_attack`` missing.
    ``floors``: attacks of ``board`` that ignore the gradients (mean-image): their ``METRIC:ATTACK`` columns are
    kept, but they are never the best attack; ``floor_HEADLINE`` is the best floor's mean (:func:`floor_outcome`).
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
    if floors:
        floor_values = out[[f"{headline}:{a}" for a in attacks if a in floors]].to_numpy(float)
        ranked_floors = np.where(np.isnan(floor_values), -np.inf, metric_info(headline).sign * floor_values)
        out[floor_outcome(headline)] = [row[np.argmax(r)] if not np.all(np.isnan(row)) else np.nan
                                        for row, r in zip(floor_values, ranked_floors)]
    attacks = studied_attacks(attacks, {"floors": floors})
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


def study_floors(settings: Mapping[str, Any] | None) -> list[str]:
    """The ``floors`` of a study's settings (the config's ``validity:`` section): the attacks that ignore the
    gradients (mean-image), tabulated as the floor but never ordered or the best attack; none when unset.

    >>> study_floors({"floors": ["mean-image"]}), study_floors(None)
    (['mean-image'], [])
    """
    return list((settings or {}).get("floors") or [])


def studied_attacks(attacks: Iterable[str], settings: Mapping[str, Any] | None) -> list[str]:
    """The attacks a study orders: ``attacks`` less the study's floors (:func:`study_floors`), in their order.

    >>> studied_attacks(["rgap", "mean-image", "copa"], {"floors": ["mean-image"]})
    ['rgap', 'copa']
    """
    floors = set(study_floors(settings))
    return [a for a in attacks if a not in floors]


def floor_outcome(metric: str) -> str:
    """``floor_METRIC``: the column of the best floor attack's mean ``metric`` (:func:`architecture_table`)."""
    return f"floor_{metric}"


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
