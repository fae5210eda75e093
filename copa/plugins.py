"""Plug-ins: modules that register attacks, defences, models or metrics when imported.

Three ways in, all loaded by :func:`load_plugins` before a registry is read:

* installed packages that declare an entry point in the group ``copa.attacks`` (pyproject:
  ``[project.entry-points."copa.attacks"] name = "package.module"``) — copa-bench's own baselines
  (DLG, iDLG, Inverting Gradients, R-GAP, floors) are registered exactly this way (from a source
  checkout where copa-bench is not installed, ``baselines/`` is imported as ``copa_baselines`` instead);
* ``COPA_PLUGINS``: comma-separated module names or ``.py`` paths;
* ``modules``: the same, from ``--plugin`` or the workflow's ``plugins:``.

A module registers with the registries' decorators (``copa.attacks.register_attack``,
``copa.threat.register_defence``, ``copa.models.MODELS.register``, ``copa.metrics.register_metric``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from importlib import metadata
from pathlib import Path

from .errors import CopaError
from .registry import registering_for

ENTRY_POINT_GROUP = "copa.attacks"
BASELINES = "copa_baselines"

_loaded: dict[str, None] = {}  # targets imported, in order ("entry-points" once they are)


def load_plugins(modules: tuple[str, ...] | list[str] = ()) -> None:
    """Import the ``copa.attacks`` entry points, ``COPA_PLUGINS`` and ``modules`` (names or .py paths),
    each once per process."""
    targets: list = []
    if "entry-points" not in _loaded:
        points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        targets += points
        if not any(p.value.startswith(f"{BASELINES}.") for p in points):  # copa-bench itself is not installed
            targets += _source_tree_baselines()
        _loaded["entry-points"] = None
    env = [m.strip() for m in os.environ.get("COPA_PLUGINS", "").split(",") if m.strip()]
    for target in [*targets, *env, *modules]:
        if isinstance(target, metadata.EntryPoint):
            _load_entry_point(target)
            continue
        key = str(Path(target).expanduser().resolve()) if target.endswith(".py") else target
        if key in _loaded:
            continue
        if key.startswith(f"{BASELINES}."):  # copa-bench's own baselines (a source checkout): not a plug-in
            _import_plugin(target)
        else:
            with registering_for(key):
                _import_plugin(target)
        _loaded[key] = None


def loaded_targets() -> list[str]:
    """The plug-ins imported so far by name or path (entry points aside: every process loads those itself),
    ``.py`` files as absolute paths, in the order they were loaded."""
    return [target for target in _loaded if target != "entry-points"]


def _source_tree_baselines() -> list[str]:
    """The baselines of a source checkout when copa-bench is not installed (so no entry points: e.g. a
    workflow job under ``--use-conda``, which imports copa from the checkout): ``baselines/`` beside the
    ``copa`` package, imported as ``copa_baselines``. Returns its modules' names."""
    folder = Path(__file__).resolve().parent.parent / "baselines"
    if not (folder / "__init__.py").is_file():
        return []
    if BASELINES not in sys.modules:
        spec = importlib.util.spec_from_file_location(BASELINES, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[BASELINES] = module
        spec.loader.exec_module(module)
    return [f"{BASELINES}.{m.name}" for m in pkgutil.iter_modules([str(folder)]) if not m.name.startswith("_")]


def _load_entry_point(entry: metadata.EntryPoint) -> None:
    """Import an entry point's module; another package's registrations are marked as that plug-in's."""
    try:
        if entry.value.startswith(f"{BASELINES}."):
            entry.load()
        else:
            with registering_for(f"entry point {entry.value}"):
                entry.load()
    except ImportError as exc:
        dist = getattr(getattr(entry, "dist", None), "name", "an installed package")
        raise CopaError(f"plug-in entry point {entry.name!r} = {entry.value!r} of {dist} cannot be imported: "
                        f"{exc}") from None


def _import_plugin(target: str) -> None:
    """Import one plug-in (a module name or a .py file); a plug-in that cannot be imported — missing, a
    syntax error, an exception while it runs — raises one line naming it and what went wrong."""
    try:
        if target.endswith(".py"):
            _import_file(target)
        else:
            importlib.import_module(target)
    except CopaError:
        raise
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            raise CopaError(f"plugin module {target!r} cannot be imported: {exc}") from None
        raise CopaError(f"plugin {target!r} cannot be imported: {exc}") from None
    except SyntaxError as exc:
        raise CopaError(f"plugin {target!r} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # the plug-in's own code failed while it was imported
        raise CopaError(f"plugin {target!r} failed while it was imported: {type(exc).__name__}: {exc}") from None


def _import_file(target: str) -> None:
    path = Path(target)
    if not path.is_file():
        raise CopaError(f"plugin file {target!r} does not exist")
    module_name = f"copa_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
