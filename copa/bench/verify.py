"""Verify a published leaderboard by rerunning a random sample of its records (``copa verify RESULTS_DIR``).

First, every row of records.csv is checked without running any attack (:mod:`copa.bench.consistency`): its
``config_hash`` against config.yaml, the rows against config.yaml's design, and each ok row's stored reconstruction
rescored where the full records are at hand. Then a sample is rerun:

What a leaderboard folder holds is enough to rerun any of its records: ``config.yaml`` (the validated config
of the run) gives the scenario of every (defence, model, index) and the attack's settings, ``records.csv``
one row per run with its metrics, hyperparameters, ``config_hash`` (SHA-256 of scenario, attack,
hyperparameters and seed: :func:`copa.bench.record.config_hash`) and package versions. A sampled record is
rerun exactly as its cell ran it — with the images it was batched with (the cell's indices in chunks of the
config's ``batch_size``; a batched attack solves a chunk as one computation), the same seed, metrics and
threads — and compared:

* ``identical``: the same status and every metric equal to the last bit (CPU runs are deterministic);
* ``within tolerance``: metrics equal within ``rtol`` (GPU kernels and other library builds round differently);
* ``different``: anything else — the published number cannot be reproduced from what is published;
* ``tampered``: the record's stored reconstruction (``images.npz``), rescored by copa's own scorer against the
  ground truth rebuilt from the config, does not give the metrics it publishes — checked for every ok row before
  any rerun, wherever the full records are present (:func:`~copa.bench.consistency.rescoring_disagrees`);
* ``cannot verify``: the rerun would not be the same run — the scenario rebuilt from the config does not
  give the record's ``config_hash``, the attack's hyperparameters now differ (e.g. a changed default), or a trained
  model's checkpoint, retrained where it is not at hand, is not the published one (:func:`checkpoint_problem`).

The record's stored ``versions`` are compared with this installation's and a difference is reported beside
the verdict. When the full records are present (the workflow's ``out`` folder, as ``records.csv`` points to
them), the record's own batch members and attack source hash are used and a changed attack file is reported
as ``cannot verify (attack source changed)``.

A submission folder (``submission.json``, :mod:`copa.bench.submission`) reruns with its own copy of the plug-in,
whatever its config.yaml names, and refuses a config.yaml that names trusted extensions; its records.csv points to
the full records inside the folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..attacks import ATTACKS
from ..errors import CopaError, InvalidSpecError, unknown_name
from ..hyperparameters import check_threads
from ..io import atomic_write_text, read_yaml_mapping
from ..provenance import (capabilities_here, compute_environment, cpu_capability, cpu_model, package_versions,
                          resolve_device)
from .consistency import (
    EXACT_PSNR,
    Consistency,
    check_consistency,
    finding_lines,
    hyperparameter_change,
    record_folder,
    rescoring_disagrees,
    row_members,
    settings_by_label,
)
from .pipeline import (
    attack_identity,
    build_attack,
    cell_batch_size,
    check_attacks,
    checkpoint_file,
    chunks,
    client_batches,
    configured_metrics,
    parse_model_entry,
    scenario_for,
    train_checkpoint,
)
from .record import config_hash, jsonable, read_json, read_record, versions_text
from .run import run_attacks, set_threads

VERDICTS = ("identical", "within tolerance", "different", "tampered", "cannot verify")
DEFAULT_RTOL = 1e-6
"""Relative tolerance of ``within tolerance``: far above float64 rounding, far below any attack's spread."""


@dataclass
class Verification:
    """One sampled record and what its rerun gave."""

    model: str
    attack: str
    defence: str
    index: int | str  # an image index, or a client batch's indices ("0,1,2,3")
    verdict: str
    detail: str

    def row(self) -> dict[str, Any]:
        return {"model": self.model, "attack": self.attack, "defence": self.defence, "index": self.index,
                "verdict": self.verdict, "detail": self.detail}


REQUIRED_COLUMNS = ("model", "attack", "index", "status", "config_hash", "hyperparameters")
"""The records.csv columns a rerun needs (:func:`verify_results`); ``defence`` (default none), ``record``,
``versions``, ``reason`` and the metrics are read when present."""


def _read(results_dir: Path):
    """config.yaml and records.csv of a leaderboard folder, checked before any rerun: YAML that parses to a
    mapping whose attacks are registered (:func:`copa.bench.pipeline.check_attacks`), a CSV with the
    :data:`REQUIRED_COLUMNS`, every ``index`` an image index or a batch's indices and every ``hyperparameters``
    JSON. Each problem is one line naming the file."""


    config_path, records_path = results_dir / "config.yaml", results_dir / "records.csv"
    for path in (config_path, records_path):
        if not path.is_file():
            raise CopaError(f"{results_dir} is not a leaderboard folder: {path.name} is missing (expected the "
                            f"results_dir of a workflow run, with config.yaml and records.csv)")
    config = read_yaml_mapping(config_path, expected="the config.yaml a workflow run wrote (a YAML mapping)")
    from .submission import submission_plugins  # deferred: copa.bench.submission imports this module (a cycle)

    own = submission_plugins(results_dir, config)
    if own is not None:  # a submission reruns its own plug-in copy, whatever its config.yaml names
        config = {**config, "plugins": own}
    try:
        check_attacks(config)
    except CopaError as exc:
        raise type(exc)(f"{config_path}: {exc}") from None
    try:
        rows = pd.read_csv(records_path, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InvalidSpecError(f"{records_path} cannot be read as CSV ({type(exc).__name__}: {first}): expected the "
                               f"records.csv a workflow run wrote") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in rows.columns]
    if missing:
        raise InvalidSpecError(f"{records_path} lacks the column(s) {', '.join(missing)}: copa verify needs "
                               f"{', '.join(REQUIRED_COLUMNS)} (the records.csv a workflow run wrote)")
    if rows.empty:
        raise CopaError(f"{records_path} has no records to verify")
    for number, (index, hp) in enumerate(zip(rows["index"], rows["hyperparameters"]), 1):
        if row_members(index) is None:
            raise InvalidSpecError(f"{records_path} row {number} (line {number + 1}): index {_cell(index)} is "
                                   f"invalid: accepted are an image index (an integer ≥ 0) or a client batch's "
                                   f"indices joined by commas, e.g. 0,1,2,3")
        if isinstance(hp, str):
            try:
                json.loads(hp)
            except ValueError:
                raise InvalidSpecError(f"{records_path} row {number} (line {number + 1}): hyperparameters "
                                       f"{hp!r:.200} are not JSON: accepted is the attack's hyperparameters as a "
                                       f"JSON object, or empty") from None

    for attack in dict.fromkeys(str(a) for a in rows["attack"]):
        if attack not in ATTACKS:  # the config's plug-ins are loaded (check_attacks)
            raise type(err := unknown_name("attack", attack, ATTACKS.names()))(f"{records_path}: {err}")
    return config, rows


def _cell(value: Any) -> str:
    return repr(value) if isinstance(value, str) else repr(str(value))


def _chunk(config: dict[str, Any], attack_obj, setting, index: int, stored: dict[str, Any] | None) -> list[int]:
    """The images the record's run solved together: the stored record's batch members when present, else the
    cell's images in the chunks :func:`copa.bench.pipeline.run_cell` makes on a run from scratch."""

    members = ((stored or {}).get("batch") or {}).get("members")
    if members and all(isinstance(m, list) and len(m) == 1 for m in members):
        return [int(m[0]) for m in members]
    indices = [batch[0] for batch in client_batches(config, 1)]  # the cell's images (max_instances applied)
    for chunk in chunks(indices, cell_batch_size(config, attack_obj, setting, len(indices))):
        if index in chunk:
            return chunk
    return [index]


def _compare(row, record: dict[str, Any], metrics: tuple[str, ...], rtol: float) -> tuple[str, str]:
    status = str(row["status"])
    if record["status"] != status:
        return "different", f"status {record['status']} (published {status}: {row.get('reason')})"
    if status != "ok":
        same = (record.get("reason") or "") == (row.get("reason") if isinstance(row.get("reason"), str) else "")
        return ("identical", "same status and reason") if same else \
            ("different", f"reason {record.get('reason')!r} (published {row.get('reason')!r})")
    now = (record.get("metrics") or {}).get("mean") or {}
    names = [m for m in metrics if m in row.index and m in now]
    if "label_accuracy" in row.index and "label_accuracy" in (record.get("metrics") or {}):
        names.append("label_accuracy")
        now = {**now, "label_accuracy": record["metrics"]["label_accuracy"]}
    exact, close, worst = True, True, []
    both_exact = _exact_recovery(row.get("psnr")) and _exact_recovery(now.get("psnr"))
    for name in names:
        published, rerun = row[name], now[name]
        if published is None or (isinstance(published, float) and math.isnan(published)):
            if rerun is not None:
                exact = close = False
                worst.append(f"{name} {rerun} (published n/a)")
            continue
        published, rerun = float(published), float(rerun)
        if published != rerun:
            exact = False
            relative = abs(published - rerun) / max(abs(published), 1e-300)
            worst.append(f"{name} {rerun:.6g} vs {published:.6g} (relative {relative:.1e})")
            if relative > rtol and not (both_exact and name in ("mse", "psnr")):
                close = False
    if exact:
        return "identical", f"{', '.join(names)} equal to the last bit"
    if both_exact and close:
        worst.append(f"both exact recoveries (PSNR ≥ {EXACT_PSNR:g} dB): their MSE and PSNR differ by float64 "
                     f"rounding only")
    return ("within tolerance" if close else "different"), "; ".join(worst)


def _exact_recovery(psnr) -> bool:
    """A PSNR of an exact recovery (:data:`EXACT_PSNR` or more): its last digits are float64 rounding, which other
    kernels round differently (R-GAP on a full-rank chain: 288 vs 290 dB)."""
    try:
        return float(psnr) >= EXACT_PSNR
    except (TypeError, ValueError):
        return False


def verify_results(results_dir: str | Path, *, sample: int = 10, seed: int = 0, rtol: float = DEFAULT_RTOL,
                   device: str = "cpu", threads: int = 1, log: Callable[[str], None] = print,
                   positions: list[int] | None = None, attacks: list[str] | None = None,
                   stop_when_inconsistent: bool = False) -> Verifications:
    """Check every row of the leaderboard in ``results_dir`` (:func:`copa.bench.consistency.check_consistency`;
    the result is the returned list's ``consistency``), then rerun ``sample`` records drawn with ``seed`` (without
    replacement, every status) and compare them with what is published (module docstring). Records that ran together are
    rerun together once. On the CPU, a record that this process's kernel set does not reproduce is rerun in a
    fresh process under the record's own kernel set (``ATEN_CPU_CAPABILITY``; records without one: every other set
    this CPU runs) and its verdict says which reproduced it (:func:`_retry_under_other_kernel_sets`).
    ``positions``: rerun exactly these rows of records.csv instead of a sample, in this process only (the child
    processes of that retry; no whole-folder check). ``attacks``: draw the sample from these attacks' records only (a
    submission's). ``stop_when_inconsistent``: rerun nothing when the whole-folder check finds a problem."""

    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise InvalidSpecError(f"--sample {sample!r} is invalid: expected a positive integer")
    check_threads(threads, "--threads")
    resolve_device(device)  # an unknown or unavailable device: one line before any rerun
    results_dir = Path(results_dir)
    config, rows = _read(results_dir)
    consistency = None
    if positions is None:
        consistency = _check_rows(results_dir, config, rows, device=device, log=log)
        if stop_when_inconsistent and not consistency.consistent():
            return Verifications([], consistency)
    if positions is None and attacks is not None:
        population = [k for k, name in enumerate(rows["attack"]) if str(name) in attacks]
        if not population:
            raise CopaError(f"{results_dir / 'records.csv'} has no record of {', '.join(attacks)} to verify")
        drawn = np.random.default_rng(seed).choice(len(population), size=min(sample, len(population)), replace=False)
        picked = sorted(population[int(k)] for k in drawn)
    elif positions is None:
        picked = [int(p) for p in sorted(np.random.default_rng(seed).choice(len(rows), size=min(sample, len(rows)),
                                                                          replace=False))]
    else:
        picked = [int(p) for p in positions]
    tampered = None if consistency is None else \
        {f.row - 1: f.detail for f in consistency.findings if f.kind == "tampered" and f.row is not None}
    out = _verify_positions(results_dir, config, rows, picked, rtol=rtol, device=device, threads=threads, log=log,
                            tampered=tampered)
    if positions is None and resolve_device(device).type == "cpu":
        _retry_under_other_kernel_sets(results_dir, rows, picked, out, rtol=rtol, threads=threads, log=log)
    return Verifications(out, consistency)


class Verifications(list):
    """:func:`verify_results`'s verdicts of the sampled records, in order, and ``consistency``: the whole-folder
    check that ran first (:class:`~copa.bench.consistency.Consistency`; None for the ``--rows`` child process)."""

    def __init__(self, verdicts: list[Verification], consistency: Consistency | None):
        super().__init__(verdicts)
        self.consistency = consistency


def check_folder(results_dir: str | Path, *, device: str = "cpu", log: Callable[[str], None] = print) -> Consistency:
    """The whole-folder check of ``copa verify`` alone (:func:`copa.bench.consistency.check_consistency`), after the
    same reading of config.yaml and records.csv; no record is rerun."""
    results_dir = Path(results_dir)
    config, rows = _read(results_dir)
    return _check_rows(results_dir, config, rows, device=device, log=log)


def _check_rows(results_dir: Path, config: dict[str, Any], rows, *, device: str,
                log: Callable[[str], None]) -> Consistency:
    from .submission import is_submission  # deferred: copa.bench.submission imports this module (a cycle)

    return check_consistency(results_dir, config, rows, submission=is_submission(results_dir), device=device, log=log)


RETRIED = ("different", "within tolerance")
"""Verdicts that a rerun under another kernel set may turn into ``identical``."""


def worth_retrying(verification: Verification) -> bool:
    """Whether a rerun under another kernel set may turn this verdict into ``identical``: one of :data:`RETRIED`, or
    a trained model whose checkpoint, trained here, is not the published one (another kernel set may train it);
    not a checkpoint that is neither at hand nor published, nor any other ``cannot verify``.

    >>> worth_retrying(Verification("m", "a", "none", 0, "different", "psnr 6.39004 vs 6.39005"))
    True
    >>> worth_retrying(Verification("m@epoch1", "a", "none", 0, "cannot verify",
    ...                             "the checkpoint trained here is not the published one: test_loss 2.3 (published 2.4)"))
    True
    >>> worth_retrying(Verification("m@epoch1", "a", "none", 0, "cannot verify",
    ...                             "runs/m.pt is not at hand, and results/checkpoints/m@epoch1.json is not published"))
    False
    """
    return verification.verdict in RETRIED or (verification.verdict == "cannot verify"
                                               and verification.detail.startswith(NOT_THE_PUBLISHED_MODEL))


def _retry_under_other_kernel_sets(results_dir: Path, rows, picked: list[int], out: list[Verification], *,
                                   rtol: float, threads: int, log: Callable[[str], None]) -> None:
    """Rerun the records this process did not reproduce exactly under another of this CPU's kernel sets — the
    record's own (records.csv ``cpu_capability``) when this CPU runs it, else (older records, which do not say)
    each narrower one in turn — in a child ``copa verify --rows`` with ``ATEN_CPU_CAPABILITY`` set (torch reads it
    once, at import). A verdict that becomes ``identical`` says under which kernel set."""

    here = capabilities_here()
    pending = {position: k for k, position in enumerate(picked) if worth_retrying(out[k])}
    for capability in here[1:]:
        wanted = []
        for position in pending:
            recorded = rows.iloc[position].get("cpu_capability") if "cpu_capability" in rows.columns else None
            recorded = str(recorded).upper() if isinstance(recorded, str) and recorded else None
            if recorded is None or recorded == capability:
                wanted.append(position)
        if not wanted:
            continue
        log(f"rerunning {len(wanted)} record(s) under ATEN_CPU_CAPABILITY={capability.lower()} (this CPU's own "
            f"kernel set is {here[0]})")
        for position, kind, detail in _verify_in_child(results_dir, wanted, capability, rtol=rtol, threads=threads):
            k = pending[position]
            if kind != "identical":
                continue
            before = out[k]
            out[k] = Verification(before.model, before.attack, before.defence, before.index, "identical",
                                  f"{detail}, under ATEN_CPU_CAPABILITY={capability.lower()} (this CPU's own "
                                  f"{here[0]} kernels gave: {before.detail})")
            log(f"{before.defence}/{before.model}/{before.attack}/{before.index}: identical under "
                f"ATEN_CPU_CAPABILITY={capability.lower()}")
            del pending[position]


MKL_INSTRUCTIONS = {"AVX2": "AVX2", "DEFAULT": "SSE4_2"}
"""The MKL code path of a CPU whose widest torch kernel set is the key (``MKL_ENABLE_INSTRUCTIONS``): torch's
matrix products go through MKL, which picks its own path by CPU (on the 2-core Intel Xeon, AVX-512, a float64
product differs in its last bits with ``MKL_ENABLE_INSTRUCTIONS=AVX2``), so a rerun under a narrower kernel set
narrows both, as that CPU would run them (an Intel CPU; another vendor's is not reproduced: README)."""


def _verify_in_child(results_dir: Path, positions: list[int], capability: str, *, rtol: float,
                     threads: int) -> list[tuple[int, str, str]]:
    """``copa verify RESULTS_DIR --rows ...`` in a fresh interpreter under ``ATEN_CPU_CAPABILITY=capability`` (and
    MKL's path for it, :data:`MKL_INSTRUCTIONS`, unless the environment sets one);
    its verdicts as ``(position, verdict, detail)``. A child that fails gives no verdicts (the first ones stand)."""

    with tempfile.TemporaryDirectory(prefix="copa-verify-") as folder:
        report = Path(folder) / "verdicts.json"
        command = [sys.executable, "-m", "copa", "verify", str(results_dir), "--rows", ",".join(map(str, positions)),
                   "--rtol", repr(rtol), "--threads", str(threads), "--report", str(report)]
        env = {**os.environ, "ATEN_CPU_CAPABILITY": capability.lower(),
               **({"MKL_ENABLE_INSTRUCTIONS": MKL_INSTRUCTIONS[capability]} if capability in MKL_INSTRUCTIONS and "MKL_ENABLE_INSTRUCTIONS" not in os.environ else {})}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if not report.is_file():
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            print(f"copa: WARNING: the rerun under ATEN_CPU_CAPABILITY={capability.lower()} failed ({last})",
                  flush=True)
            return []
        verdicts = json.loads(report.read_text())
    return [(int(v["position"]), str(v["verdict"]), str(v["detail"])) for v in verdicts]


def _verify_positions(results_dir: Path, config: dict[str, Any], rows, picked: list[int], *, rtol: float,
                      device: str, threads: int, log: Callable[[str], None],
                      tampered: dict[int, str] | None = None) -> list[Verification]:
    """Rerun the rows ``picked`` of records.csv in this process; one :class:`Verification` each, in order.
    ``tampered``: the rows the whole-folder check rescored, position → why those that were tampered (the others are
    not rescored again); None: rescore the picked rows here."""

    set_threads(threads, "--threads")
    settings = settings_by_label(config)
    metrics = configured_metrics(config)
    versions = versions_text(package_versions())
    reruns: dict[tuple, dict[int, dict[str, Any]]] = {}
    checkpoints: dict[str, str | None] = {}
    out: list[Verification] = []
    for position in picked:
        row = rows.iloc[int(position)]
        model, attack = str(row["model"]), str(row["attack"])
        members = row_members(row["index"])
        index = members[0] if len(members) == 1 else ",".join(map(str, members))
        defence = str(row.get("defence", "none") or "none")

        def verdict(kind: str, detail: str) -> None:
            out.append(Verification(model, attack, defence, index, kind, detail))
            log(f"{defence}/{model}/{attack}/{index}: {kind} ({detail})")

        if defence not in settings:
            verdict("cannot verify", f"setting {defence!r} is not in config.yaml's defences, local_steps and "
                                     f"client_batch")
            continue
        setting = settings[defence]
        if model not in checkpoints:
            checkpoints[model] = checkpoint_problem(config, model, results_dir, log=log)
        if checkpoints[model] is not None:
            verdict("cannot verify", checkpoints[model])
            continue

        def scenario_of(images):
            return scenario_for(config, model, images, setting)

        attack_obj = build_attack(config, attack)
        hp = jsonable(attack_obj.hp)
        published_hp = json.loads(row["hyperparameters"]) if isinstance(row["hyperparameters"], str) else None
        if published_hp is not None and published_hp != hp:
            verdict("cannot verify", f"the attack's hyperparameters are now not the record's: "
                                     f"{hyperparameter_change(published_hp, hp)}")
            continue
        scenario = scenario_of(members)
        run_seed = int(config.get("seed", 0))
        if config_hash(scenario.to_dict(), attack, hp, run_seed) != row["config_hash"]:
            verdict("cannot verify", "the scenario rebuilt from config.yaml does not give the record's config_hash")
            continue
        folder = record_folder(results_dir, row.get("record"))
        stored = read_record(folder) if folder is not None else None
        if tampered is not None and int(position) in tampered:
            verdict("tampered", tampered[int(position)])
            continue
        if tampered is None and stored is not None and str(row["status"]) == "ok":
            why = rescoring_disagrees(row, scenario, folder, metrics, device)
            if why is not None:
                verdict("tampered", why)
                continue
        source = ((stored or {}).get("workflow") or {}).get("attack_source_sha256")
        if source is not None and source != attack_identity(config, attack, attack_obj)["source_sha256"]:
            verdict("cannot verify", "attack source changed since the record was made (attack_source_sha256)")
            continue
        if setting.federated():  # run_cell runs these settings' instances one at a time
            chunk = [members]
        else:
            chunk = [(i,) for i in _chunk(config, attack_obj, setting, members[0], stored)]
        key = (defence, model, attack, tuple(chunk))
        if key not in reruns:
            runs = run_attacks([scenario_of(images) for images in chunk], attack_obj,
                               seeds=[run_seed] * len(chunk), device=device, threads=threads, metrics=metrics,
                               record_failures=True)
            reruns[key] = {images: record for images, (record, _, _) in zip(chunk, runs, strict=True)}
        kind, detail = _compare(row, reruns[key][members], metrics, rtol)
        if row.get("versions") != versions:
            detail += f"; versions then: {row.get('versions')}; now: {versions}"
        if kind != "identical":
            detail += environment_difference(row.get("cpu_model"), row.get("kernel_fingerprint"))
        verdict(kind, detail)
    return out


CHECKPOINT_FINGERPRINT = ("train_loss", "test_loss", "test_accuracy")
"""What a trained checkpoint's json (the rule ``train``'s ``epochE.json``) states of its weights, compared to the
last bit between the published one and the one at hand."""
NOT_THE_PUBLISHED_MODEL = "the checkpoint"
"""How a verdict on a trained model whose checkpoint is not the published one begins (a rerun under another
kernel set may train the published one: :func:`_retry_under_other_kernel_sets`). A checkpoint that is neither at
hand nor published is not retried: its verdict begins otherwise."""


VERIFY_RETRAINS_UP_TO_EPOCH = 20
"""The most epochs ``copa verify`` trains a checkpoint that is not at hand (4× the project's own trained models,
results/realistic/trained: epochs 0, 1 and 5): a results folder, a submission's above all, cannot make a verifier
train for the workflow's :data:`~copa.bench.pipeline.MAX_TRAIN_EPOCH` (1,000) epochs."""


def checkpoint_problem(config: dict[str, Any], model: str, results_dir: str | Path, *,
                       log: Callable[[str], None] = print) -> str | None:
    """None when ``model``'s rows can be rerun on the model they were made on, else why not (a ``cannot verify``).

    A trained model (``ARCH@epochE``) is attacked from the checkpoint the workflow's rule ``train`` writes under the
    config's ``out``; a results folder publishes only its description, ``checkpoints/ARCH@epochE.json``. Where the
    checkpoint is not at hand it is trained as the rule trains it, where the rule writes it (a few seconds: the
    seeded SGD of :func:`copa.bench.pipeline.train_checkpoint`; up to :data:`VERIFY_RETRAINS_UP_TO_EPOCH`); its losses and accuracy
    (:data:`CHECKPOINT_FINGERPRINT`) must equal the published ones to the last bit, else the rerun would attack
    another model (float32 training rounds differently on another CPU: docs/reproducibility.md) and a retrained
    checkpoint that differs is removed again."""
    architecture, epoch = parse_model_entry(model)
    if epoch is None:
        return None
    path = Path(checkpoint_file(config, architecture, epoch))
    published = Path(results_dir) / "checkpoints" / f"{model}.json"
    retrained = not path.is_file()
    if retrained:
        if not published.is_file():
            return (f"{path} is not at hand, and {published} is not published to check a retrained one against "
                    f"(no kernel set can help: nothing is retried)")
        if epoch > VERIFY_RETRAINS_UP_TO_EPOCH:
            return (f"{path} is not at hand, and copa verify trains checkpoints of up to "
                    f"{VERIFY_RETRAINS_UP_TO_EPOCH} epochs, not {epoch} (put the checkpoint there to verify its rows)")
        log(f"{model}: its checkpoint is not published; training it as the workflow's rule train does, into {path}")
        train_checkpoint(config, architecture, epoch, out_dir=path.parent, log=None)
    meta = path.with_suffix(".json")
    if not published.is_file() or not meta.is_file():
        return None  # the workflow's own checkpoint, and nothing published to compare it with
    then, here = read_json(published), read_json(meta)
    differing = [f"{key} {here.get(key)!r} (published {then.get(key)!r})" for key in CHECKPOINT_FINGERPRINT
                 if here.get(key) != then.get(key)]
    if not differing:
        return None
    if retrained:
        path.unlink(missing_ok=True)
        meta.unlink(missing_ok=True)
        if not any(path.parent.iterdir()):
            path.parent.rmdir()
    where = "trained here" if retrained else f"at {path}"
    return f"{NOT_THE_PUBLISHED_MODEL} {where} is not the published one: " + "; ".join(differing)


def environment_difference(made_on: Any, fingerprint: Any, *, here: str | None = None,
                           here_fingerprint: str | None = None) -> str:
    """The clause a verdict other than identical gets when the record was made where the kernels compute other bits:
    its kernel fingerprint (records.csv ``kernel_fingerprint``, :func:`copa.provenance.kernel_fingerprint`) is not
    this process's, or, for records without one, its CPU model (``cpu_model``) is not this one. Empty when the
    record does not say, or says the same: then no environment difference explains the verdict. torch's float64
    matrix products go through MKL, whose code path depends on the CPU, not only on the kernel set
    (docs/reproducibility.md).

    >>> environment_difference("Intel(R) Xeon(R) CPU @ 2.80GHz", float("nan"), here="AMD EPYC")
    '; made on Intel(R) Xeon(R) CPU @ 2.80GHz, rerun on AMD EPYC: MKL rounds matrix products differently by CPU'
    >>> environment_difference("AMD EPYC", "a/b/c", here="AMD EPYC", here_fingerprint="d/e/f")
    '; made on AMD EPYC, rerun on AMD EPYC, whose float64 kernels compute other bits (kernel fingerprint a/b/c then, d/e/f here)'
    >>> environment_difference("AMD EPYC", "a/b/c", here="Other", here_fingerprint="a/b/c"), environment_difference(None, None, here="x")
    ('', '')
    """
    here = cpu_model() if here is None else here
    made_on = made_on if isinstance(made_on, str) and made_on else None
    if isinstance(fingerprint, str) and fingerprint:
        here_fingerprint = compute_environment()["kernel_fingerprint"] if here_fingerprint is None else here_fingerprint
        if fingerprint == here_fingerprint:
            return ""
        return (f"; made on {made_on or 'a CPU records.csv does not name'}, rerun on {here}, whose float64 kernels "
                f"compute other bits (kernel fingerprint {fingerprint} then, {here_fingerprint} here)")
    if made_on is None or made_on == here:
        return ""
    return f"; made on {made_on}, rerun on {here}: MKL rounds matrix products differently by CPU"


def kernel_set_summary(results: list[Verification]) -> str:
    """One line: the kernel set this process ran (torch's CPU capability, the CPU model) and how many records were
    reproduced only under another (``ATEN_CPU_CAPABILITY``)."""

    other: dict[str, int] = {}
    for result in results:
        if ", under ATEN_CPU_CAPABILITY=" in result.detail:
            name = result.detail.split(", under ATEN_CPU_CAPABILITY=", 1)[1].split(" ", 1)[0]
            other[name] = other.get(name, 0) + 1
    line = f"kernel set: {cpu_capability()} (this CPU's own; {cpu_model()})"
    if other:
        line += "; reproduced under another: " + ", ".join(f"{n} under ATEN_CPU_CAPABILITY={k}" for k, n in other.items())
    return line


def write_verification(results: list[Verification], path: str | Path, *, command: str,
                       results_dir: str | Path | None = None) -> Path:
    """A Markdown table of the verdicts, with the command and a count per verdict, the whole-folder check's summary
    and findings when ``results`` carries them (:class:`Verifications`); the title names ``results_dir`` (default:
    the folder the table is written to)."""

    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n) + f" of {len(results)} sampled records"
    consistency = getattr(results, "consistency", None)
    if consistency is not None:  # on the summary's line: the site shows the first lines (copa.bench.site)
        summary += f"; every row of records.csv: {consistency.summary()}"
    lines = [f"# Verification of {results_dir if results_dir is not None else Path(path).parent}", "",
             f"Command: `{command}`", "", summary, ""]
    if consistency is not None and consistency.findings:
        lines += [f"- {line}" for line in finding_lines(consistency.findings)] + [""]
    lines += ["| defence | model | attack | index | verdict | detail |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.defence} | {r.model} | {r.attack} | {r.index} | {r.verdict} | {r.detail} |" for r in results]
    return atomic_write_text(path, "\n".join(lines) + "\n")
