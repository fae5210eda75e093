"""The record: one attack run's result, and this module its single owner.

A record is a JSON object (``record.json``) with ``record_version`` :data:`RECORD_VERSION`. Its keys:
``status`` (one of :data:`STATUSES`) and ``reason``; ``scenario`` (:meth:`copa.threat.Scenario.to_dict`)
or ``source`` (an observation file); ``observation`` (what the attacker saw, described); ``attack``
(name, paper, code), ``hyperparameters``, ``seed``, ``config_hash`` (:func:`config_hash`); ``model``;
for an ok run ``metrics``, ``attack_loss``, ``evaluations``, ``attack_info``, ``seconds`` (and
``batch`` for a batched run); for a failed one ``traceback``; provenance (``device``, ``versions``,
``git_commit``, ``finished_at``); ``update_distortion`` and ``client_training`` (the client's loss per local
step, :func:`client_training_entry`) when the ground truth is known; in the workflow a ``workflow`` section
(:func:`workflow_section`). Records made before a key existed lack it; readers take it as unknown.

This module makes records (:func:`new_record`, :func:`add_outcome`, :func:`mark_failed`,
:func:`mark_not_applicable`), decides whether a stored one is still valid (:func:`record_matches`), reads
them (:func:`read_record`, :func:`record_row`) and summarises them (:func:`summary_line`). Its table columns
(:func:`record_columns`) take one column per metric the records were scored with, in the metric registry's
order (:func:`copa.metrics.metric_order`), so that a new metric needs no change here.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CopaError, RunFailure
from ..metrics import DEFAULT_METRICS, metric_info, metric_order
from .setting import Setting, setting_suffix
from ..provenance import compute_environment, device_description, git_commit, package_versions
from ..threat.defences import NoDefence

RECORD_VERSION = 1
STATUSES = ("ok", "failed", "not-applicable")
"""Record statuses, in the order tables list them."""

RECORD_FILES = ("record.json", "images.npz", "reconstruction.png")

IDENTITY_COLUMNS = ["model", "attack", "dataset", "split", "index", "status", "reason"]
DEFENCE_COLUMNS = ["defence", "update_distortion"]
"""The client's defence chain (:func:`defence_label`) and what it cost, ‖g̃ − g‖/‖g‖: after the metrics, so
that the metric columns keep their places."""
SETTING_COLUMNS = ["local_steps", "local_lr", "local_batch", "client_batch", "local_losses", "zero_loss_step"]
"""The client's federated setting as numbers (:class:`~copa.bench.setting.Setting`; ``local_batch``: images per
local step, the client's batch when it takes all of them) and its training (:func:`client_training_entry`): the
loss per local step (a JSON list; empty when the record does not say) and the first step whose loss was zero
(the update then equals fewer steps; empty when none was)."""
RUN_COLUMNS = ["label_accuracy", "seconds", "forward_evals", "gradient_evals", "device", "git_commit", "finished_at",
               "config_hash", "run_config_hash", "versions", "hyperparameters", "attack_source_sha256", "sandbox",
               "cpu_capability", "cpu_model", "kernel_fingerprint", "record", "images"]
"""``attack_source_sha256``: the SHA-256 of the file that defined the attack when the record was made
(:func:`copa.bench.pipeline.attack_identity`); a row whose attack file has changed since is stale
(:func:`copa.bench.consistency.source_staleness`). ``cpu_capability``, ``cpu_model`` and ``kernel_fingerprint``: the
kernel set torch used, the CPU and what its float64 kernels compute (:func:`copa.provenance.compute_environment`);
float64 results are bit-identical only where the fingerprint is the same (docs/reproducibility.md, "Determinism")."""


def record_columns(metrics: Iterable[str] = DEFAULT_METRICS) -> list[str]:
    """The columns of :func:`record_row` for records scored with ``metrics``: the run's identity, one column
    per metric (its mean over the batch) in registry order, the client's defences and federated setting, then
    the run's costs and provenance."""
    names = metric_order(metrics)
    reserved = [*IDENTITY_COLUMNS, *DEFENCE_COLUMNS, *SETTING_COLUMNS, *RUN_COLUMNS]
    clash = [name for name in names if name in reserved]
    if clash:
        raise CopaError(f"metric names {clash} are record columns: accepted are other names than "
                        f"{', '.join(reserved)}")
    return [*IDENTITY_COLUMNS, *names, *DEFENCE_COLUMNS, *SETTING_COLUMNS, *RUN_COLUMNS]


RECORD_COLUMNS = record_columns()
"""The columns of records scored with the default metrics."""


def metric_columns(columns: Iterable[str]) -> list[str]:
    """The metric columns among a records table's ``columns`` (those of neither the identity, the defences,
    the client's setting nor the run)."""
    other = {*IDENTITY_COLUMNS, *DEFENCE_COLUMNS, *SETTING_COLUMNS, *RUN_COLUMNS}
    return [c for c in columns if c not in other]


def record_metrics(record: dict[str, Any]) -> list[str]:
    """The names of the metrics ``record`` was scored with (none for a run that is not ok)."""
    return list((record.get("metrics") or {}).get("mean") or {})


def config_hash(scenario: dict[str, Any] | None, attack: str, hyperparameters: dict[str, Any], seed: int,
                **extra: Any) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of what determines a run's result:
    the scenario (or, for an observation file, its description in ``extra``), the attack's name,
    its full hyperparameters and the seed."""
    payload = {"scenario": scenario, "attack": attack, "hyperparameters": hyperparameters, "seed": seed, **extra}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True, default=str)


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, allow_nan=True))

ZERO_LOSS_TOLERANCE = {torch.float64: 1e-7, torch.float32: 1.3e-6}
"""Per float type, the loss at or below which a client's local step counts as a step of zero loss: the default
relative tolerance of ``torch.testing.assert_close`` for that type (its documentation's table: float64 1e-7,
float32 1.3e-6), the precision at which PyTorch's own tests call two tensors equal."""


def zero_loss_tolerance(dtype: torch.dtype) -> float:
    """:data:`ZERO_LOSS_TOLERANCE` of ``dtype``. Why a loss that small is a step that adds nothing: a
    cross-entropy ℓ = −log p_y makes the logits' gradient softmax − one-hot of norm at most √2 (1 − p_y) ≤ √2 ℓ,
    against about 1 for a first step at chance on an untrained model; so the step's weight change is at that
    relative precision of a first step's (the chain rule through the model aside). At η = 0.1 one step on
    lenet-zhu took CIFAR-10 train image 0's loss from 11.34 to 4.6e-10 in float64 and kept it there (issue 34:
    "steps 2–5 add nothing")."""
    if dtype not in ZERO_LOSS_TOLERANCE:
        raise CopaError(f"dtype {dtype} has no zero-loss tolerance: accepted are float32, float64")
    return ZERO_LOSS_TOLERANCE[dtype]


def client_training_entry(losses: Iterable[float], dtype: torch.dtype) -> dict[str, Any]:
    """The record's ``client_training``: the client's loss at each local step (on that step's images, before the
    step; one entry for FedSGD), the steps (from 1) whose loss was zero (≤ :func:`zero_loss_tolerance`), and
    ``update_equals_fewer_steps``: some step had zero loss, so the update equals that of fewer steps (issue 34:
    at η = 0.1 one step drove lenet-zhu's loss from 11.3 to 0 and steps 2–5 added nothing)."""
    losses = [float(loss) for loss in losses]
    tolerance = zero_loss_tolerance(dtype)
    zero = [step for step, loss in enumerate(losses, start=1) if loss <= tolerance]
    return {"losses_per_step": losses, "zero_loss_tolerance": tolerance, "zero_loss_steps": zero,
            "update_equals_fewer_steps": bool(zero)}


def new_record(*, attack, seed: int, scenario: dict[str, Any] | None, observation=None,
               source: dict[str, Any] | None = None, update_distortion: float | None = None,
               truth=None) -> dict[str, Any]:
    """A record of status ok for one run of ``attack`` (its hyperparameters ``attack.hp``), before its
    outcome (``observation`` None: the client's step could not be computed). ``update_distortion``: what
    the client's defences cost, ‖g̃ − g‖/‖g‖ (from the ground truth; 0 undefended). ``truth``: the
    :class:`~copa.threat.GroundTruth`, whose distortion and local losses (``client_training``,
    :func:`client_training_entry`) the record keeps; the attack never sees them."""
    if truth is not None:
        update_distortion = truth.update_distortion
    hp = dict(attack.hp)
    record: dict[str, Any] = {"record_version": RECORD_VERSION, "status": "ok", "reason": None, "scenario": scenario}
    if source is not None:
        record["source"] = source
    if observation is not None:
        record["observation"] = observation.describe()
    record.update({
        "attack": {"name": attack.name, "paper": attack.paper, "code": attack.code},
        "hyperparameters": hp,
        "seed": seed,
        "config_hash": config_hash(scenario, attack.name, jsonable(hp), seed,
                                   **({"source": source} if source is not None else {})),
    })
    if observation is not None:
        record["model"] = model_description(observation)
    if update_distortion is not None:
        record["update_distortion"] = update_distortion
    if truth is not None and truth.local_losses is not None:
        record["client_training"] = client_training_entry(truth.local_losses, truth.images01.dtype)
    return record


def mark_not_applicable(record: dict[str, Any], reason: str) -> None:
    record.update(status="not-applicable", reason=f"not applicable: {reason}")


def add_outcome(record: dict[str, Any], reconstruction, scores: dict[str, Any] | None, forward_calls: int) -> None:
    """The ok record's result: scores (None without ground truth), the attack's loss, evaluation counts
    (the attack's own, else the forward calls the runner counted) and the attack's diagnostics."""
    if scores is not None:
        record["metrics"] = scores
    else:
        record["metrics"] = None
        record["metrics_note"] = "no ground truth: the observation came without the client's images"
    record["attack_loss"] = reconstruction.loss
    record["evaluations"] = {
        "forward": reconstruction.forward_evals if reconstruction.forward_evals is not None else forward_calls,
        "gradient": reconstruction.gradient_evals,
        "forward_calls_counted": forward_calls,
    }
    record["attack_info"] = reconstruction.info


def workflow_section(*, attack_settings: dict[str, Any], cell: str, threads: int, batch_size: int,
                     attack_source: str, attack_source_sha256: str | None, run_config_hash: str,
                     model: str | None = None) -> dict[str, Any]:
    """The ``workflow`` section of a record written by a workflow cell (what :func:`record_matches` checks).
    ``model``: the models-axis entry where it names more than the scenario's architecture (a trained
    checkpoint, ``cnn4_c2@epoch5``); the tables name the record's model by it."""
    section = {"attack_settings": attack_settings, "cell": cell, "threads": threads, "batch_size": batch_size,
               "attack_source": attack_source, "attack_source_sha256": attack_source_sha256,
               "run_config_hash": run_config_hash}
    if model is not None:
        section["model"] = model
    return section


def failure_reason(exc: BaseException) -> str:
    """The one-line reason of a failed record, naming the kind of failure."""
    if isinstance(exc, RunFailure):
        return f"failed: {exc}"
    if isinstance(exc, torch.OutOfMemoryError):
        return f"failed: out of memory (torch.OutOfMemoryError): {exc}"
    if isinstance(exc, MemoryError):
        return f"failed: out of memory (MemoryError): {exc}"
    if isinstance(exc, torch.linalg.LinAlgError):
        return f"failed: solver failure (torch.linalg.LinAlgError): {exc}"
    return f"failed: {type(exc).__name__}: {exc}"


def mark_failed(record: dict[str, Any], exc: BaseException) -> None:
    """Turn ``record`` into a failed record for ``exc``: its reason (one line) and traceback."""
    reason = " ".join(failure_reason(exc).split())
    record.update(status="failed", reason=reason[:2000],
                  traceback=None if isinstance(exc, RunFailure) else traceback.format_exc(limit=20))


def model_description(observation) -> dict[str, Any]:
    info = observation.model_info()
    return {"name": info.name, "spec": info.spec, "init": info.init, "seed": info.seed,
            "checkpoint": None if info.checkpoint is None else str(info.checkpoint), "is_chain": info.is_chain,
            "not_chain_reason": info.not_chain_reason,
            "parameters": int(sum(p.numel() for p in observation.model.parameters()))}


def provenance(device: torch.device) -> dict[str, Any]:
    return {"device": device_description(device), "compute": compute_environment(), "versions": package_versions(),
            "git_commit": git_commit(), "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def read_record(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The record in ``directory``, or None when there is none (or it cannot be read)."""
    path = Path(directory) / "record.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def record_matches(record: dict[str, Any] | None, directory: str | os.PathLike, scenario, attack_name: str,
                   hyperparameters: dict[str, Any], seed: int, *, accept_failed: bool = False,
                   source_sha256: str | None = None, metrics: Iterable[str] = ()) -> str | None:
    """None if ``record`` is a complete result of exactly this run; else why it must be recomputed.

    An ok record must hold every metric of ``metrics`` (it may hold more): a newly configured metric
    recomputes it, other metrics do not change the run's result."""
    if record is None:
        return "no record"
    if record.get("record_version") != RECORD_VERSION:
        return f"record version {record.get('record_version')} != {RECORD_VERSION}"
    status = record.get("status")
    if status not in STATUSES:
        return f"unknown status {status!r}"
    if status == "failed" and not accept_failed:
        return "failed before (retry_failed)"
    if record.get("scenario") != scenario.to_dict():
        return "different scenario"
    if (record.get("attack") or {}).get("name") != attack_name:
        return "different attack"
    if record.get("hyperparameters") != jsonable(hyperparameters):
        return "different hyperparameters"
    if record.get("seed") != seed:
        return "different seed"
    if source_sha256 is not None and (record.get("workflow") or {}).get("attack_source_sha256") != source_sha256:
        return "the attack's source file changed"
    missing = [name for name in metrics if name not in record_metrics(record)] if status == "ok" else []
    if missing:
        return f"metrics {', '.join(missing)} not in the record"
    if status == "ok" and not (Path(directory) / "images.npz").is_file():
        return "images.npz missing"
    return None


def clear_record(directory: str | os.PathLike) -> None:
    """Remove a stale record: record.json first, so the directory never looks complete midway."""
    for name in RECORD_FILES:
        (Path(directory) / name).unlink(missing_ok=True)


def read_json(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CopaError(f"record {str(path)!r} does not exist") from None
    except ValueError as exc:
        raise CopaError(f"record {str(path)!r} is not valid JSON: {exc}") from None


def record_row(record: dict[str, Any], path: str | Path | None = None) -> dict[str, Any]:
    """Flatten one record (any status) into a row of :func:`record_columns` (of its own metrics)."""
    scenario = record.get("scenario") or {}
    indices = scenario.get("indices") or [None]
    status = record.get("status")
    if status not in STATUSES:
        raise CopaError(f"record {path or ''} has status {status!r}: accepted are {', '.join(STATUSES)}")
    mean = (record.get("metrics") or {}).get("mean") or {}
    evals = record.get("evaluations") or {}
    images = None
    if path is not None and status == "ok" and (Path(path).parent / "images.npz").is_file():
        images = str(Path(path).parent / "images.npz")
    return {
        "model": (record.get("workflow") or {}).get("model") or scenario.get("model"),
        "attack": (record.get("attack") or {}).get("name"),
        "dataset": scenario.get("dataset"), "split": scenario.get("split"),
        "index": indices[0] if len(indices) == 1 else ",".join(map(str, indices)),
        "status": status, "reason": record.get("reason"),
        **{name: as_number(value) for name, value in mean.items()},
        "defence": setting_label(record), "update_distortion": update_distortion(record),
        **setting_values(record),
        "label_accuracy": as_number((record.get("metrics") or {}).get("label_accuracy")),
        "seconds": as_number(record.get("seconds")), "forward_evals": as_number(evals.get("forward")),
        "gradient_evals": as_number(evals.get("gradient")), "device": record.get("device"),
        "git_commit": record.get("git_commit"), "finished_at": record.get("finished_at"),
        "config_hash": record.get("config_hash"), "run_config_hash": (record.get("workflow") or {}).get("run_config_hash"),
        "versions": versions_text(record.get("versions")),
        "hyperparameters": json.dumps(record.get("hyperparameters") or {}, sort_keys=True),
        "attack_source_sha256": (record.get("workflow") or {}).get("attack_source_sha256"),
        "sandbox": sandbox_text(record),
        "cpu_capability": (record.get("compute") or {}).get("cpu_capability"),
        "cpu_model": (record.get("compute") or {}).get("cpu_model"),
        "kernel_fingerprint": (record.get("compute") or {}).get("kernel_fingerprint"),
        "record": None if path is None else str(path), "images": images,
    }


def sandbox_text(record: dict[str, Any]) -> str | None:
    """Where the record's attack ran, for tables: None in the runner's process (trusted code), else the sandbox
    (``bubblewrap 0.8.0``) or ``NONE`` — a worker without a sandbox (docs/trust.md)."""
    isolation = record.get("isolation")
    if not isinstance(isolation, dict):
        return None
    return isolation.get("sandbox") or "NONE"


def setting_label(record: dict[str, Any]) -> str:
    """The client's setting of a record as the tables' ``defence`` column names it: its defence chain
    (:func:`defence_label`), then ``; local_steps=K`` … for each axis of the setting that differs from the paper's
    one step on one image (``none; local_steps=2``); the workflow's :attr:`Setting.label`."""
    return defence_label(record) + setting_suffix(Setting.from_scenario(record.get("scenario") or {}))


def setting_values(record: dict[str, Any]) -> dict[str, Any]:
    """The record's :data:`SETTING_COLUMNS`: its client setting's axes (``local_batch`` as images per local
    step), its losses per local step as a JSON list and the first zero-loss step (both empty for a record that
    does not keep them, e.g. one made before they were recorded)."""
    setting = Setting.from_scenario(record.get("scenario") or {})
    training = record.get("client_training") or {}
    losses = training.get("losses_per_step")
    return {"local_steps": setting.local_steps, "local_lr": setting.local_lr,
            "local_batch": setting.client_batch if setting.local_batch is None else setting.local_batch,
            "client_batch": setting.client_batch,
            "local_losses": None if losses is None else json.dumps(losses),
            "zero_loss_step": min(training.get("zero_loss_steps") or [np.nan])}


def defence_label(record: dict[str, Any]) -> str:
    """The record's defence chain as one name: the scenario's canonical specs joined by ``+`` (``none``
    undefended); for a record without a scenario, the names of the observation's defences."""
    scenario = record.get("scenario") or {}
    if "defences" in scenario:
        chain = list(scenario["defences"] or [])
    else:
        described = (record.get("observation") or {}).get("defences") or []
        chain = [d.get("name") for d in described if d.get("name") not in (None, NoDefence.name)]
    return "+".join(chain) or NoDefence.name


def update_distortion(record: dict[str, Any]) -> float:
    """‖g̃ − g‖/‖g‖ of the record; one written before it was recorded: 0 undefended, else NaN (unknown)."""
    if "update_distortion" in record:
        return as_number(record["update_distortion"])
    return 0.0 if defence_label(record) == NoDefence.name else np.nan


def versions_text(versions: Any) -> str | None:
    """``{"python": "3.12", "torch": "2.5"}`` → ``"python 3.12, torch 2.5"`` (None when absent)."""
    if not isinstance(versions, dict) or not versions:
        return None
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def as_number(value: Any) -> float:
    if value is None:
        return np.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return np.nan


def summary_line(record: dict[str, Any]) -> str:
    s = record.get("scenario")
    if s is not None:
        head = f"{record['attack']['name']} on {s['model']} / {s['dataset']}:{s['split']} {s['indices']}"
    else:
        where = (record.get("source") or {}).get("path", "an observation")
        head = f"{record['attack']['name']} on {record['observation']['model']} / {where}"
    if record["status"] != "ok":
        return f"{head}: {record['status']} ({record['reason']})"
    if record.get("metrics") is None:
        loss = record.get("attack_loss")
        return (f"{head}: ok, no ground truth to score against (attack loss "
                f"{'–' if loss is None else f'{loss:.4g}'}), {record['seconds']:.2f} s")
    mean = record["metrics"]["mean"]
    parts = [_metric_text(name, mean[name]) for name in metric_order(mean) if mean[name] is not None]
    acc = record["metrics"].get("label_accuracy")
    if acc is not None:
        parts.append(f"label acc {acc:.2f}")
    parts.append(f"{record['seconds']:.2f} s")
    return f"{head}: " + ", ".join(parts)


def _metric_text(name: str, value: float) -> str:
    """``PSNR 12.61 dB``: the metric's label, its value with the registered decimals, its unit."""
    info = metric_info(name)
    return " ".join(part for part in (info.label, f"{value:.{info.digits}f}", info.unit) if part)
