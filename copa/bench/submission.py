"""Submissions: a third party's attack run on the standard benchmark and packed for maintainers to verify
(issue "The leaderboard, published"; docs/submitting.md).

``copa submit --plugin FILE.py --attack NAME --name ENTRY --contact ADDRESS`` runs the workflow (the Snakefile,
as ``snakemake`` would: every record, table and plot made exactly as the project's own) on the standard config
``config/submission.yaml`` with the plug-in's attack added, and writes one folder, ``submissions/ENTRY/``::

    records.csv leaderboard.md leaderboard.csv security.md security.csv config.yaml plots/   the workflow's results_dir
    run/                 the workflow's out: every record in full (record.json, images.npz, reconstruction.png),
                         the cells, the security reports, the logs, and the overrides copa submit gave the workflow
    plugin/FILE.py       the plug-in the run used, copied before it ran (the run never imports it: docs/trust.md)
    submission.json      who, which attack, the plug-in's file and SHA-256, the environment, the command, the config
    verification.json    written by maintainers: ``copa verify submissions/ENTRY --record-verdict``

records.csv's ``record`` and ``images`` columns are relative to the folder, so that it can be moved. Entries from
other people live in ``submissions/``, apart from the project's own results in ``results/``.

``copa verify`` on a submission folder (:func:`verify_submission`) checks the plug-in copy's SHA-256 against
submission.json's (a mismatch: verdict ``failed``), checks every row of records.csv — every attack's, not only the
submitted one's — against config.yaml and rescores every ok row's stored reconstruction
(:mod:`copa.bench.consistency`; an inconsistent row: verdict ``failed``, nothing rerun), reruns a seeded sample of
the submitted attack's records in the sandbox with that copy (:func:`copa.bench.verify.verify_results`, which never
imports it) and gives the entry its verdict: ``verified`` when every row is consistent and every sampled record is
identical or within tolerance, ``failed`` when a row is inconsistent or a sampled record different or tampered,
``unverified`` otherwise (a record that cannot be verified, e.g. other package versions, or a stale row: made with
hyperparameters an attack no longer has).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

import yaml

import copa

from ..attacks import ATTACKS, SandboxedAttack, load_plugins
from ..errors import CopaError, InvalidSpecError
from ..hyperparameters import check_threads
from ..io import atomic_write, atomic_write_json, check_writable, read_yaml_mapping
from ..provenance import compute_environment, git_commit, package_versions
from ..sandbox import sandbox_tool
from .consistency import PROBLEMS
from .verify import kernel_set_summary, verify_results

SUBMISSION_FILE = "submission.json"
VERIFICATION_FILE = "verification.json"
PLUGIN_FOLDER = "plugin"
RUN_FOLDER = "run"
OVERRIDES_FILE = "submit-overrides.yaml"
SUBMISSIONS = "submissions"
"""The folder of other people's entries (beside results/, the project's own)."""

ENTRY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
ENTRY_NAME_TEXT = "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
CONTACT = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+|https?://\S+")
CONTACT_TEXT = "an e-mail address (you@example.org) or a web address (https://...), at most 200 characters"
SHA256 = re.compile(r"[0-9a-f]{64}")
VERDICTS = ("verified", "unverified", "failed")
COUNT_KEYS = {"identical": "identical", "within tolerance": "within", "different": "different",
              "tampered": "tampered", "cannot verify": "cannot_verify"}
"""copa verify's verdict of a record → its key in verification.json's ``counts``."""
RUN_OWN_KEYS = ("title", "out", "results_dir", "plugins", "attacks", "attack_settings", "verify", "plots")
"""Config keys that do not decide the standard's records (or that :func:`standard_differences` checks apart)."""


def checkout_root() -> Path:
    """The copa-bench checkout copa runs from: the Snakefile, ``config/`` and the schema are there."""
    root = package_root()
    if not (root / "Snakefile").is_file():
        raise CopaError(f"copa submit runs the workflow of a copa-bench checkout, and {root} has no Snakefile: run "
                        f"it from a clone (git clone, then pip install -e .)")
    return root


def package_root() -> Path:
    """The folder around the ``copa`` package (a checkout's root, or site-packages for an installed copa)."""

    return Path(copa.__file__).resolve().parent.parent


def standard_config_file() -> Path:
    return checkout_root() / "config" / "submission.yaml"


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def validated_config(config: dict[str, Any]) -> dict[str, Any]:
    """A workflow config checked against the workflow's JSON schema with its defaults filled in, as the Snakefile
    does (``snakemake.utils.validate``); one line naming the bad key."""
    # deferred: snakemake's engine loads in ≈ 1 s; only a submission's config check needs it
    from snakemake.exceptions import WorkflowError  # deferred: see above
    from snakemake.utils import validate  # deferred: see above

    config = json.loads(json.dumps(config))
    try:
        validate(config, str(checkout_root() / "workflow" / "schemas" / "config.schema.yaml"))
    except WorkflowError as exc:
        error = exc.__context__
        where = ".".join(str(p) for p in getattr(error, "absolute_path", [])) or "(top level)"
        raise InvalidSpecError(f"invalid config: {where}: {getattr(error, 'message', exc)}") from None
    return config


def read_config_file(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """A YAML workflow config file as a mapping; one line naming ``what`` when it is missing or not one."""
    return read_yaml_mapping(path, what=what, expected="a workflow config (YAML), e.g. config/submission.yaml")


def standard_differences(config: dict[str, Any]) -> list[str]:
    """How a run's validated config departs from the standard benchmark (config/submission.yaml with the schema's
    defaults): one line per key that decides records or tables, and the standard's attacks it lacks. Empty: the
    entry is the standard's, comparable with every other standard entry and with results/."""
    standard = validated_config(read_config_file(standard_config_file(), "the standard config"))
    differences = []
    for key, value in standard.items():
        if key in RUN_OWN_KEYS:
            continue
        if config.get(key) != value:
            differences.append(f"{key}: {config.get(key)!r} (standard: {value!r})")
    for key in sorted(set(config) - set(standard) - set(RUN_OWN_KEYS)):
        if not str(key).startswith("_"):
            differences.append(f"{key}: {config[key]!r} (standard: not set)")
    attacks = list(config.get("attacks") or [])
    missing = [a for a in standard["attacks"] if a not in attacks]
    if missing:
        differences.append(f"attacks: without {', '.join(missing)} (the standard runs them beside the submitted one)")
    settings = config.get("attack_settings") or {}
    for attack in standard["attacks"]:
        if (settings.get(attack) or {}) != (standard["attack_settings"].get(attack) or {}):
            differences.append(f"attack_settings.{attack}: {settings.get(attack)!r} (standard: "
                               f"{standard['attack_settings'].get(attack)!r})")
    return differences


# --------------------------------------------------------------------------------------------------
# copa submit


def check_submit_inputs(*, plugin: str, attack: str, name: str, contact: str, out: str | None,
                        config_file: str | None, cores: int | None) -> tuple[Path, Path, Path, dict[str, Any]]:
    """Every input of ``copa submit`` that can be checked without running anything: one line naming the bad one.
    Returns ``(plug-in file, entry folder, config file, config)``."""

    plugin_path = Path(plugin)
    if not plugin.endswith(".py") or not plugin_path.is_file():
        raise CopaError(f"--plugin {plugin!r} does not exist or is not a .py file: expected the file of your attack "
                        f"(README, \"Add your attack\")")
    if not ENTRY_NAME.fullmatch(name):
        raise InvalidSpecError(f"--name {name!r} is invalid: expected {ENTRY_NAME_TEXT}")
    if len(contact) > 200 or not CONTACT.fullmatch(contact):
        raise InvalidSpecError(f"--contact {contact!r} is invalid: expected {CONTACT_TEXT}")
    if not attack or not attack.strip():
        raise InvalidSpecError("--attack '' is empty: expected the name your plug-in registers (copa list attacks "
                               "--plugin FILE.py)")
    if cores is not None:

        check_threads(cores, "--cores")
    folder = Path(out) if out is not None else Path(SUBMISSIONS) / name
    if folder.name != name or folder.absolute().parent.name != SUBMISSIONS:
        raise InvalidSpecError(f"--out {out!r} is invalid: an entry's folder is {SUBMISSIONS}/{name} (named "
                               f"after --name, in a folder {SUBMISSIONS}/ apart from the project's results/)")
    if folder.exists() or folder.is_symlink():
        state = "complete" if (folder / SUBMISSION_FILE).is_file() else "incomplete (no submission.json)"
        raise CopaError(f"--out {str(folder)!r} exists ({state}): an entry named {name!r} is there already; choose "
                        f"another --name, or remove the folder to submit again")
    check_writable(folder, what="--out", directory=True)
    config_path = Path(config_file) if config_file is not None else standard_config_file()
    config = read_config_file(config_path, "--config")
    for key in ("plugins", "extensions"):
        if config.get(key):
            raise InvalidSpecError(f"--config {str(config_path)!r} names {key} {config[key]!r}: a submission's config "
                                   f"names none (copa submit adds the submitted plug-in; trusted extensions have no "
                                   f"place in a submission)")
    attacks = config.get("attacks")
    if not isinstance(attacks, list) or not all(isinstance(a, str) for a in attacks):
        raise InvalidSpecError(f"--config {str(config_path)!r}: attacks {attacks!r} is invalid: expected a list of the "
                               f"project's attacks that run beside yours, e.g. [mean-image]")
    if attack in attacks:
        raise InvalidSpecError(f"--attack {attack!r} is one of the config's own attacks ({', '.join(attacks)}): a "
                               f"submission adds an attack of its plug-in")
    return plugin_path, folder, config_path, config


def check_plugin_attack(plugin: Path, attack: str) -> None:
    """``attack`` is registered by ``plugin`` (described by its sandboxed worker, never imported here): one line
    naming what the plug-in registers otherwise, or that the name is the project's own."""

    target = str(plugin.resolve())
    load_plugins([target])
    own = [entry.name for entry in ATTACKS if entry.plugin == target]
    if attack in own:
        return
    if attack in ATTACKS and not issubclass(ATTACKS.get(attack), SandboxedAttack):
        raise InvalidSpecError(f"--attack {attack!r} is copa-bench's own attack, not one of plug-in {plugin.name!r}'s "
                               f"({', '.join(own) or 'it registers none'})")
    raise InvalidSpecError(f"--attack {attack!r} is not registered by plug-in {plugin.name!r}: it registers "
                           f"{', '.join(repr(a) for a in own) or 'no attack'}")


def submit(*, plugin: str, attack: str, name: str, contact: str, out: str | None = None,
           config_file: str | None = None, cores: int | None = None, command: str,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """``copa submit``: check the inputs and the plug-in's attack, copy the plug-in into the entry's folder, run the
    workflow on the config with the attack added (:func:`run_workflow`), make records.csv's paths relative to the
    folder and write submission.json last. Any failure removes the folder: nothing partial is left."""

    start = time.perf_counter()
    plugin_path, folder, config_path, config = check_submit_inputs(
        plugin=plugin, attack=attack, name=name, contact=contact, out=out, config_file=config_file, cores=cores)
    check_plugin_attack(plugin_path, attack)
    cores = cores or os.cpu_count() or 1
    folder.mkdir(parents=True)
    try:
        copy = folder / PLUGIN_FOLDER / plugin_path.name
        copy.parent.mkdir()
        shutil.copyfile(plugin_path, copy)
        digest = file_sha256(copy)
        overrides = {"title": f"{config.get('title') or 'copa-bench submission'}: {name}",
                     "attacks": [*config["attacks"], attack], "plugins": [str(copy)],
                     "out": str(folder / RUN_FOLDER), "results_dir": str(folder)}
        overrides_path = folder / RUN_FOLDER / OVERRIDES_FILE
        overrides_path.parent.mkdir()
        overrides_path.write_text("# what copa submit adds to the config (submission.json has the command)\n"
                                  + yaml.safe_dump(overrides, sort_keys=False))
        run_workflow([config_path, overrides_path], cores=cores, log=log)
        relocate_record_paths(folder)
        run_config = read_config_file(folder / "config.yaml", "the run's config.yaml")
        differences = standard_differences(run_config)
        submission = {
            "name": name, "contact": contact, "attack": attack,
            "plugin_file": copy.relative_to(folder).as_posix(), "plugin_sha256": digest,
            "environment": environment(cores), "command": command,
            "config": {"file": _shown(config_path), "sha256": file_sha256(config_path), "standard": not differences,
                       "differences": differences},
            "records": record_counts(folder, attack),
            "paths": "records.csv's record and images columns are relative to this folder",
            "date": _now(), "seconds": round(time.perf_counter() - start, 1),
        }

        atomic_write_json(folder / SUBMISSION_FILE, submission)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return submission


def _shown(path: Path) -> str:
    """A path as a reader of the entry would type it: relative to the current folder where it lies below it, else
    absolute."""
    absolute, here = Path(os.path.abspath(path)), Path(os.path.abspath(Path.cwd()))
    return absolute.relative_to(here).as_posix() if absolute.is_relative_to(here) else str(absolute)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def workflow_command(configfiles: list[Path], *, cores: int) -> list[str]:
    """The ``snakemake`` command of a submission's run: this checkout's Snakefile, this interpreter's snakemake."""
    snakefile = checkout_root() / "Snakefile"
    return [sys.executable, "-m", "snakemake", "--snakefile", _shown(snakefile), "--cores", str(cores),
            "--configfile", *(_shown(Path(p)) for p in configfiles)]


def run_workflow(configfiles: list[Path], *, cores: int, log: Callable[[str], None] = print) -> None:
    """Run the workflow on ``configfiles`` in the current folder, its output forwarded to standard error as it comes;
    a failure raises one line: the config's own error (``invalid config: ...``) where Snakemake refused it, else the
    exit status and the last line Snakemake printed. Interrupted, Snakemake is stopped before this returns."""
    command = workflow_command(configfiles, cores=cores)
    log(f"running the benchmark: {' '.join(command[2:])}")
    tail: deque[str] = deque(maxlen=60)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               stdin=subprocess.DEVNULL)
    try:
        for line in process.stdout:
            tail.append(line.rstrip("\n"))
            sys.stderr.write(line)
        code = process.wait()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    if code != 0:
        invalid = [line.strip() for line in tail if line.strip().startswith("invalid config:")]
        if invalid:
            raise InvalidSpecError(invalid[-1])
        last = next((line.strip() for line in reversed(tail) if line.strip()), "no output")
        raise CopaError(f"the benchmark run failed (snakemake exit status {code}): {last}")


def relocate_record_paths(folder: Path) -> None:
    """records.csv's ``record`` and ``images`` columns made relative to ``folder`` (the workflow writes them as its
    ``out`` was given); every other cell's text is kept as it is."""

    path = folder / "records.csv"
    with path.open(newline="") as source:
        rows = list(csv.reader(source))
    header, body = rows[0], rows[1:]
    columns = [header.index(c) for c in ("record", "images") if c in header]
    base = folder.resolve()
    for row in body:
        for k in columns:
            if row[k]:
                row[k] = Path(os.path.relpath(Path(row[k]).resolve(), base)).as_posix()

    def write(target: Path) -> None:
        with target.open("w", newline="") as sink:
            csv.writer(sink, lineterminator="\n").writerows([header, *body])

    atomic_write(path, write)


def record_counts(folder: Path, attack: str) -> dict[str, int]:
    """The submitted attack's records in records.csv by status (ok, failed, not-applicable)."""
    with (folder / "records.csv").open(newline="") as source:
        rows = [row for row in csv.DictReader(source) if row.get("attack") == attack]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.get("status", "")] = counts.get(row.get("status", ""), 0) + 1
    return counts


def environment(cores: int) -> dict[str, Any]:
    """Where the entry was computed: Python, the packages, copa-bench's commit, the CPU and its kernel set, the
    BLAS libraries, the sandbox, the cores given to the workflow."""


    return {"python": platform.python_version(), "platform": platform.platform(), "packages": package_versions(),
            "copa_bench_commit": git_commit(), "compute": compute_environment(), "sandbox": sandbox_tool()[1],
            "cores": cores}


# --------------------------------------------------------------------------------------------------
# Reading a submission, and its verification


def is_submission(folder: str | os.PathLike) -> bool:
    return (Path(folder) / SUBMISSION_FILE).is_file()


REQUIRED_KEYS = {"name": str, "contact": str, "attack": str, "plugin_file": str, "plugin_sha256": str,
                 "environment": dict, "command": str}


def read_submission(folder: str | os.PathLike) -> dict[str, Any]:
    """A submission folder's submission.json, checked as untrusted data: every key of :data:`REQUIRED_KEYS` with its
    type, a valid name, a SHA-256, and ``plugin_file`` a ``.py`` file inside the folder. One line naming the file
    and the bad key."""
    path = Path(folder) / SUBMISSION_FILE
    if not path.is_file():
        raise CopaError(f"{folder} is not a submission: {SUBMISSION_FILE} is missing (copa submit writes it)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSpecError(f"{path} is not valid JSON ({exc}): expected the file copa submit wrote") from None
    if not isinstance(data, dict):
        raise InvalidSpecError(f"{path} does not hold a JSON object: expected the file copa submit wrote")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(data.get(key), kind):
            raise InvalidSpecError(f"{path}: {key} {data.get(key)!r:.100} is invalid: expected a "
                                   f"{'JSON object' if kind is dict else 'string'} (keys: {', '.join(REQUIRED_KEYS)})")
    if not ENTRY_NAME.fullmatch(data["name"]):
        raise InvalidSpecError(f"{path}: name {data['name']!r:.100} is invalid: expected {ENTRY_NAME_TEXT}")
    if not SHA256.fullmatch(data["plugin_sha256"]):
        raise InvalidSpecError(f"{path}: plugin_sha256 {data['plugin_sha256']!r:.100} is invalid: expected 64 "
                               f"lower-case hexadecimal digits")
    relative = Path(data["plugin_file"])
    if relative.is_absolute() or ".." in relative.parts or relative.suffix != ".py":
        raise InvalidSpecError(f"{path}: plugin_file {data['plugin_file']!r:.200} is invalid: expected the path of the "
                               f"plug-in's .py file inside the folder, e.g. plugin/my_attack.py")
    return data


def submission_plugins(folder: str | os.PathLike, config: dict[str, Any]) -> list[str] | None:
    """The plug-ins a rerun of ``folder``'s records loads: for a submission, exactly its own plug-in copy (not what
    its config.yaml names); None for a results folder that is not a submission. A submission whose config.yaml
    names trusted extensions is refused (they would be imported by the verifying process)."""
    folder = Path(folder)
    if not is_submission(folder):
        return None
    if config.get("extensions"):
        raise InvalidSpecError(f"{folder / 'config.yaml'} names extensions {config['extensions']!r:.200}: a "
                               f"submission may run one plug-in in the sandbox, never trusted code")
    return [str((folder / read_submission(folder)["plugin_file"]).resolve())]


def verify_submission(folder: str | os.PathLike, *, sample: int, seed: int, rtol: float, device: str, threads: int,
                      command: str, record: bool = False,
                      log: Callable[[str], None] = print) -> tuple[dict[str, Any], list]:
    """``copa verify`` on a submission: the plug-in copy's SHA-256 against submission.json's (different: verdict
    ``failed``, nothing rerun), then every row's consistency (an inconsistent one: ``failed``, nothing rerun;
    verification.json's ``consistency`` has the counts), then ``sample`` of the submitted attack's records drawn
    with ``seed`` and rerun in the sandbox (:func:`copa.bench.verify.verify_results`), and the entry's verdict. ``record``: write it to the
    folder's verification.json (atomically). Returns ``(verification, per-record results)``."""

    folder = Path(folder)
    submission = read_submission(folder)
    copy = folder / submission["plugin_file"]
    actual = file_sha256(copy) if copy.is_file() else None
    verification: dict[str, Any] = {"verdict": "unverified", "sample": 0, "counts": dict.fromkeys(COUNT_KEYS.values(), 0),
                                    "command": command, "date": _now(), "name": submission["name"],
                                    "attack": submission["attack"], "requested_sample": sample, "seed": seed,
                                    "rtol": rtol, "plugin_file": submission["plugin_file"], "plugin_sha256": actual,
                                    "verifier": {"packages": package_versions(), "copa_bench_commit": git_commit()}}
    results: list = []
    if actual != submission["plugin_sha256"]:
        reason = (f"the plug-in's sha256 is {actual or 'missing (no such file)'} ({submission['plugin_file']}), "
                  f"submission.json says {submission['plugin_sha256']}")
        verification.update(verdict="failed", reason=reason)
        log(f"failed: {reason}")
    else:
        results = verify_results(folder, sample=sample, seed=seed, rtol=rtol, device=device, threads=threads,
                                 attacks=[submission["attack"]], log=log, stop_when_inconsistent=True)
        for result in results:
            verification["counts"][COUNT_KEYS[result.verdict]] += 1
        counts, consistency = verification["counts"], results.consistency
        verification["sample"] = len(results)
        if not consistency.consistent():
            verdict = "failed"
            problems = [f for f in consistency.findings if f.kind in PROBLEMS]
            inconsistent = len({f.row for f in problems if f.row is not None})
            verification["reason"] = (f"records.csv has {inconsistent} inconsistent row(s) and "
                                      f"{consistency.counts()['missing']} missing, nothing rerun; first: "
                                      f"{problems[0].line()}")
        elif counts["different"] or counts["tampered"]:
            verdict = "failed"
        elif counts["identical"] + counts["within"] == len(results) > 0 and not consistency.counts()["stale"]:
            verdict = "verified"
        else:
            verdict = "unverified"
        verification.update(verdict=verdict, consistency=consistency.counts(), kernel_set=kernel_set_summary(results),
                            records=[result.row() for result in results])
    config_path = folder / "config.yaml"
    if config_path.is_file() and (package_root() / "config" / "submission.yaml").is_file():
        differences = standard_differences(read_config_file(config_path, "config.yaml"))
        verification.update(standard=not differences, differences=differences)
    if record:
        atomic_write_json(folder / VERIFICATION_FILE, verification)
    return verification, results
