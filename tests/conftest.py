import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CIFAR_NPZ = SHARED_DATA / "cifar10_subset.npz"
MNIST_NPZ = SHARED_DATA / "mnist_subset.npz"

# Tests must not depend on the developer's plugins, extensions or data root.
os.environ.pop("COPA_PLUGINS", None)
os.environ.pop("COPA_EXTENSIONS", None)
os.environ.pop("COPA_SANDBOX", None)


def _allow_plugins_without_a_sandbox() -> None:
    """Where bubblewrap cannot run, the tests that use a plug-in run it unsandboxed (allowed explicitly); the
    sandbox's own tests skip there, and those of the refusal unset the allowance."""
    from copa.sandbox import ALLOW_UNSANDBOXED, sandbox_tool

    if sandbox_tool()[0] is None:
        os.environ[ALLOW_UNSANDBOXED] = "1"
    else:
        os.environ.pop(ALLOW_UNSANDBOXED, None)


_allow_plugins_without_a_sandbox()


@pytest.fixture
def cifar_npz() -> Path:
    if not CIFAR_NPZ.is_file():
        pytest.skip(f"shared data not present: {CIFAR_NPZ}")
    return CIFAR_NPZ


@pytest.fixture
def mnist_npz() -> Path:
    if not MNIST_NPZ.is_file():
        pytest.skip(f"shared data not present: {MNIST_NPZ}")
    return MNIST_NPZ


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for float64 factorizations: on a 2-core machine shared with other jobs, two
    OpenMP threads waiting for each other at barriers made them up to 10× slower (same results)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # SciPy's LAPACK (the Gram factorisations) too
        yield
    torch.set_num_threads(before)


@pytest.fixture
def zero_defence():
    """A registered test defence "test-zero" that shares an all-zero update; unregistered afterwards."""
    import torch

    from copa.threat import DEFENCES, Defence, register_defence

    class Zero(Defence):
        name = "test-zero"
        paper = "test"

        def apply(self, update, generator):
            return tuple(torch.zeros_like(g) for g in update.gradients)

    register_defence(Zero)
    yield Zero.name
    DEFENCES._entries.pop(Zero.name)


@pytest.fixture
def plugin_file(tmp_path):
    """``plugin_file(name, source, attacks)``: write ``source`` to ``tmp_path/plugins/NAME.py`` and return its path;
    at teardown forget the attacks its sandboxed worker described (the registry as before the test). The plug-in
    itself is never imported by the test's process (docs/trust.md)."""
    from copa.attacks.sandboxed import forget_plugin

    written: list[Path] = []

    def write(name: str, source: str, attacks: tuple[str, ...] = ()) -> Path:
        path = tmp_path / "plugins" / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(source)
        written.append(path)
        return path

    yield write
    for path in written:
        forget_plugin(str(path.resolve()))
