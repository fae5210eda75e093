"""How the layer-wise recursion amplifies errors on a deep rank-deficient chain (issue 34; docs/copa.md, "The
floor check").

Runs the R-GAP recursion (:func:`copa.layerwise.solve_backwards`, no refinement) on one observation and prints,
per conv layer from the top down, what the attacker sees — rank, nullity, the least-squares solve's relative
residual ``‖U x̃ − v‖ / ‖v‖`` and the fraction of the reconstructed input that the layer below cannot produce
(outside the preceding activation's open range, where its inverse clips; at the image, outside the pixel box:
``copa.attacks.copa.outside_fraction``, the floor check's detector) — beside what only a benchmark can know,
the reconstructed input's norm and relative error against the true one (this script reads the ground truth to
diagnose; the attacks never do). Then the floor check's criterion: the whole network's relative gradient residual
``Σ_t‖∇_t − g_t‖² / Σ_t‖g_t‖²`` of the R-GAP image and of the blank mid-grey image, and both images' PSNR.

    python benchmarks/layerwise_amplification.py --model random-chain:4 --index 0
    python benchmarks/layerwise_amplification.py --model random-chain:42 --model random-chain:50 --index 0
"""

from __future__ import annotations

import argparse

import torch

from copa.attacks import GradientModel, squared_l2_distance
from copa.attacks.copa import outside_fraction
from copa.layerwise import solve_backwards
from copa.metrics import psnr
from copa.threat import Scenario


def amplification_rows(model: str, dataset: str, index: int) -> tuple[list[dict], dict]:
    """Per conv layer (top down) the attacker's diagnostics and the benchmark's errors; then the image's."""
    observation, truth = Scenario(model=model, dataset=dataset, indices=(index,), dtype="float64").build()
    x_solved, ctx = solve_backwards(observation)
    layers, acts = ctx.layers, ctx.activations
    true_inputs = [truth.preprocess.apply(truth.images01).to(torch.float64)]
    with torch.no_grad():
        for layer, act in zip(layers[:-1], acts[:-1]):
            true_inputs.append(act(layer(true_inputs[-1])))
    lower, upper = (b.to(torch.float64)[0] for b in observation.bounds())
    rows = []
    for info in ctx.layer_info:
        i = info["layer"]
        x = ctx.reconstructed[i].detach()
        true = true_inputs[i].reshape(x.shape)
        rows.append({"layer": i, "unknowns": info["unknowns"], "rank": info["rank"], "nullity": info["nullity"],
                     "residual": info["residual_relative"],
                     "outside": outside_fraction(x.reshape(true_inputs[i].shape[1:]), i,
                                                  acts[i - 1] if i else None, (lower, upper)),
                     "norm_ratio": float(x.norm() / true.norm()),
                     "relative_error": float((x - true).norm() / true.norm())})
    gradients = GradientModel([observation])
    label = observation.labels.unsqueeze(0)
    blank = torch.zeros_like(x_solved) + (lower + upper) / 2
    scale = sum(float(t.square().sum()) for t in gradients.targets)

    def residual(image):
        distance = squared_l2_distance(gradients(image.unsqueeze(0), label), gradients.targets, batched=True)
        return float(distance[0].detach()) / scale

    def score(image):
        return float(psnr(truth.preprocess.undo(image).clamp(0, 1), truth.images01.to(torch.float64)))

    return rows, {"residual_rgap": residual(x_solved), "residual_blank": residual(blank),
                  "psnr_rgap": score(x_solved), "psnr_blank": score(blank)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="a chain (repeatable)")
    parser.add_argument("--dataset", default="npz:../shared/data/cifar10_subset.npz")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for model in args.model:
        rows, image = amplification_rows(model, args.dataset, args.index)
        print(f"{model}, {args.dataset} train [{args.index}]")
        print("| layer | unknowns | rank | nullity | LS residual | outside | ‖x̂‖/‖x‖ | rel. error |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['layer']} | {r['unknowns']} | {r['rank']} | {r['nullity']} | {r['residual']:.1e} | "
                  f"{r['outside']:.3f} | {r['norm_ratio']:.3g} | {r['relative_error']:.3g} |")
        print(f"gradient residual: R-GAP image {image['residual_rgap']:.2e}, blank image {image['residual_blank']:.2e};"
              f" PSNR: R-GAP {image['psnr_rgap']:.2f} dB, blank {image['psnr_blank']:.2f} dB\n")


if __name__ == "__main__":
    main()
