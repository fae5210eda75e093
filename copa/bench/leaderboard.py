"""Aggregate per-image records and security reports into the leaderboard (pandas + tabulate).

* :func:`load_records` — one row per record (a run of one attack on one image), every status kept;
* :func:`load_security` — one row per model: COPA index and normalised score, or not-applicable;
* :func:`leaderboard` — one row per (defence, model, attack) cell: the mean of every metric the records
  hold (the headline metric, PSNR unless the config's ``headline_metric`` names another, also ± std and median:
  :func:`board_headline` reads it back from a board), the mean update distortion, label accuracy,
  seconds, evaluations (over the cell's ``ok`` runs) and the counts of ok / failed / not-applicable runs,
  with the model's security metric; a cell with no ``ok`` run is still a row;
* :func:`leaderboard_markdown` / :func:`security_markdown` — GitHub-flavoured tables with a header
  stating the command, commit(s), config hash, device(s), package versions, images per cell and date;
  the overview shows a cell without ok runs as ``failed (N)``; failed and not-applicable runs are
  listed with their reasons. Records of several defences (the workflow's ``defences`` axis) get one
  section per defence, each with the overview, Spearman and per-model tables of a single-defence page.

The metric columns come from the metric registry (:func:`copa.metrics.register_metric`): the metrics
present in the records, in registration order, each with its label, unit, direction (↑ higher is better,
↓ lower), decimals and the legend's notes (``legend``, ``needs``). Aggregates are over ``ok`` runs only; a PSNR
of ``+inf`` (an exact recovery) makes the mean ``inf`` and the standard deviation undefined ("–"). A metric is
"n/a" when no ok run of the cell has it (LPIPS: the AlexNet weights were not available).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..errors import CopaError
from ..io import atomic_write, atomic_write_text
from ..metrics import DEFAULT_HEADLINE_METRIC, DEFAULT_METRICS, metric_info, metric_order
from ..threat.defences import NoDefence, canonical_defences
from .fedavg import fedavg_section
from .record import as_number, metric_columns, read_json, record_columns, record_metrics, record_row

SECURITY_COLUMNS = ["model", "status", "reason", "copa_index", "normalised_score", "seconds"]
COUNT_COLUMNS = ["defence", "model", "attack", "runs", "ok", "failed", "not_applicable"]
COST_COLUMNS = ["update_distortion_mean", "label_accuracy", "seconds_mean", "forward_evals_mean",
                "gradient_evals_mean", "copa_index", "normalised_score", "security_status"]


def board_columns(metrics: Sequence[str] = DEFAULT_METRICS, headline: str = DEFAULT_HEADLINE_METRIC) -> list[str]:
    """The leaderboard's columns: counts, each metric's statistics (registry order), costs, security."""
    stats = [f"{name}_{stat}" for name in metric_order(metrics) for stat in _statistics(name, headline)]
    return [*COUNT_COLUMNS, *stats, *COST_COLUMNS]


def _statistics(metric: str, headline: str) -> tuple[str, ...]:
    return ("mean", "std", "median") if metric == headline else ("mean",)


def board_metrics(board: pd.DataFrame) -> list[str]:
    """The metrics of a leaderboard frame (also one read back from leaderboard.csv)."""
    return [c.removesuffix("_mean") for c in board.columns if c.endswith("_mean") and c not in COST_COLUMNS]


def board_headline(board: pd.DataFrame) -> str:
    """The headline metric of a leaderboard frame (also one read back from leaderboard.csv): the one with a
    median column."""
    return next((m for m in board_metrics(board) if f"{m}_median" in board.columns), DEFAULT_HEADLINE_METRIC)


BOARD_COLUMNS = board_columns()
"""The columns of a leaderboard of records scored with the default metrics."""


# --------------------------------------------------------------------------------------------------
# Loading


def load_records(paths: Iterable[str | Path], headline: str = DEFAULT_HEADLINE_METRIC) -> pd.DataFrame:
    """One row per record file (see :func:`record_row`); a column per metric that any record holds, and
    the ``headline`` metric's always."""
    records = [(read_json(p), p) for p in paths]
    metrics = [headline, *(name for record, _ in records for name in record_metrics(record))]
    return pd.DataFrame([record_row(record, p) for record, p in records], columns=record_columns(metrics))


def records_from_cells(cell_paths: Iterable[str | Path], headline: str = DEFAULT_HEADLINE_METRIC) -> pd.DataFrame:
    """The records listed by the workflow's cell summaries (``OUT/TAG/cells/DEFENCE/MODEL/ATTACK.json``)."""
    paths = []
    for cell_path in cell_paths:
        cell = read_json(cell_path)
        paths.extend(entry["record"] for entry in cell.get("records", []))
    return load_records(paths, headline)


def read_security_entries(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The security entries (:func:`copa.bench.pipeline.security_entry`) at ``paths``; each must be ok or
    not-applicable."""
    entries = []
    for path in paths:
        entry = read_json(path)
        if entry.get("status") not in ("ok", "not-applicable"):
            raise CopaError(f"security entry {str(path)!r} has status {entry.get('status')!r}: "
                            "accepted are ok, not-applicable")
        entries.append(entry)
    return entries


def load_security(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per security entry (:func:`read_security_entries`)."""
    rows = [{"model": entry.get("model"), "status": entry["status"], "reason": entry.get("reason"),
             "copa_index": as_number(entry.get("copa_index")), "normalised_score": as_number(entry.get("normalised_score")),
             "seconds": as_number(entry.get("seconds"))} for entry in read_security_entries(paths)]
    return pd.DataFrame(rows, columns=SECURITY_COLUMNS)


# --------------------------------------------------------------------------------------------------
# Aggregation


def _order(values: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(v for v in values if v is not None))
    if not preferred:
        return seen
    return list(dict.fromkeys([*preferred, *seen]))


def defence_name(entry: str) -> str:
    """An entry of the ``defences`` axis (``prune:p=0.9``, ``a+b``, ``none``) as the records' ``defence``
    column names it: the canonical specs joined by ``+``; an entry that is not a known defence, as given."""
    try:
        return "+".join(canonical_defences(entry.split("+"))) or NoDefence.name
    except CopaError:
        return entry


def defence_order(frame: pd.DataFrame, defences: Sequence[str] | None = None) -> list[str]:
    """The defences of a records or board frame: those of ``defences`` (config order) first, then the
    others in order of appearance."""
    return _order(frame["defence"], [defence_name(d) for d in defences or []])


def leaderboard(records: pd.DataFrame, security: pd.DataFrame | None = None, *,
                models: Sequence[str] | None = None, attacks: Sequence[str] | None = None,
                defences: Sequence[str] | None = None, headline: str = DEFAULT_HEADLINE_METRIC) -> pd.DataFrame:
    """One row per (defence, model, attack): statistics over its ``ok`` runs and the counts of every status;
    the ``headline`` metric's also ± std and median.

    Every triple of ``defences`` × ``models`` × ``attacks`` (default: those in ``records``) is a row,
    also when it has no record at all (``runs`` 0) — nothing is silently dropped. The update distortion
    is the mean over the cell's runs that know it (the client's defences do not depend on the attack).
    """
    models = _order(records["model"], models)
    attacks = _order(records["attack"], attacks)
    metrics = metric_order([headline, *metric_columns(records.columns)])
    sec = {} if security is None else {row.model: row for row in security.itertuples(index=False)}
    rows = []
    defences = defence_order(records, defences) or [NoDefence.name]
    for defence, model, attack in itertools.product(defences, models, attacks):
        s = sec.get(model)
        cell = records[(records["defence"] == defence) & (records["model"] == model) & (records["attack"] == attack)]
        ok = cell[cell["status"] == "ok"]
        rows.append({
            "defence": defence, "model": model, "attack": attack, "runs": len(cell), "ok": len(ok),
            "failed": int((cell["status"] == "failed").sum()),
            "not_applicable": int((cell["status"] == "not-applicable").sum()),
            **{key: value for name in metrics for key, value in _metric_statistics(ok, name, headline).items()},
            "update_distortion_mean": _mean(cell["update_distortion"]), "label_accuracy": _mean(ok["label_accuracy"]),
            "seconds_mean": _mean(ok["seconds"]),
            "forward_evals_mean": _mean(ok["forward_evals"]), "gradient_evals_mean": _mean(ok["gradient_evals"]),
            "copa_index": np.nan if s is None else s.copa_index,
            "normalised_score": np.nan if s is None else s.normalised_score,
            "security_status": "missing" if s is None else s.status,
        })
    return pd.DataFrame(rows, columns=board_columns(metrics, headline))


def _metric_statistics(ok: pd.DataFrame, metric: str, headline: str) -> dict[str, float]:
    """``{metric}_mean`` (and for the headline metric ``_std`` and ``_median``) over a cell's ok runs."""
    values = ok[metric].astype(float) if metric in ok else pd.Series(dtype=float)
    compute = {"mean": _mean, "std": _std, "median": lambda v: float(v.median()) if len(v.dropna()) else np.nan}
    return {f"{metric}_{stat}": compute[stat](values) for stat in _statistics(metric, headline)}


def _mean(series: pd.Series) -> float:
    values = series.astype(float).dropna()
    return float(values.mean()) if len(values) else np.nan


def _std(series: pd.Series) -> float:
    values = series.astype(float).dropna()
    if len(values) < 2 or not np.isfinite(values).all():
        return np.nan
    return float(values.std(ddof=1))


# --------------------------------------------------------------------------------------------------
# Formatting


def format_number(value: float, digits: int = 2, missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _fmt_int(value: float, missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return f"{int(round(value))}"


def _reason(reason: Any, width: int | None = None) -> str:
    """One line, '|' escaped for Markdown tables; '' for a missing reason."""
    if reason is None or (isinstance(reason, float) and math.isnan(reason)):
        return ""
    text = " ".join(str(reason).split())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("|", "\\|")


def _reason_after_status(status: str, reason: Any) -> Any:
    """A record's reason without the status it repeats: ``not applicable: X`` → ``X`` beside the status
    ``not-applicable`` (``failed: X`` → ``X`` beside ``failed``)."""
    if not isinstance(reason, str):
        return reason
    spoken = status.replace("-", " ")
    for prefix in (f"{spoken}:", f"{status}:"):
        if reason.lower().startswith(prefix):
            return reason[len(prefix):].lstrip()
    return reason


def _runs(row: dict[str, Any]) -> str:
    return f"{row['ok']} / {row['failed']} / {row['not_applicable']}"


def _metric_heading(metric: str, headline: str) -> str:
    """``PSNR dB ↑ (mean ± std)`` for the headline metric, ``SSIM ↑`` for the others."""
    heading = metric_info(metric).heading
    return f"{heading} (mean ± std)" if metric == headline else heading


def _metric_cell(row: dict[str, Any], metric: str) -> str:
    """A cell's metric: "–" without ok runs, "n/a" when its ok runs lack the metric, else the mean with the
    metric's decimals (± std for the headline metric, when defined)."""
    if not row["ok"]:
        return "–"
    mean, std, digits = row[f"{metric}_mean"], row.get(f"{metric}_std", np.nan), metric_info(metric).digits
    if math.isnan(mean):
        return "n/a"
    return format_number(mean, digits) if math.isnan(std) else f"{format_number(mean, digits)} ± {format_number(std, digits)}"


def _security_heading(row) -> str:
    if row.security_status == "ok":
        return f"COPA index {_fmt_int(row.copa_index)}, normalised score {format_number(row.normalised_score, 3)}"
    if row.security_status == "not-applicable":
        return "security metric not applicable (not a chain)"
    return "security metric missing"


def shown_metrics(board: pd.DataFrame) -> list[str]:
    """The board's metrics that some cell has (a metric n/a in every cell — LPIPS without its AlexNet
    weights — is left out of the Markdown tables; leaderboard.csv keeps its column). The headline metric is
    always shown, and every metric while no cell has an ok run."""
    ok = board[board["ok"] > 0]
    headline = board_headline(board)
    return [m for m in board_metrics(board)
            if m == headline or ok.empty or ok[f"{m}_mean"].notna().any()]


def absent_metrics(board: pd.DataFrame) -> list[str]:
    """The board's metrics that no cell has (:func:`shown_metrics` leaves them out)."""
    return [m for m in board_metrics(board) if m not in shown_metrics(board)]


def board_table(board: pd.DataFrame, model: str, metrics: Sequence[str] | None = None) -> str:
    """The per-model table: one row per attack; ``metrics``: the columns (default :func:`shown_metrics`)."""
    metrics = shown_metrics(board) if metrics is None else list(metrics)
    rows = []
    for row in board[board["model"] == model].to_dict("records"):
        evals = f"{_fmt_int(row['forward_evals_mean'])} / {_fmt_int(row['gradient_evals_mean'])}" if row["ok"] else "–"
        rows.append([row["attack"], _runs(row), *(_metric_cell(row, m) for m in metrics),
                     format_number(row["label_accuracy"]), format_number(row["seconds_mean"], 1), evals])
    headline = board_headline(board)
    headers = ["attack", "runs ok / failed / n.a.", *(_metric_heading(m, headline) for m in metrics), "label acc.",
               "seconds", "evaluations fwd / grad"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _headline_title(headline: str) -> str:
    """``mean PSNR (dB)``: the headline metric's label and unit."""
    info = metric_info(headline)
    return f"mean {info.label} ({info.unit})" if info.unit else f"mean {info.label}"


def overview_table(board: pd.DataFrame, distortion: bool = False, tablefmt: str = "github") -> str:
    """Models × attacks: the headline metric's mean (PSNR, dB) over the ok runs, with the model's security
    metric (and with ``distortion`` its mean update distortion). ``board``: one defence's rows; ``tablefmt``:
    tabulate's format (``rst`` for the workflow's HTML report)."""
    headline = board_headline(board)
    digits = metric_info(headline).digits
    attacks = list(dict.fromkeys(board["attack"]))
    rows = []
    for model in dict.fromkeys(board["model"]):
        sub = board[board["model"] == model].set_index("attack")
        first = sub.iloc[0]
        cells = []
        for attack in attacks:
            r = sub.loc[attack]
            if r.ok:
                cells.append(format_number(r[f"{headline}_mean"], digits))
            elif r.not_applicable and not r.failed:
                cells.append("n.a.")
            elif r.failed:
                cells.append(f"failed ({r.failed})")
            else:
                cells.append("–")
        index = _fmt_int(first.copa_index, "n.a." if first.security_status == "not-applicable" else "–")
        score = format_number(first.normalised_score, 3, "n.a." if first.security_status == "not-applicable" else "–")
        rows.append([model, index, score, *([format_number(_mean(sub["update_distortion_mean"]), 3)] if distortion else []),
                     *cells])
    headers = ["model", "COPA index", "normalised score", *(["update distortion"] if distortion else []), *attacks]
    return tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True)


def report_overview(results_dir: str | Path) -> str:
    """The headline table for the first page of the workflow's HTML report (reStructuredText): the overview of
    ``results_dir/leaderboard.csv`` — the undefended runs, or the first setting's, named — or '' before the
    leaderboard exists."""
    path = Path(results_dir) / "leaderboard.csv"
    if not path.is_file():
        return ""
    board = pd.read_csv(path)
    order = defence_order(board)
    shown = NoDefence.name if NoDefence.name in order else order[0]
    title = f"{_headline_title(board_headline(board))} per model and attack"
    if len(order) > 1 or shown != NoDefence.name:
        title += f" — {_defence_heading(shown)}"
    return "\n".join([f"**{title}** (n.a. = not applicable; the full tables: leaderboard.md)", "",
                      overview_table(board[board["defence"] == shown], tablefmt="rst")])


def problems_table(records: pd.DataFrame, width: int = 160) -> str | None:
    """Every failed or not-applicable run with its reason (None when there is none)."""
    bad = records[records["status"] != "ok"]
    if bad.empty:
        return None
    several = records["defence"].nunique() > 1  # the defence column only when it tells runs apart
    rows = []
    for row in bad.itertuples(index=False):
        rows.append([*([row.defence] if several else []), row.model, row.attack, row.index, row.status,
                     _reason(_reason_after_status(row.status, row.reason), width)])
    return tabulate(rows, headers=[*(["defence"] if several else []), "model", "attack", "image", "status", "reason"],
                    tablefmt="github", disable_numparse=True)


def run_metadata(records: pd.DataFrame, *, command: str | None = None, images_per_cell: int | str | None = None,
                 extra: dict[str, str] | None = None, date: str | None = None,
                 config_hash: str | None = None) -> dict[str, str]:
    """The header's facts, from the records (commits, devices and package versions actually used) and
    the caller (command, images per cell, ``config_hash``: the hash of the run's validated config,
    :func:`copa.pipeline.run_config_hash`). Records computed under several commits, devices or package
    sets list each one."""
    def distinct(column: str, sep: str = ", ") -> str:
        values = sorted({str(v) for v in records[column].dropna()}) if column in records else []
        return sep.join(values) if values else "–"

    meta = {
        "command": command or "–",
        "commit": distinct("git_commit"),
        "config hash": config_hash or "–",
        "device": distinct("device"),
        "package versions": distinct("versions", " | "),
        "images per cell": str(images_per_cell) if images_per_cell is not None else "–",
        "dataset": ", ".join(f"{d} ({s})" for d, s in
                             sorted({(str(d), str(s)) for d, s in zip(records["dataset"], records["split"])})) or "–",
        "date": date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    sandboxes = sorted({str(v) for v in records["sandbox"].dropna()}) if "sandbox" in records else []
    if sandboxes:  # some attack ran in a worker: say in what (docs/trust.md)
        unsafe = "NONE" in sandboxes
        meta["sandbox of isolated attacks"] = (
            ", ".join(s for s in sandboxes if s != "NONE") + (", " if len(sandboxes) > 1 and unsafe else "")
            + ("**WITHOUT a sandbox for some records** (allowed explicitly: those attacks could read every file "
               "of the machine)" if unsafe else ""))
    meta.update(extra or {})
    return meta


def markdown_header(title: str, meta: dict[str, str]) -> list[str]:
    lines = [f"# {title}", ""]
    for key, value in meta.items():
        text = f"`{value}`" if key in ("command", "commit", "config hash") and value != "–" else value
        lines.append(f"- **{key}**: {text}")
    return lines


def correlation_table(board: pd.DataFrame, metric: str) -> str:
    rho = spearman_by_attack(board, metric)
    rows = [[r.attack, r.models, format_number(r.spearman_rho, 3), format_number(r.p_value, 3)] for r in rho.itertuples(index=False)]
    headline = metric_info(board_headline(board)).label
    return tabulate(rows, headers=["attack", "models", f"Spearman ρ (mean {headline} vs {metric})", "p"],
                    tablefmt="github", disable_numparse=True)


DISTORTION_NOTE = ("Update distortion: ‖g̃ − g‖/‖g‖, how far the update the client shared is from its true one "
                   "(mean over the model's runs; 0 undefended).")


def _defence_heading(defence: str) -> str:
    return "none (the undefended update)" if defence == NoDefence.name else f"`{defence}`"


def defence_section(board: pd.DataFrame, metric: str = "normalised_score", *, level: int = 2,
                    distortion: bool = False, metrics: Sequence[str] | None = None) -> list[str]:
    """The lines of one defence's tables (``board``: its rows): overview, Spearman ρ, one table per model;
    headings at ``level``; with ``distortion`` the overview has the models' update distortion; ``metrics``:
    the per-model tables' metric columns (default :func:`shown_metrics` of ``board``)."""
    h = "#" * level
    headline = board_headline(board)
    lines = [f"{h} Overview: {_headline_title(headline)}", "", overview_table(board, distortion), "",
             f"{h} {metric_info(headline).label} vs security metric across architectures", "",
             "Spearman's ρ over the models with a security metric and ok runs (– with fewer than 3 models or a "
             "constant side). A higher normalised score (a more negative COPA index) means a more secure model.",
             "", correlation_table(board, metric), ""]
    for model in dict.fromkeys(board["model"]):
        first = board[board["model"] == model].iloc[0]
        lines += [f"{h} {model} — {_security_heading(first)}", "", board_table(board, model, metrics), ""]
    return lines


def leaderboard_markdown(board: pd.DataFrame, records: pd.DataFrame, meta: dict[str, str], *,
                         title: str = "copa-bench leaderboard", metric: str = "normalised_score",
                         defences: Sequence[str] | None = None) -> str:
    """The leaderboard page: header, then :func:`defence_section` — once, or with records of several
    defences once per defence (``defences``: their order, e.g. the config's; default: as in ``board``)."""
    lines = markdown_header(title, meta)
    lines += ["", metric_legend(board), ""]
    order = defence_order(board, defences)
    if len(order) > 1:
        lines += [f"One section per defence setting of the client: {', '.join(map(_defence_heading, order))}. "
                  + DISTORTION_NOTE, ""]
        for defence in order:
            lines += [f"## {'Client setting' if ';' in defence else 'Defence'}: {_defence_heading(defence)}", ""]
            lines += defence_section(board[board["defence"] == defence], metric, level=3, distortion=True,
                                     metrics=shown_metrics(board))
    else:
        defended = any(defence != NoDefence.name for defence in order)
        if defended:
            lines += [f"Every client defended its update with {_defence_heading(order[0])}. " + DISTORTION_NOTE, ""]
        lines += defence_section(board, metric, distortion=defended, metrics=shown_metrics(board))
    lines += fedavg_section(records, list(dict.fromkeys(board["attack"])))
    problems = problems_table(records)
    lines += ["## Failed and not-applicable runs", ""]
    lines += [problems if problems else "None: every run finished with status ok.", ""]
    return "\n".join(lines)


def metric_legend(board: pd.DataFrame) -> str:
    """The sentence under the header: how to read the metric columns, from the metric registry — each metric's
    ``legend`` (PSNR's ``inf``), what n/a means and what a metric ``needs`` (LPIPS: AlexNet weights), and the
    metrics left out of the tables because no cell has them (:func:`absent_metrics`)."""
    infos = [metric_info(m) for m in board_metrics(board)]
    legends = "".join(f"{info.label} {info.legend}; " for info in infos if info.legend)
    needs = "; ".join(f"{info.label}: the {info.needs} were not available" for info in infos if info.needs)
    absent = [metric_info(m) for m in absent_metrics(board)]
    reasons = [f"its {info.needs} were not available" for info in absent if info.needs]
    left_out = (f" Left out of the tables, n/a in every cell: {', '.join(info.label for info in absent)}"
                + (f" ({'; '.join(reasons)})" if reasons else "") + "." if absent else "")
    return (f"Statistics are over each cell's `ok` runs; ↑ / ↓: higher / lower is better; {legends}n/a: the cell's "
            f"ok runs lack the metric{f' ({needs})' if needs else ''}; n.a. = not applicable." + left_out)


def security_markdown(security: pd.DataFrame, meta: dict[str, str] | None = None, *,
                      title: str = "COPA security metric per architecture") -> str:
    rows = []
    for row in security.itertuples(index=False):
        rows.append([row.model, row.status, _fmt_int(row.copa_index), format_number(row.normalised_score, 4),
                     format_number(row.seconds, 1), _reason(_reason_after_status(row.status, row.reason))])
    table = tabulate(rows, headers=["model", "status", "COPA index", "normalised score", "seconds", "reason"],
                     tablefmt="github", disable_numparse=True)
    lines = markdown_header(title, meta) if meta else [f"# {title}"]
    lines += ["", "COPA index: Σ over conv layers of round(rank deficiency × (L−1−i)/(L−1)); 0 = every layer "
              "solvable (most leaky). Normalised score: weighted fraction of undetermined input dimensions in "
              "[0, 1] (see copa/layerwise/security.py).", "", table, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Writing


def write_tables(cell_paths: Iterable[str | Path], security_paths: Iterable[str | Path], *,
                 outputs: dict[str, str | Path], models: Sequence[str] | None = None,
                 attacks: Sequence[str] | None = None, command: str | None = None,
                 images_per_cell: int | str | None = None, title: str = "copa-bench leaderboard",
                 extra: dict[str, str] | None = None, metric: str = "normalised_score",
                 config_hash: str | None = None, defences: Sequence[str] | None = None,
                 headline: str = DEFAULT_HEADLINE_METRIC) -> pd.DataFrame:
    """Write ``outputs`` (keys: records_csv, leaderboard_csv, leaderboard_md, security_csv, security_md),
    each atomically; return the leaderboard frame. ``defences``: the ``defences`` axis's entries, in the
    order of the board's rows and of leaderboard.md's sections; ``headline``: the config's headline metric."""
    records = records_from_cells(cell_paths, headline)
    security = load_security(security_paths)
    board = leaderboard(records, security, models=models, attacks=attacks, defences=defences, headline=headline)
    meta = run_metadata(records, command=command, images_per_cell=images_per_cell, extra=extra,
                        config_hash=config_hash)
    writers = {
        "records_csv": lambda p: records.to_csv(p, index=False),
        "leaderboard_csv": lambda p: board.to_csv(p, index=False),
        "security_csv": lambda p: security.to_csv(p, index=False),
    }
    texts = {"leaderboard_md": lambda: leaderboard_markdown(board, records, meta, title=title, metric=metric,
                                                            defences=defences),
             "security_md": lambda: security_markdown(security, meta)}
    unknown = sorted(set(outputs) - set(writers) - set(texts))
    if unknown:
        raise CopaError(f"unknown outputs {unknown}: accepted are {sorted({*writers, *texts})}")
    for key, path in outputs.items():
        if key in writers:
            atomic_write(path, writers[key])
        else:
            atomic_write_text(path, texts[key]())
    return board


def spearman_by_attack(board: pd.DataFrame, metric: str = "normalised_score") -> pd.DataFrame:
    """Spearman ρ between the security ``metric`` and the mean of the board's headline metric (PSNR,
    :func:`board_headline`) across models, per (defence, attack).

    Uses the models whose security metric is available and whose cell has ok runs; ρ is NaN with
    fewer than 3 such models or when either side is constant.
    """
    from scipy.stats import spearmanr  # deferred: scipy.stats takes ≈ 2 s to import

    if metric not in ("normalised_score", "copa_index"):
        raise CopaError(f"security metric {metric!r} is invalid: accepted are normalised_score, copa_index")
    headline = board_headline(board)
    rows = []
    for defence, attack in dict.fromkeys(zip(board["defence"], board["attack"])):
        sub = board[(board["defence"] == defence) & (board["attack"] == attack) & (board["ok"] > 0)
                    & board[metric].notna()]
        x, y = sub[metric].to_numpy(float), sub[f"{headline}_mean"].to_numpy(float)
        rho = p = np.nan
        if len(sub) >= 3 and np.unique(x).size > 1 and np.unique(y).size > 1:
            result = spearmanr(x, y)
            rho, p = float(result.statistic), float(result.pvalue)
        rows.append({"defence": defence, "attack": attack, "models": len(sub), "metric": metric, "spearman_rho": rho,
                     "p_value": p})
    return pd.DataFrame(rows, columns=["defence", "attack", "models", "metric", "spearman_rho", "p_value"])


def write_partial(records_root: str | Path, security_root: str | Path, *, outputs: dict[str, str | Path],
                  models: Sequence[str], attacks: Sequence[str], defences: dict[str, str], indices: Sequence[int],
                  title: str = "copa-bench leaderboard", metric: str = "normalised_score",
                  command: str | None = None, instances: dict[str, Sequence[str]] | None = None,
                  headline: str = DEFAULT_HEADLINE_METRIC) -> dict[str, int]:
    """The leaderboard of the records that exist so far, for a stopped or still-running workflow (rule
    ``partial``): ``records_root/DEFENCE_TAG/MODEL/ATTACK/INDEX/record.json`` for the configured axes
    (``defences``: tag → the config's entry, or the setting's label). ``instances``: tag → its instances'
    directory names (client batches, :func:`copa.bench.pipeline.instance_key`; default ``indices``). The
    page's title and header say it is partial: complete cells of all, records of all. ``outputs`` keys:
    records_csv, leaderboard_md. Returns the counts. ``headline``: the config's headline metric."""
    records_root, security_root = Path(records_root), Path(security_root)
    paths, complete, expected = [], 0, 0
    for tag in defences:
        keys = [str(k) for k in (instances or {}).get(tag, indices)]
        for model in models:
            for attack in attacks:
                found = [records_root / tag / model / attack / k / "record.json" for k in keys]
                found = [p for p in found if p.is_file()]
                paths += found
                complete += len(found) == len(keys)
                expected += len(keys)
    cells = len(defences) * len(models) * len(attacks)
    counts = {"cells_complete": complete, "cells": cells, "records": len(paths), "records_expected": expected}
    if not paths:
        raise CopaError(f"no records yet under {records_root}: nothing to tabulate (0 of {cells} cells)")
    records = load_records(paths, headline)
    security = load_security([p for p in (security_root / f"{m}.json" for m in models) if p.is_file()])
    board = leaderboard(records, security, models=models, attacks=attacks, defences=list(defences.values()),
                        headline=headline)
    state = (f"PARTIAL: {complete} of {cells} cells complete, {len(paths)} of {counts['records_expected']} "
             f"records")
    meta = run_metadata(records, command=command, images_per_cell=len(indices), extra={"state": state})
    text = leaderboard_markdown(board, records, meta, title=f"{title} — {state}", metric=metric,
                                defences=list(defences.values()))
    writers = {"records_csv": lambda p: atomic_write(p, lambda q: records.to_csv(q, index=False)),
               "leaderboard_md": lambda p: atomic_write_text(p, text)}
    unknown = sorted(set(outputs) - set(writers))
    if unknown:
        raise CopaError(f"unknown outputs {unknown}: accepted are {sorted(writers)}")
    for key, path in outputs.items():
        writers[key](path)
    return counts
