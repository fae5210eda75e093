"""What a finished workflow run cost, read from its records (issue 32, "Cheaper full fidelity").

``benchmarks/paper_cost.py`` *estimates* a full-fidelity run from short ones; this reads what a run that was
done actually took: every record's ``seconds`` (wall time of its attack; a batched cell's records each hold
the batch's time divided by its images, so a cell's sum is its wall time either way). It prints

1. minutes per cell, model × attack (the sum over the cell's records), with per-attack and per-model totals;
2. the whole run's cell time in CPU-hours (each cell runs on one core, ``threads: 1``), the longest cell (the
   wall time no number of cores goes below) and the bound ``max(longest cell, total / cores)`` for a few
   core counts;
3. the profile of the layer-wise attacks that time their stages: for each model, the median seconds per
   image of each of the hybrid's layers (``attack_info.layers[].seconds``; layer 0 is the image stage with
   ``steps_image`` Adam steps, layer 1 ``steps_layer1``, deeper layers ``steps_deeper``) — where a cell's
   time goes;
4. with ``--logs`` (a workflow's ``logs/DATASET/cells`` folder), the stages of every layer-wise attack as
   its progress log timed them: ``[progress] copa-gm: layer 1 null space (4 of 8): … elapsed 2:45 — done`` and
   the layer's total, ``layer 1: elapsed 4:57 — done``, summed over the cell's chunks — COPA's and COPA-GM's
   records keep no per-layer seconds, their logs do (a cell resumed from earlier records logs only the part
   it ran again);
5. outliers: records that took more than ``--outlier`` × their cell's median per image (load on a shared
   machine; their time is kept in the totals and named here).

Seconds are wall time on whatever shared machine made the records (the CPU model is in each record's
``compute``); the per-cell minutes are upper bounds of the CPU time.

    python benchmarks/run_cost.py runs/paper/npz-cifar10_subset-train/records        # a workflow's records
    python benchmarks/run_cost.py runs/paper/npz-cifar10_subset-train/records \
        --logs runs/paper/logs/npz-cifar10_subset-train/cells                            # with the stage profile
    python benchmarks/run_cost.py results/records.csv --cores 2 8                       # a published folder (its
                                                                                        # full records where at hand)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copa.bench.record import read_json, record_row  # noqa: E402


def _record_facts(record: dict) -> dict:
    """What a full record adds to its records.csv row: the hybrid's per-layer seconds and the CPU model."""
    layers = (record.get("attack_info") or {}).get("layers") or []
    return {"layer_seconds": {int(layer["layer"]): float(layer["seconds"]) for layer in layers
                              if isinstance(layer, dict) and "seconds" in layer and "layer" in layer},
            "cpu_model": (record.get("compute") or {}).get("cpu_model")}


def load(source: Path) -> pd.DataFrame:
    """One row per record: model, attack, index, status, seconds, CPU model and the hybrid's per-layer seconds —
    from a records folder (every ``record.json`` below it), or from a published ``records.csv`` (its rows; the
    full records it names, relative to the checkout that ran or to the csv's folder, where they are at hand)."""
    if source.is_dir():
        rows = []
        for path in sorted(source.rglob("record.json")):
            record = read_json(path)
            rows.append({**record_row(record, path), **_record_facts(record)})
        return pd.DataFrame(rows)
    table = pd.read_csv(source)
    facts = []
    for name in table["record"] if "record" in table.columns else [None] * len(table):
        path = None if not isinstance(name, str) else next(
            (p for p in (Path(name), source.parent / name) if p.is_file()), None)
        facts.append(_record_facts(read_json(path)) if path is not None else {"layer_seconds": {}, "cpu_model": None})
    return table.assign(**pd.DataFrame(facts, index=table.index))


def cell_minutes(records: pd.DataFrame) -> pd.DataFrame:
    """Minutes per (model, attack) cell, models as rows, with totals."""
    table = records.pivot_table(index="model", columns="attack", values="seconds", aggfunc="sum") / 60
    table["all attacks"] = table.sum(axis=1)
    table.loc["all models"] = table.sum(axis=0)
    return table


def layer_profile(records: pd.DataFrame) -> pd.DataFrame:
    """Median seconds per image of each timed layer, per (model, attack)."""
    timed = records[records["layer_seconds"].map(bool)]
    rows = []
    for (model, attack), group in timed.groupby(["model", "attack"]):
        medians = pd.DataFrame(list(group["layer_seconds"])).median()
        rows.append({"model": model, "attack": attack, "images": len(group),
                     "median per image": group["seconds"].median(),
                     **{f"layer {layer}": medians[layer] for layer in medians.index}})
    table = pd.DataFrame(rows)
    layers = sorted((column for column in table.columns if column.startswith("layer ")), key=lambda c: int(c[6:]))
    return table[[column for column in table.columns if not column.startswith("layer ")] + layers]


# one finished stage of a layer-wise attack in its progress log (copa.attacks.progress): the layer's total when
# no stage is named
STAGE_DONE = re.compile(r"^\[progress\] (?P<attack>[\w-]+): layer (?P<layer>\d+)(?: (?P<stage>[a-z][a-z ]*?))?"
                        r"(?: \(\d+ of \d+\))?: (?:step \S+, loss \S+, )?elapsed (?P<elapsed>[\d:]+)"
                        r"(?:, ETA \S+)? — done$")


def elapsed_seconds(text: str) -> int:
    """``M:SS`` or ``H:MM:SS`` in seconds."""
    seconds = 0
    for part in text.split(":"):
        seconds = 60 * seconds + int(part)
    return seconds


def stage_profile(logs: Path) -> pd.DataFrame:
    """Minutes per (model, attack, layer, stage) from the cells' progress logs below ``logs`` (``DEFENCE/MODEL/
    ATTACK.log``); stage ``layer total`` is the layer's own line."""
    rows = []
    for path in sorted(logs.rglob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            match = STAGE_DONE.match(line.strip())
            if match:
                rows.append({"model": path.parent.name, "attack": match["attack"], "layer": int(match["layer"]),
                             "stage": match["stage"] or "layer total",
                             "minutes": elapsed_seconds(match["elapsed"]) / 60})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).pivot_table(index=["model", "attack", "layer"], columns="stage", values="minutes",
                                           aggfunc="sum")
    table = table.sort_index(level=["model", "attack", "layer"], ascending=[True, True, False]).reset_index()
    table.columns.name = None
    return table


def outliers(records: pd.DataFrame, factor: float) -> pd.DataFrame:
    """Records that took more than ``factor`` × their cell's median seconds."""
    median = records.groupby(["model", "attack"])["seconds"].transform("median")
    slow = records[(records["seconds"] > factor * median) & (records["seconds"] > 60)]
    return slow.assign(cell_median=median[slow.index])[["model", "attack", "index", "seconds", "cell_median",
                                                         "finished_at"]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a workflow's records folder, or a published records.csv")
    parser.add_argument("--cores", type=int, nargs="+", default=[2, 8], help="core counts for the wall bound")
    parser.add_argument("--logs", type=Path, default=None,
                        help="a workflow's logs/DATASET/cells folder: the layer-wise attacks' stages from their logs")
    parser.add_argument("--outlier", type=float, default=3.0,
                        help="name records slower than this × their cell's median")
    args = parser.parse_args(argv)
    if not args.source.exists():
        parser.error(f"{args.source}: no such file or folder (give a records folder or a records.csv)")
    if args.logs is not None and not args.logs.is_dir():
        parser.error(f"--logs {str(args.logs)!r} is not a folder: expected a workflow's logs/DATASET/cells folder")
    if any(cores < 1 for cores in args.cores):
        parser.error(f"--cores {args.cores}: each must be >= 1")
    records = load(args.source)
    if records.empty or not (records["status"] == "ok").any():
        parser.error(f"{args.source}: no finished record.json found (give a workflow's records folder or a "
                     "records.csv)")
    records = records[records["status"] == "ok"]
    cpus = sorted(map(str, records["cpu_model"].dropna().unique()))
    print(f"{len(records)} ok records, CPU: {', '.join(cpus) or 'not named (their full records are not at hand)'}")
    print("\nMinutes per cell (sum of the records' wall seconds / 60):\n")
    print(cell_minutes(records).round(1).to_markdown())
    cells = records.groupby(["model", "attack"])["seconds"].sum()
    total, longest = cells.sum(), cells.max()
    print(f"\nIn all {total / 3600:.2f} CPU-hours of cells; the longest cell is {'/'.join(cells.idxmax())}, "
          f"{longest / 60:.1f} min.")
    for cores in args.cores:
        print(f"  {cores} cores: wall >= {max(longest, total / cores) / 3600:.2f} h")
    profile = layer_profile(records)
    if len(profile):
        print("\nSeconds per image by layer (median over the cell's images; layer 0 = the image stage):\n")
        print(profile.round(1).to_markdown(index=False))
    if args.logs is not None:
        stages = stage_profile(args.logs)
        if len(stages):
            print("\nMinutes per layer and stage, from the cells' progress logs (summed over a cell's chunks):\n")
            print(stages.round(1).to_markdown(index=False))
    slow = outliers(records, args.outlier)
    if len(slow):
        print(f"\nRecords slower than {args.outlier:g} × their cell's median (kept in the totals above):\n")
        print(slow.round(1).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
