"""Plug-in attacks as the runner knows them: declarations, as data, from the sandboxed worker.

copa-bench never imports a plug-in (:mod:`copa.plugins`, docs/trust.md). :func:`load_plugins` imports the
trusted code (the baselines, extensions) and asks a sandboxed worker (:mod:`copa.sandbox`) to import the
plug-ins and *describe* what they register: each attack's name, paper, hyperparameters with their defaults,
sources and bounds, ``needs_label``, ``batched`` and ``update_kinds``. The runner checks that description as
untrusted data (types, sizes, names) and registers, for each attack, a :class:`SandboxedAttack` subclass
carrying it: the registry, ``copa list``, the config checks, the hyperparameters' coercion and bounds and the
records treat it like any attack, but it cannot run here — :func:`copa.bench.run.attack_observations` sends it
to the worker, which imports the plug-in again and runs the real class (applicability included).

A plug-in may register attacks only: models, defences, metrics and datasets decide what the client computes
and how it is scored, so they belong to trusted code (extensions); a plug-in that registers one is refused.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from ..data import DATASETS
from ..errors import CopaError
from ..hyperparameters import Hyperparameter
from ..metrics import METRICS
from ..models import MODELS
from ..plugins import import_trusted, imported_extensions, plugin_file, plugin_source, plugin_targets
from ..registry import registering_for
from ..sandbox import last_line, read_bounded_json, run_worker, untrusted_sandbox, worker_command
from ..threat import DEFENCES, UPDATE_KINDS
from .base import ATTACKS, Attack

DESCRIPTION_BYTES = 1 << 20
"""The most a worker's description of its plug-ins may take (a plug-in with hundreds of attacks fits)."""
TEXT_LIMIT = 2000
"""Characters of a described paper, description, source or help text (longer is refused)."""

_described: dict[str, list[str]] = {}  # plug-in target -> the attack names it registered (this process)


class SandboxedAttack(Attack):
    """An untrusted plug-in's attack in the runner: its declaration only. ``plugin`` names the plug-in,
    ``plugin_file`` its source as copa found it (not as the plug-in claims; its hash is read when a result is
    identified: :func:`copa.bench.pipeline.attack_identity`)."""

    plugin: ClassVar[str] = ""
    plugin_file: ClassVar[str] = ""

    def reconstruct(self, observation, generator):
        raise CopaError(f"attack {self.name!r} is plug-in {self.plugin!r}'s: it runs only in its sandboxed worker "
                        f"(copa.bench.run.attack_observations)")

    def reconstruct_batch(self, observations, generators):
        return self.reconstruct(observations[0], generators[0])


def load_plugins(modules=(), extensions=()) -> None:
    """Import the trusted code (baselines, ``extensions`` and ``COPA_EXTENSIONS``) here, and register the attacks
    of every untrusted plug-in (``modules``, ``COPA_PLUGINS``, other distributions' entry points) from their
    sandboxed worker's description — refused with one line where there is no sandbox and running without one
    was not allowed (:func:`copa.sandbox.untrusted_sandbox`)."""
    import_trusted(extensions)
    pending = [t for t in plugin_targets(modules) if t not in _described]
    if not pending:
        return
    described = describe_plugins(pending)
    for target in pending:
        names = []
        source = plugin_file(target)
        with registering_for(target):
            for entry in described[target]:
                cls = _sandboxed_class(entry, target, source)
                ATTACKS.register(cls.name, cls, paper=cls.paper, description=cls.description)
                names.append(cls.name)
        _described[target] = names


def forget_plugin(target: str) -> None:
    """Unregister a plug-in's attacks (tests that load and drop a plug-in)."""
    for name in _described.pop(target, []):
        ATTACKS._entries.pop(name, None)


def worker_sources(targets=()) -> tuple[list[Path], list[Path]]:
    """``(readable, import roots)`` a worker needs for the plug-in ``targets`` and the imported extensions:
    each one's source (file or package folder) and the ``sys.path`` entry a module was found in."""
    readable, roots = [], []
    for target in [*imported_extensions(), *targets]:
        source, root = plugin_source(target)
        readable.append(source)
        if root is not None:
            roots.append(root)
    return readable, roots


def describe_plugins(targets: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Ask a sandboxed worker to import ``targets`` and describe the attacks each registers; check the answer."""
    answer = ask_worker({"kind": "describe"}, targets, "description.json", DESCRIPTION_BYTES)
    if not isinstance(answer, dict) or set(answer) != set(targets):
        raise CopaError(f"the sandboxed worker of plug-in {', '.join(map(repr, targets))} described other plug-ins "
                        f"than it was given")
    return {target: _checked(target, answer[target]) for target in targets}


def check_in_sandbox(attack: type[SandboxedAttack], overrides: dict[str, Any], model: str,
                     input_shape: tuple[int, ...]) -> list[str]:
    """``copa check`` of a plug-in's attack: :func:`copa.attacks.check_attack` on the real class, in its sandboxed
    worker. Returns the names of the checks passed; a failed check is one line (:class:`CopaError`)."""
    answer = ask_worker({"kind": "check", "attack": attack.name, "overrides": overrides, "model": model,
                         "input_shape": list(input_shape)}, [attack.plugin], "check.json", 1 << 16)
    passed = answer.get("passed") if isinstance(answer, dict) else None
    if not isinstance(passed, list) or not all(isinstance(p, str) and len(p) < 200 for p in passed):
        raise CopaError(f"the sandboxed worker of plug-in {attack.plugin!r} answered its check malformed")
    return passed


def ask_worker(request: dict[str, Any], targets: list[str], answer_file: str, limit: int) -> Any:
    """Run one request of the sandboxed worker (:mod:`copa.bench.worker`) that imports the plug-ins ``targets``;
    return its JSON answer (at most ``limit`` bytes). The worker's one-line refusal (exit 2) is raised as it is."""
    what = "plug-in " + ", ".join(repr(t) for t in targets)
    tool, _ = untrusted_sandbox(what)
    readable, roots = worker_sources(targets)
    with tempfile.TemporaryDirectory(prefix="copa-worker-") as folder:
        work = Path(folder)
        (work / "request.json").write_text(json.dumps({**request, "plugins": targets,
                                                        "extensions": imported_extensions()}))
        command, env = worker_command(work, tool=tool, readable=readable, python_path=roots)
        returncode, said = run_worker(command, env, work)
        if returncode == 2:
            raise CopaError(last_line(said).removeprefix("copa worker: error: ") or f"{what} was refused by its worker")
        if returncode != 0:
            raise CopaError(f"{what}: its sandboxed worker ended with exit status {returncode} "
                            f"({last_line(said) or 'no message'})")
        return read_bounded_json(work / answer_file, limit, f"the sandboxed worker of {what}")


def _checked(target: str, answer: Any) -> list[dict[str, Any]]:
    """The worker's description of one plug-in, checked as untrusted data; one line naming what is wrong."""
    def bad(why: str) -> CopaError:
        return CopaError(f"plugin {target!r}: {why}")

    if not isinstance(answer, dict):
        raise bad("its description is not a mapping")
    others = answer.get("others") or {}
    if not isinstance(others, dict):
        raise bad("its description is malformed")
    for kind, names in sorted(others.items()):
        if names:
            shown = ", ".join(repr(str(n)[:60]) for n in list(names)[:5])
            raise bad(f"registers {kind} {shown}: a plug-in runs only in the sandbox and may register attacks only; "
                      f"models, defences, metrics and datasets decide what the client computes and how it is "
                      f"scored, so they are trusted code: load them with --extension (COPA_EXTENSIONS, a "
                      f"workflow's extensions:) — docs/trust.md")
    attacks = answer.get("attacks")
    if not isinstance(attacks, list) or len(attacks) > 256:
        raise bad("its description has no list of attacks (or more than 256)")
    return [_checked_attack(target, entry, bad) for entry in attacks]


def _text(value: Any, what: str, bad) -> str:
    if not isinstance(value, str) or len(value) > TEXT_LIMIT:
        raise bad(f"{what} is not a text of at most {TEXT_LIMIT} characters")
    return value


def _number(value: Any, what: str, bad) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(f"{what} is not a finite number")
    return value


def _checked_attack(target: str, entry: Any, bad) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise bad("an attack's description is not a mapping")
    name = _text(entry.get("name"), "an attack's name", bad)
    if not name or len(name) > 64 or any(c.isspace() or not c.isprintable() for c in name):
        raise bad(f"attack name {name[:64]!r} is invalid: use 1 to 64 printable characters without spaces")
    kinds = entry.get("update_kinds")
    if not isinstance(kinds, list) or not kinds or any(k not in UPDATE_KINDS for k in kinds):
        raise bad(f"attack {name!r}: update_kinds {kinds!r} is invalid: accepted are {', '.join(UPDATE_KINDS)}")
    for flag in ("needs_label", "batched"):
        if not isinstance(entry.get(flag), bool):
            raise bad(f"attack {name!r}: {flag} is not true or false")
    parameters = entry.get("hyperparameters")
    if not isinstance(parameters, dict) or len(parameters) > 256:
        raise bad(f"attack {name!r}: its hyperparameters are not a mapping (of at most 256)")
    declared = {}
    for key, spec in parameters.items():
        if not isinstance(spec, dict) or not key.isidentifier():
            raise bad(f"attack {name!r}: hyperparameter {str(key)[:60]!r} is malformed")
        default = spec.get("default")
        if isinstance(default, str):
            _text(default, f"attack {name!r}: the default of {key}", bad)
        elif not isinstance(default, (bool, int, float)) or (isinstance(default, float) and not math.isfinite(default)):
            raise bad(f"attack {name!r}: the default of {key} is not a finite number, a boolean or a text")
        declared[key] = Hyperparameter(default, _text(spec.get("source"), f"attack {name!r}: the source of {key}", bad),
                                       _text(spec.get("help", ""), f"attack {name!r}: the help of {key}", bad),
                                       _number(spec.get("minimum"), f"attack {name!r}: the minimum of {key}", bad),
                                       _number(spec.get("maximum"), f"attack {name!r}: the maximum of {key}", bad))
    return {"name": name, "paper": _text(entry.get("paper", ""), f"attack {name!r}: its paper", bad),
            "code": _text(entry.get("code", ""), f"attack {name!r}: its code", bad),
            "description": _text(entry.get("description", ""), f"attack {name!r}: its description", bad),
            "needs_label": entry["needs_label"], "batched": entry["batched"], "update_kinds": tuple(kinds),
            "hyperparameters": declared}


def _sandboxed_class(entry: dict[str, Any], target: str, source: Path) -> type[SandboxedAttack]:
    attributes = {**entry, "plugin": target, "plugin_file": str(source),
                  "__module__": __name__, "__doc__": f"Plug-in {target!r}'s attack {entry['name']!r} (sandboxed)."}
    return type(f"Sandboxed[{entry['name']}]", (SandboxedAttack,), attributes)


def describe_registered(target: str) -> dict[str, Any]:
    """In the worker, after :func:`copa.plugins.import_in_worker`: what ``target`` registered, as the data
    :func:`describe_plugins` checks (the attacks' declarations; every other registry's names)."""
    attacks = []
    for entry in ATTACKS:
        if entry.plugin != target:
            continue
        cls = entry.obj
        attacks.append({"name": cls.name, "paper": cls.paper, "code": cls.code, "description": cls.description,
                        "needs_label": cls.needs_label, "batched": cls.batched, "update_kinds": list(cls.update_kinds),
                        "hyperparameters": {k: {"default": h.default, "source": h.source, "help": h.help,
                                                "minimum": h.minimum, "maximum": h.maximum}
                                            for k, h in cls.hyperparameters.items()}})
    others = {kind: [e.name for e in registry if e.plugin == target]
              for kind, registry in (("model", MODELS), ("defence", DEFENCES), ("metric", METRICS),
                                     ("dataset", DATASETS))}
    return {"attacks": attacks, "others": others}
