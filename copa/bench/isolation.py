"""Attacks run apart from the ground truth: a worker process that receives only the observation.

The trust model (docs/trust.md): copa-bench's built-in attacks (the ``copa`` package and its baselines,
``copa_baselines``) and attacks a program registers itself run in the runner's process, the fast path. Every
plug-in's attack — a ``--plugin`` file or module, ``COPA_PLUGINS``, a workflow's ``plugins:``, another
package's entry point (:attr:`copa.registry.Entry.plugin`) — runs in a **worker process**
(``python -m copa.bench.worker``) that is given the observation as an observation file's bytes
(:mod:`copa.threat.observation_file`, nothing of where it came from), the attack's name, hyperparameters and
seeds, and returns the reconstruction. The ground truth, the dataset handle and the scorer stay in the
runner: a stack walk, ``gc.get_objects()`` or ``/proc/PARENT/mem`` in the worker finds nothing of them.

Where Linux allows it, the worker runs inside a **bubblewrap sandbox** (``bwrap``, the Debian package
``bubblewrap``; the sandbox of Flatpak): the file system read-only, the dataset files and the run's
output folders hidden under empty mounts, its own PID, network, IPC and user namespaces (no network), its
own folder the only writable place. When bwrap is missing or cannot create namespaces, the worker still runs apart, but it can
read every file the user can: the record says so (``isolation.sandbox: null`` and a warning) and the run
prints a warning. ``COPA_SANDBOX=required`` makes that an error instead, ``COPA_SANDBOX=off`` skips the
sandbox (both for tests and for machines where bwrap misbehaves).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..attacks import progress
from ..errors import CopaError, InvalidSpecError, RunFailure

SANDBOX_MODES = ("auto", "required", "off")
ISOLATION_MODES = ("auto", "always")
"""``auto``: plug-in attacks in a worker, the others in the runner's process; ``always``: every attack in a
worker (e.g. to check that a built-in attack gives the same result there)."""
_WARNED: set[str] = set()


def attack_plugin(attack) -> str | None:
    """The plug-in that registered ``attack``'s class (:attr:`copa.registry.Entry.plugin`: a ``--plugin``
    file or module, ``COPA_PLUGINS``, a workflow's ``plugins:``, another package's entry point), or None for
    copa-bench's own attacks and for a class the calling program registered itself (its own code). Decided
    by the registry at registration time, not by anything the class says of itself."""
    from ..attacks import ATTACKS

    if attack.name not in ATTACKS:
        return None
    entry = ATTACKS.entry(attack.name)
    return entry.plugin if entry.obj is type(attack) else None


def sandbox_mode() -> str:
    mode = os.environ.get("COPA_SANDBOX", "auto").strip() or "auto"
    if mode not in SANDBOX_MODES:
        raise InvalidSpecError(f"COPA_SANDBOX={mode!r} is invalid: accepted are {', '.join(SANDBOX_MODES)}")
    return mode


@lru_cache(maxsize=1)
def sandbox_tool() -> tuple[str | None, str]:
    """``(path, description)`` of a working bwrap, or ``(None, why not)``: it must be on PATH and able to
    create its namespaces here (a container may forbid them)."""
    path = shutil.which("bwrap")
    if path is None:
        return None, "bwrap (bubblewrap) is not installed"
    try:
        probe = subprocess.run([path, *_base_arguments(), "--", "true"], capture_output=True, text=True,
                               check=False)
    except OSError as exc:
        return None, f"bwrap cannot start: {exc}"
    if probe.returncode != 0:
        first = (probe.stderr.strip().splitlines() or ["no message"])[0]
        return None, f"bwrap cannot create its sandbox here: {first}"
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return path, version or "bwrap"


def _base_arguments() -> list[str]:
    return ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
            "--unshare-all", "--die-with-parent", "--new-session"]


def _hide_arguments(hidden: list[Path]) -> list[str]:
    """Empty mounts over each hidden path: a folder becomes an empty tmpfs, a file /dev/null."""
    arguments = []
    for path in hidden:
        if path.is_dir():
            arguments += ["--tmpfs", str(path)]
        elif path.exists():
            arguments += ["--ro-bind", "/dev/null", str(path)]
    return arguments


def _gpu_arguments(device: str) -> list[str]:
    if not device.startswith("cuda"):
        return []
    return [arg for node in sorted(Path("/dev").glob("nvidia*")) for arg in ("--dev-bind", str(node), str(node))]


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


def hidden_paths(paths, keep=()) -> list[Path]:
    """The existing paths among ``paths`` (files or folders), resolved, without duplicates, in order — except
    any that holds the Python installation, copa itself or a path of ``keep`` (the plug-ins the worker
    imports): hiding those would only stop the worker from starting."""
    import copa

    needed = [Path(sys.prefix).resolve(), Path(copa.__file__).resolve().parent,
              *(Path(k).resolve() for k in keep)]
    seen: list[Path] = []
    for path in paths:
        if path in (None, ""):
            continue
        resolved = Path(path).expanduser().resolve()
        if any(resolved == n or resolved in n.parents for n in needed):
            continue
        if resolved.exists() and resolved not in seen:
            seen.append(resolved)
    return seen


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"copa: WARNING: {message}", file=sys.stderr, flush=True)


def run_in_worker(attack, observations: list, seeds: list[int], *, batch: bool, device: torch.device,
                  plugins: list[str], hidden=(), threads: int | None = None,
                  ) -> tuple[list[WorkerOutcome], dict[str, Any]]:
    """Run ``attack`` (its registered name and resolved hyperparameters) on ``observations`` in a worker
    process, sandboxed where possible, with ``hidden`` paths (the dataset, the run's outputs) made empty.

    Returns one :class:`WorkerOutcome` per observation and the record's ``isolation`` entry. The worker's
    result is read with ``torch.load(weights_only=True)`` and its shapes checked: a hostile worker can
    return wrong images, not run code in the runner."""
    from ..threat.observation_file import save_observation
    from .record import jsonable

    reporter = progress.current()

    mode = sandbox_mode()
    tool, tool_description = (None, "COPA_SANDBOX=off") if mode == "off" else sandbox_tool()
    if tool is None and mode == "required":
        raise CopaError(f"COPA_SANDBOX=required, but the sandbox is not available: {tool_description}")
    hidden = hidden_paths(hidden, keep=[p for p in plugins if p.endswith(".py")])
    with tempfile.TemporaryDirectory(prefix="copa-worker-") as folder:
        work = Path(folder)
        names = []
        for k, observation in enumerate(observations):
            name = f"observation-{k}.pt"
            save_observation(work / name, observation, meta={})
            names.append(name)
        request = {"attack": attack.name, "hyperparameters": jsonable(attack.hp), "plugins": list(plugins),
                   "observations": names, "seeds": [int(s) for s in seeds], "batch": bool(batch),
                   "device": str(device), "threads": threads,
                   "progress": "log" if reporter.mode in ("log", "bar") else "quiet",
                   "progress_interval": reporter.interval}
        (work / "request.json").write_text(json.dumps(request))
        command = [sys.executable, "-m", "copa.bench.worker", str(work)]
        if tool is not None:
            command = [tool, *_base_arguments(), *_gpu_arguments(str(device)), *_hide_arguments(hidden),
                       "--bind", str(work), str(work), "--chdir", str(work), "--", *command]
        env = _worker_environment(work)
        output = work / "output.txt"  # the worker's stdout and stderr: on disk, only their end is read back
        with output.open("wb") as sink:
            returncode = _wait_forwarding_progress(command, env, sink, output)
        said = "".join(line for line in _tail(output).splitlines(keepends=True)
                       if not line.startswith(progress.LINE_PREFIX))  # forwarded while it ran
        if said:
            sys.stderr.write(said if said.endswith("\n") else said + "\n")
        if returncode == 2:  # the worker's one-line error: a bad hyperparameter, a plug-in
            raise CopaError(_last_line(said) or "the attack's worker refused the request")
        result_path = work / "result.pt"
        if returncode != 0 or not result_path.is_file():
            raise RunFailure(f"the attack's worker process ended with exit status {returncode}"
                             f" ({_last_line(said) or 'no message'})")
        outcomes = _read_result(result_path, observations)
    isolation = {"process": "worker", "sandbox": None if tool is None else tool_description,
                 "hidden": [str(p) for p in hidden]}
    if tool is None:
        warning = (f"attack {attack.name!r} ran in a worker process without a sandbox ({tool_description}): it "
                   f"could read every file this user can, the dataset included (docs/trust.md)")
        isolation["warning"] = warning
        _warn_once(warning)
    return outcomes, isolation


PROGRESS_LINE_LIMIT = 500
"""Characters of one forwarded progress line of a worker (longer lines are cut: the worker is not trusted)."""


def _wait_forwarding_progress(command: list[str], env: dict[str, str], sink, output: Path,
                              poll: float = 0.5) -> int:
    """Run the worker with stdout and stderr into ``sink`` (the file ``output``) and, while it runs, copy its
    complete ``[progress]`` lines (each cut to :data:`PROGRESS_LINE_LIMIT` characters) to this process's standard
    error; return its exit status. Interrupted (Ctrl-C), the worker is killed first."""
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    offset, partial = 0, b""
    try:
        while True:
            try:
                returncode = process.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                returncode = None
            with output.open("rb") as source:
                source.seek(offset)
                chunk = source.read(1 << 20)  # at most 1 MiB per poll: a chatty worker cannot stall the runner
            offset += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()[-4 * PROGRESS_LINE_LIMIT:]
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                if line.startswith(progress.LINE_PREFIX):
                    print(line[:PROGRESS_LINE_LIMIT], file=sys.stderr, flush=True)
            if returncode is not None and offset >= output.stat().st_size:
                return returncode
    except BaseException:
        process.kill()
        process.wait()
        raise


# the numeric libraries' settings (kernel choice such as OPENBLAS_CORETYPE, cache sizes, thread pools): a worker
# without them may pick other BLAS kernels and give other bits than the runner (measured: OPENBLAS_CORETYPE=Haswell
# set on this project's machine moved an exact R-GAP recovery by 2e-14)
_NUMERICS_PREFIXES = ("OPENBLAS_", "MKL_", "OMP_", "KMP_", "GOMP_", "BLIS_", "NVPL_")


def _worker_environment(work: Path) -> dict[str, str]:
    """The worker's environment: no COPA_DATA_ROOT, COPA_PLUGINS or anything else of the runner's but what
    Python and the numeric libraries need (their kernel, cache and thread settings); the runner's import path
    (so that a plug-in module found from its working folder is found again), temporary files in the worker's
    own folder."""
    keep = ("PATH", "LANG", "LC_ALL", "HOME", "VIRTUAL_ENV", "CUDA_VISIBLE_DEVICES", "ATEN_CPU_CAPABILITY")
    env = {key: value for key, value in os.environ.items()
           if key in keep or key.startswith(_NUMERICS_PREFIXES)}
    paths = [os.getcwd() if entry == "" else entry for entry in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p and Path(p).exists())
    env["TMPDIR"] = str(work)
    env["MPLCONFIGDIR"] = str(work)
    env["COPA_SANDBOX"] = "off"
    return env


def _tail(path: Path, limit: int = 20_000) -> str:
    """The last ``limit`` bytes of a file, as text (a worker that prints gigabytes costs the runner nothing)."""
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - limit, 0))
        return fh.read().decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


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


def worker_imports(attack, observations) -> list[str]:
    """The plug-ins the worker imports: the one that registered the attack and those that registered the
    observations' models (a chain is rebuilt from its spec without them). Entry points are not listed:
    every process imports those itself."""
    from .. import plugins
    from ..models import MODELS

    loaded = plugins.loaded_targets()
    wanted = [attack_plugin(attack)]
    wanted += [MODELS.entry(o.model_name).plugin for o in observations if o.model_name in MODELS]
    return [target for target in dict.fromkeys(wanted) if target is not None and target in loaded]
