"""The leaderboard's plots (matplotlib, Agg: no display needed). Every file is written atomically.

* :func:`reconstruction_grid` — per model: the target images on the top row, every attack's
  reconstruction below (failed / not-applicable runs shown as labelled empty cells);
* :func:`psnr_vs_security` — mean PSNR per (model, attack) against the model's security metric,
  with Spearman's ρ per attack printed on the plot;
* :func:`psnr_distribution` — per-image PSNR per attack (box plot and the points);
* :func:`time_vs_psnr` — seconds per image against PSNR, per attack;
* :func:`privacy_curves` — mean PSNR and SSIM against each defence's strength, per model.

With records of several defence settings (the workflow's ``defences`` axis) the first four show one of
them — the undefended update when present, else the first — and say which; :func:`privacy_curves` shows
them all. PSNR values above ``psnr_cap`` (exact recoveries reach 140 dB in float64, or +inf) are drawn at the
cap, marked by a dashed line. PSNR stands for the headline metric (``headline``, default
:data:`copa.metrics.DEFAULT_HEADLINE_METRIC`; from a leaderboard frame :func:`copa.bench.leaderboard.board_headline`):
the axes take its label and unit from the metric registry, and the cap applies to it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import CopaError
from ..io import atomic_write
from ..metrics import DEFAULT_HEADLINE_METRIC, metric_info, metric_order
from ..models import RANDOM_CHAIN_PREFIX
from ..threat.defences import DEFENCES, NoDefence, create_defence
from .leaderboard import board_headline, spearman_by_attack
from .record import as_number, metric_columns, read_record

MARKERS = "osD^vP*Xph<>"
LINESTYLES = ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1))]
CURVE_ROWS = 2
"""The privacy curves' rows by default: the headline metric, then the next metric of the tables' column order
(the registry's) that the records hold — SSIM below PSNR."""


def _figure(width: float, height: float):
    # deferred (also below): matplotlib takes ≈ 1 s to import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, format="png", bbox_inches="tight"))


def _colours(names: Sequence[str]) -> dict[str, tuple]:
    from matplotlib import colormaps  # deferred: matplotlib

    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _axis(metric: str, what: str = "{label}") -> str:
    """An axis label: ``what`` with ``metric``'s label, then its unit, from the metric registry:
    ``mean {label}`` → ``mean PSNR (dB)``."""
    info = metric_info(metric)
    text = what.format(label=info.label)
    return f"{text} ({info.unit})" if info.unit else text


def _capped(values: np.ndarray, cap: float) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(values > cap, cap, values)


def _cap_line(ax, cap: float, values: np.ndarray, horizontal: bool = True) -> None:
    """A dashed line at the cap when some value lies above it, labelled ``≥ cap`` as a tick of the axis
    itself (beside its other ticks), where no marker can cover the label."""
    if not np.any(np.asarray(values, dtype=float) > cap):
        return
    (ax.axhline if horizontal else ax.axvline)(cap, ls="--", lw=0.8, color="grey")
    axis = ax.yaxis if horizontal else ax.xaxis
    low, high = ax.get_ylim() if horizontal else ax.get_xlim()
    ticks = [float(t) for t in axis.get_majorticklocs() if low <= t <= high]
    spacing = float(np.diff(ticks).min()) if len(ticks) > 1 else abs(cap) or 1.0
    kept = [t for t in ticks if abs(t - cap) >= 0.5 * spacing]  # a tick too close to the cap's would overlap it
    (ax.set_yticks if horizontal else ax.set_xticks)([*kept, cap], [*(f"{t:g}" for t in kept), f"≥ {cap:g}"])
    (ax.set_ylim if horizontal else ax.set_xlim)(low, high)


def _reference(frame: pd.DataFrame, defence: str | None = None) -> tuple[pd.DataFrame, str]:
    """The rows of one defence setting — ``defence``; default none (undefended) when present, else the
    first — and a title suffix naming it when ``frame`` holds several ('' otherwise)."""
    names = list(dict.fromkeys(frame["defence"].dropna())) if "defence" in frame else []
    if len(names) <= 1 and defence is None:
        return frame, ""
    defence = defence or (NoDefence.name if NoDefence.name in names else names[0])
    return frame[frame["defence"] == defence], f" — defence {defence}"


def _load_pair(images_path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(images_path) as data:
        return data["target"][0], data["reconstruction"][0]


def _to_hwc(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, dtype=float), 0, 1)
    return image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))


def reconstruction_grid(records: pd.DataFrame, model: str, path: str | Path, *,
                        attacks: Sequence[str] | None = None, max_images: int = 8, defence: str | None = None,
                        headline: str = DEFAULT_HEADLINE_METRIC) -> Path:
    """Targets (top row) vs every attack's reconstruction for ``model``, one column per image, each titled with
    its ``headline`` metric (one defence setting, :func:`_reference`)."""
    records, suffix = _reference(records, defence)
    info = metric_info(headline)
    digits = max(info.digits - 1, 0)  # one decimal fewer than the tables' (PSNR: 1), to fit a cell's title
    sub = records[records["model"] == model]
    if sub.empty:
        raise CopaError(f"no records for model {model!r}: models with records are {sorted(set(records['model']))}")
    attacks = list(dict.fromkeys([*(attacks or []), *sub["attack"]]))
    indices = sorted(dict.fromkeys(sub["index"]), key=lambda v: (str(type(v)), v))[:max_images]
    fig = _figure(1.25 * len(indices) + 1.6, 1.35 * (len(attacks) + 1))
    axes = fig.subplots(len(attacks) + 1, len(indices), squeeze=False)
    targets: dict = {}
    empty: list = []  # (axes, label) of the cells without an image, drawn once the images' size is known
    for row, attack in enumerate(attacks, start=1):
        for col, index in enumerate(indices):
            ax = axes[row][col]
            match = sub[(sub["attack"] == attack) & (sub["index"] == index)]
            rec = match.iloc[0] if len(match) else None
            if rec is not None and rec["status"] == "ok" and isinstance(rec["images"], str):
                target, recon = _load_pair(rec["images"])
                targets.setdefault(index, target)
                ax.imshow(_to_hwc(recon), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                value = rec[headline]
                shown = "inf" if math.isinf(value) else f"{value:.{digits}f}"
                ax.set_title(f"{shown} {info.unit}".strip(), fontsize=7, pad=2)
            else:
                empty.append((ax, "no record" if rec is None else
                              ("n.a." if rec["status"] == "not-applicable" else rec["status"])))
            if col == 0:
                ax.set_ylabel(attack, fontsize=8, rotation=0, ha="right", va="center")
    for col, index in enumerate(indices):
        ax = axes[0][col]
        if index in targets:
            ax.imshow(_to_hwc(targets[index]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            empty.append((ax, ""))
        ax.set_title(f"image {index}", fontsize=7, pad=2)
    height, width = _to_hwc(next(iter(targets.values()))).shape[:2] if targets else (32, 32)
    for ax, label in empty:  # a grey box of the images' size, so that every cell of the grid is as large
        ax.imshow(np.full((height, width), 0.92), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if label:
            ax.text(0.5, 0.5, label, ha="center", va="center", fontsize=7, transform=ax.transAxes)
        if col == 0:
            ax.set_ylabel("target", fontsize=8, rotation=0, ha="right", va="center")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{model}: targets vs reconstructions ({info.label} per image){suffix}", fontsize=9)
    return _save(fig, path)


def psnr_vs_security(board: pd.DataFrame, path: str | Path, *, metric: str = "normalised_score",
                     psnr_cap: float = 100.0, defence: str | None = None) -> Path:
    """Mean PSNR (the board's headline metric) of each (model, attack) against the model's security metric;
    Spearman ρ per attack (one defence setting, :func:`_reference`)."""
    headline = board_headline(board)
    board, suffix = _reference(board, defence)
    rho = spearman_by_attack(board, metric).set_index("attack")
    usable = board[(board["ok"] > 0) & board[metric].notna()]
    attacks = list(dict.fromkeys(board["attack"]))
    colours = _colours(attacks)
    same = coinciding_attacks(usable, f"{headline}_mean")
    span = float(np.ptp(usable[metric].to_numpy(float))) if len(usable) else 0.0
    dodge = DODGE * (span or 1.0)
    fig = _figure(7.5, 4.8)
    ax = fig.subplots()
    for i, attack in enumerate(attacks):
        sub = usable[usable["attack"] == attack]
        r = rho.loc[attack, "spearman_rho"]
        label = f"{attack}: ρ = {r:.2f}" if np.isfinite(r) else f"{attack}: ρ undefined (n={len(sub)})"
        if attack in same:
            label += f" (= {same[attack]} on every model)"
        offset = (i - (len(attacks) - 1) / 2) * dodge  # side by side: equal values stay visible
        ax.scatter(sub[metric] + offset, _capped(sub[f"{headline}_mean"], psnr_cap), label=label,
                   facecolors="none" if i % 2 else colours[attack], edgecolors=colours[attack], linewidths=1.2,
                   marker=MARKERS[i % len(MARKERS)], s=36, alpha=0.9)
    models = usable.drop_duplicates("model")
    top = ax.secondary_xaxis("top")  # the models' names at their security metric, close ones as one tick
    positions, names = model_ticks(models[metric].to_numpy(float), models["model"].tolist(), ax.get_xlim())
    top.set_xticks(positions, names, rotation=60, fontsize=6, ha="left")
    _cap_line(ax, psnr_cap, usable[f"{headline}_mean"])
    excluded = sorted(set(board["model"]) - set(usable["model"]))
    ax.set_xlabel({"normalised_score": "normalised security score (higher = more secure)",
                   "copa_index": "COPA index (more negative = more secure)"}[metric])
    ax.set_ylabel(_axis(headline, "mean {label}"))
    finite = rho["spearman_rho"].dropna()
    summary = ", ".join(f"{a} {v:.2f}" for a, v in finite.items()) or "undefined (fewer than 3 models)"
    ax.set_title(f"{metric_info(headline).label} vs security across architectures{suffix} — Spearman ρ: {summary}",
                 fontsize=8)
    if excluded:
        ax.text(0.99, 0.01, "no security metric: " + ", ".join(excluded), transform=ax.transAxes, fontsize=6,
                ha="right", va="bottom", color="0.4")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title=f"markers side by side per attack\n(±{DODGE * (len(attacks) - 1) / 2:.0%} of the x range)",
              title_fontsize=6)
    ax.grid(alpha=0.3)
    return _save(fig, path)


DODGE = 0.008
"""psnr_vs_security's sideways step between two attacks' markers, as a fraction of the security metric's range:
attacks with equal values (DLG and iDLG with the label known) stay visible side by side."""


def coinciding_attacks(board: pd.DataFrame, column: str) -> dict[str, str]:
    """``{attack: earlier attack}`` for each attack whose ``column`` equals an earlier attack's on every model
    both have (at least one): their markers would coincide."""
    values = {attack: dict(zip(rows["model"], rows[column].to_numpy(float)))
              for attack, rows in board.groupby("attack", sort=False)}
    same: dict[str, str] = {}
    names = list(values)
    for j, attack in enumerate(names):
        for earlier in names[:j]:
            common = set(values[attack]) & set(values[earlier])
            if common and all(values[attack][m] == values[earlier][m] for m in common):
                same[attack] = earlier
                break
    return same


TICK_GAP = 0.025
"""The least distance, as a fraction of the x axis, between two model names on psnr_vs_security's top axis:
the height of a 6-pt label rotated 60° on its 7.5-inch figure, about 0.1 inch of the axis's ≈ 5.5 inches."""


def model_ticks(xs: Sequence[float], models: Sequence[str], xlim: tuple[float, float], *,
                gap: float = TICK_GAP) -> tuple[list[float], list[str]]:
    """Top-axis ticks naming ``models`` at their ``xs`` without overlap: scanning left to right, models less than
    ``gap`` (a fraction of ``xlim``'s width) right of a tick's first model share its tick, at that first model's
    position (so ticks are at least ``gap`` apart), labelled with up to two short names
    (:func:`short_model_name`) and ``+N`` for the rest."""
    span = abs(xlim[1] - xlim[0]) or 1.0
    order = sorted(zip((float(x) for x in xs), models), key=lambda item: item[0])
    groups: list[list[tuple[float, str]]] = []
    for x, model in order:
        if groups and (x - groups[-1][0][0]) / span < gap:
            groups[-1].append((x, model))
        else:
            groups.append([(x, model)])
    positions = [group[0][0] for group in groups]
    labels = []
    for group in groups:
        names = [short_model_name(model) for _, model in group]
        labels.append(", ".join(names) if len(names) <= 2 else f"{', '.join(names[:2])} +{len(names) - 2}")
    return positions, labels


def psnr_distribution(records: pd.DataFrame, path: str | Path, *, attacks: Sequence[str] | None = None,
                      psnr_cap: float = 100.0, defence: str | None = None,
                      headline: str = DEFAULT_HEADLINE_METRIC) -> Path:
    """Per-image PSNR (the ``headline`` metric) of the ok runs, one box per attack, with the individual images
    as points (one defence setting, :func:`_reference`)."""
    records, suffix = _reference(records, defence)
    ok = records[records["status"] == "ok"]
    attacks = list(dict.fromkeys([*(attacks or []), *records["attack"]]))
    fig = _figure(max(4.0, 0.9 * len(attacks) + 1.5), 4.2)
    ax = fig.subplots()
    data = [_capped(ok[ok["attack"] == a][headline].dropna(), psnr_cap) for a in attacks]
    positions = np.arange(1, len(attacks) + 1)
    present = [i for i, d in enumerate(data) if len(d)]
    if present:
        ax.boxplot([data[i] for i in present], positions=positions[present], widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data):
        ax.scatter(positions[i] + rng.uniform(-0.15, 0.15, len(values)), values, s=10, alpha=0.6, color="C0")
        if not len(values):
            ax.text(positions[i], 0.5, "no ok run", rotation=90, ha="center", va="center", fontsize=7,
                    transform=ax.get_xaxis_transform())
    ax.set_xticks(positions, attacks, rotation=30, ha="right", fontsize=8)
    _cap_line(ax, psnr_cap, ok[headline])
    ax.set_ylabel(_axis(headline, "{label} per image"))
    ax.set_title(f"{metric_info(headline).label} distribution per attack (all models){suffix}", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def time_vs_psnr(records: pd.DataFrame, path: str | Path, *, attacks: Sequence[str] | None = None,
                 psnr_cap: float = 100.0, defence: str | None = None, headline: str = DEFAULT_HEADLINE_METRIC) -> Path:
    """Seconds per image (log scale) against PSNR (the ``headline`` metric), one colour per attack (one defence
    setting, :func:`_reference`)."""
    records, suffix = _reference(records, defence)
    ok = records[(records["status"] == "ok") & records["seconds"].notna()]
    attacks = list(dict.fromkeys([*(attacks or []), *records["attack"]]))
    colours = _colours(attacks)
    fig = _figure(7.0, 4.5)
    ax = fig.subplots()
    for i, attack in enumerate(attacks):
        sub = ok[ok["attack"] == attack]
        ax.scatter(np.maximum(sub["seconds"].to_numpy(float), 1e-4), _capped(sub[headline], psnr_cap),
                   label=f"{attack} ({len(sub)})", color=colours[attack], marker=MARKERS[i % len(MARKERS)], s=22,
                   alpha=0.8)
    ax.set_xscale("log")
    _cap_line(ax, psnr_cap, ok[headline])
    ax.set_xlabel("seconds per image (log scale; floor 1e-4)")
    ax.set_ylabel(_axis(headline))
    ax.set_title(f"Time vs {metric_info(headline).label} (ok runs){suffix}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Privacy curves


def _described_chain(records: pd.DataFrame, defence: str) -> list[dict] | None:
    """The public description (``[{name, parameters}]``) of a defence setting's chain: the observation of
    one of its ok records, else its canonical specs parsed (None for a defence unknown here)."""
    rows = records[(records["defence"] == defence) & (records["status"] == "ok")]
    for path in rows["record"].dropna() if "record" in rows else []:
        observation = (read_record(Path(path).parent) or {}).get("observation")
        if observation is not None:
            return list(observation.get("defences") or [])
    try:
        return [create_defence(spec).describe() for spec in defence.split("+")]
    except CopaError:
        return None


def defence_settings(records: pd.DataFrame) -> tuple[dict[str, tuple[str, str, float]], list[str]]:
    """The records' defence settings on a privacy curve, ``{defence: (kind, strength parameter, value)}``
    (kind: the defence's name with its other parameters that differ from their defaults), and those on
    none (chains of several defences, defences without a strength or unknown here); none excluded."""
    curves: dict[str, tuple[str, str, float]] = {}
    skipped = []
    for defence in dict.fromkeys(records["defence"].dropna()) if "defence" in records else []:
        if defence == NoDefence.name:
            continue
        if ";" in defence:  # a FedAvg or client-batch setting (copa.bench.record.setting_label): not a strength
            skipped.append(defence)
            continue
        chain = _described_chain(records, defence) or []
        entry = chain[0] if len(chain) == 1 else {}
        cls = DEFENCES.get(entry["name"]) if entry.get("name") in DEFENCES else None
        params = entry.get("parameters") or {}
        value = as_number(params.get(cls.strength)) if cls is not None and cls.strength else np.nan
        if not np.isfinite(value):
            skipped.append(defence)
            continue
        others = [f"{k}={v}" for k, v in params.items()
                  if k != cls.strength and k in cls.parameters and v != cls.parameters[k].default]
        curves[defence] = (cls.name + (f" ({', '.join(others)})" if others else ""), cls.strength, value)
    return curves, skipped


def _note_figure(path: str | Path, title: str, note: str) -> Path:
    fig = _figure(6.5, 1.8)
    ax = fig.subplots()
    ax.axis("off")
    ax.text(0.5, 0.5, note, ha="center", va="center", fontsize=9, wrap=True, transform=ax.transAxes)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def curve_metrics(records: pd.DataFrame, headline: str = DEFAULT_HEADLINE_METRIC) -> list[str]:
    """The privacy curves' default rows: of the headline metric and the metrics after it in the tables' column
    order (:func:`copa.metrics.metric_order`), the first :data:`CURVE_ROWS` that some ok run holds (PSNR, SSIM);
    the headline metric alone when none does."""
    ok = records[records["status"] == "ok"]
    order = [headline, *(m for m in metric_order(metric_columns(records.columns)) if m != headline)]
    return [m for m in order if m in ok and ok[m].notna().any()][:CURVE_ROWS] or [headline]


def privacy_curves(records: pd.DataFrame, path: str | Path, *, models: Sequence[str] | None = None,
                   attacks: Sequence[str] | None = None, psnr_cap: float = 100.0, floor: str = "mean-image",
                   headline: str = DEFAULT_HEADLINE_METRIC, metrics: Sequence[str] | None = None) -> Path:
    """Mean PSNR (top row) and SSIM (bottom row) over the ok runs against each defence's strength — x: the
    value of its :attr:`~copa.threat.Defence.strength` parameter, log scale when every value is positive —
    one panel per model, one line per (attack, defence kind). The rows: ``metrics``, default
    :func:`curve_metrics` (the ``headline`` metric first; the cap applies to it). The undefended value is a
    dotted line in the attack's colour, the ``floor`` attack a dashed grey line; chains of several defences are
    named below the panels, not drawn. Without any setting to draw, the figure says so."""
    ok = records[records["status"] == "ok"]
    metrics = list(metrics) if metrics else curve_metrics(records, headline)
    title = f"Privacy curves: {' and '.join(metric_info(m).label for m in metrics)} against defence strength"
    curves, skipped = defence_settings(records)
    if not curves:
        why = f"not on a curve: {', '.join(skipped)}" if skipped else "every run's client shared its true update"
        return _note_figure(path, title, f"no defence settings to compare ({why})")
    means = ok.groupby(["defence", "model", "attack"])[metrics].mean()
    models = list(dict.fromkeys([*(models or []), *records["model"]]))
    attacks = [a for a in dict.fromkeys([*(attacks or []), *records["attack"]]) if a != floor]
    kinds = {kind: strength for kind, strength, _ in curves.values()}
    style = {kind: (MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)]) for i, kind in enumerate(kinds)}
    colours = _colours(attacks)
    ticks = sorted({x for _, _, x in curves.values()})
    log_x = ticks[0] > 0
    fig = _figure(3.0 * len(models) + 2.6, 2.7 * len(metrics) + 0.6)
    axes = fig.subplots(len(metrics), len(models), squeeze=False)
    for (r, metric), (c, model) in itertools.product(enumerate(metrics), enumerate(models)):
        ax = axes[r][c]
        cap = psnr_cap if metric == headline else math.inf
        mean = means[metric].to_dict()
        drawn = []
        for attack, kind in itertools.product(attacks, kinds):
            points = sorted((x, mean.get((d, model, attack), np.nan)) for d, (k, _, x) in curves.items() if k == kind)
            points = [(x, y) for x, y in points if not math.isnan(y)]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, _capped(ys, cap), color=colours[attack], marker=style[kind][0], ls=style[kind][1],
                        lw=1.2, ms=4)
                drawn += ys
        for attack in attacks:  # the undefended reference
            y = mean.get((NoDefence.name, model, attack), np.nan)
            if not math.isnan(y):
                ax.axhline(min(y, cap), color=colours[attack], ls=":", lw=1.0)
                drawn.append(y)
        base = ok[(ok["model"] == model) & (ok["attack"] == floor)][metric].astype(float).mean()
        if not math.isnan(base):
            ax.axhline(min(base, cap), color="0.35", ls="--", lw=1.2)
        if metric == headline:
            _cap_line(ax, psnr_cap, np.asarray(drawn))
        if log_x:
            ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{x:g}" for x in ticks], rotation=45, fontsize=6)  # the strengths configured
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if r == 0:
            ax.set_title(model, fontsize=8)
        if c == 0:
            ax.set_ylabel(_axis(metric, "mean {label}"), fontsize=8)
        if r == len(metrics) - 1:
            ax.set_xlabel("defence strength" + (" (log scale)" if log_x else ""), fontsize=8)
    _curve_legend(fig, colours, style, kinds, floor if (ok["attack"] == floor).any() else None)
    if skipped:
        fig.supxlabel(f"not on a curve (chains of several defences or no strength): {', '.join(skipped)}",
                      fontsize=7, color="0.35")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _curve_legend(fig, colours: dict[str, tuple], style: dict[str, tuple], kinds: dict[str, str],
                  floor: str | None) -> None:
    """Colours: attacks; markers and line styles: defence kinds (x: their strength parameter)."""
    from matplotlib.lines import Line2D  # deferred: matplotlib

    handles = [Line2D([], [], color=colour, lw=1.5, label=attack) for attack, colour in colours.items()]
    handles += [Line2D([], [], color="k", marker=style[kind][0], ls=style[kind][1], ms=4,
                       label=f"{kind}: x = {strength}")
                for kind, strength in kinds.items()]
    handles.append(Line2D([], [], color="0.5", ls=":", label="undefended (attack's colour)"))
    if floor is not None:
        handles.append(Line2D([], [], color="0.35", ls="--", label=f"{floor} floor"))
    fig.legend(handles=handles, loc="outside right center", fontsize=7)


# --------------------------------------------------------------------------------------------------
# The population study (copa.bench.validity.write_study): labelled scatter plots


def _boxes_overlap(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Which rows of ``boxes`` (k × [x0, y0, x1, y1], display pixels) intersect ``box`` with positive area."""
    if not len(boxes):
        return np.zeros(0, bool)
    return ((np.minimum(box[2], boxes[:, 2]) > np.maximum(box[0], boxes[:, 0]))
            & (np.minimum(box[3], boxes[:, 3]) > np.maximum(box[1], boxes[:, 1])))


def place_labels(ax, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], *, fontsize: float = 6,
                 marker_px: float = 4.0, pad_px: float = 1.5, rings: int = 40) -> list:
    """Label the points ``(xs, ys)`` (data coordinates) of ``ax`` so that no two labels overlap, nor a label
    and a point: a deterministic greedy scheme (no adjustText). Call it last, after everything else is
    drawn: it draws the figure once to fix the layout and the limits, then switches the layout engine off.

    Points are labelled top to bottom, left to right (ties by label); each label takes the first free
    place on rings of growing radius around its point (step: one text line), in the order E, NE, N, NW, W,
    SW, S, SE, inside the axes, clear of the points and of the axes' other texts; a label off its first
    ring gets a thin leader line. A label with no free
    place within ``rings`` rings takes the place of least overlap (none in practice for ≤ 100 labels on a
    plot of ≥ 6 × 4 inches). Returns the annotations (``Text``), in the order of ``labels``.
    """
    fig = ax.figure
    fig.canvas.draw()  # layout and autoscaled limits
    fig.set_layout_engine("none")
    ax.set_autoscale_on(False)
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    points = ax.transData.transform(np.column_stack([np.asarray(xs, float), np.asarray(ys, float)]))
    sizes = []
    for label in labels:
        probe = ax.text(0, 0, label, fontsize=fontsize)
        extent = probe.get_window_extent(renderer)
        probe.remove()
        sizes.append((extent.width, extent.height))
    obstacles = np.vstack([np.column_stack([points - marker_px, points + marker_px]).reshape(-1, 4),  # the markers
                           *([t.get_window_extent(renderer).extents] for t in ax.texts)])  # e.g. the cap's note
    directions = [(math.cos(math.radians(a)), math.sin(math.radians(a))) for a in range(0, 360, 45)]
    step = min(h for _, h in sizes) if sizes else 8.0  # one line of text
    placed: list = [None] * len(labels)
    for i in sorted(range(len(labels)), key=lambda k: (-points[k, 1], points[k, 0], labels[k])):
        (px, py), (w, h) = points[i], sizes[i]
        best = None
        for ring in range(rings):
            radius = marker_px + pad_px + ring * step
            for cx, cy in directions:
                left = px + cx * radius - (0 if cx > 0.3 else (w if cx < -0.3 else w / 2))
                bottom = py + cy * radius - (0 if cy > 0.3 else (h if cy < -0.3 else h / 2))
                box = np.array([left - pad_px, bottom - pad_px, left + w + pad_px, bottom + h + pad_px])
                outside = box[0] < frame.x0 or box[1] < frame.y0 or box[2] > frame.x1 or box[3] > frame.y1
                hits = int(_boxes_overlap(box, obstacles).sum())
                if not outside and not hits:
                    best = (0, ring, left, bottom, box)
                    break
                cost = hits + (len(labels) if outside else 0)
                if best is None or cost < best[0]:
                    best = (cost, ring, left, bottom, box)
            if best[0] == 0:
                break
        _, ring, left, bottom, box = best
        obstacles = np.vstack([obstacles, box])
        leader = {"arrowprops": {"arrowstyle": "-", "lw": 0.4, "color": "0.55", "shrinkA": 0,
                                 "shrinkB": marker_px}} if ring > 0 else {}
        placed[i] = ax.annotate(labels[i], xy=(xs[i], ys[i]), xytext=(left - px, bottom - py),
                                textcoords="offset pixels", ha="left", va="bottom", fontsize=fontsize,
                                annotation_clip=False, **leader)
    return placed


def short_model_name(model: str) -> str:
    """A scatter label: ``random-chain:17`` → ``rc17``; other names unchanged."""
    return "rc" + model[len(RANDOM_CHAIN_PREFIX):] if model.startswith(RANDOM_CHAIN_PREFIX) else model


def _group_label(models: Sequence[str], per_line: int = 5) -> str:
    """The label of architectures drawn at one place: paper chains first, then random chains by seed."""
    def key(model: str) -> tuple:
        seed = model[len(RANDOM_CHAIN_PREFIX):]
        return (1, int(seed), "") if model.startswith(RANDOM_CHAIN_PREFIX) and seed.isdigit() else (0, 0, model)

    names = [short_model_name(m) for m in sorted(models, key=key)]
    return "\n".join(", ".join(names[i:i + per_line]) for i in range(0, len(names), per_line))


def validity_scatter(table: pd.DataFrame, path: str | Path, *, x: str = "normalised_score", y: str = "best_psnr",
                     psnr_cap: float = 100.0, title: str = "", y_label: str = "mean {label}",
                     headline: str = DEFAULT_HEADLINE_METRIC) -> Path:
    """One architecture per point: predictor ``x`` against the mean ``headline`` metric (PSNR) column ``y`` of
    ``table`` (the study's architecture table: ``model``, ``any_deficient``); colour: rank-deficient or
    full-rank, marker: random chain or paper chain; every point labelled (:func:`place_labels`, ``rcN`` =
    ``random-chain:N``; architectures at the same place share one label). Values above ``psnr_cap`` are drawn
    at the cap; ``y_label``'s ``{label}`` is the headline metric's."""
    from matplotlib.lines import Line2D  # deferred: matplotlib

    rows = table[table[x].notna() & table[y].notna()]
    xs, ys = rows[x].to_numpy(float), _capped(rows[y].to_numpy(float), psnr_cap)
    deficient = rows["any_deficient"].fillna(False).astype(bool).to_numpy()
    random = rows["model"].str.startswith(RANDOM_CHAIN_PREFIX).to_numpy()
    fig = _figure(9.5, 6.5)
    ax = fig.subplots()
    colours = {True: "tab:red", False: "tab:blue"}
    for is_random, marker in ((True, "o"), (False, "s")):
        for is_deficient in (True, False):
            keep = (random == is_random) & (deficient == is_deficient)
            ax.scatter(xs[keep], ys[keep], s=22, marker=marker, color=colours[is_deficient], alpha=0.8,
                       edgecolors="k", linewidths=0.3, zorder=3)
    groups: dict[tuple[float, float], list[str]] = {}
    for model, px, py in zip(rows["model"], xs, ys):
        groups.setdefault((float(px), float(py)), []).append(model)
    if x == "copa_index" and len(xs) and np.nanmin(xs) < -10:
        ax.set_xscale("symlog", linthresh=1)
    _cap_line(ax, psnr_cap, rows[y])
    ax.set_xlabel({"normalised_score": "normalised security score (higher = more secure)",
                   "copa_index": "COPA index (more negative = more secure)",
                   "propagated_image_fraction": "fraction of the image undetermined after propagation "
                                                "(higher = more secure)"}.get(x, x))
    ax.set_ylabel(_axis(headline, y_label))
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.margins(0.08)
    handles = [Line2D([], [], ls="", marker=m, color=colours[d], markeredgecolor="k", markeredgewidth=0.3,
                      label=f"{'random' if r else 'paper'} chain, {'rank-deficient' if d else 'full-rank'}")
               for r, m in ((True, "o"), (False, "s")) for d in (True, False)]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="rcN = random-chain:N", title_fontsize=7)
    keys = list(groups)
    place_labels(ax, [k[0] for k in keys], [k[1] for k in keys], [_group_label(groups[k]) for k in keys])
    return _save(fig, path)
