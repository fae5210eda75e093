"""What a full-fidelity paper run costs on a CPU: every (chain, attack) of ``config/paper.yaml`` at its
published step counts, estimated from two short runs (issue "Reproduce the paper at full fidelity").

Running every attack at full defaults on every chain takes days of CPU, so this measures each (model,
attack) on one CIFAR-10 training image at two fractions ``f1 < f2`` of its published step counts (every
step hyperparameter scaled: copa ``steps``; copa-gm ``steps``, ``steps_image``, ``steps_layer1``,
``steps_deeper``; hybrid the last three; DLG/iDLG/IG ``iterations``) and extrapolates linearly,
``t(f) = setup + f · per_full_run``, to ``f = 1`` (where the second run is within 20 % or 2 CPU-s of the first,
the steps hide in the setup's timing noise and a third run at ``5 · f2`` replaces it). Attacks without steps (R-GAP, mean-image) run once.
Time is the process's CPU time (``time.process_time``, 1 torch thread; built-in attacks run
in-process), so a busy machine slows the run but not the numbers much (cache sharing aside).

The estimate is per image, one image after the other by default: the workflow batches a cell's images
(``batch_size: null``), which is faster (README, "Batched instances"), so those totals are upper bounds for
the batched attacks. ``--batch 8`` measures as the workflow runs a cell — 8 images (``--index`` onwards), one
client each, as one vectorised batch for the batched attacks (the hybrid takes them one after the other) —
and reports seconds per image; the ratio of the two runs is what batching gains per attack. DLG and iDLG are extrapolated per gradient evaluation to L-BFGS's cap
(``iterations × max_iter`` = 6000 evaluations; an L-BFGS step takes 1 to ``max_iter`` evaluations, and the
published CPU leaderboard's full runs took 831–5141): an upper bound. The other attacks' cost per step is
assumed constant (COPA-GM skips its gradient-matching stage on consistent systems at every fraction
alike). Check it against full runs: ``--fractions 0.5 1`` makes the second run a full one (README, "What
a full-fidelity paper run costs", lists such checks).

    python benchmarks/paper_cost.py --records runs/paper_cost.jsonl            # every chain of config/paper.yaml
    python benchmarks/paper_cost.py --models cnn2_c2 cnn4_c1 --attacks copa-gm --records runs/c.jsonl
    python benchmarks/paper_cost.py --batch 8 --records runs/paper_cost.jsonl  # as the workflow runs a cell
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _records import finished_runs
from copa.attacks import create_attack
from copa.bench import run_attacks
from copa.bench.run import set_threads
from copa.threat import Scenario

# the step hyperparameters of each attack (scaled together); attacks not listed have none
STEP_KEYS = {"copa": ("steps",), "copa-gm": ("steps", "steps_image", "steps_layer1", "steps_deeper"),
             "hybrid": ("steps_image", "steps_layer1", "steps_deeper"),
             "dlg": ("iterations",), "idlg": ("iterations",), "ig": ("iterations",)}


LBFGS_ATTACKS = ("dlg", "idlg")
# when the second run costs less than 20 % or 2 CPU-s more than the first, the steps hide in the timing noise
# (±1 s measured on this machine's setup stages): a third run at 5 × F2 replaces the second
REFINE_BELOW, REFINE_SECONDS, REFINE_FACTOR = 0.2, 2.0, 5.0


def evaluation_cap(attack: str) -> int:
    """Most gradient evaluations of a full L-BFGS run: ``iterations`` steps of at most ``max_iter`` each."""
    defaults = {name: h.default for name, h in create_attack(attack).hyperparameters.items()}
    return defaults["iterations"] * defaults["max_iter"]


def scaled_steps(attack: str, fraction: float) -> dict[str, int]:
    """The attack's step hyperparameters at ``fraction`` of their defaults (at least 1 each)."""
    defaults = {name: h.default for name, h in create_attack(attack).hyperparameters.items()}
    return {key: max(1, round(defaults[key] * fraction)) for key in STEP_KEYS.get(attack, ())}


def measure(model: str, attack: str, overrides: dict, dataset: str, index: int, seed: int, batch: int = 1) -> dict:
    """One run of ``attack`` on ``batch`` instances (images ``index`` … ``index + batch − 1``, one client each),
    as the workflow runs a cell (a batched attack takes them as one vectorised batch); seconds per image."""
    scenarios = [Scenario(model=model, dataset=dataset, split="train", indices=(index + k,), dtype="float64")
                 for k in range(batch)]
    start = time.process_time()
    wall = time.perf_counter()
    results = run_attacks(scenarios, attack, overrides=overrides, seeds=[seed] * batch, threads=1, isolation="auto")
    records = [record for record, _, _ in results]
    status = records[0]["status"] if len({r["status"] for r in records}) == 1 else "mixed"
    return {"status": status, "reason": records[0].get("reason"),
            "cpu_seconds": (time.process_time() - start) / batch, "wall_seconds": (time.perf_counter() - wall) / batch,
            "psnr": records[0]["metrics"]["mean"]["psnr"] if records[0]["status"] == "ok" else None,
            "gradient_evals": max((r.get("evaluations") or {}).get("gradient") or 0 for r in records)}


def measured(model: str, attack: str, fraction: float, done: dict, path: Path, args) -> dict:
    """The run of ``attack`` on ``model`` at ``fraction`` of its steps: from ``done`` (the records file), else
    measured now and appended to it."""
    key = (model, attack, fraction, args.batch)
    if key not in done:
        overrides = scaled_steps(attack, fraction)
        done[key] = {"model": model, "attack": attack, "fraction": fraction, "batch": args.batch, "overrides": overrides,
                     **measure(model, attack, overrides, args.dataset, args.index, args.seed, args.batch)}
        with path.open("a") as fh:
            fh.write(json.dumps(done[key]) + "\n")
        print(f"{model} {attack} f={fraction} B={args.batch}: {done[key]['status']} "
              f"{done[key]['cpu_seconds']:.1f} CPU-s per image", file=sys.stderr, flush=True)
    return done[key]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/paper.yaml", help="models, attacks and images per cell")
    parser.add_argument("--models", nargs="+", default=None, help="default: the config's")
    parser.add_argument("--attacks", nargs="+", default=None, help="default: the config's")
    parser.add_argument("--fractions", nargs=2, type=float, default=[0.01, 0.05], metavar=("F1", "F2"))
    parser.add_argument("--dataset", default="npz:../shared/data/cifar10_subset.npz")
    parser.add_argument("--index", type=int, default=0, help="CIFAR-10 training image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=1,
                        help="instances per run, as the workflow batches a cell (1: one image after the other)")
    parser.add_argument("--records", default="runs/paper_cost.jsonl", help="JSON lines of finished runs (resume)")
    args = parser.parse_args(argv)
    f1, f2 = args.fractions
    if not 0 < f1 < f2 <= 1:
        parser.error(f"--fractions {f1} {f2}: need 0 < F1 < F2 <= 1")
    if not 1 <= args.batch <= 64:
        parser.error(f"--batch {args.batch}: accepted are 1 to 64 instances")
    config = yaml.safe_load(Path(args.config).read_text())
    models = args.models or config["models"]
    attacks = args.attacks or config["attacks"]
    images = len(config["indices"])
    set_threads(1)
    path = Path(args.records)
    done = finished_runs(path, lambda row: (row["model"], row["attack"], row["fraction"], row.get("batch", 1)))
    estimates = []
    for model in models:
        for attack in attacks:
            fractions = (f1, f2) if attack in STEP_KEYS else (1.0,)
            rows = [measured(model, attack, fraction, done, path, args) for fraction in fractions]
            if (len(rows) == 2 and rows[0]["status"] == "ok"
                    and rows[1]["cpu_seconds"] - rows[0]["cpu_seconds"]
                    < max(REFINE_BELOW * rows[0]["cpu_seconds"], REFINE_SECONDS)):
                # the steps' share is within the setup's timing noise: measure further out
                rows[1] = measured(model, attack, min(1.0, REFINE_FACTOR * f2), done, path, args)
            if rows[0]["status"] == "not-applicable":
                estimates.append({"model": model, "attack": attack, "per_image": None, "setup": None})
                continue
            if len(rows) == 1:
                per_image, setup = rows[0]["cpu_seconds"], rows[0]["cpu_seconds"]
            elif attack in LBFGS_ATTACKS:
                # L-BFGS steps take 1..max_iter evaluations each: extrapolate per evaluation to the cap
                t1, t2 = rows[0]["cpu_seconds"], rows[1]["cpu_seconds"]
                e1, e2 = rows[0]["gradient_evals"], rows[1]["gradient_evals"]
                per_eval = max(0.0, (t2 - t1) / (e2 - e1)) if e2 > e1 else t2 / e2
                setup = max(0.0, t1 - per_eval * e1)
                per_image = setup + per_eval * evaluation_cap(attack)
            else:
                slope = max(0.0, (rows[1]["cpu_seconds"] - rows[0]["cpu_seconds"])
                            / (rows[1]["fraction"] - rows[0]["fraction"]))
                setup = max(0.0, rows[0]["cpu_seconds"] - slope * f1)
                per_image = setup + slope
            estimates.append({"model": model, "attack": attack, "per_image": per_image, "setup": setup})
    print(report(estimates, models, attacks, images, (f1, f2), args))
    return 0


def report(estimates, models, attacks, images, fractions, args) -> str:
    from tabulate import tabulate

    by = {(e["model"], e["attack"]): e for e in estimates}
    table = []
    for model in models:
        cells = [by[(model, a)]["per_image"] for a in attacks]
        table.append([model, *("n/a" if c is None else f"{c:,.0f}" for c in cells),
                      f"{sum(c for c in cells if c is not None) / 60:,.1f}"])
    header = (f"# estimated CPU seconds per image at published step counts ({platform.processor() or platform.machine()},"
              f" torch {torch.__version__}, 1 thread, float64; fractions {fractions[0]} and {fractions[1]}; "
              f"{'one image after the other' if args.batch == 1 else f'batches of {args.batch} instances'})")
    total = sum(e["per_image"] for e in estimates if e["per_image"] is not None) * images
    longest = max((e for e in estimates if e["per_image"] is not None), key=lambda e: e["per_image"])
    headers = ["model", *attacks, "all attacks, minutes/image"]
    lines = [header, tabulate(table, headers=headers, tablefmt="github"), "",
             f"total for {images} images per cell: {total / 3600:,.1f} CPU-hours "
             f"({'one image after the other' if args.batch == 1 else f'batches of {args.batch}'});",
             f"longest cell: {longest['model']} {longest['attack']}, "
             f"{images * longest['per_image'] / 3600:,.2f} h on one core; "
             f"wall on 8 cores >= {max(total / 8, images * longest['per_image']) / 3600:,.1f} h"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
