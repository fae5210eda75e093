"""Attacks run apart from the ground truth: a worker process that receives only the observation.

The trust model (docs/trust.md): copa-bench's own attacks (the ``copa`` package, its baselines and trusted
extensions) run in the runner's process, the fast path. Every plug-in's attack is a
:class:`~copa.attacks.SandboxedAttack` — a declaration the runner got from the plug-in's sandboxed worker — and
runs only in a **worker process** (``python -m copa.bench.worker``, :mod:`copa.sandbox`) that is given the
observations as observation files (:mod:`copa.threat.observation_file`, nothing of where they came from), the
attack's name, hyperparameters and seeds, and returns the reconstructions. The ground truth, the dataset handle
and the scorer stay in the runner. The sandbox holds nothing of the run (an empty root with the installation
and the plug-in's source, read-only; its own folder the only writable place; no network, no host sockets, its
own PID namespace; an allow-listed environment). Without a working bwrap a plug-in is refused unless the user
allowed it explicitly (:func:`copa.sandbox.untrusted_sandbox`); the record then says so and warns.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks import SandboxedAttack, progress
from ..attacks.sandboxed import worker_sources
from ..errors import CopaError, RunFailure
from ..plugins import imported_extensions
from ..sandbox import (SANDBOX_MODES, last_line, run_worker, sandbox_mode, sandbox_tool, trusted_sandbox,  # noqa: F401
                       untrusted_sandbox, worker_command)
from ..threat.observation_file import save_observation
from .record import jsonable

ISOLATION_MODES = ("auto", "always")
"""``auto``: plug-in attacks in a worker, the others in the runner's process; ``always``: every attack in a
worker (e.g. to check that a built-in attack gives the same result there)."""
_WARNED: set[str] = set()


def attack_plugin(attack) -> str | None:
    """The untrusted plug-in ``attack`` comes from, or None for trusted code (copa-bench, its baselines, trusted
    extensions, a class the calling program registered itself). Decided by what the runner registered — a
    :class:`~copa.attacks.SandboxedAttack` built from the sandboxed worker's description —, never by anything
    the plug-in says of itself: no plug-in class exists in the runner."""
    return type(attack).plugin if isinstance(attack, SandboxedAttack) else None


@dataclass
class WorkerOutcome:
    """What the worker returned for one instance: a reconstruction's parts, or not-applicable / failed."""

    status: str
    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    loss: float | None = None
    forward_evals: int | None = None
    forward_calls: int = 0
    gradient_evals: int | None = None
    info: dict[str, Any] | None = None
    reason: str | None = None
    traceback: str | None = None
    seconds: float = 0.0
    batch: dict[str, Any] | None = None


def hidden_paths(paths) -> list[Path]:
    """The existing paths among ``paths`` (files or folders), resolved, without duplicates, in order: what the
    record lists as hidden (none of it is in the sandbox; any inside the installation is covered by an empty
    mount)."""
    seen: list[Path] = []
    for path in paths:
        if path in (None, ""):
            continue
        resolved = Path(path).expanduser().resolve()
        if resolved.exists() and resolved not in seen:
            seen.append(resolved)
    return seen


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"copa: WARNING: {message}", file=sys.stderr, flush=True)


def run_in_worker(attack, observations: list, seeds: list[int], *, batch: bool, device: torch.device,
                  hidden=(), threads: int | None = None) -> tuple[list[WorkerOutcome], dict[str, Any]]:
    """Run ``attack`` (its registered name and resolved hyperparameters) on ``observations`` in a worker
    process, in the sandbox: a plug-in's attack only there (or where running without one was allowed), a
    trusted attack there where bwrap works.

    Returns one :class:`WorkerOutcome` per observation and the record's ``isolation`` entry. The worker's
    result is read with ``torch.load(weights_only=True)`` and its shapes checked: a hostile worker can
    return wrong images, not run code in the runner."""
    reporter = progress.current()
    plugin = attack_plugin(attack)
    tool, tool_description = untrusted_sandbox(f"plug-in {plugin!r}") if plugin else trusted_sandbox()
    readable, roots = worker_sources([plugin] if plugin else [])
    hidden = hidden_paths(hidden)
    with tempfile.TemporaryDirectory(prefix="copa-worker-") as folder:
        work = Path(folder)
        names = []
        for k, observation in enumerate(observations):
            name = f"observation-{k}.pt"
            save_observation(work / name, observation, meta={})
            names.append(name)
        request = {"kind": "attack", "attack": attack.name, "hyperparameters": jsonable(attack.hp),
                   "plugins": [plugin] if plugin else [], "extensions": imported_extensions(),
                   "observations": names, "seeds": [int(s) for s in seeds], "batch": bool(batch),
                   "device": str(device), "threads": threads,
                   "progress": "log" if reporter.mode in ("log", "bar") else "quiet",
                   "progress_interval": reporter.interval}
        (work / "request.json").write_text(json.dumps(request))
        command, env = worker_command(work, tool=tool, readable=readable, python_path=roots, hidden=hidden,
                                      device=str(device))
        returncode, said = run_worker(command, env, work, forward_prefix=progress.LINE_PREFIX)
        if said:
            sys.stderr.write(said if said.endswith("\n") else said + "\n")
        if returncode == 2:  # the worker's one-line error: a bad hyperparameter, a plug-in
            raise CopaError(last_line(said).removeprefix("copa worker: error: ")
                            or "the attack's worker refused the request")
        result_path = work / "result.pt"
        if returncode != 0 or not result_path.is_file():
            raise RunFailure(f"the attack's worker process ended with exit status {returncode}"
                             f" ({last_line(said) or 'no message'})")
        outcomes = _read_result(result_path, observations)
    isolation = {"process": "worker", "sandbox": None if tool is None else tool_description,
                 "hidden": [str(p) for p in hidden]}
    if plugin:
        isolation["plugin"] = plugin
    if tool is None:
        allowed = " (allowed explicitly)" if plugin else ""
        warning = (f"attack {attack.name!r} ran in a worker process without a sandbox ({tool_description}){allowed}: "
                   f"it could read every file this user can, the dataset included (docs/trust.md)")
        isolation["warning"] = warning
        _warn_once(warning)
    return outcomes, isolation


def _read_result(path: Path, observations: list) -> list[WorkerOutcome]:
    expected_bytes = sum(o.batch_size * int(torch.tensor(o.input_shape).prod()) * 8 for o in observations)
    if path.stat().st_size > 4 * expected_bytes + 64 * (1 << 20):
        raise RunFailure(f"the attack's worker returned {path.stat().st_size} bytes, far more than "
                         f"{len(observations)} reconstruction(s) take")
    try:
        result = torch.load(path, map_location="cpu", weights_only=True)
        instances = result["instances"]
    except Exception as exc:
        raise RunFailure(f"the attack's worker returned an unreadable result ({type(exc).__name__}: {exc})") from None
    if not isinstance(instances, list) or len(instances) != len(observations):
        raise RunFailure("the attack's worker returned a result for another number of instances")
    outcomes = []
    for entry, observation in zip(instances, observations, strict=True):
        status = entry.get("status")
        if status == "ok":
            images = entry.get("images")
            if not isinstance(images, torch.Tensor):
                raise RunFailure("the attack's worker returned no images")
            labels = entry.get("labels")
            info = json.loads(entry.get("info_json") or "{}")
            outcomes.append(WorkerOutcome(
                status="ok", images=images.to(observation.device, observation.dtype) if images.is_floating_point()
                else images, labels=None if labels is None else labels.to(observation.device),
                loss=entry.get("loss"), forward_evals=entry.get("forward_evals"),
                forward_calls=int(entry.get("forward_calls") or 0),
                gradient_evals=entry.get("gradient_evals"), info=info if isinstance(info, dict) else {"info": info},
                seconds=float(entry.get("seconds") or 0.0), batch=_plain_batch(entry.get("batch"))))
        elif status in ("not-applicable", "failed"):
            outcomes.append(WorkerOutcome(status=status, reason=str(entry.get("reason")),
                                          traceback=entry.get("traceback"), seconds=float(entry.get("seconds") or 0),
                                          batch=_plain_batch(entry.get("batch"))))
        else:
            raise RunFailure(f"the attack's worker returned an unknown status {status!r}")
    return outcomes


def _plain_batch(note) -> dict[str, Any] | None:
    """The worker's note on a batched call (instances, seconds, or why it was rerun one at a time)."""
    if not isinstance(note, dict):
        return None
    return {key: note[key] for key in ("instances", "seconds", "failed", "rerun") if key in note}
