"""The house's one-way imports (docs/architecture.md), checked by parsing every module's imports (ast).

ground floor ← threat ← layerwise ← attacks ← bench ← cli (and the workflow, which may use anything):
a module may import its own storey and those below it, never one above. The baselines (installed as
``copa_baselines``) are plug-ins: they may import copa's public API only — ``copa.X`` for a wing or a
ground-floor module, public names — and copa never imports them. Imports inside functions count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GROUND = {"copa", "copa.errors", "copa.registry", "copa.io", "copa.data", "copa.models", "copa.metrics",
          "copa.provenance", "copa.hyperparameters", "copa.plugins", "copa.sandbox", "copa.training"}
GROUND_PACKAGES = {"copa.models", "copa.data"}
"""Ground-floor rooms that are packages of one concept per file."""
STOREYS = ["ground", "threat", "layerwise", "attacks", "bench", "integrations", "cli"]
PUBLIC_API = {"copa.attacks", "copa.layerwise", "copa.threat", "copa.errors", "copa.metrics", "copa.models",
              "copa.data", "copa.registry", "copa.hyperparameters", "copa.io"}


def storey(module: str) -> str:
    """The storey of a copa module name (``copa.layerwise.solves`` → layerwise)."""
    if module in GROUND or any(module.startswith(f"{package}.") for package in GROUND_PACKAGES):
        return "ground"
    parts = module.split(".")
    if parts[:2] in (["copa", "cli"], ["copa", "__main__"]):
        return "cli"
    if len(parts) >= 2 and parts[1] in STOREYS:
        return parts[1]
    raise AssertionError(f"{module} belongs to no storey: add it to GROUND or a wing (docs/architecture.md)")


def module_name(path: Path, package_root: Path, package: str) -> str:
    rel = path.relative_to(package_root).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[str, list[str], int]]:
    """Every import in ``source`` as (absolute module, imported names, line); relative imports resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [alias.name for alias in node.names]
            if node.module is None or node.level and not node.module:  # "from . import x": x may be a module
                found += [(f"{target}.{n}", [], node.lineno) for n in names]
            else:
                found.append((target, names, node.lineno))
    return found


def resolve(target: str, known: set[str]) -> str:
    """``copa.layerwise.solves.LayerSystems`` style targets → the longest known module prefix."""
    parts = target.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in known:
            return ".".join(parts[:k])
    return target


def copa_modules() -> dict[str, Path]:
    return {module_name(p, ROOT / "copa", "copa"): p for p in sorted((ROOT / "copa").rglob("*.py"))}


def violations(modules: dict[str, Path]) -> tuple[list[str], int]:
    known = set(modules)
    bad, count = [], 0
    for name, path in modules.items():
        for target, _, line in imports_of(path.read_text(), name, path.name == "__init__.py"):
            if target.split(".")[0] in ("baselines", "copa_baselines"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}: copa never imports the baselines")
                continue
            if not target.startswith("copa"):
                continue
            target = resolve(target, known)
            if target not in known:
                continue
            count += 1
            if STOREYS.index(storey(target)) > STOREYS.index(storey(name)):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}: {storey(name)} may not import "
                           f"{storey(target)} (direction: {' ← '.join(STOREYS)})")
    return bad, count


def test_imports_run_one_way():
    bad, count = violations(copa_modules())
    assert count > 100, f"only {count} copa-internal imports found: the parser is broken"
    assert not bad, "\n".join(bad)


def test_every_module_has_a_storey():
    for name in copa_modules():
        storey(name)


def test_the_checker_catches_an_import_against_the_direction(tmp_path):
    package = tmp_path / "copa"
    (package / "threat").mkdir(parents=True)
    (package / "bench").mkdir()
    for init in (package / "__init__.py", package / "threat" / "__init__.py", package / "bench" / "__init__.py"):
        init.write_text("")
    (package / "bench" / "run.py").write_text("X = 1\n")
    (package / "threat" / "scenario.py").write_text("def f():\n    from ..bench.run import X\n    return X\n")
    modules = {module_name(p, package, "copa"): p for p in package.rglob("*.py")}
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        bad, _ = violations(modules)
    finally:
        ROOT = saved
    assert len(bad) == 1 and "threat may not import bench" in bad[0] and "scenario.py:2" in bad[0]


def baseline_files() -> list[Path]:
    return sorted(p for p in (ROOT / "baselines").glob("*.py"))


@pytest.mark.parametrize("path", baseline_files(), ids=lambda p: p.name)
def test_baselines_reach_only_copas_public_api(path):
    module = module_name(path, ROOT / "baselines", "copa_baselines")
    for target, names, line in imports_of(path.read_text(), module, path.name == "__init__.py"):
        if target.startswith("copa_baselines"):
            continue  # a sibling baseline (idlg builds on dlg)
        if target.split(".")[0] != "copa":
            continue
        assert target in PUBLIC_API, (f"baselines/{path.name}:{line} imports {target}: baselines use copa's public "
                                      f"API only ({', '.join(sorted(PUBLIC_API))})")
        private = [n for n in names if n.startswith("_")]
        assert not private, f"baselines/{path.name}:{line} imports private names {private} from {target}"


def test_baselines_are_registered_as_entry_points_not_a_top_level_baselines_package():
    from importlib import metadata

    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    points = project["project"]["entry-points"]["copa.attacks"]
    modules = {p.stem for p in baseline_files() if p.stem != "__init__"}
    assert set(points.values()) == {f"copa_baselines.{m}" for m in modules}
    assert "baselines" not in project["tool"]["setuptools"]["packages"]
    installed = {ep.value for ep in metadata.entry_points(group="copa.attacks")}
    assert installed >= set(points.values()), "reinstall copa-bench (pip install -e .) to register the entry points"


@pytest.mark.slow
def test_a_source_checkout_without_the_installed_package_still_has_the_baselines():
    """Under ``snakemake --use-conda`` the jobs import copa from the checkout and copa-bench is not
    installed (no entry points): the baselines then come from baselines/ as copa_baselines."""
    import subprocess
    import sys

    code = ("import importlib.metadata as m; real = m.entry_points\n"
            "m.entry_points = lambda **kw: [] if kw.get('group') == 'copa.attacks' else real(**kw)\n"
            "from copa.attacks import ATTACKS, load_plugins\nload_plugins()\n"
            "import copa_baselines.dlg as d\nprint(sorted(ATTACKS.names()), d.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "'dlg', 'hybrid', 'idlg', 'ig', 'mean-image', 'noise', 'rgap'" in out
    assert str(ROOT / "baselines" / "dlg.py") in out


def test_the_map_names_every_module():
    """docs/architecture.md's tree names every module under copa/ and baselines/ (issue "The house, second pass":
    the map drifted by six modules). A new file fails here until it is on the map."""
    tree = (ROOT / "docs" / "architecture.md").read_text().split("## The tree", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*\.py", tree))
    missing = [str(path.relative_to(ROOT)) for folder in ("copa", "baselines")
               for path in sorted((ROOT / folder).rglob("*.py"))
               if path.name != "__init__.py" and path.name not in named]
    assert not missing, f"docs/architecture.md's tree does not name {missing}"


DEFERRED_BY_DESIGN = {
    "copa/cli.py": "each command imports the wings it runs (torch), so that `copa --help` answers at once: one "
                   "comment at the top says so",
}
"""Files whose imports inside functions are not checked one by one by :func:`undeclared_deferred_imports`."""


def undeclared_deferred_imports(source: str) -> list[int]:
    """The lines of the imports inside functions of ``source`` that no comment with "deferred" explains: on the
    import's line, or on the comment and import lines right above it (one comment may cover a group)."""
    lines = source.splitlines()
    bad = []
    for function in ast.walk(ast.parse(source)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            line = node.lineno - 1
            said = "deferred" in lines[line]
            while not said and line > 0 and lines[line - 1].strip().startswith(("#", "import ", "from ", "try:")):
                line -= 1
                said = "deferred" in lines[line]
            if not said:
                bad.append(node.lineno)
    return sorted(set(bad))


def test_imports_stand_at_the_top_unless_a_comment_says_why_they_are_deferred():
    """Issue "The house, second pass": imports at a module's top, except where deferring one is the point (a heavy
    or optional import, a cycle), said in a short comment beside it (docs/architecture.md)."""
    bad = [f"{path.relative_to(ROOT)}:{line}" for path in sorted((ROOT / "copa").rglob("*.py"))
           if not any(str(path.relative_to(ROOT)).startswith(prefix) for prefix in DEFERRED_BY_DESIGN)
           for line in undeclared_deferred_imports(path.read_text())]
    assert not bad, "imports inside functions without a '# deferred: why' comment: " + ", ".join(bad)


def test_the_deferred_import_check_catches_a_silent_one():
    source = ("import os\n\n\ndef f():\n    import json\n    return json\n\n\ndef g():\n"
              "    # deferred: heavy\n    import numpy\n    from scipy import stats\n    return numpy, stats\n")
    assert undeclared_deferred_imports(source) == [5]
