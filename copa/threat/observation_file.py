"""Observation files: the gradients a client shared, captured in one place and attacked in another.

``copa observe`` writes the :class:`~copa.threat.Observation` of a scenario to a file; a real
federated-learning client can write the same file from its own training step (docs/observations.md
gives every key and a torch-only example). ``copa attack --observation FILE`` rebuilds the observation
(the architecture from its name or chain spec, the weights the server sent, the gradients) and attacks
it. The file holds what a server-side attacker sees and nothing else: no images, no ground truth.

Format (version 1): ``torch.save`` of a dict of tensors and plain JSON-compatible values, read back
with ``torch.load(..., weights_only=True)`` only — copa never unpickles arbitrary objects. Every key is
checked: a missing or unknown key, a wrong type or shape, gradients that do not match the model's
parameters, a truncated or corrupt file each raise :class:`~copa.errors.CopaError` naming the key.

Files come from clients, who may be hostile. What a file declares is bounded by :class:`Limits` before
anything is allocated from it: the file's size and its zip archive's unpacked size before ``torch.load``;
batch size, input shape and classes before any model is built; the declared model's parameter count, and
every weight's and gradient's shape, on PyTorch's meta device (shapes without storage) before the real
model is built. Non-finite weights are refused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import pickle
import re
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import data as data_mod
from ..errors import CopaError, DataUnavailableError, InvalidSpecError, UnknownNameError
from ..hyperparameters import STEP_CEILING
from ..io import atomic_write
from ..models import create_model
from ..provenance import git_commit, package_versions
from .limits import DEFAULT_LIMITS, LIMIT_FLAGS, MIB, Limits, over_limit  # noqa: F401  (public here too)
from .observation import UPDATE_KINDS, LocalTraining, Observation
from .scenario import DTYPES
from .targets import load_targets  # noqa: F401  (public here too: copa attack --targets)

FORMAT = "copa-observation"
FORMAT_VERSION = 1
LOSS = "cross-entropy (mean over the batch)"
LOSS_ALIASES = (LOSS, "cross-entropy")


#: Fixed bounds on the file's plain data, far above any honest file (copa's own hold a few kB of it): the
#: pickled structure (names, shapes, meta; the tensors' data are separate records), the values and nesting of
#: the free-form ``meta`` and ``defences`` (copied into records as JSON), the length of ``model``/``model_spec``.
MAX_PICKLE_BYTES = 16 * MIB
MAX_PLAIN_VALUES = 100_000
MAX_PLAIN_DEPTH = 32
MAX_NAME_CHARS = 10_000


_refuse = over_limit


#: Every key of a version-1 file: (required, what it holds). docs/observations.md documents each.
KEYS: dict[str, tuple[bool, str]] = {
    "format": (True, f"the string {FORMAT!r}"),
    "format_version": (True, f"the int {FORMAT_VERSION}"),
    "model": (True, "model name: a registered name (copa list models) or chain:SPEC"),
    "model_spec": (False, "the chain spec of the model (str) or None; checked against the name (never used in its "
                          "place)"),
    "model_seed": (False, "the init seed the model was built with (int) or None (provenance only)"),
    "state_dict": (True, "the weights the server sent: dict of parameter/buffer name -> tensor"),
    "parameter_names": (True, "list of the trainable parameters' names, in model.named_parameters() order"),
    "gradients": (True, "dict parameter name -> gradient tensor (same shape as the parameter)"),
    "labels": (False, "int64 tensor of shape (batch_size,) when the attacker knows the labels, else None"),
    "batch_size": (True, "int, the number of images of the client's step"),
    "input_shape": (True, "[C, H, W], the model's input shape"),
    "num_classes": (True, "int, the number of classes of the model's output"),
    "preprocess": (True, "dict {mode: center|normalize|none, mean: [...], std: [...]}"),
    "loss": (True, f"the string {LOSS!r}"),
    "dtype": (True, "'float32' or 'float64', the dtype of the weights and gradients"),
    "defences": (False, "list of the client's defences, in order, each {name: str, parameters: dict} (public "
                        "descriptions; absent or [] for an undefended update)"),
    "update": (False, "what 'gradients' holds: absent or {kind: 'gradient'} for one step's gradient (FedSGD); "
                      "{kind: 'weight-delta', local_steps: K ≥ 2, local_lr: η > 0, local_batch: int dividing batch_size "
                      "or None} for the weight change θ_K − θ_0 after K local SGD steps (FedAvg)"),
    "meta": (False, "dict of JSON-compatible provenance (free-form)"),
    "checksum": (False, "'sha256:' and the hex SHA-256 of every other key, tensors' bytes included "
                        "(payload_checksum); absent in files written before it existed (accepted with a warning)"),
}


def observation_payload(observation: Observation, *, model_seed: int | None = None,
                        meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The file's dict for ``observation`` (tensors on the CPU, everything else plain data)."""
    info = observation.model_info()
    dtype = {v: k for k, v in DTYPES.items()}.get(observation.dtype)
    if dtype is None:
        raise InvalidSpecError(f"observation dtype {observation.dtype} is not supported: accepted are "
                               f"{', '.join(DTYPES)}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": observation.model_name,
        "model_spec": info.spec,
        "model_seed": info.seed if model_seed is None else int(model_seed),
        "state_dict": {k: v.detach().cpu().clone() for k, v in observation.model.state_dict().items()},
        "parameter_names": list(observation.parameter_names),
        "gradients": {n: g.detach().cpu().clone() for n, g in zip(observation.parameter_names, observation.gradients)},
        "labels": None if observation.labels is None else observation.labels.detach().cpu().to(torch.int64).clone(),
        "batch_size": int(observation.batch_size),
        "input_shape": [int(n) for n in observation.input_shape],
        "num_classes": int(observation.num_classes),
        "preprocess": observation.preprocess.to_dict(),
        "loss": observation.loss,
        "dtype": dtype,
        "defences": [dict(d) for d in observation.defences],
        "update": {"kind": "gradient"} if observation.local is None else observation.local.to_dict(),
        "meta": dict(meta or {}),
    }


def save_observation(path: str | Path, observation: Observation, *, model_seed: int | None = None,
                     meta: dict[str, Any] | None = None) -> Path:
    """Write ``observation`` to ``path`` atomically (``torch.save``; loadable with ``weights_only=True``), with
    its ``checksum``."""
    payload = observation_payload(observation, model_seed=model_seed, meta=meta)
    validate_payload(payload, str(path), limits=None)  # what we write, we can read (the reader applies its limits)
    return write_payload(path, payload)


def write_payload(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write an observation file's dict to ``path`` atomically, its ``checksum`` (:func:`payload_checksum`)
    added: every writer of observation files (``copa observe``, the Flower mod) goes through here."""
    payload = {key: value for key, value in payload.items() if key != "checksum"}
    payload["checksum"] = payload_checksum(payload)
    return atomic_write(path, lambda p: torch.save(payload, p))


CHECKSUM_PREFIX = "sha256:"
_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")


def payload_checksum(payload: Mapping[str, Any]) -> str:
    """``'sha256:'`` and the hex SHA-256 of an observation file's dict without its ``checksum`` key, in a
    canonical order (docs/observations.md, "Checksum"): first the plain data as JSON (keys sorted, each tensor
    replaced by ``{"tensor": [dtype, shape]}``), then a zero byte, then every tensor's bytes (row-major, the
    machine's byte order) in the order the JSON names them. The same content gives the same checksum whatever
    the dict's order or the tensors' memory layout."""
    tensors: list[torch.Tensor] = []

    def skeleton(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return {"tensor": [str(value.dtype).removeprefix("torch."), list(value.shape)]}
        if isinstance(value, Mapping):
            items = sorted(((str(k), v) for k, v in value.items()), key=lambda item: item[0])
            return {k: skeleton(v) for k, v in items}
        if isinstance(value, (list, tuple)):
            return [skeleton(v) for v in value]
        return value

    plain = skeleton({k: v for k, v in payload.items() if k != "checksum"})
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                                       allow_nan=True).encode("ascii"))
    digest.update(b"\0")
    for tensor in tensors:
        data = tensor.detach().cpu()
        data = (data.to_dense() if data.layout != torch.strided else data).resolve_conj().resolve_neg()
        digest.update(data.contiguous().reshape(-1).view(torch.uint8).numpy())
    return CHECKSUM_PREFIX + digest.hexdigest()


def _verify_checksum(payload: Mapping[str, Any], source: str) -> None:
    """The file's ``checksum`` against its content (a file without one is not checked here: :func:`load_observation`
    warns). Run once the tensors' shapes are the model's, so hashing allocates no more than the model."""
    stored = payload.get("checksum")
    if stored is not None and payload_checksum(payload) != stored:
        raise InvalidSpecError(f"observation file {source!r} was refused: its checksum does not match its content "
                               f"(SHA-256 of the weights, gradients and metadata): the file was changed or corrupted "
                               f"after it was written; accepted: the file as copa observe or the Flower mod wrote it")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
"""The first object of torch.save's legacy (pre-zip) format: a pickled integer."""


def _check_archive(path: Path, limits: Limits | None) -> None:
    """Before ``torch.load``: a zip archive (torch.save's format; the legacy format allocates the sizes its
    pickle declares before reading any data) whose size, unpacked size and pickle are within bounds."""
    where, size = f"observation file {str(path)!r}", path.stat().st_size
    bound = None if limits is None else f"{limits.max_file_bytes} bytes, 24 per parameter + 64 MiB"
    if bound is not None and size > limits.max_file_bytes:
        raise _refuse(f"{where} is {size} bytes", bound, "max_parameters")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        with path.open("rb") as fh:
            head = fh.read(14)
        legacy = head[2:4] == b"\x8a\x0a" and int.from_bytes(head[4:14], "little") == _LEGACY_TORCH_MAGIC
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and not legacy:  # PROTO: a bare pickle
            raise InvalidSpecError(f"{where} was refused: not a weights-only file — it is a bare pickle (protocol "
                                   f"{head[1]}), which could run any code when unpickled, and copa never unpickles "
                                   f"arbitrary objects; accepted: the zip file torch.save writes (copa observe)"
                                   ) from None
        raise InvalidSpecError(f"{where} cannot be read: truncated or corrupt, or not a torch.save file "
                               f"({type(err).__name__}: {err}; copa reads the zip format torch.save writes)"
                               ) from None
    unpacked = sum(e.file_size for e in entries)
    if bound is not None and unpacked > limits.max_file_bytes:
        raise _refuse(f"{where} unpacks to {unpacked} bytes", bound, "max_parameters")
    pickled = sum(e.file_size for e in entries if e.filename.endswith("data.pkl"))
    if pickled > MAX_PICKLE_BYTES:
        raise InvalidSpecError(f"{where}: its pickled structure unpacks to {pickled} bytes, above the limit of "
                               f"{MAX_PICKLE_BYTES} bytes (names, shapes and meta; the tensors' data are separate)")


def read_payload(path: str | Path, *, limits: Limits | None = DEFAULT_LIMITS) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors, after :func:`_check_archive` (``limits``
    None: no size bounds, for a file copa has just written); the dict is not validated yet."""
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"observation file {str(path)!r} does not exist (or is not a file)")
    _check_archive(path, limits)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue",
                                                                 "Check the documentation"))]
        if any("global" in line.lower() for line in detail):  # an object weights_only does not allow
            refused = next(line for line in detail if "global" in line.lower())
            raise InvalidSpecError(
                f"observation file {str(path)!r} was refused: it holds Python objects other than tensors and plain "
                f"data, and copa loads observation files with torch.load(weights_only=True) only, never unpickling "
                f"arbitrary objects ({refused})") from None
        raise InvalidSpecError(f"observation file {str(path)!r} cannot be read: truncated or corrupt, or not a "
                               f"torch.save file (UnpicklingError: {detail[-1] if detail else lines[0] if lines else ''})"
                               ) from None
    except Exception as err:  # zip, EOF and torch errors for truncated or garbage files
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InvalidSpecError(f"observation file {str(path)!r} cannot be read: truncated or corrupt, or not a "
                               f"torch.save file ({type(err).__name__}: {first})") from None
    if not isinstance(payload, Mapping):
        raise InvalidSpecError(f"observation file {str(path)!r} holds a {type(payload).__name__}: expected the dict "
                               f"of format {FORMAT!r} (see docs/observations.md)")
    return dict(payload)


def _where(source: str, key: str) -> str:
    return f"observation file {source!r}: key {key!r}"


def _int(payload: Mapping[str, Any], key: str, source: str, minimum: int = 1) -> int:
    value = payload[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidSpecError(f"{_where(source, key)} is {value!r}: expected an integer >= {minimum}")
    return value


def _tensor_dict(payload: Mapping[str, Any], key: str, source: str) -> dict[str, torch.Tensor]:
    value = payload[key]
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in value.items()):
        raise InvalidSpecError(f"{_where(source, key)} is a {type(value).__name__}: expected a dict of "
                               f"name -> tensor")
    return dict(value)


def _first_few(items: list[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _check_plain(payload: Mapping[str, Any], key: str, source: str) -> None:
    """``payload[key]`` is JSON-compatible, at most MAX_PLAIN_VALUES values and MAX_PLAIN_DEPTH levels deep
    (pickle's shared references make a small file a huge or circular structure)."""
    scalar, stack, seen = (str, int, float, bool, type(None)), [(payload.get(key), 0)], 0
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_PLAIN_VALUES or depth > MAX_PLAIN_DEPTH:
            raise InvalidSpecError(f"{_where(source, key)} holds more than {MAX_PLAIN_VALUES} values or nests "
                                   f"deeper than {MAX_PLAIN_DEPTH} levels: expected small JSON-compatible data")
        odd = value
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1) for v in value.values())
            odd = next((k for k in value if not isinstance(k, scalar)), None)  # keys must be scalars
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1) for v in value)
            odd = None
        if not isinstance(odd, scalar):
            raise InvalidSpecError(f"{_where(source, key)} holds a {type(odd).__name__}: expected JSON-compatible "
                                   f"data (str, int, float, bool, None, lists, dicts)")


def validate_payload(payload: Mapping[str, Any], source: str = "<payload>", *,
                     limits: Limits | None = DEFAULT_LIMITS) -> None:
    """Check the keys, types and shapes that do not need the model, and the batch size, input shape and
    classes against ``limits`` (None: unbounded, for what copa writes); raise InvalidSpecError naming the key."""
    missing = [k for k, (required, _) in KEYS.items() if required and k not in payload]
    if missing:
        raise InvalidSpecError(f"observation file {source!r} lacks the key(s) {', '.join(map(repr, missing))} "
                               f"(format {FORMAT!r} version {FORMAT_VERSION}: see docs/observations.md)")
    unknown = sorted(str(k) for k in payload if k not in KEYS)
    if unknown:
        raise InvalidSpecError(f"observation file {source!r} has unknown key(s) {', '.join(map(repr, unknown))}: "
                               f"accepted are {', '.join(KEYS)}")
    if payload["format"] != FORMAT:
        raise InvalidSpecError(f"{_where(source, 'format')} is {payload['format']!r}: expected {FORMAT!r}")
    if payload["format_version"] != FORMAT_VERSION:
        raise InvalidSpecError(f"{_where(source, 'format_version')} is {payload['format_version']!r}: this copa "
                               f"reads version {FORMAT_VERSION}")
    if not isinstance(payload["model"], str) or not payload["model"] or len(payload["model"]) > MAX_NAME_CHARS:
        raise InvalidSpecError(f"{_where(source, 'model')} is {payload['model']!r:.200}: expected a model name "
                               f"(at most {MAX_NAME_CHARS} characters)")
    spec = payload.get("model_spec")
    if spec is not None and (not isinstance(spec, str) or len(spec) > MAX_NAME_CHARS):
        raise InvalidSpecError(f"{_where(source, 'model_spec')} is {spec!r:.200}: expected None or a str of at most "
                               f"{MAX_NAME_CHARS} characters")
    checksum = payload.get("checksum")
    if checksum is not None and (not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum)):
        raise InvalidSpecError(f"{_where(source, 'checksum')} is {checksum!r:.200}: expected None or 'sha256:' and "
                               f"64 lowercase hex digits")
    seed = payload.get("model_seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise InvalidSpecError(f"{_where(source, 'model_seed')} is {seed!r}: expected an int or None")
    if payload["dtype"] not in DTYPES:
        raise InvalidSpecError(f"{_where(source, 'dtype')} is {payload['dtype']!r}: accepted are {', '.join(DTYPES)}")
    if payload["loss"] not in LOSS_ALIASES:
        raise InvalidSpecError(f"{_where(source, 'loss')} is {payload['loss']!r}: accepted is {LOSS!r} (the "
                               f"attacks model the client's loss as cross-entropy, mean over the batch)")
    batch = _int(payload, "batch_size", source)
    classes = _int(payload, "num_classes", source)
    shape = payload["input_shape"]
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise InvalidSpecError(f"{_where(source, 'input_shape')} is {shape!r}: expected [C, H, W] of positive ints")
    if limits is not None:
        if batch > limits.max_batch_size:
            raise _refuse(f"{_where(source, 'batch_size')} is {batch}", str(limits.max_batch_size), "max_batch_size")
        if classes > limits.max_num_classes:
            raise _refuse(f"{_where(source, 'num_classes')} is {classes}", str(limits.max_num_classes),
                          "max_num_classes")
        pixels = shape[0] * shape[1] * shape[2]
        if pixels > limits.max_input_pixels:
            raise _refuse(f"{_where(source, 'input_shape')} is {'x'.join(map(str, shape))} ({pixels} pixels, "
                          f"C·H·W)", f"{limits.max_input_pixels} pixels", "max_input_pixels")
    try:
        data_mod.Preprocess.from_dict(payload["preprocess"])
    except CopaError as exc:
        raise InvalidSpecError(f"{_where(source, 'preprocess')}: {exc}") from None
    labels = payload.get("labels")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or tuple(labels.shape) != (batch,):
            what = (f"a {labels.dtype} tensor of shape {tuple(labels.shape)}" if isinstance(labels, torch.Tensor)
                    else f"a {type(labels).__name__}")
            raise InvalidSpecError(f"{_where(source, 'labels')} is {what}: expected None or an int64 tensor of "
                                   f"shape ({batch},)")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
            raise InvalidSpecError(f"{_where(source, 'labels')} holds {labels.tolist()}: expected class indices in "
                                   f"[0, {classes})")
    names = payload["parameter_names"]
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
        raise InvalidSpecError(f"{_where(source, 'parameter_names')} is {type(names).__name__}: expected a non-empty "
                               f"list of parameter names")
    if len(set(names)) != len(names):
        raise InvalidSpecError(f"{_where(source, 'parameter_names')} repeats a name")
    dtype = DTYPES[payload["dtype"]]
    gradients = _tensor_dict(payload, "gradients", source)
    if set(gradients) != set(names):
        lacking = [n for n in names if n not in gradients]
        extra = [n for n in gradients if n not in names]
        raise InvalidSpecError(
            f"{_where(source, 'gradients')} does not match 'parameter_names': "
            + "; ".join(p for p in [f"no gradient for {_first_few(lacking)}" if lacking else "",
                                    f"gradients of unlisted {_first_few(extra)}" if extra else ""] if p))
    for name, grad in gradients.items():
        if grad.dtype != dtype:
            raise InvalidSpecError(f"{_where(source, 'gradients')}[{name!r}] has dtype {grad.dtype}: the file "
                                   f"declares dtype {payload['dtype']!r}")
    state = _tensor_dict(payload, "state_dict", source)
    for name, value in state.items():
        if value.is_floating_point() and value.dtype != dtype:
            raise InvalidSpecError(f"{_where(source, 'state_dict')}[{name!r}] has dtype {value.dtype}: the file "
                                   f"declares dtype {payload['dtype']!r}")
    defences = payload.get("defences")
    _check_plain(payload, "defences", source)
    if defences is not None and (not isinstance(defences, (list, tuple)) or not all(
            isinstance(d, Mapping) and isinstance(d.get("name"), str) and isinstance(d.get("parameters", {}), Mapping)
            for d in defences)):
        raise InvalidSpecError(f"{_where(source, 'defences')} is {defences!r}: expected a list of "
                               f"{{name: str, parameters: dict}}")
    local_training(payload, source)
    meta = payload.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise InvalidSpecError(f"{_where(source, 'meta')} is a {type(meta).__name__}: expected a dict or None")
    _check_plain(payload, "meta", source)


def local_training(payload: Mapping[str, Any], source: str = "<payload>") -> LocalTraining | None:
    """The file's ``update`` key as :class:`~copa.threat.LocalTraining` (None: a gradient); one line naming the
    bad entry otherwise."""
    update = payload.get("update")
    if update is None:
        return None
    _check_plain(payload, "update", source)
    accepted = "{kind: 'gradient'} or {kind: 'weight-delta', local_steps, local_lr, local_batch}"
    if not isinstance(update, Mapping) or update.get("kind") not in UPDATE_KINDS:
        raise InvalidSpecError(f"{_where(source, 'update')} is {update!r:.200}: expected {accepted}")
    if update["kind"] == "gradient":
        if set(update) != {"kind"}:
            raise InvalidSpecError(f"{_where(source, 'update')} has keys {sorted(update)} for a gradient: expected "
                                   f"only 'kind'")
        return None
    keys = {"kind", "local_steps", "local_lr", "local_batch"}
    if set(update) != keys:
        raise InvalidSpecError(f"{_where(source, 'update')} has keys {sorted(update)}: expected {sorted(keys)}")
    steps, lr, batch = update["local_steps"], update["local_lr"], update["local_batch"]
    if isinstance(steps, bool) or not isinstance(steps, int) or not 2 <= steps <= STEP_CEILING:
        raise InvalidSpecError(f"{_where(source, 'update')}['local_steps'] is {steps!r}: accepted are integers from 2 "
                               f"to {STEP_CEILING} (one step is a gradient: kind 'gradient')")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise InvalidSpecError(f"{_where(source, 'update')}['local_lr'] is {lr!r}: accepted are finite numbers > 0")
    size = payload.get("batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1
                              or not isinstance(size, int) or size % batch):
        raise InvalidSpecError(f"{_where(source, 'update')}['local_batch'] is {batch!r}: accepted are None or a "
                               f"divisor of batch_size {size!r}")
    return LocalTraining(steps, float(lr), batch)


def _create(payload: Mapping[str, Any], build_name: str, source: str, *, meta: bool):
    """``create_model`` for the file's model; on PyTorch's meta device (shapes, no storage) when ``meta``."""
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            return create_model(build_name, num_classes=payload["num_classes"],
                                in_shape=tuple(payload["input_shape"]), seed=payload.get("model_seed") or 0)
    except UnknownNameError as exc:  # not built from model_spec instead: the name must say what the file holds
        spec = payload.get("model_spec")
        hint = f", here 'chain:{spec}' (the file's model_spec)" if spec and len(spec) <= 200 else ""
        raise UnknownNameError(f"{_where(source, 'model')}: {exc} Accepted: a registered model (an extension's "
                               f"model needs --extension) or chain:SPEC{hint}") from None
    except CopaError as exc:
        raise type(exc)(f"{_where(source, 'model')}: {exc} (a model registered by an extension needs --extension)"
                        ) from None


def observation_from_payload(payload: Mapping[str, Any], *, source: str = "<payload>",
                             device: torch.device | str = "cpu", limits: Limits = DEFAULT_LIMITS) -> Observation:
    """Rebuild the :class:`Observation`: the model from its name (a registered one, or ``chain:SPEC``; the
    ``model_spec`` must match what it builds, and never replaces an unknown name) with the file's weights,
    the gradients in the model's parameter order. Strict: every mismatch raises InvalidSpecError. The model
    is first built on the meta device: its size and shapes are checked before any weight is allocated."""
    validate_payload(payload, source, limits=limits)
    dtype = DTYPES[payload["dtype"]]
    shape = tuple(payload["input_shape"])
    name, spec = payload["model"], payload.get("model_spec")
    build_name = name  # a registered model or chain:SPEC; model_spec must then match what it builds
    try:
        declared, on_meta = _create(payload, build_name, source, meta=True), True
    except CopaError:
        raise
    except Exception:  # a plug-in's factory that needs real tensors: built for real (input and classes are bounded)
        declared, on_meta = _create(payload, build_name, source, meta=False), False
    described = f"model {name!r} ({payload['num_classes']} classes, input {'x'.join(map(str, shape))})"
    count = sum(p.numel() for p in declared.parameters())
    if count > limits.max_parameters:
        raise _refuse(f"observation file {source!r}: {described} has {count} parameters",
                      str(limits.max_parameters), "max_parameters")
    built_spec = declared.copa_info.spec
    if spec is not None and built_spec is not None and spec != built_spec:
        raise InvalidSpecError(f"{_where(source, 'model_spec')} is {spec!r}, but model {name!r} here is "
                               f"{built_spec!r}")
    expected = declared.state_dict()
    state = dict(payload["state_dict"])
    problems = [f"{k}: expected shape {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
                for k in expected if k in state and state[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if problems or missing or unexpected:
        parts = ([f"shape mismatch for {_first_few(problems)}"] if problems else []) + \
                ([f"missing {_first_few(missing)}"] if missing else []) + \
                ([f"unexpected {_first_few(unexpected)}"] if unexpected else [])
        raise InvalidSpecError(f"{_where(source, 'state_dict')} does not fit {described}: " + " | ".join(parts))
    trainable = [(n, p) for n, p in declared.named_parameters() if p.requires_grad]
    model_names = [n for n, _ in trainable]
    if list(payload["parameter_names"]) != model_names:
        raise InvalidSpecError(f"{_where(source, 'parameter_names')} is {_first_few(list(payload['parameter_names']))}: "
                               f"model {name!r} has the trainable parameters {_first_few(model_names)} (in this order)")
    gradients = payload["gradients"]
    for n, p in trainable:
        if gradients[n].shape != p.shape:
            raise InvalidSpecError(f"{_where(source, 'gradients')}[{n!r}] has shape {tuple(gradients[n].shape)}: "
                                   f"the parameter has shape {tuple(p.shape)}")
    _verify_checksum(payload, source)  # every tensor's shape is the model's (or the batch's) now
    for k, value in state.items():  # shapes are the model's now: counting allocates no more than it
        bad = int((~torch.isfinite(value)).sum()) if value.is_floating_point() else 0
        if bad:
            raise InvalidSpecError(f"{_where(source, 'state_dict')}[{k!r}] holds {bad} non-finite value(s) (NaN or "
                                   f"Inf) of {value.numel()}: the weights the server sent must be finite")
    model = _create(payload, build_name, source, meta=False) if on_meta else declared
    model = model.to(dtype)
    model.load_state_dict(state)
    model = model.to(device).train()
    labels = payload.get("labels")
    return Observation(
        model=model,
        model_name=name,
        parameter_names=tuple(model_names),
        gradients=tuple(gradients[n].to(device) for n in model_names),
        labels=None if labels is None else labels.to(device),
        batch_size=payload["batch_size"],
        input_shape=shape,  # type: ignore[arg-type]
        num_classes=payload["num_classes"],
        preprocess=data_mod.Preprocess.from_dict(payload["preprocess"]),
        loss=LOSS,
        defences=tuple(dict(d) for d in payload.get("defences") or ()),
        meta={"source": source},
        local=local_training(payload, source),
    )


def load_observation(path: str | Path, *, device: torch.device | str = "cpu",
                     limits: Limits = DEFAULT_LIMITS) -> tuple[Observation, dict[str, Any]]:
    """Read and validate an observation file within ``limits``; return the observation and a description of
    its source (path, SHA-256, format version, the file's ``meta``) for the record. A file whose ``checksum``
    does not match its content is refused; one without a checksum (older files) is read with a one-line warning
    on standard error."""
    payload = read_payload(path, limits=limits)
    observation = observation_from_payload(payload, source=str(path), device=device, limits=limits)
    info = {"kind": "observation file", "path": str(path), "sha256": file_sha256(path),
            "format_version": payload["format_version"], "meta": dict(payload.get("meta") or {})}
    if payload.get("checksum") is None:  # written before checksums, or by hand: read, but say it was not checked
        print(f"copa: WARNING: observation file {str(path)!r} has no checksum: its content could not be checked "
              f"for corruption (files written by copa observe or the Flower mod carry one)", file=sys.stderr)
    return observation, info


def describe_payload(payload: Mapping[str, Any]) -> str:
    """One line about an observation file's content (for ``copa observe``)."""
    entries = sum(g.numel() for g in payload["gradients"].values())
    return (f"model {payload['model']}, batch {payload['batch_size']}, input {'x'.join(map(str, payload['input_shape']))}, "
            f"{payload['num_classes']} classes, labels {'known' if payload.get('labels') is not None else 'unknown'}, "
            f"{len(payload['gradients'])} gradient tensors ({entries} entries, {payload['dtype']})")


def observe_meta(scenario_dict: dict[str, Any]) -> dict[str, Any]:
    """Provenance stored in a file written by ``copa observe``: where it came from, minus the images' indices."""
    return {"created_by": "copa observe", "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dataset": scenario_dict.get("dataset"), "split": scenario_dict.get("split"),
            "git_commit": git_commit(), "versions": package_versions()}


__all__ = ["DEFAULT_LIMITS", "FORMAT", "FORMAT_VERSION", "KEYS", "LOSS", "Limits", "describe_payload", "file_sha256",
           "load_observation", "load_targets", "observation_from_payload", "observation_payload", "read_payload",
           "payload_checksum", "save_observation", "validate_payload", "write_payload"]
