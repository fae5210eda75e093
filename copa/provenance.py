"""Provenance of a result: package versions, the source commit, the device (and the one check of a
requested device, :func:`resolve_device`).

Every record, cell summary, security entry and observation file states these, so that a published
number can be traced to the code and machine that produced it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path

import torch
from threadpoolctl import threadpool_info

from .errors import CopaError, InvalidSpecError


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    names = ["copa-bench", "torch", "torchvision", "numpy", "scipy", "torchmetrics"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


OUTPUT_FOLDERS = ("results", "site", "archive")
"""Top-level folders of the repository that hold what runs write (published tables and records, the built site, the
archived records of runs in progress), not code: a change under them does not make the commit ``-dirty`` — a run whose
``results_dir`` is ``results/`` rewrites tracked files there while its later cells still run the committed code."""


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree copa was imported from (:func:`commit_of`)."""
    return commit_of(Path(__file__).resolve().parent)


def commit_of(tree: Path) -> str | None:
    """The commit checked out where ``tree`` lies, with '-dirty' if a tracked file outside :data:`OUTPUT_FOLDERS`
    has local changes (the code that ran is then not the commit's); None outside a git checkout.

    >>> commit_of(Path("/")) is None
    True
    """
    excluded = [f":(top,exclude){folder}" for folder in OUTPUT_FOLDERS]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)", *excluded],
                               cwd=tree, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "OPENBLAS_CORETYPE", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
                   "MKL_DEBUG_CPU_TYPE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that choose the CPU kernels or thread pools, recorded because they change the last bits."""
CPU_CAPABILITIES = ("AVX512", "AVX2", "DEFAULT")
"""torch's x86 kernel sets, widest first (``torch.backends.cpu.get_cpu_capability()``; ``ATEN_CPU_CAPABILITY``
selects a narrower one): a CPU runs its own and every one after it."""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The kernel set torch's CPU operators use in this process (``AVX512``, ``AVX2``, ``DEFAULT``, ...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def capabilities_here() -> list[str]:
    """The kernel sets this CPU can run, this process's first: a wider x86 set can run every narrower one."""
    current = cpu_capability().upper()
    if current in CPU_CAPABILITIES:
        return list(CPU_CAPABILITIES[CPU_CAPABILITIES.index(current):])
    return [current, "DEFAULT"] if current != "DEFAULT" else ["DEFAULT"]


def torch_math_libraries(shown: str | None = None) -> list[str]:
    r"""The BLAS/LAPACK and oneDNN torch's own CPU operators use, from its build configuration
    (``torch.__config__.show()``, or ``shown``). torch links MKL statically, so threadpoolctl, which lists the shared
    libraries loaded (numpy's OpenBLAS), does not see the library that computes torch's float64 matrix products.

    >>> torch_math_libraries("  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for x\n"
    ...                      "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71)\n  - Build settings: BLAS_INFO=mkl, X=1")
    ['BLAS_INFO=mkl', 'Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for x', 'Intel(R) MKL-DNN v3.12.0']
    """
    shown = torch.__config__.show() if shown is None else shown
    blas = re.search(r"BLAS_INFO=([^,\s]+)", shown)
    found = [f"BLAS_INFO={blas.group(1)}"] if blas else []
    for line in shown.splitlines():
        line = line.strip().lstrip("- ").strip()
        if "Math Kernel Library" in line or "OpenBLAS" in line:
            found.append(line)
        elif "MKL-DNN" in line or "oneDNN" in line:
            found.append(line.split(" (Git Hash")[0])
    return found


def kernel_digests(dtype: torch.dtype = torch.float64) -> dict[str, str]:
    """SHA-256 prefixes of a seeded matrix product (torch's BLAS: MKL on x86) and of a seeded convolution's output
    and input gradient (float64: im2col + the BLAS; float32: oneDNN), on one thread: what this process's kernels
    compute, bit for bit (benchmarks/kernel_fingerprint.py prints them)."""
    def digest(tensor: torch.Tensor) -> str:
        return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:12]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(300, 400, dtype=dtype, generator=generator)
        b = torch.randn(400, 200, dtype=dtype, generator=generator)
        x = torch.randn(8, 3, 32, 32, dtype=dtype, generator=generator, requires_grad=True)
        w = torch.randn(16, 3, 5, 5, dtype=dtype, generator=generator)
        with torch.enable_grad():
            y = torch.nn.functional.conv2d(x, w)
            (y * y).sum().backward()
        return {"gemm": digest(a @ b), "conv": digest(y), "conv_backward": digest(x.grad)}
    finally:
        torch.set_num_threads(threads)


def kernel_fingerprint() -> str:
    """One string for :func:`kernel_digests` in float64 (``gemm/conv/conv_backward``): two processes with the same
    fingerprint compute these float64 operations to the same bits; records made under one fingerprint can be
    reproduced bit for bit only under the same (docs/reproducibility.md, "Determinism")."""
    return "/".join(kernel_digests(torch.float64).values())


@functools.lru_cache(maxsize=1)
def compute_environment() -> dict:
    """What decides a CPU result's last bits besides the code: the CPU model, torch's kernel set, the math libraries
    torch computes with (:func:`torch_math_libraries`: MKL for its float64 matrix products, whose code path depends
    on the CPU's vendor: docs/reproducibility.md), the BLAS and OpenMP libraries loaded beside it (threadpoolctl: their
    API, version and the kernel architecture they chose; numpy's and SciPy's) and the kernel-choosing environment
    variables (:data:`KERNEL_SETTINGS`), and what the kernels compute (:func:`kernel_fingerprint`). Recorded in every
    record; ``copa verify`` reruns under the record's kernel set."""
    libraries = [{key: info.get(key) for key in ("internal_api", "version", "architecture", "threading_layer")
                  if info.get(key) is not None} for info in threadpool_info()]
    return {"cpu_model": cpu_model(), "cpu_capability": cpu_capability(), "kernel_fingerprint": kernel_fingerprint(),
            "torch_libraries": torch_math_libraries(),
            "libraries": sorted(libraries, key=lambda lib: str(sorted(lib.items()))),
            "environment": {key: os.environ[key] for key in KERNEL_SETTINGS if key in os.environ}}


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


DEVICE_NAMES = "cpu, cuda or cuda:N (N: a GPU index)"
"""The device names accepted (``--device``, a config's ``device``), in words."""
_DEVICE = re.compile(r"cpu|cuda(?::(?P<index>[0-9]{1,9}))?")


def resolve_device(device: str | torch.device) -> torch.device:
    """Return a torch device, refusing CUDA when none is available (instead of failing later), and any
    string other than ``cpu``, ``cuda`` and ``cuda:N`` (an empty one too: not the default silently)."""
    if isinstance(device, torch.device):
        dev = device
    elif not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise InvalidSpecError(f"device {device!r} is invalid: accepted are {DEVICE_NAMES}")
    else:
        dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CopaError(f"device {device!r} requested but CUDA is not available here (torch.cuda.is_available() "
                        f"is False); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidSpecError(f"device {device!r} is not here: this machine has {torch.cuda.device_count()} GPU(s), "
                               f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidSpecError(f"device {device!r} is not supported: accepted are {DEVICE_NAMES}")
    return dev
