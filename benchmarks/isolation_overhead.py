"""What running an attack in the isolated worker costs (docs/trust.md, "Cost"): R-GAP on cnn2_c1, CIFAR-10
train image 0, float64, 1 thread, in the runner's process (``isolation="auto"``) and in the worker
(``isolation="always"``), alternately, ``--repeats`` times each.

    .venv/bin/python benchmarks/isolation_overhead.py --repeats 2
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from copa.bench import run_attack, set_threads
from copa.threat import Scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dataset", default="npz:../shared/data/cifar10_subset.npz")
    args = parser.parse_args()
    set_threads(1)
    scenario = Scenario(model="cnn2_c1", dataset=args.dataset, indices=(0,), dtype="float64")
    run_attack(scenario, "rgap")  # warm-up: imports, dataset cache
    print(f"torch {torch.__version__}, {platform.machine()}, 1 thread")
    for _ in range(args.repeats):
        for mode in ("auto", "always"):
            start = time.perf_counter()
            record, _, _ = run_attack(scenario, "rgap", isolation=mode)
            print(f"isolation={mode:6s} wall {time.perf_counter() - start:6.2f} s, attack {record['seconds']:5.2f} s, "
                  f"PSNR {record['metrics']['mean']['psnr']:.2f} dB")


if __name__ == "__main__":
    main()
