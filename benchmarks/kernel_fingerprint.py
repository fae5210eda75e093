"""Which CPU kernels this process's torch computes with, as a fingerprint: two machines (or environments) whose
fingerprints agree compute these operations to the same bits; records made on one reproduce bit for bit on the
other only then (docs/reproducibility.md, "Determinism").

Prints, for float64 and float32, the SHA-256 prefix of a fixed matrix product (MKL's GEMM in torch's x86 builds) and
of a fixed convolution with its backward (float64: im2col + GEMM; float32: oneDNN), with torch's kernel set, the CPU
model and the kernel-choosing environment variables. Run it under the settings a run used, e.g.

    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/kernel_fingerprint.py
    ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=COMPATIBLE python benchmarks/kernel_fingerprint.py --time

``--time`` adds the seconds of a repeated float64 convolution + GEMM workload (what ``MKL_CBWR`` costs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from copa.provenance import KERNEL_SETTINGS, cpu_capability, cpu_model  # noqa: E402


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:12]


def fingerprint(dtype: torch.dtype) -> dict[str, str]:
    """SHA-256 prefixes of a seeded GEMM and of a seeded convolution's output and input gradient."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(300, 400, dtype=dtype, generator=generator)
    b = torch.randn(400, 200, dtype=dtype, generator=generator)
    x = torch.randn(8, 3, 32, 32, dtype=dtype, generator=generator, requires_grad=True)
    w = torch.randn(16, 3, 5, 5, dtype=dtype, generator=generator)
    y = F.conv2d(x, w)
    (y * y).sum().backward()
    return {"gemm": digest(a @ b), "conv": digest(y), "conv_backward": digest(x.grad)}


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
           "float64": fingerprint(torch.float64), "float32": fingerprint(torch.float32)}
    if args.time:
        out["float64_workload_seconds"] = round(workload_seconds(), 3)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
