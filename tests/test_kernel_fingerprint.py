"""copa.provenance.kernel_digests and benchmarks/kernel_fingerprint.py: what this machine's kernels compute, as
digests that agree across runs; every record keeps them (compute.kernel_fingerprint)."""

import importlib.util
import json
from pathlib import Path

import torch

from copa.provenance import kernel_digests, kernel_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def load():
    spec = importlib.util.spec_from_file_location("kernel_fingerprint", ROOT / "benchmarks" / "kernel_fingerprint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_fingerprint_is_the_same_twice_and_tells_float64_from_float32(capsys, single_thread):
    module = load()
    assert kernel_digests(torch.float64) == kernel_digests(torch.float64)
    assert kernel_digests(torch.float64)["gemm"] != kernel_digests(torch.float32)["gemm"]
    assert torch.get_num_threads() == 1
    assert module.main([]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"cpu_model", "cpu_capability", "environment", "kernel_fingerprint", "float64", "float32"}
    assert printed["kernel_fingerprint"] == "/".join(printed["float64"].values()) == kernel_fingerprint()
    assert set(printed["float64"]) == {"gemm", "conv", "conv_backward"}
    assert all(len(value) == 12 for value in printed["float32"].values())


def test_the_digests_restore_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        kernel_digests(torch.float64)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
