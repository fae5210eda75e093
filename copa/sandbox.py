"""The sandbox untrusted code runs in: a bubblewrap (``bwrap``) container holding nothing of the run.

Untrusted code is every plug-in's (docs/trust.md): it is imported and run only by the worker process
``python -m copa.bench.worker DIR`` started through :func:`worker_command`, never by the runner, the workflow,
the scorer, the leaderboard or ``copa verify``. Inside the sandbox the worker sees

* a fresh, empty root (a tmpfs) with, read-only, only the system's libraries (``/usr``, the dynamic loader's
  cache), the Python installation and the virtual environment, copa-bench's own code (``copa/``,
  ``baselines/``) and each plug-in's or extension's source (the file, or its package's folder);
* its own folder ``DIR`` (request, observation files, result) as the only writable place, a private ``/tmp``,
  no ``/run``: no dataset, no output of any run, no Unix socket of the host;
* its own PID, network, IPC, UTS, user and cgroup namespaces (no network, abstract sockets included), a new
  session (no terminal injection), and it dies with its parent (``--die-with-parent``);
* an environment of allow-listed variables only (:func:`worker_environment`), each value checked.

Where bwrap is missing or cannot create namespaces, untrusted code is refused (:func:`untrusted_sandbox`)
unless the user accepts the risk explicitly (``--allow-unsandboxed`` or ``COPA_ALLOW_UNSANDBOXED=1``);
``COPA_SANDBOX=required`` refuses even then. Neither can be switched from inside a plug-in: no plug-in code
runs in the process that decides.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

from .errors import CopaError, InvalidSpecError

COPA_PACKAGE = Path(__file__).resolve().parent
"""copa's own folder (this module's package): what a worker needs of copa-bench's code, with baselines/ beside it."""
SANDBOX_MODES = ("auto", "required", "off")
"""``COPA_SANDBOX``: ``auto`` (default) uses bwrap where it works; ``required`` refuses to run untrusted code
without it, whatever else is set; ``off`` does not use it (untrusted code then needs the explicit allowance)."""
ALLOW_UNSANDBOXED = "COPA_ALLOW_UNSANDBOXED"
"""Set to ``1`` (or pass ``--allow-unsandboxed``) to run plug-ins without a sandbox, accepting that they can read
every file this user can (the dataset and earlier runs' targets included) and outlive the run."""
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`, or `make sandbox`) or accept "
                f"the risk with --allow-unsandboxed / {ALLOW_UNSANDBOXED}=1")

ENVIRONMENT_ALLOWED = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                       "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE", "ATEN_CPU_CAPABILITY",
                       "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "LANG", "LC_ALL")
"""The runner's variables a worker keeps: those that choose numeric kernels and thread pools (without
``OPENBLAS_CORETYPE`` a worker computed other bits than the runner) and the locale. Nothing is passed by prefix."""
_SAFE_VALUE = re.compile(r"[A-Za-z0-9_.,:=+-]{0,64}")
"""What an allow-listed value may hold: short kernel names and numbers, not a payload."""


def sandbox_mode() -> str:
    mode = os.environ.get("COPA_SANDBOX", "auto").strip() or "auto"
    if mode not in SANDBOX_MODES:
        raise InvalidSpecError(f"COPA_SANDBOX={mode!r} is invalid: accepted are {', '.join(SANDBOX_MODES)}")
    return mode


def unsandboxed_allowed() -> bool:
    value = os.environ.get(ALLOW_UNSANDBOXED, "").strip()
    if value not in ("", "0", "1"):
        raise InvalidSpecError(f"{ALLOW_UNSANDBOXED}={value!r} is invalid: accepted are 1 (allow) and 0 or unset")
    return value == "1"


@lru_cache(maxsize=1)
def sandbox_tool() -> tuple[str | None, str]:
    """``(path, description)`` of a working bwrap, or ``(None, why not)``: it must be on PATH and able to create
    its namespaces here (a container may forbid them)."""
    path = shutil.which("bwrap")
    if path is None:
        return None, "bwrap (bubblewrap) is not installed"
    try:
        probe = subprocess.run([path, *_namespace_arguments(), *_root_arguments([]), "--", "true"],
                               capture_output=True, text=True, check=False)
    except OSError as exc:
        return None, f"bwrap cannot start: {exc}"
    if probe.returncode != 0:
        first = (probe.stderr.strip().splitlines() or ["no message"])[0]
        return None, f"bwrap cannot create its sandbox here: {first}"
    version = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return path, version or "bwrap"


def untrusted_sandbox(what: str) -> tuple[str | None, str]:
    """The sandbox untrusted code (``what``: e.g. ``plug-in 'x.py'``) runs in: ``(bwrap path, description)``, or
    ``(None, why there is none)`` when running without one was allowed explicitly. Refused with one line
    (:class:`CopaError`) when there is none and it was not allowed, or when ``COPA_SANDBOX=required``."""
    mode = sandbox_mode()
    tool, description = (None, "COPA_SANDBOX=off") if mode == "off" else sandbox_tool()
    if tool is not None:
        return tool, description
    if mode == "required":
        raise CopaError(f"COPA_SANDBOX=required, but the sandbox is not available ({description}): {what} is not run")
    if not unsandboxed_allowed():
        raise CopaError(f"{what} runs only in a sandbox, and there is none here ({description}): {INSTALL_HINT}")
    return None, description


def trusted_sandbox() -> tuple[str | None, str]:
    """The sandbox copa-bench's own attacks use when isolated on request (``--isolate``): bwrap where it works,
    else none (they are trusted code; the record then says so)."""
    mode = sandbox_mode()
    if mode == "off":
        return None, "COPA_SANDBOX=off"
    tool, description = sandbox_tool()
    if tool is None and mode == "required":
        raise CopaError(f"COPA_SANDBOX=required, but the sandbox is not available: {description}")
    return tool, description


def _namespace_arguments() -> list[str]:
    return ["--unshare-all", "--die-with-parent", "--new-session", "--dev", "/dev", "--proc", "/proc",
            "--tmpfs", "/tmp"]


def _root_arguments(readable: list[Path]) -> list[str]:
    """The sandbox's file system: an empty root with the system's libraries and ``readable`` read-only."""
    arguments = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        top = Path("/") / name
        if top.is_symlink():
            arguments += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            arguments += ["--ro-bind", str(top), str(top)]
    for name in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives"):
        arguments += ["--ro-bind-try", name, name]
    for path in readable:
        arguments += ["--ro-bind", str(path), str(path)]
    return arguments


def installation_paths() -> list[Path]:
    """What a worker must read to start: the Python installation, the virtual environment, copa-bench's code
    (``copa/`` and, in a source checkout, ``baselines/`` beside it) — never the folder around them."""
    package = COPA_PACKAGE
    paths = [Path(sys.base_prefix), Path(sys.base_exec_prefix), Path(sys.prefix), Path(sys.exec_prefix), package]
    if (package.parent / "baselines" / "__init__.py").is_file():
        paths.append(package.parent / "baselines")
    paths += [Path(p) for p in sys.path if p and Path(p).is_dir() and ("site-packages" in p or "dist-packages" in p)]
    return _outermost(paths)


def _outermost(paths) -> list[Path]:
    """Existing, resolved ``paths`` without those inside another, in order."""
    resolved = []
    for path in paths:
        path = Path(path).resolve()
        if path.exists() and path not in resolved:
            resolved.append(path)
    return [p for p in resolved if not any(q != p and q in p.parents for q in resolved)]


def worker_environment(work: Path, python_path: list[Path]) -> dict[str, str]:
    """The worker's whole environment: the allow-listed numeric and locale settings whose values look like
    settings (:data:`ENVIRONMENT_ALLOWED`), a fixed ``PATH``, ``HOME`` and temporary files in its own folder,
    and the import path of the sources it was given."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work),
           "MPLCONFIGDIR": str(work), "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "COPA_SANDBOX": "off"}
    for key in ENVIRONMENT_ALLOWED:
        value = os.environ.get(key)
        if value is not None and _SAFE_VALUE.fullmatch(value):
            env[key] = value
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in python_path)
    return env


def worker_command(work: Path, *, tool: str | None, readable=(), python_path=(), hidden=(), device: str = "cpu",
                   ) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` of ``python -m copa.bench.worker WORK``: inside bwrap (``tool``) with a root holding only
    :func:`installation_paths`, ``readable`` and ``work`` (writable); without ``tool`` a plain process with the
    same environment. ``hidden`` paths that lie inside a readable one are covered by empty mounts."""
    python = [sys.executable, "-s", "-m", "copa.bench.worker", str(work)]
    # copa's own folder first (a source checkout not installed: in the sandbox only copa/ and baselines/ are there)
    paths = [COPA_PACKAGE.parent, *(Path(p).resolve() for p in python_path)]
    env = worker_environment(work, list(dict.fromkeys(paths)))
    if tool is None:
        return python, env
    readable = _outermost([*installation_paths(), *readable])
    arguments = [tool, *_namespace_arguments(), *_root_arguments(readable), *_hide_arguments(hidden, readable),
                 *_gpu_arguments(device), "--bind", str(work), str(work), "--chdir", str(work), "--clearenv"]
    for key, value in env.items():
        arguments += ["--setenv", key, value]
    return [*arguments, "--", *python], env


def _hide_arguments(hidden, readable: list[Path]) -> list[str]:
    """Empty mounts over each hidden path inside a readable folder: a folder becomes an empty tmpfs, a file
    /dev/null (the rest of the disk is not in the sandbox at all)."""
    arguments = []
    for path in _outermost(p for p in hidden if p not in (None, "")):
        if not any(path == r or r in path.parents for r in readable):
            continue
        if path.is_dir():
            arguments += ["--tmpfs", str(path)]
        else:
            arguments += ["--ro-bind", "/dev/null", str(path)]
    return arguments


def _gpu_arguments(device: str) -> list[str]:
    """The NVIDIA device nodes and the driver's view of the machine, for a worker on a GPU (untested here: no GPU
    on the machines this project is developed on; docs/trust.md)."""
    if not device.startswith("cuda"):
        return []
    nodes = [arg for node in sorted(Path("/dev").glob("nvidia*")) for arg in ("--dev-bind", str(node), str(node))]
    return [*nodes, "--ro-bind-try", "/sys", "/sys"]


PROGRESS_LINE_LIMIT = 500
"""Characters of one forwarded line of a worker (longer lines are cut: the worker is not trusted)."""


def run_worker(command: list[str], env: dict[str, str], work: Path, *, forward_prefix: str | None = None,
               poll: float = 0.5) -> tuple[int, str]:
    """Run a worker ``command`` in ``work`` with its stdout and stderr into ``work/output.txt`` and, while it runs,
    copy its complete lines that start with ``forward_prefix`` (progress; each cut to
    :data:`PROGRESS_LINE_LIMIT` characters) to this process's standard error. Returns the exit status and what
    else it said (the end of its output only: a worker that prints gigabytes costs the runner nothing).
    Interrupted (Ctrl-C), the worker's whole process group is killed first; so is it when it ends."""
    output = work / "output.txt"
    with output.open("wb") as sink:
        process = subprocess.Popen(command, env=env, cwd=work, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink,
                                   start_new_session=True)
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
                    if forward_prefix and line.startswith(forward_prefix):
                        print(line[:PROGRESS_LINE_LIMIT], file=sys.stderr, flush=True)
                if returncode is not None and offset >= output.stat().st_size:
                    break
        finally:
            _kill_group(process)
    said = "".join(line for line in _tail(output).splitlines(keepends=True)
                   if not (forward_prefix and line.startswith(forward_prefix)))
    return returncode, said


def _kill_group(process: subprocess.Popen) -> None:
    """End the worker and whatever it started in its session (a plain worker's children; in bwrap the PID
    namespace ends with it anyway)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _tail(path: Path, limit: int = 20_000) -> str:
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - limit, 0))
        return fh.read().decode(errors="replace")


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def read_bounded_json(path: Path, limit: int, what: str):
    """A JSON file a worker wrote, at most ``limit`` bytes, or :class:`CopaError` naming ``what``."""
    if not path.is_file():
        raise CopaError(f"{what} wrote no answer")
    if path.stat().st_size > limit:
        raise CopaError(f"{what} answered {path.stat().st_size} bytes, more than the {limit} accepted")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CopaError(f"{what} answered something that is not JSON ({exc})") from None
