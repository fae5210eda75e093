"""Aggregate per-image records and security reports into the leaderboard (pandas + tabulate).

* :func:`load_records` — one row per record (a run of one attack on one image), every status kept;
* :func:`load_security` — one row per model: COPA index and normalised score, or not-applicable;
* :func:`leaderboard` — one row per (model, attack) cell: PSNR mean ± std, SSIM, LPIPS, label
  accuracy, seconds, evaluations (over the cell's ``ok`` runs) and the counts of ok / failed /
  not-applicable runs, with the model's security metric; a cell with no ``ok`` run is still a row;
* :func:`leaderboard_markdown` / :func:`security_markdown` — GitHub-flavoured tables with a header
  stating the command, commit(s), config hash, device(s), package versions, images per cell and date;
  the overview shows a cell without ok runs as ``failed (N)``; failed and not-applicable runs are
  listed with their reasons.

Aggregates are over ``ok`` runs only; a PSNR of ``+inf`` (an exact recovery) makes the mean ``inf``
and the standard deviation undefined ("–"). LPIPS is "n/a" when no run of the cell has it (the
AlexNet weights were not available).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import CopaError
from .record import RECORD_COLUMNS, as_number, read_json, record_row

SECURITY_COLUMNS = ["model", "status", "reason", "copa_index", "normalised_score", "seconds"]
BOARD_COLUMNS = ["model", "attack", "runs", "ok", "failed", "not_applicable", "psnr_mean", "psnr_std", "psnr_median",
                 "ssim_mean", "lpips_mean", "label_accuracy", "seconds_mean", "forward_evals_mean",
                 "gradient_evals_mean", "copa_index", "normalised_score", "security_status"]


# --------------------------------------------------------------------------------------------------
# Loading


def load_records(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per record file (see :func:`record_row`)."""
    rows = [record_row(read_json(p), p) for p in paths]
    return pd.DataFrame(rows, columns=RECORD_COLUMNS)


def records_from_cells(cell_paths: Iterable[str | Path]) -> pd.DataFrame:
    """The records listed by the workflow's cell summaries (``OUT/TAG/cells/MODEL/ATTACK.json``)."""
    paths = []
    for cell_path in cell_paths:
        cell = read_json(cell_path)
        paths.extend(entry["record"] for entry in cell.get("records", []))
    return load_records(paths)


def load_security(paths: Iterable[str | Path]) -> pd.DataFrame:
    """One row per security entry (:func:`copa.pipeline.security_entry`)."""
    rows = []
    for path in paths:
        entry = read_json(path)
        if entry.get("status") not in ("ok", "not-applicable"):
            raise CopaError(f"security entry {str(path)!r} has status {entry.get('status')!r}: "
                            "accepted are ok, not-applicable")
        rows.append({"model": entry.get("model"), "status": entry["status"], "reason": entry.get("reason"),
                     "copa_index": as_number(entry.get("copa_index")), "normalised_score": as_number(entry.get("normalised_score")),
                     "seconds": as_number(entry.get("seconds"))})
    return pd.DataFrame(rows, columns=SECURITY_COLUMNS)


# --------------------------------------------------------------------------------------------------
# Aggregation


def _order(values: Iterable[str], preferred: Sequence[str] | None) -> list[str]:
    seen = list(dict.fromkeys(v for v in values if v is not None))
    if not preferred:
        return seen
    return list(dict.fromkeys([*preferred, *seen]))


def leaderboard(records: pd.DataFrame, security: pd.DataFrame | None = None, *,
                models: Sequence[str] | None = None, attacks: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (model, attack): statistics over its ``ok`` runs and the counts of every status.

    Every (model, attack) pair of ``models`` × ``attacks`` (default: those in ``records``) is a row,
    also when it has no record at all (``runs`` 0) — nothing is silently dropped.
    """
    models = _order(records["model"], models)
    attacks = _order(records["attack"], attacks)
    sec = {} if security is None else {row.model: row for row in security.itertuples(index=False)}
    rows = []
    for model in models:
        s = sec.get(model)
        for attack in attacks:
            cell = records[(records["model"] == model) & (records["attack"] == attack)]
            ok = cell[cell["status"] == "ok"]
            psnr = ok["psnr"].astype(float)
            rows.append({
                "model": model, "attack": attack, "runs": len(cell), "ok": len(ok),
                "failed": int((cell["status"] == "failed").sum()),
                "not_applicable": int((cell["status"] == "not-applicable").sum()),
                "psnr_mean": _mean(psnr), "psnr_std": _std(psnr),
                "psnr_median": float(psnr.median()) if len(psnr) else np.nan,
                "ssim_mean": _mean(ok["ssim"]), "lpips_mean": _mean(ok["lpips"]),
                "label_accuracy": _mean(ok["label_accuracy"]), "seconds_mean": _mean(ok["seconds"]),
                "forward_evals_mean": _mean(ok["forward_evals"]), "gradient_evals_mean": _mean(ok["gradient_evals"]),
                "copa_index": np.nan if s is None else s.copa_index,
                "normalised_score": np.nan if s is None else s.normalised_score,
                "security_status": "missing" if s is None else s.status,
            })
    return pd.DataFrame(rows, columns=BOARD_COLUMNS)


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


def _fmt(value: float, digits: int = 2, missing: str = "–") -> str:
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


def _runs(row) -> str:
    return f"{row.ok} / {row.failed} / {row.not_applicable}"


def _psnr(row) -> str:
    if row.ok == 0:
        return "–"
    if math.isnan(row.psnr_std):
        return _fmt(row.psnr_mean)
    return f"{_fmt(row.psnr_mean)} ± {_fmt(row.psnr_std)}"


def _security_heading(row) -> str:
    if row.security_status == "ok":
        return f"COPA index {_fmt_int(row.copa_index)}, normalised score {_fmt(row.normalised_score, 3)}"
    if row.security_status == "not-applicable":
        return "security metric not applicable (not a chain)"
    return "security metric missing"


def board_table(board: pd.DataFrame, model: str) -> str:
    """The per-model table: one row per attack."""
    from tabulate import tabulate

    rows = []
    for row in board[board["model"] == model].itertuples(index=False):
        lpips = "n/a" if row.ok and math.isnan(row.lpips_mean) else _fmt(row.lpips_mean, 4)
        evals = f"{_fmt_int(row.forward_evals_mean)} / {_fmt_int(row.gradient_evals_mean)}" if row.ok else "–"
        rows.append([row.attack, _runs(row), _psnr(row), _fmt(row.ssim_mean, 4), lpips, _fmt(row.label_accuracy),
                     _fmt(row.seconds_mean, 1), evals])
    headers = ["attack", "runs ok / failed / n.a.", "PSNR dB (mean ± std)", "SSIM", "LPIPS", "label acc.",
               "seconds", "evaluations fwd / grad"]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def overview_table(board: pd.DataFrame) -> str:
    """Models × attacks: mean PSNR (dB) of the ok runs, with the model's security metric."""
    from tabulate import tabulate

    attacks = list(dict.fromkeys(board["attack"]))
    rows = []
    for model in dict.fromkeys(board["model"]):
        sub = board[board["model"] == model].set_index("attack")
        first = sub.iloc[0]
        cells = []
        for attack in attacks:
            r = sub.loc[attack]
            if r.ok:
                cells.append(_fmt(r.psnr_mean))
            elif r.not_applicable and not r.failed:
                cells.append("n.a.")
            elif r.failed:
                cells.append(f"failed ({r.failed})")
            else:
                cells.append("–")
        index = _fmt_int(first.copa_index, "n.a." if first.security_status == "not-applicable" else "–")
        score = _fmt(first.normalised_score, 3, "n.a." if first.security_status == "not-applicable" else "–")
        rows.append([model, index, score, *cells])
    return tabulate(rows, headers=["model", "COPA index", "normalised score", *attacks], tablefmt="github",
                    disable_numparse=True)


def problems_table(records: pd.DataFrame, width: int = 160) -> str | None:
    """Every failed or not-applicable run with its reason (None when there is none)."""
    from tabulate import tabulate

    bad = records[records["status"] != "ok"]
    if bad.empty:
        return None
    rows = []
    for row in bad.itertuples(index=False):
        rows.append([row.model, row.attack, row.index, row.status, _reason(row.reason, width)])
    return tabulate(rows, headers=["model", "attack", "image", "status", "reason"], tablefmt="github",
                    disable_numparse=True)


def run_metadata(records: pd.DataFrame, *, command: str | None = None, images_per_cell: int | None = None,
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
    meta.update(extra or {})
    return meta


def _header(title: str, meta: dict[str, str]) -> list[str]:
    lines = [f"# {title}", ""]
    for key, value in meta.items():
        text = f"`{value}`" if key in ("command", "commit", "config hash") and value != "–" else value
        lines.append(f"- **{key}**: {text}")
    return lines


def correlation_table(board: pd.DataFrame, metric: str) -> str:
    from tabulate import tabulate

    rho = spearman_by_attack(board, metric)
    rows = [[r.attack, r.models, _fmt(r.spearman_rho, 3), _fmt(r.p_value, 3)] for r in rho.itertuples(index=False)]
    return tabulate(rows, headers=["attack", "models", f"Spearman ρ (mean PSNR vs {metric})", "p"],
                    tablefmt="github", disable_numparse=True)


def leaderboard_markdown(board: pd.DataFrame, records: pd.DataFrame, meta: dict[str, str], *,
                         title: str = "copa-bench leaderboard", metric: str = "normalised_score") -> str:
    lines = _header(title, meta)
    lines += ["", "Statistics are over each cell's `ok` runs; PSNR `inf` is an exact recovery (its std is "
              "then undefined, –); LPIPS n/a: the AlexNet weights were not available; n.a. = not applicable.",
              "", "## Overview: mean PSNR (dB)", "", overview_table(board), "",
              "## PSNR vs security metric across architectures", "",
              "Spearman's ρ over the models with a security metric and ok runs (– with fewer than 3 models or a "
              "constant side). A higher normalised score (a more negative COPA index) means a more secure model.",
              "", correlation_table(board, metric), ""]
    for model in dict.fromkeys(board["model"]):
        first = board[board["model"] == model].iloc[0]
        lines += [f"## {model} — {_security_heading(first)}", "", board_table(board, model), ""]
    problems = problems_table(records)
    lines += ["## Failed and not-applicable runs", ""]
    lines += [problems if problems else "None: every run finished with status ok.", ""]
    return "\n".join(lines)


def security_markdown(security: pd.DataFrame, meta: dict[str, str] | None = None, *,
                      title: str = "COPA security metric per architecture") -> str:
    from tabulate import tabulate

    rows = []
    for row in security.itertuples(index=False):
        rows.append([row.model, row.status, _fmt_int(row.copa_index), _fmt(row.normalised_score, 4),
                     _fmt(row.seconds, 1), _reason(row.reason)])
    table = tabulate(rows, headers=["model", "status", "COPA index", "normalised score", "seconds", "reason"],
                     tablefmt="github", disable_numparse=True)
    lines = _header(title, meta) if meta else [f"# {title}"]
    lines += ["", "COPA index: Σ over conv layers of round(rank deficiency × (L−1−i)/(L−1)); 0 = every layer "
              "solvable (most leaky). Normalised score: weighted fraction of undetermined input dimensions in "
              "[0, 1] (see copa/security.py).", "", table, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Writing


def write_tables(cell_paths: Iterable[str | Path], security_paths: Iterable[str | Path], *,
                 outputs: dict[str, str | Path], models: Sequence[str] | None = None,
                 attacks: Sequence[str] | None = None, command: str | None = None,
                 images_per_cell: int | None = None, title: str = "copa-bench leaderboard",
                 extra: dict[str, str] | None = None, metric: str = "normalised_score",
                 config_hash: str | None = None) -> pd.DataFrame:
    """Write ``outputs`` (keys: records_csv, leaderboard_csv, leaderboard_md, security_csv, security_md),
    each atomically; return the leaderboard frame."""
    from ..io import atomic_write, atomic_write_text

    records = records_from_cells(cell_paths)
    security = load_security(security_paths)
    board = leaderboard(records, security, models=models, attacks=attacks)
    meta = run_metadata(records, command=command, images_per_cell=images_per_cell, extra=extra,
                        config_hash=config_hash)
    writers = {
        "records_csv": lambda p: records.to_csv(p, index=False),
        "leaderboard_csv": lambda p: board.to_csv(p, index=False),
        "security_csv": lambda p: security.to_csv(p, index=False),
    }
    texts = {"leaderboard_md": lambda: leaderboard_markdown(board, records, meta, title=title, metric=metric),
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
    """Spearman ρ between the security ``metric`` and mean PSNR across models, per attack.

    Uses the models whose security metric is available and whose cell has ok runs; ρ is NaN with
    fewer than 3 such models or when either side is constant.
    """
    from scipy.stats import spearmanr

    if metric not in ("normalised_score", "copa_index"):
        raise CopaError(f"security metric {metric!r} is invalid: accepted are normalised_score, copa_index")
    rows = []
    for attack in dict.fromkeys(board["attack"]):
        sub = board[(board["attack"] == attack) & (board["ok"] > 0) & board[metric].notna()]
        x, y = sub[metric].to_numpy(float), sub["psnr_mean"].to_numpy(float)
        rho = p = np.nan
        if len(sub) >= 3 and np.unique(x).size > 1 and np.unique(y).size > 1:
            result = spearmanr(x, y)
            rho, p = float(result.statistic), float(result.pvalue)
        rows.append({"attack": attack, "models": len(sub), "metric": metric, "spearman_rho": rho, "p_value": p})
    return pd.DataFrame(rows, columns=["attack", "models", "metric", "spearman_rho", "p_value"])
