"""How fast DLG's L-BFGS amplifies rounding: why batched and sequential DLG agree only over its first steps.

DLG (mit-han-lab/dlg) runs ``torch.optim.LBFGS`` (lr 1, no line search) on the squared gradient
distance. This script runs it on one real image three ways, with the same seed, and prints after each
``step()`` (20 closure evaluations) the largest pixel difference to the plain run:

* ``torch.optim.LBFGS`` with the random start multiplied by ``1 + 1e-15`` (rounding-sized noise);
* :class:`copa.attacks.lbfgs.BatchedLBFGS` alone (B = 1) — the reimplementation the batched attacks use;
* the instance inside a batch of ``--batch`` instances (``DLG.reconstruct_batch``).

    python benchmarks/lbfgs_sensitivity.py                          # lenet-zhu, CIFAR-10 test 2, float64
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copa.attacks import create_attack  # noqa: E402
from copa.attacks.gradmatch import GradientModel, squared_l2_distance  # noqa: E402
from copa.threat import Scenario  # noqa: E402


def torch_lbfgs(observation, steps: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """DLG with ``torch.optim.LBFGS`` (known label); the start is ``randn · scale``."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn((1, *observation.input_shape), generator=generator, dtype=observation.dtype) * scale)
    x.requires_grad_(True)
    model = GradientModel([observation])
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=20, history_size=100)

    def closure():
        optimizer.zero_grad()
        loss = squared_l2_distance(model(x[None], observation.labels[None]), model.targets, batched=True).sum()
        loss.backward()
        return loss

    for _ in range(steps):
        optimizer.step(closure)
    return x.detach()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet-zhu")
    parser.add_argument("--dataset", default="npz:../shared/data/cifar10_subset.npz")
    parser.add_argument("--split", default="test")
    parser.add_argument("--index", type=int, default=2)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    def build(index):
        return Scenario(model=args.model, dataset=args.dataset, split=args.split, indices=(index,),
                        dtype=args.dtype).build()[0]

    observation = build(args.index)
    others = [build(i) for i in range(args.index + 1, args.index + args.batch)]
    rows = []
    for steps in range(1, args.steps + 1):
        # torch vs itself: final iterates; DLG alone vs in a batch: the best iterates it returns
        reference = torch_lbfgs(observation, steps, args.seed)
        perturbed = torch_lbfgs(observation, steps, args.seed, scale=1 + 1e-15)
        attack = create_attack("dlg", {"iterations": steps})
        alone = attack.reconstruct(observation, torch.Generator().manual_seed(args.seed)).images
        batch = attack.reconstruct_batch([observation, *others], [torch.Generator().manual_seed(args.seed)
                                                                  for _ in range(args.batch)])[0].images
        rows.append([steps, 20 * steps, f"{float((perturbed - reference).abs().max()):.1e}",
                     f"{float((alone - batch).abs().max()):.1e}",
                     f"{float(reference.abs().max()):.2f}"])
    print(f"# DLG L-BFGS sensitivity: {args.model}, {args.dataset} {args.split} {args.index}, {args.dtype}, "
          f"seed {args.seed}, batch of {args.batch}")
    print(tabulate(rows, headers=["L-BFGS steps", "evaluations ≤", "torch LBFGS vs itself, start ×(1+1e-15)",
                                  "DLG alone vs in a batch (best iterates)", "max |pixel|"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
