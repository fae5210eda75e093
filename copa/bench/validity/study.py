"""The written study (the workflow's rule ``validity``): the one part of the package that reads and writes — the
security entries and the leaderboard in; architectures.csv, predictors.csv, held_out.csv, validity.md and the
scatter plots out (:func:`write_study`), or the same files again from a published architectures.csv
(:func:`rebuild_study`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ...errors import CopaError, InvalidSpecError
from ...io import atomic_write, atomic_write_text
from ...metrics import DEFAULT_HEADLINE_METRIC, metric_info
from ...provenance import git_commit, package_versions
from ...threat.defences import NoDefence
from .. import plots
from ..leaderboard import read_security_entries, run_metadata
from ..record import versions_text
from .held_out import (HELD_OUT_CANDIDATES, FittedRule, _leaks, candidate_scatters, choose_predictor, fit_threshold,
                       held_out_evaluation, held_out_split)
from .predictors import PREDICTORS, TRIVIAL_PREDICTORS, architecture_table, best_outcome, floor_outcome, \
    predictors_from_security, studied_attacks, study_floors, study_metrics
from .report import study_markdown
from .statistics import validity_tables
from .verdict import _leak_text, _threshold_text, format_number, verdict


STUDY_TABLES = ("architectures.csv", "predictors.csv", "held_out.csv", "validity.md")


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
    if "defence" not in board.columns:
        return board
    rows = board[board["defence"] == NoDefence.name]
    if rows.empty:
        raise InvalidSpecError(f"the leaderboard has no undefended rows (defence {NoDefence.name!r}); its defences: "
                               f"{sorted(set(board['defence'].astype(str)))}")
    return rows


def study_table(entries: Sequence[Mapping[str, Any]], board: pd.DataFrame, *, metrics: Sequence[str] = (),
                headline: str = DEFAULT_HEADLINE_METRIC,
                floors: Sequence[str] = ()) -> tuple[pd.DataFrame, dict[str, str]]:
    """:func:`architecture_table` of the security entries' predictors and ``board`` (``metrics``, ``headline``,
    ``floors``: its), with ``status`` (ok or excluded) and ``reason``; and the excluded architectures → reason: not
    applicable (the entry's reason), no security entry, or no ok run of any attack (``best_psnr`` NaN)."""
    ok = {e["model"]: predictors_from_security(e["report"]) for e in entries if e["status"] == "ok"}
    excluded = {e["model"]: e.get("reason") or "not applicable" for e in entries if e["status"] != "ok"}
    table = architecture_table(board, ok, metrics=metrics, headline=headline, floors=floors)
    for model, best in zip(table["model"], table[best_outcome(headline)]):
        if model not in ok and model not in excluded:
            excluded[model] = "no security entry"
        elif model in ok and math.isnan(float(best)):
            excluded[model] = "no ok run of any attack"
    table["status"] = ["ok" if m not in excluded else "excluded" for m in table["model"]]
    table["reason"] = [excluded.get(m) for m in table["model"]]
    return table, excluded


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
    ``metric``: the predictor the verdict judges and the plots' x axis. ``settings["floors"]`` (optional): attacks
    that ignore the gradients, kept as references outside ``attacks`` (:func:`architecture_table`). Files: architectures.csv,
    predictors.csv (:func:`validity_tables`, with the partial correlation given the full-rank split),
    held_out.csv (:func:`held_out_evaluation` with the predictor of :data:`HELD_OUT_CANDIDATES` of largest |ρ| on
    half A and a threshold for ``best_psnr ≥ leak_threshold``; one block of rows per candidate and per
    :data:`TRIVIAL_PREDICTORS` baseline, each fitted on A alone, ``role`` saying which, ``chosen`` marking the
    winner), validity.md (:func:`verdict` first), scatter_ATTACK.png, scatter_best.png and
    scatter_best_by_PREDICTOR.png for the other candidates (:func:`candidate_scatters`). ``headline``: the
    config's headline metric (PSNR above; ``best_psnr`` is ``best_HEADLINE``); the tables hold it and the other
    metrics the outcomes name (:func:`study_metrics`).
    """
    entries = read_security_entries(security_paths)
    board = _undefended(pd.read_csv(board_csv))
    floors = study_floors(settings)
    attacks = studied_attacks(attacks or dict.fromkeys(board["attack"]), settings)
    metrics = study_metrics(settings["outcomes"], headline)
    table, excluded = study_table(entries, board[board["attack"].isin([*attacks, *floors])], metrics=metrics,
                                  headline=headline, floors=floors)
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
    published = pd.read_csv(architectures_csv)
    floors = study_floors(settings)
    attacks = studied_attacks(attacks or [c.split(":", 1)[1] for c in published.columns
                                          if c.startswith(f"{headline}:")], settings)
    metrics = study_metrics(settings["outcomes"], headline)
    needed = [*STUDY_INPUT_COLUMNS[:2], *map(best_outcome, metrics), *STUDY_INPUT_COLUMNS[2:], *settings["predictors"],
              *(f"{m}:{a}" for m in metrics for a in attacks),
              *((floor_outcome(headline), *(f"{m}:{f}" for m in metrics for f in floors)) if floors else ())]
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
        baselines=baselines, metrics=metrics, headline=headline, floors=study_floors(settings)))
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
