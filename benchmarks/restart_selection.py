"""Which of COPA-GM's floor-check candidates to return (issue 34; docs/copa.md "The floor check").

Where the layer-wise image is judged worse than the blank one, COPA-GM runs two gradient-matching restarts (from
the blank image and from uniform noise). This script runs ``copa-gm`` at the metric-validity study's budgets on the
given chains (CIFAR-10 train images 0-3, one batch as in the workflow), captures the candidates of every image the
check fired on — the blank image and the two restarts, with each one's residual, objective (cosine + TV) and cosine
— and scores, against the ground truth (a benchmark's privilege; the attack never sees it), the image each
selection rule would return:

* ``residual``: the lowest residual of the blank image and the two restarts (the first floor check);
* ``objective``: the restart of lower objective, then the lower residual of it and the blank image;
* ``cosine``: the same with the cosine alone (how inversefed scores its restarts);
* ``F=k``: the restart from the blank unless the one from noise has a residual more than k times lower, then
  the lower residual of it and the blank image;
* ``mean``: the two restarts' mean against the blank image by residual (the rule in copa/attacks/copa.py).

Images where the check did not fire keep the attack's own output. Prints per chain the floor (the mean image),
Inverting Gradients' mean PSNR from ``--records`` (the study's records.csv), each rule's mean PSNR, and the counts
below the floor and ≥ IG.

    python benchmarks/restart_selection.py --models random-chain:4 random-chain:6 random-chain:10 \\
        random-chain:14 random-chain:16 random-chain:28 random-chain:40 random-chain:42 random-chain:46 \\
        random-chain:48 random-chain:50 random-chain:52 random-chain:56
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd
import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import copa.attacks.copa as copa_module  # noqa: E402
from copa.bench import run_attacks  # noqa: E402
from copa.bench.run import set_threads  # noqa: E402
from copa.threat import Scenario  # noqa: E402

STUDY_BUDGETS = {"steps": 300, "steps_image": 2000, "steps_layer1": 1000, "steps_deeper": 300, "fallback_steps": 1200}


def candidates(model: str, dataset: str) -> tuple[list[float], dict, torch.Tensor]:
    """COPA-GM on images 0-3 of ``model``: each image's PSNR as returned, the floor check's captured restarts
    (``worse``: which images, ``starts``, ``restarts``, residuals, objectives, cosines) and the true images in the
    attack's (centred) space."""
    captured: dict = {}
    original_matching = copa_module._signed_gradient_matching
    original_fallback = copa_module.COPAGradientMatching._fallback_candidates

    def matching(match, start, lower, upper, steps, lr, tv):
        out, objective = original_matching(match, start, lower, upper, steps, lr, tv)
        with torch.no_grad():
            cosine = copa_module.cosine_distance(match.gradients(out), match.targets, batched=True)
        captured.update(starts=start.clone(), restarts=out.clone(), objective=objective.tolist(),
                        residual=match.relative_residual(out), cosine=cosine.tolist())
        return out, objective

    def fallback(self, match, found, worse, lower, upper, generators):
        captured["worse"] = list(worse)
        captured["residual_blank"] = match.subset(list(worse)).relative_residual(found["blank"][worse]) if worse else []
        more, notes = original_fallback(self, match, found, worse, lower, upper, generators)
        if worse:  # the restarts' mean and its residual, as the attack computed them
            captured["residual_mean"] = [more["mean of the gradient-matching restarts"][1][k] for k in worse]
        return more, notes

    copa_module._signed_gradient_matching = matching
    copa_module.COPAGradientMatching._fallback_candidates = fallback
    try:
        runs = run_attacks([Scenario(model=model, dataset=dataset, indices=(i,), dtype="float64") for i in range(4)],
                           "copa-gm", overrides=STUDY_BUDGETS)
    finally:
        copa_module._signed_gradient_matching = original_matching
        copa_module.COPAGradientMatching._fallback_candidates = original_fallback
    truth = torch.stack([t.images01[0] for _, _, t in runs]) - 0.5
    return [record["metrics"]["mean"]["psnr"] for record, _, _ in runs], captured, truth


def rules() -> dict:
    def restart_then_blank(pick):
        return lambda c: min(["blank", pick(c)], key=lambda k: c[k]["residual"])

    def prefer_blank_start(factor):
        return restart_then_blank(
            lambda c: "blank start" if c["blank start"]["residual"] <= factor * c["noise start"]["residual"]
            else "noise start")

    return {
        "residual": lambda c: min(["blank", "blank start", "noise start"], key=lambda k: c[k]["residual"]),
        "objective": restart_then_blank(lambda c: min(["blank start", "noise start"], key=lambda k: c[k]["objective"])),
        "cosine": restart_then_blank(lambda c: min(["blank start", "noise start"], key=lambda k: c[k]["cosine"])),
        "F=2": prefer_blank_start(2.0), "F=3": prefer_blank_start(3.0), "F=5": prefer_blank_start(5.0),
        "mean": lambda c: min(["blank", "mean"], key=lambda k: c[k]["residual"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--dataset", default="npz:../shared/data/cifar10_subset.npz")
    parser.add_argument("--records", default="results/metric-validity/records.csv",
                        help="the study's records.csv (the floor's and Inverting Gradients' PSNR)")
    args = parser.parse_args()
    set_threads(1)
    board = pd.read_csv(args.records)
    board = board[board["status"] == "ok"].pivot_table(index="model", columns="attack", values="psnr", aggfunc="mean")
    chosen_by = rules()
    rows, below, beats = [], dict.fromkeys(chosen_by, 0), dict.fromkeys(chosen_by, 0)
    for model in args.models:
        psnr, c, truth = candidates(model, args.dataset)
        worse, n = c.get("worse", []), len(c.get("worse", []))
        per_rule = {name: list(psnr) for name in chosen_by}
        for j, k in enumerate(worse):
            options = {"blank": {"residual": c["residual_blank"][j], "image": c["starts"][j]}}
            for r, start in enumerate(("blank start", "noise start")):
                options[start] = {what: c[what][r * n + j] for what in ("residual", "objective", "cosine")}
                options[start]["image"] = c["restarts"][r * n + j]
            mean = (c["restarts"][j] + c["restarts"][n + j]) / 2
            options["mean"] = {"image": mean, "residual": c["residual_mean"][j]}
            for name, rule in chosen_by.items():
                image = options[rule(options)]["image"]
                per_rule[name][k] = 10 * math.log10(1 / (image - truth[k]).square().mean().item())
        floor, ig = board.loc[model, "mean-image"], board.loc[model, "ig"]
        means = {name: sum(v) / len(v) for name, v in per_rule.items()}
        for name, value in means.items():
            below[name] += value < floor
            beats[name] += value >= ig
        rows.append([model, f"{floor:.2f}", f"{ig:.2f}", *(f"{means[name]:.2f}" for name in chosen_by)])
    print(tabulate(rows, headers=["chain", "floor", "IG", *chosen_by], tablefmt="github"))
    print("below the floor:", ", ".join(f"{k} {v}" for k, v in below.items()))
    print("≥ IG:", ", ".join(f"{k} {v}" for k, v in beats.items()))


if __name__ == "__main__":
    main()
