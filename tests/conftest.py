import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CIFAR_NPZ = SHARED_DATA / "cifar10_subset.npz"
MNIST_NPZ = SHARED_DATA / "mnist_subset.npz"

# Tests must not depend on the developer's plugins or data root.
os.environ.pop("COPA_PLUGINS", None)


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
    at teardown forget the attacks it registered and the plug-in module (the registry as before the test)."""
    import sys

    from copa import plugins
    from copa.attacks import ATTACKS

    loaded = dict(plugins._loaded)
    written: list[tuple[str, tuple[str, ...]]] = []

    def write(name: str, source: str, attacks: tuple[str, ...]) -> Path:
        path = tmp_path / "plugins" / f"{name}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(source)
        written.append((name, attacks))
        return path

    yield write
    for name, attacks in written:
        for attack in attacks:
            ATTACKS._entries.pop(attack, None)
        sys.modules.pop(f"copa_plugin_{name}", None)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)
