"""Why batching DLG gains in float32 and not in float64 on a CPU (issue 32, "Cheaper full fidelity").

DLG's cost is its closure: one evaluation = the per-instance parameter gradients of B instances
(``copa.attacks.GradientModel``: ``torch.func.vmap`` over ``torch.func.grad``; the plain autograd path at B = 1),
their squared distance to the observed ones, and the backward of that distance to the images (a second
derivative). This script times that evaluation alone — the L-BFGS bookkeeping (``BatchedLBFGS``) aside — at
B = 1 and B = 16, in float32 and float64, and lists the ATen operators that take the time (``torch.profiler``,
self CPU time), so that the ratio ``per-instance seconds at B = 16 / at B = 1`` can be read against the kernels
that run: PyTorch's CPU convolution in float32 goes to oneDNN (``mkldnn_convolution``), which takes a batch as one
call; float64 has no oneDNN kernel and falls back to ``slow_conv2d`` (im2col + GEMM per image), whose cost per
image does not fall with the batch.

    python benchmarks/dlg_batch_bound.py                       # lenet-zhu and cnn4_c2, 1 thread
    python benchmarks/dlg_batch_bound.py --models lenet-zhu --repeats 20

Prints per (model, dtype): seconds per instance-evaluation at B = 1 and B = 16, their ratio, and the top operators
of the B = 16 run. Then the whole attack (``--steps`` L-BFGS steps of DLG, sequential and batched): wall seconds,
the closure calls each made (a batched call evaluates all B instances, also those whose L-BFGS has stopped, so
the batch runs as many calls as its slowest instance needs), and the share of the wall time the closures
explain (calls × the closure's measured time); the rest is L-BFGS's per-instance bookkeeping.
CIFAR-10 train images 0..B−1 of ``--dataset``, label known.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copa.attacks import GradientModel, create_attack  # noqa: E402
from copa.bench.run import set_threads  # noqa: E402
from copa.threat import Scenario  # noqa: E402
from copa.attacks.gradmatch import squared_l2_distance  # noqa: E402


def evaluation_seconds(model: str, dtype: str, batch: int, repeats: int, dataset: str,
                       profile: bool = False) -> tuple[float, list[tuple[str, float]]]:
    """Seconds per instance of DLG's closure (gradients, distance, backward) for ``batch`` instances, the median
    of ``repeats`` timed calls after one warm-up; with ``profile``, the top operators of one more call."""
    observations = [Scenario(model=model, dataset=dataset, indices=(i,), dtype=dtype).build(torch.device("cpu"))[0]
                    for i in range(batch)]
    gradient_model = GradientModel(observations)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch, 1, *observations[0].input_shape), generator=generator,
                         dtype=observations[0].dtype).requires_grad_(True)
    labels = torch.stack([o.labels for o in observations])

    def closure():
        images.grad = None
        losses = squared_l2_distance(gradient_model(images, labels), gradient_model.targets, batched=True)
        losses.sum().backward()

    closure()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        closure()
        times.append(time.perf_counter() - start)
    top = []
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            closure()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        top = [(e.key, e.self_cpu_time_total / total) for e in events[:4]]
    times.sort()
    return times[len(times) // 2] / batch, top


def attack_seconds(model: str, dtype: str, batch: int, steps: int, dataset: str) -> dict[str, float]:
    """DLG (``steps`` L-BFGS steps) on ``batch`` instances, once batched and once one after the other: wall
    seconds and closure calls (calls of the gradient model) of each."""
    observations = [Scenario(model=model, dataset=dataset, indices=(i,), dtype=dtype).build(torch.device("cpu"))[0]
                    for i in range(batch)]
    calls = [0]
    original = GradientModel.__call__

    def counted(self, *args, **kwargs):
        calls[0] += 1
        return original(self, *args, **kwargs)

    out = {}
    GradientModel.__call__ = counted
    try:
        for mode in ("sequential", "batched"):
            attack = create_attack("dlg", {"iterations": steps})
            calls[0] = 0
            start = time.perf_counter()
            if mode == "batched":
                attack.reconstruct_batch(observations, [torch.Generator().manual_seed(b) for b in range(batch)])
            else:
                for b, observation in enumerate(observations):
                    attack.reconstruct(observation, torch.Generator().manual_seed(b))
            out[f"{mode}_seconds"], out[f"{mode}_calls"] = time.perf_counter() - start, calls[0]
    finally:
        GradientModel.__call__ = original
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lenet-zhu", "cnn4_c2"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--steps", type=int, default=2, help="L-BFGS steps of the whole-attack runs")
    parser.add_argument("--dataset", default="npz:../shared/data/cifar10_subset.npz")
    args = parser.parse_args()
    set_threads(1)
    rows, whole = [], []
    for model in args.models:
        for dtype in ("float32", "float64"):
            one, _ = evaluation_seconds(model, dtype, 1, args.repeats, args.dataset)
            many, top = evaluation_seconds(model, dtype, args.batch, args.repeats, args.dataset, profile=True)
            rows.append([model, dtype, f"{one * 1e3:.2f}", f"{many * 1e3:.2f}", f"{many / one:.2f}",
                         "; ".join(f"{name} {share:.0%}" for name, share in top)])
            run = attack_seconds(model, dtype, args.batch, args.steps, args.dataset)
            explained_seq = run["sequential_calls"] * one / run["sequential_seconds"]
            explained_batch = run["batched_calls"] * many * args.batch / run["batched_seconds"]
            whole.append([model, dtype, f"{run['sequential_seconds']:.2f}", f"{run['batched_seconds']:.2f}",
                          f"{run['sequential_seconds'] / run['batched_seconds']:.2f}x",
                          f"{run['sequential_calls'] / args.batch:.1f}", run["batched_calls"],
                          f"{explained_seq:.0%}", f"{explained_batch:.0%}"])
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, "
          f"kernel set {torch.backends.cpu.get_cpu_capability()}")
    print(tabulate(rows, headers=["model", "dtype", "ms/instance B=1", f"ms/instance B={args.batch}",
                                  f"B={args.batch} / B=1", f"top operators at B={args.batch} (self CPU)"],
                   tablefmt="github"))
    print(f"\nDLG, {args.steps} L-BFGS steps, B = {args.batch}:")
    print(tabulate(whole, headers=["model", "dtype", "s sequential", "s batched", "gain", "calls/instance seq.",
                                   "calls batched", "closures' share seq.", "closures' share batched"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
