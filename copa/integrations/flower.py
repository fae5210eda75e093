"""Capture what a Flower client sends, as copa observation files (docs/observations.md), to attack it.

Who audits a federated deployment that runs on `Flower <https://flower.ai>`_ (``flwr``) adds
:func:`capture_mod` to the client's ``ClientApp``; for every training round it writes the update that client
returns as one observation file, which ``copa attack --observation FILE`` attacks like any other::

    from flwr.clientapp import ClientApp
    from copa.integrations.flower import capture_mod

    app = ClientApp(mods=[capture_mod("captured/", model="cnn2_c1", lr=0.1, dtype="float64")])

A mod (Flower's ``(message, context, call_next) -> reply`` middleware, ``flwr.clientapp.mod``) sees the
train message the server sent — the global weights θ₀ in its ``ArrayRecord`` — and the client's reply — its
weights θ_K after local training. What a server learns is their difference: for one local SGD step of
learning rate η (FedSGD), the gradient ``(θ₀ − θ₁)/η``; for K ≥ 2 steps (FedAvg), the weight delta θ_K − θ₀
with K, η and the local batch as public hyperparameters (the server sets them; copa's ``update`` key). The
file holds what the server sees and nothing else: weights, the update, the number of examples the client
reports (Flower's ``num-examples`` metric), no images and no labels.

Assumptions, stated because the file cannot check them: the client trains with plain SGD (no momentum,
no weight decay — torch.optim.SGD's defaults) on the cross-entropy loss with mean reduction, on the
``num-examples`` images it reports (K steps cycling through them in batches of ``local_batch``), with
the architecture ``model`` named here. A reply whose weights do not fit that architecture is refused with
one line naming the tensor (:class:`~copa.errors.InvalidSpecError`) and nothing is written.

Needs the optional extra ``copa-bench[flower]`` (flwr with its simulation engine).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..data import Preprocess
from ..errors import InvalidSpecError
from ..models import create_model
from ..threat.observation_file import DTYPES, FORMAT, FORMAT_VERSION, LOSS, observation_from_payload, write_payload

#: Flower's conventions (flwr.serverapp.strategy.FedAvg): the weights travel in the ArrayRecord "arrays",
#: the server's settings in the ConfigRecord "config" (with "server-round"), the client's reply reports its
#: example count in the MetricRecord "metrics" under "num-examples".
ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, NUM_EXAMPLES = "arrays", "config", "metrics", "num-examples"


def _state_dict(record: Any, what: str) -> dict[str, torch.Tensor]:
    try:
        return dict(record.to_torch_state_dict())
    except Exception as exc:  # not an ArrayRecord, or arrays torch cannot take
        raise InvalidSpecError(f"Flower {what}: its arrays cannot be read as a torch state_dict ({exc})") from None


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidSpecError(f"{name}={value!r} is invalid: accepted are finite numbers > 0")
    return float(value)


def update_payload(sent: Mapping[str, torch.Tensor], returned: Mapping[str, torch.Tensor], *, model: str,
                   batch_size: int, lr: float, local_steps: int = 1, local_batch: int | None = None,
                   input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                   preprocess: Preprocess | None = None, model_seed: int | None = None,
                   meta: Mapping[str, Any] | None = None, source: str = "Flower update") -> dict[str, Any]:
    """The observation file's payload for one client round: ``sent`` the global weights the server sent
    (a state_dict), ``returned`` the client's weights after ``local_steps`` plain SGD steps of learning rate
    ``lr`` on its ``batch_size`` images. Checked against ``model`` (its parameters, shapes and finite weights,
    :func:`copa.threat.observation_file.observation_from_payload`) before it is returned; InvalidSpecError
    names the first value that does not fit."""
    lr = _positive(lr, "lr")
    if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
        raise InvalidSpecError(f"local_steps={local_steps!r} is invalid: accepted are integers ≥ 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidSpecError(f"{source}: batch_size (the reply's num-examples)={batch_size!r} is invalid: "
                               f"accepted are integers ≥ 1")
    if local_batch is not None and (local_batch < 1 or batch_size % local_batch):
        raise InvalidSpecError(f"local_batch={local_batch!r} is invalid for {batch_size} images: accepted are "
                               f"divisors of the batch size, or None")
    dtypes = {t.dtype for t in sent.values() if t.is_floating_point()}
    names = {v: k for k, v in DTYPES.items()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in names:
        raise InvalidSpecError(f"{source}: the server's weights have dtype(s) "
                               f"{sorted(str(d) for d in dtypes) or 'none'}: accepted is one of {', '.join(DTYPES)}")
    dtype = next(iter(dtypes))
    missing = [k for k in sent if k not in returned]
    if missing:
        raise InvalidSpecError(f"{source}: the client's reply lacks the tensor(s) {', '.join(missing[:6])} that "
                               f"the server sent")
    for k, value in sent.items():
        if returned[k].shape != value.shape:
            raise InvalidSpecError(f"{source}: the client returned {k!r} of shape {tuple(returned[k].shape)}, the "
                                   f"server sent {tuple(value.shape)}")
    # the parameter names and order come from the declared architecture (checked in full below)
    with torch.device("meta"):
        try:
            declared = create_model(model, num_classes=num_classes, in_shape=tuple(input_shape))
        except Exception as exc:
            raise InvalidSpecError(f"{source}: model {model!r}: {exc}") from None
    parameter_names = [n for n, p in declared.named_parameters() if p.requires_grad]
    unknown = [n for n in parameter_names if n not in sent]
    if unknown:
        raise InvalidSpecError(f"{source}: the server's weights lack {', '.join(unknown[:6])} of model {model!r} "
                               f"(its trainable parameters are {', '.join(parameter_names[:6])})")
    delta = {n: (returned[n].to(dtype) - sent[n]) for n in parameter_names}
    if local_steps == 1:  # FedSGD: θ₁ = θ₀ − η g, so the server reads the gradient off the step
        gradients, update = {n: d / -lr for n, d in delta.items()}, {"kind": "gradient"}
    else:
        gradients = delta
        update = {"kind": "weight-delta", "local_steps": local_steps, "local_lr": lr,
                  "local_batch": None if local_batch in (None, batch_size) else int(local_batch)}
    preprocess = preprocess or Preprocess("center")
    payload = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "model": model,
        "model_spec": declared.copa_info.spec, "model_seed": model_seed,
        "state_dict": {k: v.detach().cpu().clone() for k, v in sent.items()},
        "parameter_names": parameter_names,
        "gradients": {n: g.detach().cpu().clone() for n, g in gradients.items()},
        "labels": None,  # the server does not see the client's labels
        "batch_size": int(batch_size), "input_shape": [int(n) for n in input_shape],
        "num_classes": int(num_classes), "preprocess": preprocess.to_dict(), "loss": LOSS,
        "dtype": names[dtype], "defences": [], "update": update,
        "meta": {"created_by": "copa.integrations.flower.capture_mod",
                 "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **dict(meta or {})},
    }
    observation_from_payload(payload, source=source)  # the full check: architecture, shapes, finite weights
    return payload


def capture_mod(directory: str | Path, *, model: str, lr: float | None = None, local_steps: int = 1,
                local_batch: int | None = None, batch_size: int | None = None, dtype: str | None = None,
                input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10,
                preprocess: Preprocess | None = None, model_seed: int | None = None):
    """A Flower client mod that writes each train round's update to ``directory`` as
    ``round-RRRR-node-N.pt`` (an observation file) and passes the reply on unchanged.

    ``lr``: the client's learning rate (None: the server's ``config["lr"]`` of the message); ``local_steps``
    and ``local_batch``: its local SGD steps and the images per step (None: all); ``batch_size``: its images
    (None: the reply's ``num-examples``); ``dtype``: refuse weights of another dtype (None: any of
    float32/float64). Messages other than train messages pass untouched."""
    from flwr.app import MessageType  # deferred: flwr is the optional extra [flower]

    directory = Path(directory)
    if dtype is not None and dtype not in DTYPES:
        raise InvalidSpecError(f"dtype={dtype!r} is invalid: accepted are {', '.join(DTYPES)}")
    if lr is not None:
        _positive(lr, "lr")

    def mod(message, context, call_next):
        if message.metadata.message_type != MessageType.TRAIN:
            return call_next(message, context)
        config = message.content.config_records.get(CONFIG_KEY) or {}
        server_round = int(config.get("server-round", 0))
        node = context.node_id
        source = f"Flower round {server_round} node {node}"
        if ARRAYS_KEY not in message.content.array_records:
            raise InvalidSpecError(f"{source}: the train message has no ArrayRecord {ARRAYS_KEY!r}")
        sent = _state_dict(message.content.array_records[ARRAYS_KEY], f"{source}: the server's message")
        reply = call_next(message, context)
        if reply.has_error() or ARRAYS_KEY not in reply.content.array_records:
            return reply  # nothing was trained: nothing to capture
        returned = _state_dict(reply.content.array_records[ARRAYS_KEY], f"{source}: the client's reply")
        if dtype is not None and any(t.is_floating_point() and t.dtype != DTYPES[dtype] for t in sent.values()):
            raise InvalidSpecError(f"{source}: the server's weights are not {dtype}")
        metrics = reply.content.metric_records.get(METRICS_KEY) or {}
        examples = batch_size if batch_size is not None else metrics.get(NUM_EXAMPLES)
        if examples is None:
            raise InvalidSpecError(f"{source}: the reply reports no {NUM_EXAMPLES!r} and capture_mod was given no "
                                   f"batch_size")
        rate = lr if lr is not None else config.get("lr")
        if rate is None:
            raise InvalidSpecError(f"{source}: no learning rate: give capture_mod(lr=...) or send config['lr']")
        payload = update_payload(sent, returned, model=model, batch_size=int(examples), lr=float(rate),
                                 local_steps=local_steps, local_batch=local_batch, input_shape=input_shape,
                                 num_classes=num_classes, preprocess=preprocess, model_seed=model_seed,
                                 meta={"server_round": server_round, "node_id": int(node),
                                       "run_id": int(context.run_id), "message_id": str(message.metadata.message_id)},
                                 source=source)
        write_payload(directory / f"round-{server_round:04d}-node-{node}.pt", payload)  # with its checksum
        return reply

    return mod
