"""validity.md: the verdict first, the run's facts, how the verdict is decided, then every table of the study."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from tabulate import tabulate

from ...metrics import DEFAULT_HEADLINE_METRIC, metric_info
from ..leaderboard import markdown_header
from .held_out import HELD_OUT_CANDIDATES, FittedRule, candidate_scatters
from .predictors import TRIVIAL_PREDICTORS, best_outcome, floor_outcome
from .statistics import PARTIAL, STATISTICS
from .verdict import _fmt_p, _interval, format_number, verdict_rules


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


def floor_rows(architectures: pd.DataFrame, attacks: Sequence[str],
               headline: str = DEFAULT_HEADLINE_METRIC) -> list[list[str]]:
    """Per attack: on how many architectures (all; rank-deficient) its mean ``headline`` metric is worse than the
    floor's (``floor_HEADLINE``: the best attack that ignores the gradients), and which.

    >>> table = pd.DataFrame({"model": ["a", "b"], "any_deficient": [False, True], "psnr:x": [60.0, 5.0],
    ...                       "floor_psnr": [12.0, 12.0]})
    >>> floor_rows(table, ["x"])
    [['x', '1 of 2', '1 of 1', 'b (5.00)']]
    """
    sign = metric_info(headline).sign
    floor = architectures[floor_outcome(headline)].astype(float)
    deficient = architectures["any_deficient"].astype(bool)
    rows = []
    for attack in attacks:
        values = architectures[f"{headline}:{attack}"].astype(float)
        below = (sign * values < sign * floor) & values.notna() & floor.notna()
        names = ", ".join(f"{m} ({format_number(v, 2)})" for m, v in zip(architectures["model"][below], values[below]))
        rows.append([attack, f"{int(below.sum())} of {int((values.notna() & floor.notna()).sum())}",
                     f"{int((below & deficient).sum())} of {int((values.notna() & floor.notna() & deficient).sum())}",
                     names or "none"])
    return rows


def head_to_head_rows(architectures: pd.DataFrame, attacks: Sequence[str],
                      headline: str = DEFAULT_HEADLINE_METRIC) -> list[list[str]]:
    """Among the rank-deficient architectures: on how many the row's attack's mean ``headline`` metric is at least
    the column's (ties count for both).

    >>> table = pd.DataFrame({"any_deficient": [True, True, False], "psnr:x": [9.0, 20.0, 60.0],
    ...                       "psnr:y": [10.0, 20.0, 60.0]})
    >>> head_to_head_rows(table, ["x", "y"])
    [['x', '–', '1 of 2'], ['y', '2 of 2', '–']]
    """
    sign = metric_info(headline).sign
    part = architectures[architectures["any_deficient"].astype(bool)]
    rows = []
    for a in attacks:
        row = [a]
        for b in attacks:
            x, y = part[f"{headline}:{a}"].astype(float), part[f"{headline}:{b}"].astype(float)
            both = x.notna() & y.notna()
            row.append("–" if a == b else f"{int((both & (sign * x >= sign * y)).sum())} of {int(both.sum())}")
        rows.append(row)
    return rows


def _floor_section(included: pd.DataFrame, attacks: Sequence[str], floors: Sequence[str], headline: str) -> list[str]:
    info = metric_info(headline)
    worse = "below" if info.sign > 0 else "above"
    return ["## Against the floor, and head to head", "",
            (f"{floor_outcome(headline)} is the best mean {info.label} of the attacks that ignore the gradients "
             f"({', '.join(floors)}; never the best attack, in no statistic). An attack {worse} it on an "
             "architecture has learnt less from the gradients than a guess (issue 34: amplified errors)."), "",
            tabulate(floor_rows(included, attacks, headline),
                     headers=["attack", f"{worse} the floor: all", "rank-deficient", f"where (mean {info.label})"],
                     tablefmt="github", disable_numparse=True), "",
            (f"Head to head among the rank-deficient architectures: the row's attack's mean {info.label} "
             f"{'≥' if info.sign > 0 else '≤'} the column's on how many (ties count for both)."), "",
            tabulate(head_to_head_rows(included, attacks, headline), headers=["attack", *attacks],
                     tablefmt="github", disable_numparse=True), ""]


def study_markdown(title: str, meta: Mapping[str, str], text: str, architectures: pd.DataFrame,
                   correlations: pd.DataFrame, held: pd.DataFrame, rule: FittedRule | None, *,
                   excluded: Mapping[str, str], attacks: Sequence[str], settings: Mapping[str, Any],
                   held_out_note: str | None = None, metric: str = "normalised_score",
                   baselines: Sequence[str] = (), metrics: Sequence[str] = (),
                   headline: str = DEFAULT_HEADLINE_METRIC, floors: Sequence[str] = ()) -> str:
    """validity.md: the verdict paragraph first, the run's facts, the rules, then every table; ``metric``: the
    plots' x axis; ``baselines``: the trivial predictors every candidate is shown beside; ``metrics``: the
    study's (:func:`study_metrics`), ``headline`` first; ``floors``: the attacks that ignore the gradients
    (:func:`floor_rows`)."""
    metrics = list(dict.fromkeys([headline, *metrics]))
    info = metric_info(headline)
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
             *[f"{headline}:{a}" for a in attacks if f"{headline}:{a}" in architectures],
             *([floor_outcome(headline)] if floors and floor_outcome(headline) in architectures else [])]
    included = architectures[architectures["status"] == "ok"]
    lines += [f"## Architectures ({len(included)} in the study)", "",
              tabulate([[_cell(column, value) for column, value in zip(shown, row)]
                        for row in included[shown].itertuples(index=False)],
                       headers=shown, tablefmt="github", disable_numparse=True), ""]
    lines += ["Excluded: " + ("; ".join(f"{m} ({reason})" for m, reason in excluded.items()) or "none") + ".", ""]
    if floors and floor_outcome(headline) in included:
        lines += _floor_section(included, attacks, floors, headline)
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
