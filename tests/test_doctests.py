"""Every docstring example in the package runs and prints what it shows (torchmetrics' style: the example is
part of the documentation and of the tests). A module is collected when its source holds ``>>> ``."""

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"copa": ROOT / "copa", "copa_baselines": ROOT / "baselines"}


def _modules_with_examples() -> list[str]:
    names = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            if ">>> " in path.read_text(encoding="utf-8"):
                parts = path.relative_to(folder).with_suffix("").parts
                parts = parts[:-1] if parts[-1] == "__init__" else parts
                names.append(".".join((package, *parts)))
    return names


MODULES = _modules_with_examples()


def test_the_documented_modules_are_found():
    assert {"copa.metrics", "copa.cli", "copa.bench.validity.predictors"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, name, globs=dict(vars(module))):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{name} holds '>>> ' but no example was collected"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (printed above)"
