"""benchmarks/kernel_fingerprint.py: what this machine's kernels compute, as digests that agree across runs."""

import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("kernel_fingerprint", ROOT / "benchmarks" / "kernel_fingerprint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fingerprint_is_the_same_twice_and_tells_float64_from_float32(capsys, single_thread):
    module = load()
    assert module.fingerprint(torch.float64) == module.fingerprint(torch.float64)
    assert module.fingerprint(torch.float64)["gemm"] != module.fingerprint(torch.float32)["gemm"]
    assert module.main([]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"cpu_model", "cpu_capability", "environment", "float64", "float32"}
    assert set(printed["float64"]) == {"gemm", "conv", "conv_backward"}
    assert all(len(value) == 12 for value in printed["float32"].values())
