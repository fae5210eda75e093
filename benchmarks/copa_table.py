"""R-GAP vs COPA vs COPA-GM over several images and chains: the table in docs/copa.md.

Runs every (model, attack, image) with :func:`copa.bench.run.run_attack` (CIFAR-10 train images, label
known, float64, untrained seeded models — the COPA papers' setting) and prints a Markdown table of
PSNR mean ± std, min and seconds per model and attack, with each model's COPA index. Finished runs
are kept in a JSON-lines file (``--records``), so an interrupted run resumes where it stopped.

    python benchmarks/copa_table.py --models cnn2_c1 cnn2_c2 --indices 0-7 \
        --set copa-gm:steps_image=3000 --records runs/copa_table.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from _records import finished_runs
from copa.bench import run_attack
from copa.errors import CopaError
from copa.layerwise.security import security_report
from copa.threat import Scenario

DEFAULT_DATA = "npz:../shared/data/cifar10_subset.npz"


def parse_indices(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return out


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    sets: dict[str, dict[str, str]] = {}
    for item in items:
        attack, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq:
            raise CopaError(f"--set {item!r} is malformed: expected ATTACK:KEY=VALUE, e.g. copa-gm:steps_image=3000")
        sets.setdefault(attack, {})[key] = value
    return sets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn2_c1", "cnn3_c3", "cnn2_c2", "cnn4_c1", "cnn4_c2"])
    parser.add_argument("--attacks", nargs="+", default=["rgap", "copa", "copa-gm"])
    parser.add_argument("--indices", default="0-7", help="CIFAR-10 train indices, e.g. 0-7 or 3,5")
    parser.add_argument("--dataset", default=DEFAULT_DATA)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="ATTACK:KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--records", default="runs/copa_table.jsonl", help="JSON lines of finished runs (resume)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = parse_sets(args.sets)
    indices = parse_indices(args.indices)
    path = Path(args.records)
    done = finished_runs(path, lambda row: (row["model"], row["attack"], row["index"],
                                            json.dumps(row["overrides"], sort_keys=True)))
    rows = []
    for model in args.models:
        for attack in args.attacks:
            overrides = sets.get(attack, {})
            for index in indices:
                key = (model, attack, index, json.dumps(overrides, sort_keys=True))
                if key not in done:
                    scenario = Scenario(model=model, dataset=args.dataset, split="train", indices=(index,),
                                        dtype="float64")
                    start = time.perf_counter()
                    record, _, _ = run_attack(scenario, attack, overrides=overrides, seed=args.seed,
                                              threads=args.threads)
                    psnr = record["metrics"]["mean"]["psnr"] if record["status"] == "ok" else None
                    done[key] = {"model": model, "attack": attack, "index": index, "overrides": overrides,
                                 "status": record["status"], "psnr": psnr,
                                 "seconds": time.perf_counter() - start}
                    with path.open("a") as fh:
                        fh.write(json.dumps(done[key]) + "\n")
                    print(f"{model} {attack} {index}: {record['status']} PSNR {psnr}", file=sys.stderr, flush=True)
                rows.append(done[key])
    print(markdown(rows, args.models, args.attacks, sets))
    return 0


def markdown(rows, models, attacks, sets) -> str:
    from tabulate import tabulate

    table = []
    for model in models:
        index = security_report(model, condition=False).copa_index
        for attack in attacks:
            cell = [r for r in rows if r["model"] == model and r["attack"] == attack]
            psnr = [r["psnr"] for r in cell if r["psnr"] is not None]
            if not psnr:
                table.append([model, index, attack, len(cell), "n/a", "n/a", "n/a"])
                continue
            mean = statistics.fmean(psnr)
            std = statistics.stdev(psnr) if len(psnr) > 1 else 0.0
            seconds = statistics.fmean(r["seconds"] for r in cell)
            table.append([model, index, attack, len(psnr), f"{mean:.2f} ± {std:.2f}", f"{min(psnr):.2f}",
                          f"{seconds:.1f}"])
    headers = ["model", "COPA index", "attack", "images", "PSNR dB (mean ± std)", "min PSNR", "seconds/image"]
    note = "; ".join(f"{a}: " + ", ".join(f"{k}={v}" for k, v in kv.items()) for a, kv in sets.items())
    return tabulate(table, headers=headers, tablefmt="github") + (f"\n\noverrides: {note}" if note else "")


if __name__ == "__main__":
    sys.exit(main())
