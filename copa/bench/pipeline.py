"""The benchmark workflow's logic: config checks, attack cells with resumption, security entries.

The Snakefile and ``workflow/scripts/*.py`` are thin wrappers over this module (and over
:mod:`copa.leaderboard` and :mod:`copa.plots`), so that everything here is unit-testable.

Layout of one run (``OUT`` = ``config["out"]``, ``TAG`` = :func:`dataset_tag`)::

    OUT/TAG/records/DEFENCE/MODEL/ATTACK/INDEX/record.json   one record per image (+ images.npz, .png)
    OUT/TAG/cells/DEFENCE/MODEL/ATTACK.json                   the cell's summary: written last, the Snakemake output
    OUT/TAG/security/MODEL.json                       the model's COPA security metric (or not-applicable)

A cell (dataset, defence, model, attack) is one job that attacks its N images: as one vectorised batch when the
attack supports it (dlg, idlg, ig; config ``batch_size`` splits the cell into batches), else one after
the other. The per-image records are not Snakemake outputs, so Snakemake never deletes them: a cell
that was killed midway and is run again keeps every complete record that matches the current
scenario, attack, hyperparameters, seed and attack source file and holds every configured metric
(config ``metrics``), and computes only the rest (:func:`record_matches`). Every file is written atomically.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from ..attacks import ATTACKS, SandboxedAttack, create_attack, load_plugins
from ..data import available_indices, summarise_ranges
from ..errors import CopaError, InvalidSpecError, NotApplicableError, unknown_name
from ..io import atomic_write_json, check_writable
from ..layerwise import security_report
from ..metrics import (DEFAULT_HEADLINE_METRIC, DEFAULT_METRICS, METRICS, check_metric_input, check_metric_names,
                       metric_order)
from ..models import create_model
from ..plugins import import_trusted
from ..provenance import device_description, git_commit, package_versions
from ..threat import Scenario, parse_input_shape, resolve_device
from ..training import DEFAULTS, train
from .outputs import write_outputs
from .record import (STATUSES, canonical_json, clear_record, jsonable, read_record, record_columns, record_matches,
                     summary_line, workflow_section)
from .run import run_attacks, set_threads
from .setting import AXES, NO_DEFENCE, PAPER_SETTING, Setting, defence_chain, setting_axis  # noqa: F401  (workflow)
from .validity import PREDICTORS, best_outcome, studied_attacks

if TYPE_CHECKING:
    from ..attacks import Attack

# --------------------------------------------------------------------------------------------------
# Names and paths


def dataset_tag(dataset: str, split: str) -> str:
    """A path-safe name of (dataset spec, split): ``sample-train``, ``npz-cifar10_subset-train``."""
    kind, sep, rest = dataset.partition(":")
    if sep:
        stem = Path(rest.rstrip("/\\")).name
        stem = stem[: -len(".npz")] if stem.endswith(".npz") else stem
        name = f"{kind}-{stem}" if stem else kind
    else:
        name = dataset
    name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("._") or "dataset"
    return f"{name}-{split}"


def resolve_device_name(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; other names unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def results_dir(config: dict[str, Any]) -> str:
    return config.get("results_dir") or f"{config['out']}/results"


# --------------------------------------------------------------------------------------------------
# Config checks beyond the JSON schema


def attack_overrides(config: dict[str, Any], attack: str) -> dict[str, Any]:
    return dict((config.get("attack_settings") or {}).get(attack) or {})


def build_attack(config: dict[str, Any], attack: str) -> Attack:
    """The attack ``attack`` with the config's overrides, after loading the config's plug-ins."""
    load_config_plugins(config)
    return ATTACKS.get(attack)(**attack_overrides(config, attack))


def load_config_plugins(config: dict[str, Any]) -> None:
    """The config's trusted ``extensions`` imported, its untrusted ``plugins`` described by their sandboxed
    worker (:func:`copa.attacks.load_plugins`)."""
    load_plugins(tuple(config.get("plugins") or ()), tuple(config.get("extensions") or ()))


def attack_identity(config: dict[str, Any], attack: str, built: Attack | None = None) -> dict[str, Any]:
    """What identifies an attack's results besides the scenario: its full hyperparameters (defaults
    included) and the SHA-256 of the file that defines it. The Snakefile passes this as a rule param, so
    a changed default or a changed attack file reruns the attack's cells, which then recompute their records.
    (Changes in shared library modules are not tracked: rerun with ``--forcerun cell``.)
    ``built``: the attack already built from ``config`` (:func:`build_attack`; :func:`run_cell` passes its
    own), else it is built here."""
    built = build_attack(config, attack) if built is None else built
    cls = type(built)
    if issubclass(cls, SandboxedAttack):  # the plug-in's file as copa reads it now, not as the plug-in describes it
        source = Path(cls.plugin_file)
        digest = hashlib.sha256(source.read_bytes()).hexdigest() if source.is_file() else None
        return {"hyperparameters": jsonable(built.hp), "source": f"plug-in {cls.plugin} ({source.name})",
                "source_sha256": digest}
    try:
        source = Path(inspect.getsourcefile(cls) or "")
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        where = f"{cls.__module__} ({source.name})"
    except (OSError, TypeError):
        digest, where = None, cls.__module__
    return {"hyperparameters": jsonable(built.hp), "source": where, "source_sha256": digest}


def configured_metrics(config: dict[str, Any]) -> tuple[str, ...]:
    """The config's ``metrics`` (default :data:`copa.metrics.DEFAULT_METRICS`), checked after the plug-ins
    are loaded: :class:`CopaError` naming an unknown metric (with close matches) or an empty list."""
    given = config.get("metrics")
    try:
        names = check_metric_names(DEFAULT_METRICS if given is None else given)
        if not names:
            raise InvalidSpecError(f"{given!r} is empty: give one or more of {', '.join(METRICS.names())}")
        record_columns(names)  # a metric named like a record column
    except CopaError as exc:
        raise type(exc)(f"metrics: {exc}") from None
    return tuple(names)


def headline_metric(config: dict[str, Any]) -> str:
    """The config's ``headline_metric`` (default :data:`copa.metrics.DEFAULT_HEADLINE_METRIC`, PSNR): the tables'
    overview and Spearman table, the plots' axes and the validity study's best attack. :class:`CopaError` when it
    is not one of the configured ``metrics`` (the records would not hold it)."""
    name = config.get("headline_metric") or DEFAULT_HEADLINE_METRIC
    metrics = configured_metrics(config)
    if name not in metrics:
        raise InvalidSpecError(f"headline_metric {name!r} is not among the configured metrics: accepted are "
                               f"{', '.join(metrics)} (or add it to metrics)")
    return name


_SCHEMA_TYPES = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
                 "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                 "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None,
                 "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, dict)}


def coerce_to_schema(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` with the strings that a command line gives (``--config indices=[0,1]`` makes ``'0'``,
    ``retry_failed=false`` makes ``'false'``) read as YAML where the JSON schema asks for a number, a
    boolean, null, a list or a mapping; lists and mappings are walked. Values of the right type, and
    strings where a string is accepted, are returned unchanged; the schema check then judges the result."""
    for alternative in schema.get("oneOf") or schema.get("anyOf") or ():  # the first alternative that fits
        coerced = coerce_to_schema(value, alternative)
        kinds = alternative.get("type", [])
        if any(_SCHEMA_TYPES.get(kind, lambda v: isinstance(v, str))(coerced)
               for kind in ([kinds] if isinstance(kinds, str) else kinds)):
            return coerced
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if isinstance(value, str) and types and "string" not in types:
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if any(_SCHEMA_TYPES.get(kind, lambda v: False)(parsed) for kind in types):
            value = parsed
    elif isinstance(value, str) and "null" in types and value in ("null", "~"):
        value = None
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [coerce_to_schema(item, schema["items"]) for item in value]
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        return {key: coerce_to_schema(item, properties.get(key, extra if isinstance(extra, dict) else {}))
                for key, item in value.items()}
    return value


def check_config(config: dict[str, Any], *, check_data: bool = True) -> None:
    """Check the names and values the schema cannot: raise :class:`CopaError` naming the bad value.

    Checks that ``out`` and ``results_dir`` can be written (without creating them), loads the plugins, then
    checks every attack name (and every ``attack_settings`` key) against the
    attack registry, every hyperparameter override by instantiating the attack, every metric name against
    the metric registry (and the input shape against the metrics), the scenario keys by making the
    first cell's scenario (defences, seeds, ...), every model name by building the model, and
    (``check_data``) that the dataset has the configured indices.
    """
    for key in ("out", "results_dir"):  # before any job: a folder that cannot be made fails only at the end
        if config.get(key) is not None:
            check_writable(config[key], what=key, directory=True)
    load_config_plugins(config)
    for setting in setting_axis(config).values():  # e.g. an unknown or misordered defence, a bad local_batch
        scenario_for(config, parse_model_entry(config["models"][0])[0], client_batches(config, setting.client_batch)[0],
                     setting)
    training_settings(config)
    check_attacks(config)
    shape = parse_input_shape(config.get("input_shape", "3x32x32"))
    metrics = configured_metrics(config)
    try:
        check_metric_input(metrics, shape)  # e.g. SSIM's 11×11 window
    except CopaError as exc:
        raise type(exc)(f"input_shape: {exc}") from None
    headline_metric(config)
    classes = config.get("num_classes") or 10
    for name in config["models"]:
        try:
            create_model(parse_model_entry(name)[0], num_classes=classes, in_shape=shape)
        except CopaError as exc:
            raise type(exc)(f"models: {exc}") from None
    if len(set(config["indices"])) != len(config["indices"]):
        raise InvalidSpecError(f"indices {config['indices']} repeat an index: give each image once")
    device = config.get("device", "auto")
    if resolve_device_name(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise CopaError(f"device: {device!r} requested but CUDA is not available here "
                            f"(torch.cuda.is_available() is False): use device: cpu or auto")
    check_validity(config)
    if check_data and not config.get("download"):
        check_indices(config)


def check_attacks(config: dict[str, Any]) -> None:
    """The config's ``attacks`` and ``attack_settings`` keys against the attack registry (after loading the
    config's plug-ins), and every hyperparameter override by instantiating the attack; :class:`CopaError` naming
    the bad one (close matches for a name). Part of :func:`check_config`; ``copa verify`` runs it on a published
    config.yaml before any rerun."""
    load_config_plugins(config)
    attacks = config.get("attacks")
    if not isinstance(attacks, list) or not attacks:
        raise InvalidSpecError(f"attacks: {attacks!r} is invalid: expected a non-empty list of attack names")
    for name in attacks:
        if name not in ATTACKS:
            raise unknown_name("attack", name, ATTACKS.names())
    settings = config.get("attack_settings") or {}
    if not isinstance(settings, dict):
        raise InvalidSpecError(f"attack_settings: {settings!r} is invalid: expected a mapping attack -> "
                               f"{{hyperparameter: value}}")
    for name, overrides in settings.items():
        if name not in ATTACKS:
            err = unknown_name("attack", name, ATTACKS.names())
            raise type(err)(f"attack_settings: {err}")
        try:
            create_attack(name, overrides)
        except CopaError as exc:
            raise type(exc)(f"attack_settings.{name}: {exc}") from None


def check_validity(config: dict[str, Any]) -> None:
    """The ``validity`` section's names (none: no study): every predictor a key of
    :data:`copa.bench.validity.PREDICTORS`, every outcome ``best_METRIC`` or ``METRIC:ATTACK`` of a configured
    metric (``best_psnr``, ``ssim:rgap``) and attack other than a floor, every floor a configured attack;
    :class:`CopaError` naming the bad one, with close matches."""
    study = config.get("validity")
    if not study:
        return
    metrics = metric_order(configured_metrics(config))
    studied = studied_attacks(config["attacks"], study)
    outcomes = [*map(best_outcome, metrics), *(f"{m}:{a}" for m in metrics for a in studied)]
    for key, kind, known in (("predictors", "predictor", PREDICTORS), ("outcomes", "outcome", outcomes),
                             ("floors", "floor attack", config["attacks"])):
        for name in study.get(key) or ():
            if name not in known:
                err = unknown_name(kind, name, known)
                raise type(err)(f"validity.{key}: {err}")


def check_indices(config: dict[str, Any]) -> None:
    """Raise if the dataset split lacks one of the configured indices (names the missing ones)."""
    present = available_indices(config["dataset"], config.get("split", "train"), root=config.get("data_root"))
    missing = sorted(set(config["indices"]) - set(np.asarray(present).tolist()))
    if missing:
        raise InvalidSpecError(
            f"indices {missing[:10]}{' ...' if len(missing) > 10 else ''} are not in {config['dataset']} "
            f"{config.get('split', 'train')} ({len(present)} images; official indices {summarise_ranges(np.sort(present))})")


# --------------------------------------------------------------------------------------------------
# Attack cells


SCENARIO_AXES = {"model": "models", "defences": "defences", **{a.name: a.name for a in AXES if a.scenario}}
"""Scenario fields that the workflow sweeps as an axis, with their config key: ``defences`` lists
alternatives, each one defence or a chain of them joined by ``+`` (``none``: the undefended update);
``local_steps`` one K or a list of them (issue "Realistic federated updates"). Besides these, the config's
``client_batch`` (images per client step, one K or a list) is an axis of the scenario's ``indices``."""
NOT_IN_WORKFLOW = {"checkpoint": "a trained model is named by the models axis, per model (ARCH@epochE)"}
"""Scenario fields that a workflow config does not set, and why."""
RUN_KEYS = ("seed", "device", "retry_failed", "plugins", "extensions", "metrics")
"""Config keys besides the scenario's that determine a record."""
MAX_TRAIN_EPOCH = 1000
"""The largest epoch a models-axis entry ``ARCH@epochE`` may name (each is trained from scratch)."""
_TRAINED = re.compile(r"^(?P<arch>.+)@epoch(?P<epoch>[0-9]+)$")


def workflow_scenario_keys() -> list[str]:
    """The config keys of the scenario (:meth:`copa.threat.Scenario.options`) that a workflow config sets."""
    return [o.name for o in Scenario.options() if o.field not in SCENARIO_AXES and o.field not in NOT_IN_WORKFLOW]


def client_batches(config: dict[str, Any], client_batch: int = 1) -> list[tuple[int, ...]]:
    """The cell's instances: the configured ``indices`` in consecutive chunks of ``client_batch`` (a last,
    incomplete chunk is left out), at most ``max_instances`` of them (null: all)."""
    indices = [int(i) for i in config["indices"]]
    if not 1 <= client_batch <= len(indices):
        raise InvalidSpecError(f"client_batch: {client_batch} is invalid for {len(indices)} indices: accepted are "
                               f"1 to {len(indices)}")
    chunks = [tuple(indices[i:i + client_batch]) for i in range(0, len(indices) - client_batch + 1, client_batch)]
    limit = config.get("max_instances")
    return chunks if limit is None else chunks[: int(limit)]


def instance_key(indices: tuple[int, ...] | list[int]) -> str:
    """An instance's directory name under its cell: the image index (``3``), or a batch's joined (``0-1-2-3``)."""
    return "-".join(str(int(i)) for i in indices)


def parse_model_entry(entry: str) -> tuple[str, int | None]:
    """A models-axis entry as (architecture, trained epoch or None): ``cnn4_c2@epoch5`` → (cnn4_c2, 5): the
    workflow's rule ``train`` trains it (:func:`copa.training.train`, config ``training``)."""
    match = _TRAINED.match(entry)
    if not match:
        return entry, None
    epoch = int(match["epoch"])
    if epoch > MAX_TRAIN_EPOCH:
        raise InvalidSpecError(f"models: {entry!r} names epoch {epoch}: accepted are epochs 0 to {MAX_TRAIN_EPOCH}")
    return match["arch"], epoch


def checkpoint_file(config: dict[str, Any], architecture: str, epoch: int) -> str:
    """Where the rule ``train`` writes ``architecture`` trained for ``epoch`` epochs on the config's dataset."""
    return f"{config['out'].rstrip('/')}/{dataset_tag(config['dataset'], 'train')}/checkpoints/{architecture}/epoch{epoch}.pt"


TRAINING_KEYS = ("lr", "momentum", "batch_size", "weight_decay", "max_images")
"""The config's ``training`` keys; absent ones take :data:`copa.training.DEFAULTS` (README, "Trained models").
The seed of the initialisation and of the data order is the config's ``model_seed``, so that epoch 0 is
the untrained model the other cells attack."""


def training_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config's ``training`` section with :data:`copa.training.DEFAULTS` for what it leaves out."""
    given = dict(config.get("training") or {})
    unknown = sorted(set(given) - set(TRAINING_KEYS))
    if unknown:
        raise InvalidSpecError(f"training: unknown key(s) {unknown}: accepted are {', '.join(TRAINING_KEYS)}")
    return {**{k: DEFAULTS.get(k) for k in TRAINING_KEYS}, **given, "seed": int(config.get("model_seed", 0))}


def train_checkpoint(config: dict[str, Any], architecture: str, epoch: int, *, out_dir: str | os.PathLike,
                     log: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Rule ``train``: ``architecture`` trained from its seeded initialisation for ``epoch`` epochs of SGD on
    the config's dataset's train split (:func:`training_settings`); writes ``epochE.pt`` and
    ``epochE.json`` (hyperparameters, test accuracy) into ``out_dir``."""
    settings = training_settings(config)
    return train(architecture, config["dataset"], epochs=epoch, checkpoint_epochs=[epoch],
                 preprocess=config.get("preprocess", "center"),
                 input_shape=parse_input_shape(config.get("input_shape", "3x32x32")), data_root=config.get("data_root"),
                 out_dir=out_dir, device=resolve_device_name(config.get("device", "cpu")), log=log, **settings)


def scenario_for(config: dict[str, Any], model: str, index: int | tuple[int, ...], setting: Setting = PAPER_SETTING,
                 *, checkpoint: str | None = None):
    """The scenario of one instance of a cell — an image (a batch of one, as in the COPA paper) or a client
    batch of indices: the config's scenario keys (:meth:`copa.threat.Scenario.options`), with this model
    (``ARCH@epochE``: the architecture, with ``checkpoint``), indices and client setting (defences, local steps,
    local learning rate, local batch: :class:`~copa.bench.setting.Setting`)."""
    indices = tuple(int(i) for i in index) if isinstance(index, (tuple, list)) else (int(index),)
    architecture, epoch = parse_model_entry(model)
    if epoch is not None and checkpoint is None:
        checkpoint = checkpoint_file(config, architecture, epoch)
    return Scenario.from_config(config, model=architecture, indices=indices, checkpoint=checkpoint,
                                **setting.scenario_fields())


def run_config_hash(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of a validated run config, without its private
    ``_``-prefixed keys (e.g. the command line): the same settings give the same hash."""
    public = {key: value for key, value in config.items() if not str(key).startswith("_")}
    return hashlib.sha256(canonical_json(jsonable(public)).encode()).hexdigest()


def batch_description(config: dict[str, Any], attacks: list[str]) -> str:
    """The leaderboard header's batch size: ``batch_size`` and which of ``attacks`` batch a cell's images."""
    load_config_plugins(config)
    batched = [name for name in attacks if ATTACKS.get(name).batched]
    size = config.get("batch_size")
    if not batched:
        return "1 (none of these attacks batches its instances)"
    what = "the whole cell" if size is None else str(size)
    return f"{what} ({', '.join(batched)}: a cell's images as one vectorised batch; the other attacks one by one)"


def cell_batch_size(config: dict[str, Any], attack_obj: Attack, setting: Setting, instances: int) -> int:
    """How many of a cell's instances run as one call: a batched attack solves the config's ``batch_size`` (default
    the whole cell) of the paper's single-image instances at once; any other attack, and every FedAvg or
    client-batch setting, runs (and records) its instances one at a time."""
    batched = type(attack_obj).batched and not setting.federated()
    return (config.get("batch_size") or instances) if batched else 1


def chunks(items: list, size: int) -> list[list]:
    """``items`` in consecutive chunks of ``size`` (the last may be shorter): how :func:`run_cell` splits the
    instances it (re)computes, and how ``copa verify`` finds the images a record was solved with."""
    return [items[first:first + size] for first in range(0, len(items), size)]


def run_cell(config: dict[str, Any], model: str, attack: str, *, records_dir: str | os.PathLike,
             summary: str | os.PathLike, threads: int = 1, log: Callable[[str], None] = print,
             setting: Setting | str = NO_DEFENCE, checkpoint: str | None = None) -> dict[str, Any]:
    """Run ``attack`` on every instance of the cell for ``model`` (``ARCH@epochE``: the trained
    ``checkpoint``) under one client setting (:class:`~copa.bench.setting.Setting`, or an entry of the
    ``defences`` axis alone: the paper's FedSGD otherwise); write one record per instance (an image, or a
    client batch: :func:`client_batches`), then the summary.

    Instances whose record in ``records_dir/KEY/`` (:func:`instance_key`) matches (:func:`record_matches`; it
    holds every metric of the config's ``metrics``) are kept as they are; the plug-ins are loaded and the
    attack is built once. An exception inside the attack (or in scoring its output) becomes a ``failed``
    record and the other instances still run; a bad configuration raises :class:`CopaError` before any
    instance runs, and an image that cannot be loaded raises it without a record (the records written so
    far stay valid).
    """

    set_threads(threads)
    threads = int(threads)
    overrides = attack_overrides(config, attack)
    device = resolve_device_name(config.get("device", "cpu"))
    seed = int(config.get("seed", 0))
    attack_obj = build_attack(config, attack)  # loads the plug-ins
    identity = attack_identity(config, attack, attack_obj)
    metrics = configured_metrics(config)
    hp = attack_obj.hp
    run_hash = run_config_hash(config)
    setting = Setting.of(defence_chain(setting)) if isinstance(setting, str) else setting
    scenarios = [(instance_key(batch), scenario_for(config, model, batch, setting, checkpoint=checkpoint))
                 for batch in client_batches(config, setting.client_batch)]
    records_dir = Path(records_dir)
    # a batched attack solves a chunk of the paper's single-image instances at once; any other attack, and
    # every FedAvg or client-batch setting, runs (and records) its instances one at a time
    batch_size = cell_batch_size(config, attack_obj, setting, len(scenarios))
    architecture, epoch = parse_model_entry(model)
    results: dict[str, tuple[dict[str, Any], bool]] = {}
    start = time.perf_counter()
    todo = []
    for key, scenario in scenarios:
        directory = records_dir / key
        old = read_record(directory)
        why = record_matches(old, directory, scenario, attack, hp, seed,
                             accept_failed=not config.get("retry_failed", True),
                             source_sha256=identity["source_sha256"], metrics=metrics)
        if why is None:
            results[key] = (old, True)
            log(f"[{key}] kept the complete record: {summary_line(old)}")
        else:
            if old is not None or directory.exists():
                log(f"[{key}] recomputing ({why})")
            todo.append((key, scenario))
    for chunk in chunks(todo, batch_size):
        for key, _ in chunk:
            clear_record(records_dir / key)
        runs = run_attacks([scenario for _, scenario in chunk], attack_obj,
                           seeds=[seed] * len(chunk), device=device, threads=threads, metrics=metrics,
                           record_failures=True, hide=[config.get("out"), config.get("results_dir"), records_dir])
        for (key, _), (record, reconstruction, truth) in zip(chunk, runs, strict=True):
            record["workflow"] = workflow_section(attack_settings=overrides, cell=f"{setting.tag}/{model}/{attack}",
                                                  threads=threads,
                                                  batch_size=batch_size, attack_source=identity["source"],
                                                  attack_source_sha256=identity["source_sha256"],
                                                  run_config_hash=run_hash,
                                                  model=model if epoch is not None else None)
            write_outputs(records_dir / key, record, reconstruction, truth)
            results[key] = (record, False)
            log(f"[{key}] {summary_line(record)}")
    entries, counts = [], {status: 0 for status in STATUSES}
    for key, scenario in scenarios:
        record, reused = results[key]
        counts[record["status"]] += 1
        entries.append({"index": int(key) if key.isdigit() else key, "indices": list(scenario.indices),
                        "record": str(records_dir / key / "record.json"),
                        "status": record["status"], "reason": record.get("reason"), "reused": reused})
    cell = {"model": model, "attack": attack, "defence": setting.tag, "defences": list(setting.defences),
            **{axis.name: getattr(setting, axis.name) for axis in AXES},
            "checkpoint": scenarios[0][1].checkpoint,
            "dataset": config["dataset"], "split": config.get("split", "train"),
            "indices": [i for _, sc in scenarios for i in sc.indices], "hyperparameters": jsonable(hp),
            "attack_settings": overrides,
            "attack_source": identity["source"], "attack_source_sha256": identity["source_sha256"],
            "seed": seed, "device": device, "threads": threads, "batch_size": batch_size, "run_config_hash": run_hash,
            "counts": counts, "records": entries,
            "seconds": round(time.perf_counter() - start, 3)}
    atomic_write_json(summary, cell)
    return cell


# --------------------------------------------------------------------------------------------------
# Security metric per architecture


def security_entry(config: dict[str, Any], model: str) -> dict[str, Any]:
    """The model's COPA security report as a dict with ``status`` ok, or not-applicable and the reason."""
    import_trusted(tuple(config.get("extensions") or ()))  # trusted extensions may register models
    sec = config.get("security") or {}
    index = sec.get("index")
    if index is None:
        index = int(config["indices"][0]) if config.get("split", "train") == "train" else 0
    device = resolve_device(resolve_device_name(config.get("device", "cpu")))
    entry: dict[str, Any] = {"model": model, "dataset": config["dataset"], "index": int(index)}
    architecture, epoch = parse_model_entry(model)
    if epoch is not None:  # the metric judges the architecture (the COPA paper), at its seeded initialisation
        entry["architecture"] = architecture
    start = time.perf_counter()
    try:
        report = security_report(architecture, seed=int(config.get("model_seed", 0)), dataset=config["dataset"],
                                 index=int(index), delta_source=sec.get("delta_source", "image"),
                                 input_shape=parse_input_shape(config.get("input_shape", "3x32x32")),
                                 condition=bool(sec.get("condition", False)), device=device,
                                 data_root=config.get("data_root"))
    except NotApplicableError as exc:
        entry.update(status="not-applicable", reason=f"not applicable: {exc}", copa_index=None,
                     normalised_score=None)
    else:
        entry.update(status="ok", reason=None, copa_index=report.copa_index,
                     normalised_score=report.normalised_score, report=report.to_dict())
    entry.update(seconds=round(time.perf_counter() - start, 3), device=device_description(device),
                 versions=package_versions(), git_commit=git_commit())
    return entry
