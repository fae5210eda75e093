"""Which CPU kernels this process's torch computes with, as a fingerprint: two machines (or environments) whose
fingerprints agree compute these operations to the same bits; records made on one reproduce bit for bit on the
other only then (docs/reproducibility.md, "Determinism").

Prints, for float64 and float32, the SHA-256 prefix of a fixed matrix product (MKL's GEMM in torch's x86 builds) and
of a fixed convolution with its backward (float64: im2col + GEMM; float32: oneDNN) — copa.provenance.kernel_digests;
every record keeps the float64 ones as ``compute.kernel_fingerprint`` — with torch's kernel set, the CPU model and the
kernel-choosing environment variables. Run it under the settings a run used, e.g.

    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/kernel_fingerprint.py
    ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE python benchmarks/kernel_fingerprint.py --time

``--time`` adds the seconds of a repeated float64 convolution + GEMM workload (what ``MKL_CBWR`` costs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from copa.provenance import KERNEL_SETTINGS, cpu_capability, cpu_model, kernel_digests, kernel_fingerprint  # noqa: E402


def workload_seconds(repeats: int = 40) -> float:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 12, 32, 32, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(12, 12, 3, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    a = torch.randn(256, 768, dtype=torch.float64, generator=generator)
    b = torch.randn(768, 128, dtype=torch.float64, generator=generator)
    start = time.perf_counter()
    for _ in range(repeats):
        F.conv2d(x, w, padding=1).sum().backward()
        for _ in range(5):
            a @ b
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", action="store_true", help="also time a float64 convolution + GEMM workload")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {"cpu_model": cpu_model(), "cpu_capability": cpu_capability(),
           "environment": {k: os.environ[k] for k in KERNEL_SETTINGS if k in os.environ},
           "kernel_fingerprint": kernel_fingerprint(),
           "float64": kernel_digests(torch.float64), "float32": kernel_digests(torch.float32)}
    if args.time:
        out["float64_workload_seconds"] = round(workload_seconds(), 3)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
