"""The verdict paragraph, generated from the study's numbers by fixed rules (:func:`verdict_rules`): does the
security metric predict and rank leakage, and what does it add beyond the trivial predictors?"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ...metrics import DEFAULT_HEADLINE_METRIC, metric_info
from ..leaderboard import format_number as leaderboard_number
from .held_out import FittedRule
from .predictors import best_outcome, outcome_metric
from .statistics import PARTIAL


ALPHA = 0.05
"""The level of the verdict's Holm-adjusted p-values (with 95 % intervals)."""


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
    """:func:`copa.bench.leaderboard.format_number` of any number-like value (a frame's cell)."""
    return leaderboard_number(float(value), digits)


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
