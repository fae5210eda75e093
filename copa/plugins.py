"""Plug-ins and extensions: other people's code, and which of it is trusted (docs/trust.md).

**Trusted code** runs in copa-bench's own processes: copa-bench itself, its shipped baselines (DLG, iDLG,
Inverting Gradients, R-GAP, floors; registered through copa-bench's own ``copa.attacks`` entry points, or
from ``baselines/`` as ``copa_baselines`` in a source checkout that is not installed), and **extensions** —
modules the person running the benchmark chooses to trust (``--extension``, ``COPA_EXTENSIONS``, a workflow's
``extensions:``): they may register models, defences, metrics, datasets and attacks, and are imported here
like any library (:func:`import_trusted`).

**Plug-ins** are untrusted: a ``--plugin`` file or module, ``COPA_PLUGINS``, a workflow's ``plugins:`` and
the ``copa.attacks`` entry points of every other installed distribution. No process of copa-bench imports
them except the sandboxed worker (:mod:`copa.sandbox`, ``python -m copa.bench.worker``), which reports what
they register as data; a plug-in may register attacks only (:func:`copa.attacks.load_plugins`). This module
never imports a plug-in: :func:`plugin_targets` names them, :func:`plugin_source` finds their source file
without running it, and :func:`import_in_worker` — called by the worker alone — imports them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
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
DISTRIBUTION = "copa-bench"
ENTRY_POINT_PREFIX = "entry-point:"
"""A foreign distribution's entry point as a plug-in target: ``entry-point:NAME=module[:attr]``."""

_imported: dict[str, None] = {}  # trusted targets imported in this process, in order ("baselines" once)


def _split(value: str) -> list[str]:
    return [m.strip() for m in value.split(",") if m.strip()]


def _key(target: str) -> str:
    """A target as it is remembered: a ``.py`` file by its absolute path, anything else as given."""
    return str(Path(target).expanduser().resolve()) if target.endswith(".py") else target


def plugin_targets(modules=()) -> list[str]:
    """Every untrusted plug-in of this run: other distributions' ``copa.attacks`` entry points, ``COPA_PLUGINS``
    and ``modules`` (``--plugin`` / ``plugins:``), ``.py`` files as absolute paths, without duplicates."""
    points = [f"{ENTRY_POINT_PREFIX}{p.name}={p.value}" for p in _entry_points() if not _own(p)]
    return list(dict.fromkeys(_key(t) for t in [*points, *_split(os.environ.get("COPA_PLUGINS", "")),
                                                   *(str(m) for m in modules)]))


def extension_targets(extensions=()) -> list[str]:
    """The trusted extensions of this run: ``COPA_EXTENSIONS`` and ``extensions``, files as absolute paths."""
    return list(dict.fromkeys(_key(t) for t in [*_split(os.environ.get("COPA_EXTENSIONS", "")),
                                                   *(str(m) for m in extensions)]))


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def _own(point: metadata.EntryPoint) -> bool:
    """An entry point of copa-bench itself (its baselines)."""
    dist = getattr(getattr(point, "dist", None), "name", None)
    return point.value.startswith(f"{BASELINES}.") and dist in (None, DISTRIBUTION)


def import_trusted(extensions=()) -> None:
    """Import copa-bench's baselines and the trusted ``extensions`` (:func:`extension_targets`) in this process,
    each once."""
    if "baselines" not in _imported:
        own = [p for p in _entry_points() if _own(p)]
        for point in own:
            _import_or_explain(point.value.partition(":")[0], f"copa-bench's entry point {point.name!r}")
        if not own:  # a source checkout that is not installed
            for name in _source_tree_baselines():
                _import_or_explain(name, name)
        _imported["baselines"] = None
    for target in extension_targets(extensions):
        if target not in _imported:
            _import_or_explain(target, f"extension {target!r}")
            _imported[target] = None


def imported_extensions() -> list[str]:
    """The extensions imported so far (a worker imports them too: they may register the observed model)."""
    return [t for t in _imported if t != "baselines"]


def _source_tree_baselines() -> list[str]:
    """``baselines/`` beside the ``copa`` package, imported as ``copa_baselines`` (a source checkout that is not
    installed, e.g. a workflow job under ``--use-conda``). Returns its modules' names."""
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


def import_in_worker(target: str) -> None:
    """Import one untrusted plug-in, its registrations marked as its own. Only the sandboxed worker
    (:mod:`copa.bench.worker`) calls this; tests/test_trust.py checks that nothing else does."""
    with registering_for(target):
        if target.startswith(ENTRY_POINT_PREFIX):
            name, _, value = target[len(ENTRY_POINT_PREFIX):].partition("=")
            _import_or_explain(value.partition(":")[0], f"plug-in entry point {name!r} = {value!r}")
        else:
            _import_or_explain(target, f"plugin {target!r}")


def _import_or_explain(target: str, what: str) -> None:
    """Import a module name or a .py file; failing (missing, a syntax error, an exception while it runs), raise
    one line naming ``what`` and what went wrong."""
    try:
        if target.endswith(".py"):
            _import_file(target)
        else:
            importlib.import_module(target)
    except CopaError:
        raise
    except ModuleNotFoundError as exc:
        raise CopaError(f"{what} cannot be imported: {exc}") from None
    except SyntaxError as exc:
        raise CopaError(f"{what} has a syntax error at line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # its own code failed while it was imported
        raise CopaError(f"{what} failed while it was imported: {type(exc).__name__}: {exc}") from None


def _import_file(target: str) -> None:
    path = Path(target)
    if not path.is_file():
        raise CopaError(f"file {target!r} does not exist")
    module_name = f"copa_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise


def plugin_source(target: str) -> tuple[Path, Path | None]:
    """``(source, import root)`` of a plug-in or extension, found without running any of its code: a ``.py``
    file is itself (no import root); a module is looked up on ``sys.path`` one dotted part at a time with
    :class:`importlib.machinery.PathFinder` (which reads directories, never executes a package's
    ``__init__``) — the source is the top-level package's folder (or the module's file), the import root the
    ``sys.path`` entry it was found in. Not found: one line naming it."""
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise CopaError(f"plugin file {target!r} does not exist")
        return path.resolve(), None
    module = target[len(ENTRY_POINT_PREFIX):].partition("=")[2].partition(":")[0] \
        if target.startswith(ENTRY_POINT_PREFIX) else target
    parts = module.split(".")
    if not all(p.isidentifier() for p in parts):
        raise CopaError(f"plugin {target!r} is neither a .py file nor a module name (dotted identifiers)")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], [p or os.getcwd() for p in sys.path])
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        raise CopaError(f"plugin module {target!r} cannot be imported: no module named {parts[0]!r} on the import path")
    top = Path(spec.origin).resolve()
    source = top.parent if spec.submodule_search_locations else top
    root = source.parent
    return source, root


def plugin_file(target: str) -> Path:
    """The file that defines a plug-in target: the ``.py`` file, or the module's own file (looked up as in
    :func:`plugin_source`, without running code); its SHA-256 identifies the plug-in's results."""
    source, _ = plugin_source(target)
    if source.is_file():
        return source
    module = target[len(ENTRY_POINT_PREFIX):].partition("=")[2].partition(":")[0] \
        if target.startswith(ENTRY_POINT_PREFIX) else target
    folder = source
    parts = module.split(".")[1:]
    for k, part in enumerate(parts):
        spec = importlib.machinery.PathFinder.find_spec(part, [str(folder)])
        if spec is None or spec.origin is None:
            raise CopaError(f"plugin module {target!r} cannot be imported: no module {part!r} in {folder}")
        if k < len(parts) - 1:
            folder = Path(spec.origin).parent
        else:
            return Path(spec.origin).resolve()
    return (source / "__init__.py").resolve()
