"""A FedAvg sweep read from its records (issue 34, "Sharper science"): per client setting — learning rate η,
local steps K, local data (images per client and per local step) — the client's local loss per step and each
attack's mean PSNR (:func:`sweep_table`), and where FedAvg starts to protect (:func:`protection_onset`,
:func:`onset_sentences`). leaderboard.md gets both as its section "FedAvg sweep" (:func:`fedavg_section`) when
its records hold a FedAvg setting (K ≥ 2).

Works on a records frame (:func:`copa.bench.leaderboard.load_records`, or records.csv read back with pandas): its
columns :data:`copa.bench.record.SETTING_COLUMNS` name each record's setting and client training. Only the
undefended settings are read (the sweep's); the defences have their own curves (:mod:`copa.bench.plots`).
From a published sweep::

    import pandas as pd
    from copa.bench.fedavg import onset_sentences, protection_onset
    print("\\n".join(onset_sentences(protection_onset(pd.read_csv("results/realistic/fedavg-sweep/records.csv")))))
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from ..threat.defences import NoDefence
from tabulate import tabulate

PROTECTION_THRESHOLD_DB = 20.0
"""Mean PSNR (dB) below which a setting counts as protecting (issue 34's yardstick; the mean-image floor is
≈ 12 dB on these CIFAR-10 images)."""
SETTING_ORDER = ["local_lr", "local_steps"]
"""The order in which :func:`protection_onset` walks one local data's settings: learning rate η, then local steps
K, both ascending; K = 1 (FedSGD, the gradient, whatever η) first. Within the sweep's values this is also the
order of K · η, the client's local progress."""
SETTING_KEYS = ["client_batch", "local_batch", "local_lr", "local_steps"]


def _undefended(records: pd.DataFrame) -> pd.DataFrame:
    """The records of the undefended settings that carry the setting's columns (none when the frame lacks them)."""
    if "local_steps" not in records.columns or records.empty:
        return records.iloc[0:0]
    chain = records["defence"].astype(str).str.split(";").str[0].str.strip()
    return records[chain == NoDefence.name]


def has_fedavg(records: pd.DataFrame) -> bool:
    """Whether the records hold a FedAvg setting (K ≥ 2) of an undefended client."""
    sweep = _undefended(records)
    return bool(len(sweep)) and bool((sweep["local_steps"].astype(float) >= 2).any())


def _losses(cell: Any) -> list[float] | None:
    """A records.csv ``local_losses`` cell (a JSON list) as floats; None when the record does not say."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return None
    return [float(v) for v in (json.loads(cell) if isinstance(cell, str) else cell)]


def setting_cells(records: pd.DataFrame, metric: str = "psnr") -> pd.DataFrame:
    """One row per (model, attack, undefended setting): the setting's axes, the runs (ok ones), the mean of
    ``metric`` over the ok runs, and the client's training over the setting's clients (the same for every
    attack): the mean loss at each local step, the clients whose loss was zero at some step (the update then
    equals fewer steps, :func:`copa.bench.record.client_training_entry`) and the first such step."""
    sweep = _undefended(records)
    rows = []
    for (model, attack, label), cell in sweep.groupby(["model", "attack", "defence"], sort=False):
        ok = cell[cell["status"] == "ok"]
        values = ok[metric].astype(float) if metric in ok else pd.Series(dtype=float)
        first = cell.iloc[0]
        clients = sweep[(sweep["model"] == model) & (sweep["defence"] == label)].drop_duplicates("index")
        trajectories = [t for t in map(_losses, clients["local_losses"]) if t is not None]
        zero = clients["zero_loss_step"].astype(float).dropna()
        rows.append({
            "model": model, "attack": attack, "setting": label,
            **{key: _number(first[key]) for key in SETTING_KEYS},
            "runs": len(cell), "ok": len(ok), f"{metric}_mean": float(values.mean()) if len(values) else np.nan,
            "clients": len(clients), "loss_known": len(trajectories),
            "mean_loss_per_step": [float(np.mean(step)) for step in zip(*trajectories)] if trajectories else None,
            "zero_loss_clients": len(zero), "first_zero_loss_step": int(zero.min()) if len(zero) else None,
        })
    return pd.DataFrame(rows)


def _number(value: Any) -> float | int | None:
    value = float(value)
    if math.isnan(value):
        return None
    return int(value) if value.is_integer() and value >= 1 else value


def local_data_text(client_batch: int, local_batch: int, local_steps: int) -> str:
    """``1 image``, ``4 images, 1 per step``; ``4 images`` for a step on all of them (or one FedSGD step)."""
    images = f"{client_batch} image{'s' if client_batch > 1 else ''}"
    return images if local_steps == 1 or local_batch == client_batch else f"{images}, {local_batch} per step"


def setting_text(row: dict[str, Any] | pd.Series) -> str:
    """``η = 0.01, K = 2`` (FedAvg) or ``K = 1 (FedSGD)``."""
    if int(row["local_steps"]) == 1:
        return "K = 1 (FedSGD)"
    return f"η = {float(row['local_lr']):g}, K = {int(row['local_steps'])}"


def trajectory_text(losses: list[float] | None) -> str:
    """The mean loss per local step as ``11.3 → 5.67 → 1.06``; – when unknown."""
    return "–" if not losses else " → ".join(f"{loss:.3g}" for loss in losses)


def _ordered(cells: pd.DataFrame) -> pd.DataFrame:
    key = cells.assign(_fedsgd=cells["local_steps"] != 1)
    return key.sort_values(["client_batch", "_fedsgd", "local_batch", *SETTING_ORDER], ascending=[True, True, False,
                                                                                                  True, True],
                           kind="stable").drop(columns="_fedsgd")


def sweep_table(records: pd.DataFrame, model: str, attacks: list[str] | None = None, *,
                threshold: float = PROTECTION_THRESHOLD_DB) -> str:
    """One model's sweep as a Markdown table: a row per undefended setting (local data, η, K; FedSGD first), the
    mean local loss per step over its clients, the clients whose loss reached zero (then the update equals fewer
    steps: marked ``n/N from step k``), and each attack's mean PSNR over its ok runs, **bold** below
    ``threshold`` dB."""

    cells = setting_cells(records)
    cells = cells[cells["model"] == model]
    attacks = attacks or list(dict.fromkeys(cells["attack"]))
    rows = []
    for _, setting in _ordered(cells).groupby("setting", sort=False):
        first = setting.iloc[0]
        by_attack = setting.set_index("attack")
        psnr = []
        for attack in attacks:
            if attack not in by_attack.index or not by_attack.loc[attack, "ok"]:
                psnr.append("–")
                continue
            value = float(by_attack.loc[attack, "psnr_mean"])
            text = "inf" if math.isinf(value) else f"{value:.2f}"
            psnr.append(f"**{text}**" if value < threshold else text)
        zero = (f"{first['zero_loss_clients']}/{first['clients']} from step {int(first['first_zero_loss_step'])}"
                if first["zero_loss_clients"] else ("none" if first["loss_known"] else "–"))
        rows.append([local_data_text(first["client_batch"], first["local_batch"], first["local_steps"]),
                     "–" if first["local_steps"] == 1 else f"{first['local_lr']:g}", first["local_steps"],
                     trajectory_text(first["mean_loss_per_step"]), zero, *psnr])
    headers = ["local data", "η", "K", "local loss per step (mean over clients)", "loss 0 (update = fewer steps)",
               *attacks]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def protection_onset(records: pd.DataFrame, *, threshold: float = PROTECTION_THRESHOLD_DB,
                     metric: str = "psnr") -> pd.DataFrame:
    """For each model, attack and local data (images per client, images per local step), the first setting in
    :data:`SETTING_ORDER` — FedSGD (K = 1), then η and K ascending — whose mean ``metric`` over its ok runs falls
    below ``threshold``; ``first`` missing (NaN) when none does. A group's K = 1 setting is the FedSGD step on the same
    images (shared by the local batches of one client batch). Columns: model, attack, client_batch, local_batch,
    fedsgd (the K = 1 mean), first (:func:`setting_text`), local_lr, local_steps, value (its mean), below
    (settings below the threshold / settings with ok runs) and lowest (the group's lowest mean)."""
    cells = setting_cells(records, metric)
    column = f"{metric}_mean"
    rows = []
    if cells.empty:
        return pd.DataFrame(rows, columns=ONSET_COLUMNS)
    for (model, attack, client), group in cells.groupby(["model", "attack", "client_batch"], sort=False):
        fedsgd = group[group["local_steps"] == 1]
        fedavg = group[group["local_steps"] != 1]
        local_batches = list(dict.fromkeys(_ordered(fedavg)["local_batch"])) or [client]
        for local in local_batches:
            candidates = _ordered(pd.concat([fedsgd, fedavg[fedavg["local_batch"] == local]]))
            scored = candidates[(candidates["ok"] > 0) & candidates[column].notna()]
            below = scored[scored[column] < threshold]
            hit = below.iloc[0] if len(below) else None
            rows.append({
                "model": model, "attack": attack, "client_batch": client, "local_batch": local,
                "fedsgd": float(fedsgd[column].iloc[0]) if len(fedsgd) else np.nan,
                "first": None if hit is None else setting_text(hit),
                "local_lr": None if hit is None else hit["local_lr"],
                "local_steps": None if hit is None else hit["local_steps"],
                "value": np.nan if hit is None else float(hit[column]),
                "below": f"{len(below)}/{len(scored)}",
                "lowest": float(scored[column].min()) if len(scored) else np.nan,
            })
    return pd.DataFrame(rows, columns=ONSET_COLUMNS)


ONSET_COLUMNS = ["model", "attack", "client_batch", "local_batch", "fedsgd", "first", "local_lr", "local_steps", "value",
                 "below", "lowest"]


def onset_sentences(onset: pd.DataFrame, *, threshold: float = PROTECTION_THRESHOLD_DB) -> list[str]:
    """:func:`protection_onset` in words, one line per model and attack: for each local data where the mean PSNR
    first falls below ``threshold`` dB and what it is there, or that it never does (with the lowest mean)."""
    lines = []
    for (model, attack), group in onset.groupby(["model", "attack"], sort=False):
        parts = []
        for row in group.itertuples(index=False):
            data = local_data_text(row.client_batch, row.local_batch, 2)
            if not isinstance(row.first, str):  # none below the threshold
                parts.append(f"{data}: never below {threshold:g} dB (lowest {row.lowest:.2f})")
            else:  # FedSGD –: no ok run of the K = 1 cell (failed, or not run yet in a partial leaderboard)
                fedsgd = "–" if pd.isna(row.fedsgd) else f"{row.fedsgd:.2f}"
                parts.append(f"{data}: first at {row.first} ({row.value:.2f} dB; FedSGD {fedsgd}; "
                             f"{row.below} settings below)")
        lines.append(f"{attack} on {model} — " + "; ".join(parts) + ".")
    return lines


def fedavg_section(records: pd.DataFrame, attacks: list[str] | None = None, *, level: int = 2,
                   floor: str = "mean-image") -> list[str]:
    """leaderboard.md's section "FedAvg sweep" (none without a FedAvg setting): per model :func:`sweep_table`,
    then :func:`onset_sentences` of every attack but the ``floor`` (an image that ignores the update: below the
    threshold everywhere by design)."""
    if not has_fedavg(records):
        return []
    h = "#" * level
    lines = [f"{h} FedAvg sweep: local training against the attacks", "",
             "Each undefended client setting in one row: local data (images per client; per local step when the K "
             "steps take fewer, in order and cycling), learning rate η, local steps K; the client's loss per local "
             "step (mean over the setting's clients, on each step's images before the step); the clients whose "
             "loss was zero (≤ torch.testing's default rtol for the dtype) at some step, from which step on the "
             "update equals that of fewer steps; each attack's mean PSNR (dB), **bold** below "
             f"{PROTECTION_THRESHOLD_DB:g} dB.", ""]
    sweep = _undefended(records)
    for model in dict.fromkeys(sweep["model"]):
        lines += [f"{h}# {model}", "", sweep_table(records, model, attacks), ""]
    lines += [f"{h}# Where FedAvg starts to protect (mean PSNR below {PROTECTION_THRESHOLD_DB:g} dB)", "",
              f"Settings walked FedSGD first, then η and K ascending (copa.bench.fedavg.protection_onset); the "
              f"{floor} floor left out:", ""]
    onset = protection_onset(records[records["attack"] != floor])
    lines += [f"- {line}" for line in onset_sentences(onset)] + [""]
    return lines
