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
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import data as data_mod
from ..errors import CopaError, DataUnavailableError, InvalidSpecError
from ..io import atomic_write
from .observation import Observation
from .scenario import DTYPES

FORMAT = "copa-observation"
FORMAT_VERSION = 1
LOSS = "cross-entropy (mean over the batch)"
LOSS_ALIASES = (LOSS, "cross-entropy")

#: Every key of a version-1 file: (required, what it holds). docs/observations.md documents each.
KEYS: dict[str, tuple[bool, str]] = {
    "format": (True, f"the string {FORMAT!r}"),
    "format_version": (True, f"the int {FORMAT_VERSION}"),
    "model": (True, "model name: a registered name (copa list models) or chain:SPEC"),
    "model_spec": (False, "the chain spec of the model (str) or None; checked against the name"),
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
    "meta": (False, "dict of JSON-compatible provenance (free-form)"),
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
        "meta": dict(meta or {}),
    }


def save_observation(path: str | Path, observation: Observation, *, model_seed: int | None = None,
                     meta: dict[str, Any] | None = None) -> Path:
    """Write ``observation`` to ``path`` atomically (``torch.save``; loadable with ``weights_only=True``)."""
    payload = observation_payload(observation, model_seed=model_seed, meta=meta)
    validate_payload(payload, str(path))  # what we write, we can read
    return atomic_write(path, lambda p: torch.save(payload, p))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_payload(path: str | Path) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with clear errors; the dict is not validated yet."""
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"observation file {str(path)!r} does not exist (or is not a file)")
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


def validate_payload(payload: Mapping[str, Any], source: str = "<payload>") -> None:
    """Check the keys, types and shapes that do not need the model; raise InvalidSpecError naming the key."""
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
    if not isinstance(payload["model"], str) or not payload["model"]:
        raise InvalidSpecError(f"{_where(source, 'model')} is {payload['model']!r}: expected a model name")
    if payload.get("model_spec") is not None and not isinstance(payload["model_spec"], str):
        raise InvalidSpecError(f"{_where(source, 'model_spec')} is {payload['model_spec']!r}: expected a str or None")
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
    if defences is not None and (not isinstance(defences, (list, tuple)) or not all(
            isinstance(d, Mapping) and isinstance(d.get("name"), str) and isinstance(d.get("parameters", {}), Mapping)
            for d in defences)):
        raise InvalidSpecError(f"{_where(source, 'defences')} is {defences!r}: expected a list of "
                               f"{{name: str, parameters: dict}}")
    meta = payload.get("meta")
    if meta is not None and not isinstance(meta, Mapping):
        raise InvalidSpecError(f"{_where(source, 'meta')} is a {type(meta).__name__}: expected a dict or None")


def observation_from_payload(payload: Mapping[str, Any], *, source: str = "<payload>",
                             device: torch.device | str = "cpu") -> Observation:
    """Rebuild the :class:`Observation`: the model from its name (or chain spec) with the file's weights,
    the gradients in the model's parameter order. Strict: every mismatch raises InvalidSpecError."""
    from ..models import MODELS, create_model

    validate_payload(payload, source)
    dtype = DTYPES[payload["dtype"]]
    shape = tuple(payload["input_shape"])
    name, spec = payload["model"], payload.get("model_spec")
    build_name = name
    if not name.startswith("chain:") and name not in MODELS and spec:
        build_name = f"chain:{spec}"  # e.g. a chain registered by a plug-in that is not loaded here
    try:
        model = create_model(build_name, num_classes=payload["num_classes"], in_shape=shape,
                             seed=payload.get("model_seed") or 0)
    except CopaError as exc:
        raise type(exc)(f"{_where(source, 'model')}: {exc} (a model registered by a plug-in needs --plugin)") from None
    built_spec = model.copa_info.spec
    if spec is not None and built_spec is not None and spec != built_spec:
        raise InvalidSpecError(f"{_where(source, 'model_spec')} is {spec!r}, but model {name!r} here is "
                               f"{built_spec!r}")
    model = model.to(dtype)
    expected = model.state_dict()
    state = dict(payload["state_dict"])
    problems = [f"{k}: expected shape {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
                for k in expected if k in state and state[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if problems or missing or unexpected:
        parts = ([f"shape mismatch for {_first_few(problems)}"] if problems else []) + \
                ([f"missing {_first_few(missing)}"] if missing else []) + \
                ([f"unexpected {_first_few(unexpected)}"] if unexpected else [])
        raise InvalidSpecError(f"{_where(source, 'state_dict')} does not fit model {name!r} "
                               f"({payload['num_classes']} classes, input {'x'.join(map(str, shape))}): "
                               + " | ".join(parts))
    model.load_state_dict(state)
    model = model.to(device).train()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    model_names = [n for n, _ in trainable]
    if list(payload["parameter_names"]) != model_names:
        raise InvalidSpecError(f"{_where(source, 'parameter_names')} is {_first_few(list(payload['parameter_names']))}: "
                               f"model {name!r} has the trainable parameters {_first_few(model_names)} (in this order)")
    gradients = payload["gradients"]
    for n, p in trainable:
        if gradients[n].shape != p.shape:
            raise InvalidSpecError(f"{_where(source, 'gradients')}[{n!r}] has shape {tuple(gradients[n].shape)}: "
                                   f"the parameter has shape {tuple(p.shape)}")
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
    )


def load_observation(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[Observation, dict[str, Any]]:
    """Read and validate an observation file; return the observation and a description of its source
    (path, SHA-256, format version, the file's ``meta``) for the record."""
    payload = read_payload(path)
    observation = observation_from_payload(payload, source=str(path), device=device)
    info = {"kind": "observation file", "path": str(path), "sha256": file_sha256(path),
            "format_version": payload["format_version"], "meta": dict(payload.get("meta") or {})}
    return observation, info


def load_targets(path: str | Path, observation: Observation):
    """The :class:`~copa.threat.GroundTruth` in an npz (``images`` N×C×H×W in [0, 1], optional ``labels``)
    to score an observation's reconstruction; shapes must match the observation."""
    import numpy as np

    from .observation import GroundTruth

    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"targets file {str(path)!r} does not exist (or is not a file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:
        raise InvalidSpecError(f"targets file {str(path)!r} cannot be read as an npz of arrays "
                               f"({type(err).__name__}: {err})") from None
    if "images" not in arrays:
        raise InvalidSpecError(f"targets file {str(path)!r} has no array 'images' (found {sorted(arrays)}): expected "
                               f"'images' N×C×H×W in [0, 1] and optional 'labels'")
    unknown = sorted(set(arrays) - {"images", "labels"})
    if unknown:
        raise InvalidSpecError(f"targets file {str(path)!r} has unknown arrays {unknown}: accepted are images, labels")
    images = arrays["images"]
    expected = (observation.batch_size, *observation.input_shape)
    if images.dtype.kind != "f" or tuple(images.shape) != expected:
        raise InvalidSpecError(f"targets file {str(path)!r}: 'images' is {images.dtype} of shape {tuple(images.shape)}:"
                               f" expected float of shape {expected} (the observation's batch and input shape)")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise InvalidSpecError(f"targets file {str(path)!r}: 'images' must be finite and in [0, 1] "
                               f"(found range [{np.nanmin(images):.4g}, {np.nanmax(images):.4g}])")
    labels = arrays.get("labels")
    if labels is None:
        if observation.labels is None:
            raise InvalidSpecError(f"targets file {str(path)!r} has no 'labels' and the observation has none: add "
                                   f"'labels' (int, shape ({observation.batch_size},))")
        labels_t = observation.labels.detach().cpu()
    else:
        if labels.dtype.kind not in "iu" or tuple(labels.shape) != (observation.batch_size,):
            raise InvalidSpecError(f"targets file {str(path)!r}: 'labels' is {labels.dtype} of shape "
                                   f"{tuple(labels.shape)}: expected integers of shape ({observation.batch_size},)")
        if labels.min() < 0 or labels.max() >= observation.num_classes:
            raise InvalidSpecError(f"targets file {str(path)!r}: 'labels' {labels.tolist()} are not class indices in "
                                   f"[0, {observation.num_classes})")
        labels_t = torch.as_tensor(labels, dtype=torch.int64)
    images01 = torch.as_tensor(images).to(device=observation.device, dtype=observation.dtype)
    return GroundTruth(images01=images01, labels=labels_t.to(observation.device),
                       indices=tuple(range(observation.batch_size)), preprocess=observation.preprocess)


def describe_payload(payload: Mapping[str, Any]) -> str:
    """One line about an observation file's content (for ``copa observe``)."""
    entries = sum(g.numel() for g in payload["gradients"].values())
    return (f"model {payload['model']}, batch {payload['batch_size']}, input {'x'.join(map(str, payload['input_shape']))}, "
            f"{payload['num_classes']} classes, labels {'known' if payload.get('labels') is not None else 'unknown'}, "
            f"{len(payload['gradients'])} gradient tensors ({entries} entries, {payload['dtype']})")


def observe_meta(scenario_dict: dict[str, Any]) -> dict[str, Any]:
    """Provenance stored in a file written by ``copa observe``: where it came from, minus the images' indices."""
    from ..provenance import git_commit, package_versions

    return {"created_by": "copa observe", "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "dataset": scenario_dict.get("dataset"), "split": scenario_dict.get("split"),
            "git_commit": git_commit(), "versions": package_versions()}


__all__ = ["FORMAT", "FORMAT_VERSION", "KEYS", "LOSS", "describe_payload", "file_sha256", "load_observation",
           "load_targets", "observation_from_payload", "observation_payload", "read_payload", "save_observation",
           "validate_payload"]
