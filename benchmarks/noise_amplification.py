"""Predicted vs measured noise amplification of R-GAP's layer-wise least squares (issue "Defences").

For each chain and noise scale ``s`` (defence ``noise:scale=s``, defence seed 0: every gradient tensor
gets N(0, (s·rms(g))²) per entry, so its relative error is ≈ s) R-GAP reconstructs CIFAR-10 train images
0–3 (float64, centred inputs). Measured per image, in the model's input space:

* ``err_truth``  = ‖x̂_s − x‖/‖x‖ (vs the ground truth; for a rank-deficient chain it contains the
  null-space part the undefended attack misses already, independent of s);
* ``err_noise``  = ‖x̂_s − x̂_0‖/‖x̂_0‖ (vs the undefended reconstruction: the change the noise causes,
  which is what the least-squares perturbation bound is about);
* ``gain``       = err_noise / s (the effective amplification);
* PSNR (the benchmark's metric: [0, 1] images, peak 1) and each conv layer's relative least-squares
  residual ‖U x̃ − v‖/‖v‖ (``attack_info["layers"][*]["residual_relative"]``).

Predicted: the security report's per-layer ``noise_amplification`` κ_i (σ_max/σ_rank of the layer's U at the
image's own δ). Errors pass from layer to layer (layer i's solution becomes layer i−1's right-hand side and
its δ), so the first-order bound for the image is ``s·Π_i κ_i`` (product over conv layers); ``max κ_i`` is
shown too, the bound of the single worst solve. The final Linear layer's closed form (x = g_W[r]/g_b[r]) and
the inverse activations (atanh, whose slope 1/(1−y²) grows without bound near |y| = 1) are not in κ.

Usage (about 2 minutes on one thread):
    .venv/bin/python benchmarks/noise_amplification.py --threads 1 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from copa.bench.run import run_attacks, set_threads
from copa.layerwise.security import security_reports
from copa.threat import Scenario

DATASET = "npz:../shared/data/cifar10_subset.npz"


def median(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def run_chain(chain: str, scales: list[float], indices: list[int]) -> dict:
    start = time.perf_counter()
    reports = security_reports(chain, indices=indices, dataset=DATASET, condition=True)
    kappas = [[layer.noise_amplification for layer in report.layers if layer.kind == "conv"] for report in reports]
    product = [math.prod(k) for k in kappas]
    worst = [max(k) for k in kappas]
    rows = []
    undefended = None
    for scale in [0.0, *scales]:
        defences = (f"noise:scale={scale!r}",) if scale > 0 else ()
        scenarios = [Scenario(model=chain, dataset=DATASET, split="train", indices=(i,), dtype="float64",
                              defences=defences, defence_seed=0) for i in indices]
        results = run_attacks(scenarios, "rgap", record_failures=True)
        images, truths, psnr, distortion, residuals, status = [], [], [], [], [], []
        for record, reconstruction, truth in results:
            status.append(record["status"])
            x = truth.preprocess.apply(truth.images01).to(torch.float64)
            truths.append(x)
            images.append(reconstruction.images.detach().to(torch.float64) if reconstruction is not None else None)
            psnr.append(record["metrics"]["mean"]["psnr"] if record["status"] == "ok" else None)
            distortion.append(record.get("update_distortion"))
            layers = sorted(record["attack_info"]["layers"], key=lambda layer: layer["layer"])  # image → top
            residuals.append([layer["residual_relative"] for layer in layers])
        if scale == 0:
            undefended = images
        err_truth = [float((xh - x).norm() / x.norm()) for xh, x in zip(images, truths) if xh is not None]
        err_noise = [float((xh - x0).norm() / x0.norm()) for xh, x0 in zip(images, undefended) if xh is not None]
        row = {
            "scale": scale, "status": status,
            "update_distortion": median(distortion) if scale > 0 else 0.0,
            "err_truth": median(err_truth), "err_noise": median(err_noise),
            "gain": median([e / scale for e in err_noise]) if scale > 0 else None,
            "bound_product": scale * median(product), "bound_max": scale * median(worst),
            "psnr": median([p if p is None or math.isfinite(p) else 1e9 for p in psnr]),
            "psnr_per_image": psnr,
            "residual_relative": [median(layer) for layer in zip(*residuals)],
        }
        rows.append(row)
    return {"chain": chain, "kappa_per_image": kappas, "kappa_median": [median(k) for k in zip(*kappas)],
            "kappa_product": median(product), "kappa_max": median(worst), "rows": rows,
            "seconds": round(time.perf_counter() - start, 1)}


def fmt(value, spec=".2e"):
    if value is None:
        return "–"
    if isinstance(value, float) and (math.isinf(value) or value >= 1e9):
        return "inf"
    return format(value, spec)


def table(results: list[dict]) -> str:
    lines = ["| chain | κ per conv layer (image→top) | Π κ | s | ‖δg‖/‖g‖ | err_noise ‖x̂_s−x̂_0‖/‖x̂_0‖ | gain err_noise/s "
             "| bound s·Πκ | err_truth ‖x̂_s−x‖/‖x‖ | PSNR dB | rel. LS residual per conv layer (image→top) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        kap = " · ".join(f"{k:.3g}" for k in res["kappa_median"])
        for row in res["rows"]:
            lines.append(f"| {res['chain']} | {kap} | {res['kappa_product']:.3g} | {fmt(row['scale'], '.0e')} "
                         f"| {fmt(row['update_distortion'], '.2g')} | {fmt(row['err_noise'])} | {fmt(row['gain'], '.3g')} "
                         f"| {fmt(row['bound_product'])} | {fmt(row['err_truth'])} | {fmt(row['psnr'], '.2f')} "
                         f"| {', '.join(fmt(r, '.1e') for r in row['residual_relative'])} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", default="cnn2_c1,cnn2_c2,cnn3_c1,cnn4_c2")
    parser.add_argument("--scales", default="1e-6,1e-4,1e-2,1")
    parser.add_argument("--indices", default="0,1,2,3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]
    indices = [int(i) for i in args.indices.split(",")]
    start = time.perf_counter()
    results = []
    for chain in args.chains.split(","):
        results.append(run_chain(chain, scales, indices))
        print(f"# {chain}: {results[-1]['seconds']} s", flush=True)
    print(table(results))
    print(f"\nmedians over train images {indices}; total {time.perf_counter() - start:.1f} s, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)


if __name__ == "__main__":
    main()
