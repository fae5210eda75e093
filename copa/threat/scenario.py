"""The client's step (:class:`Scenario`): model, data, preprocessing, loss, defences — and its split into
the attacker's view and the ground truth (:meth:`Scenario.build`). See :mod:`copa.threat`."""

from __future__ import annotations

import copy
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
from torch import nn

from .. import data as data_mod
from ..errors import CopaError, InvalidSpecError
from ..hyperparameters import STEP_CEILING, check_seed
from ..models import create_model
from ..provenance import resolve_device
from .defences import ClientUpdate, apply_defences, canonical_defences, create_defence
from .limits import DEFAULT_LIMITS, over_limit
from .observation import GroundTruth, LocalTraining, Observation, client_loss

PREPROCESS_MODES = data_mod.PREPROCESS_MODES  # declared once, in copa.data (Preprocess)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_INPUT_SHAPE = (3, 32, 32)  # the COPA paper's chains and R-GAP/DLG's CIFAR models


def parse_input_shape(text: str | tuple | list) -> tuple[int, int, int]:
    """Parse ``"3x32x32"`` (or a 3-sequence) into a shape, with a clear error."""
    if isinstance(text, str):
        parts = text.lower().replace("×", "x").split("x")
    else:
        parts = list(text)
    try:
        shape = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidSpecError(f"input shape {text!r} is invalid: expected CxHxW with positive integers, e.g. 3x32x32")
    return shape  # type: ignore[return-value]


class ClientBatch(NamedTuple):
    """The client's batch as the model sees it (see :meth:`Scenario.load_batch`)."""

    images01: torch.Tensor   # B×C×H×W in [0, 1], fitted to the input shape
    labels: torch.Tensor
    preprocess: data_mod.Preprocess
    num_classes: int


@dataclass(frozen=True)
class ScenarioOption:
    """How one Scenario field is spelled outside Python: its config key (``name``), the command-line
    flag ``--name-with-dashes``, the default *as written there*, the accepted choices and a help line.
    Declared once, in the field's metadata; the CLI, the workflow and the config schema follow it."""

    field: str
    name: str
    default: Any
    help: str
    kind: type
    choices: tuple[str, ...] | None = None
    required: bool = False
    repeated: bool = False  # a list: the flag may be repeated (and comma-separated, for indices)
    flag_name: str | None = None

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.name).replace("_", "-")

    @property
    def default_text(self) -> str:
        """The default as help texts show it (``none`` for None or an empty list)."""
        if isinstance(self.default, list):
            return ",".join(map(str, self.default)) or "none"
        return "none" if self.default is None else str(self.default)


def _option(help: str, *, name: str | None = None, shown: Any = None, choices: tuple[str, ...] | None = None,
            required: bool = False, kind: type | None = None, flag: str | None = None,
            omitted_at_default: bool = False) -> dict[str, Any]:
    return {"copa_option": {"help": help, "name": name, "shown": shown, "choices": choices, "required": required,
                            "kind": kind, "flag": flag, "omitted_at_default": omitted_at_default}}


_LABEL = {"known": True, "unknown": False}


@dataclass(frozen=True)
class Scenario:
    """One honest client step to attack.

    Defaults: the COPA paper's setting (Chen & Campbell, arXiv 2111.10178, and the authors' code):
    one image, label known, untrained seeded model, cross-entropy, images centred (x - 0.5).
    ``indices`` are official dataset indices (see :mod:`copa.data`); the batch size is their count.
    ``defences`` (spec strings, :mod:`copa.threat.defences`) run on the client's update, in order, with
    random draws seeded by ``defence_seed``; none by default.

    This class is the one declaration of the scenario's fields: :meth:`options` gives each field's
    config key, command-line flag, default and help (from the field metadata), :meth:`from_config`
    builds a scenario from those keys (the CLI and the workflow both call it).
    """

    model: str = field(metadata=_option("model name or chain:SPEC (copa list models)", required=True))
    dataset: str = field(default="sample", metadata=_option("dataset spec (copa list datasets)"))
    split: str = field(default="train", metadata=_option("dataset split", choices=("train", "test")))
    indices: tuple[int, ...] = field(default=(0,), metadata=_option(
        "official image indices of the client's batch", shown=[0], kind=int, flag="index"))
    model_seed: int = field(default=0, metadata=_option("model initialisation seed"))
    checkpoint: str | None = field(default=None, metadata=_option(
        "trained weights (state_dict file, loaded weights_only)"))
    label_known: bool = field(default=True, metadata=_option(
        "whether the attacker knows the labels", name="label", shown="known", choices=tuple(_LABEL), kind=str))
    preprocess: str = field(default="center", metadata=_option(
        "input preprocessing: center (x - 0.5, the COPA paper), normalize (dataset mean/std) or none",
        choices=PREPROCESS_MODES))
    input_shape: tuple[int, int, int] = field(default=DEFAULT_INPUT_SHAPE, metadata=_option(
        "model input CxHxW", shown="x".join(map(str, DEFAULT_INPUT_SHAPE))))
    num_classes: int | None = field(default=None, metadata=_option("number of classes (default: the dataset's)",
                                                                   kind=int))
    data_root: str | None = field(default=None, metadata=_option(
        "root of torchvision datasets (default $COPA_DATA_ROOT or ./data)"))
    download: bool = field(default=False, metadata=_option("allow torchvision to download missing datasets"))
    dtype: str = field(default="float32", metadata=_option(
        "float type of the model and its gradients (float64 for the COPA paper's exact recoveries)",
        choices=tuple(DTYPES)))
    defences: tuple[str, ...] = field(default=(), metadata=_option(
        "defences the client applies to its update, in order (copa list defences)", shown=[], kind=str,
        flag="defence"))
    defence_seed: int = field(default=0, metadata=_option("seed of the defences' random draws"))
    # FedAvg (issue "Realistic federated updates"). Omitted from to_dict() at their defaults, so that a FedSGD
    # scenario is described (and its records matched) exactly as before these fields existed.
    local_steps: int = field(default=1, metadata=_option(
        "local SGD steps of the client before it shares its update: 1 = FedSGD (shares the gradient), K > 1 = "
        "FedAvg (shares the weight delta)", omitted_at_default=True))
    local_lr: float = field(default=1e-4, metadata=_option(
        "learning rate of the local SGD steps (inversefed loss_steps default 1e-4); ignored when local_steps is 1",
        omitted_at_default=True))
    local_batch: int | None = field(default=None, metadata=_option(
        "images per local SGD step, taken in order and cycling (must divide the batch; default all of them); "
        "ignored when local_steps is 1", kind=int, omitted_at_default=True))

    def __post_init__(self):
        object.__setattr__(self, "indices", tuple(int(i) for i in data_mod.validate_indices(self.indices)))
        check_seed(self.model_seed, "model_seed")
        check_seed(self.defence_seed, "defence_seed")
        object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))
        if isinstance(self.defences, str):
            object.__setattr__(self, "defences", (self.defences,))
        object.__setattr__(self, "defences", canonical_defences(self.defences))
        if not self.indices:
            raise InvalidSpecError("scenario has no image indices: give at least one index")
        if self.preprocess not in PREPROCESS_MODES:
            raise InvalidSpecError(f"preprocess {self.preprocess!r} is invalid: accepted are {', '.join(PREPROCESS_MODES)}")
        if self.dtype not in DTYPES:
            raise InvalidSpecError(f"dtype {self.dtype!r} is invalid: accepted are {', '.join(DTYPES)}")
        if self.num_classes is not None and int(self.num_classes) < 1:
            raise InvalidSpecError(f"num_classes {self.num_classes!r} is invalid: must be a positive integer")
        self._check_local_training()

    def _check_local_training(self) -> None:
        """Validate the FedAvg fields; with one local step (FedSGD) reset ``local_lr``/``local_batch`` to their
        defaults, which then mean nothing, so that one experiment has one description."""
        steps = self.local_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= STEP_CEILING:
            raise InvalidSpecError(f"local_steps {steps!r} is invalid: accepted are integers from 1 (FedSGD) to "
                                   f"{STEP_CEILING}")
        if steps == 1:
            object.__setattr__(self, "local_lr", _DEFAULTS["local_lr"])
            object.__setattr__(self, "local_batch", None)
            return
        try:
            lr = float(self.local_lr) if not isinstance(self.local_lr, bool) else math.nan
        except (TypeError, ValueError):
            lr = math.nan
        if not (math.isfinite(lr) and lr > 0):
            raise InvalidSpecError(f"local_lr {self.local_lr!r} is invalid: accepted are finite numbers > 0")
        object.__setattr__(self, "local_lr", lr)
        batch = self.local_batch
        if batch is not None:
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1 or self.batch_size % batch:
                raise InvalidSpecError(f"local_batch {batch!r} is invalid for a client batch of {self.batch_size} "
                                       f"images: accepted are its divisors ({', '.join(map(str, _divisors(self.batch_size)))}) "
                                       f"or none (all images every step)")
            if batch == self.batch_size:
                object.__setattr__(self, "local_batch", None)  # the same client step: one description
        for spec in self.defences:
            if create_defence(spec).needs_true_update:
                raise InvalidSpecError(f"defence {spec!r} clips per-example gradients of one step (DP-SGD) and cannot "
                                       f"defend a weight delta after local_steps {steps}: use local_steps 1, or a "
                                       f"defence of the shared update (prune, quantize)")

    @property
    def local_training(self) -> LocalTraining | None:
        """The client's public local-training hyperparameters, or None for FedSGD (one step)."""
        return None if self.local_steps == 1 else LocalTraining(self.local_steps, self.local_lr, self.local_batch)

    @classmethod
    def options(cls) -> list[ScenarioOption]:
        """Every field as the CLI and the workflow config spell it (see :class:`ScenarioOption`)."""
        out = []
        for f in fields(cls):
            meta = f.metadata["copa_option"]
            default = None if f.default is MISSING else f.default
            shown = meta["shown"] if meta["shown"] is not None else default
            kind = meta["kind"] or (str if default is None else type(default))
            out.append(ScenarioOption(f.name, meta["name"] or f.name, shown, meta["help"], kind, meta["choices"],
                                      meta["required"], isinstance(shown, list), meta["flag"]))
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any], **fixed: Any) -> Scenario:
        """A scenario from config keys (:meth:`options`' names: ``label: known``, ``indices: [3]``, ...);
        keys that are not scenario options are ignored (a workflow config has others), absent ones take
        the defaults. ``fixed``: field values that override the config (e.g. ``model=``, ``indices=``)."""
        values: dict[str, Any] = {}
        for option in cls.options():
            if option.field in fixed:
                values[option.field] = fixed[option.field]
                continue
            value = config.get(option.name)
            if value is None:
                continue
            if option.field == "label_known":
                if value not in _LABEL:
                    raise InvalidSpecError(f"label {value!r} is invalid: accepted are {', '.join(_LABEL)}")
                value = _LABEL[value]
            values[option.field] = value
        unknown = sorted(set(fixed) - {o.field for o in cls.options()})
        if unknown:
            raise InvalidSpecError(f"unknown scenario fields {unknown}")
        if "model" not in values:
            raise InvalidSpecError("the scenario needs a model (--model NAME, or the workflow's models)")
        return cls(**values)

    @property
    def batch_size(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; fields declared ``omitted_at_default`` are left out at their defaults (records made
        before those fields existed describe the same scenario the same way)."""
        d = asdict(self)
        d["indices"] = list(self.indices)
        d["input_shape"] = list(self.input_shape)
        d["defences"] = list(self.defences)
        for f in fields(self):
            if f.metadata["copa_option"]["omitted_at_default"] and d[f.name] == f.default:
                del d[f.name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidSpecError(f"unknown scenario keys {unknown}: accepted are {sorted(known)}")
        return cls(**d)

    def check_size(self, limits=None) -> None:
        """The scenario's input pixels (C·H·W) and batch within ``limits`` (default: those of observation files,
        :class:`copa.threat.observation_file.Limits`), before anything of that size is allocated."""
        limits = limits or DEFAULT_LIMITS
        pixels = self.input_shape[0] * self.input_shape[1] * self.input_shape[2]
        if pixels > limits.max_input_pixels:
            raise over_limit(f"input shape {'x'.join(map(str, self.input_shape))} has {pixels} pixels (C·H·W)",
                             f"{limits.max_input_pixels} pixels", "max_input_pixels")
        if self.batch_size > limits.max_batch_size:
            raise over_limit(f"the client's batch has {self.batch_size} images", str(limits.max_batch_size),
                             "max_batch_size")

    def check_model_size(self, num_classes: int, limits=None) -> None:
        """The model's trainable parameters within ``limits``, counted on PyTorch's meta device (shapes, no
        storage) before its weights are allocated. A plug-in factory that needs real tensors is not counted."""
        limits = limits or DEFAULT_LIMITS
        try:
            with torch.device("meta"):
                declared = create_model(self.model, num_classes=num_classes, in_shape=self.input_shape,
                                        seed=self.model_seed)
        except CopaError:
            raise
        except Exception:  # noqa: BLE001 - a factory that cannot run on the meta device: built for real later
            return
        count = sum(p.numel() for p in declared.parameters())
        if count > limits.max_parameters:
            raise over_limit(f"model {self.model!r} ({num_classes} classes, input "
                             f"{'x'.join(map(str, self.input_shape))}) has {count} parameters",
                             str(limits.max_parameters), "max_parameters")

    def load_batch(self, device: str | torch.device = "cpu", *, limits=None) -> ClientBatch:
        """The client's images and labels as the model sees them: loaded, fitted to the input shape,
        in the scenario's dtype, with the preprocessing (the one place that does this; the security
        metric uses it too). Sizes are checked first (:meth:`check_size`, ``limits``)."""
        self.check_size(limits)
        dev = resolve_device(device)
        dtype = DTYPES[self.dtype]
        images = data_mod.load_images(self.dataset, self.split, self.indices, root=self.data_root,
                                      download=self.download)
        num_classes = self.num_classes or data_mod.num_classes(self.dataset, root=self.data_root,
                                                               download=self.download)
        if int(images.labels.max()) >= num_classes:
            raise InvalidSpecError(f"num_classes {num_classes} is too small for label {int(images.labels.max())} "
                                   f"of dataset {self.dataset!r}")
        if self.preprocess == "normalize" and len(images.mean) > self.input_shape[0]:
            raise InvalidSpecError(f"preprocess 'normalize' with {len(images.mean)}-channel data on a "
                                   f"{self.input_shape[0]}-channel input is not supported (the dataset's statistics "
                                   f"are per colour channel): use preprocess 'center' or 'none'")
        preprocess = data_mod.Preprocess(self.preprocess, images.mean, images.std) if self.preprocess == "normalize" \
            else data_mod.Preprocess(self.preprocess)
        images01 = data_mod.fit_to_input(images.images, self.input_shape).to(dev, dtype)
        return ClientBatch(images01, images.labels.to(dev), preprocess, num_classes)

    def build(self, device: str | torch.device = "cpu", *, limits=None) -> tuple[Observation, GroundTruth]:
        """Run the client's step and split its result into the attacker's view and the ground truth. Input,
        batch and model sizes are checked against ``limits`` before they are allocated."""
        dev = resolve_device(device)
        dtype = DTYPES[self.dtype]
        batch = self.load_batch(dev, limits=limits)
        images01, labels, preprocess, num_classes = batch.images01, batch.labels, batch.preprocess, batch.num_classes
        self.check_model_size(num_classes, limits)

        model = create_model(self.model, num_classes=num_classes, in_shape=self.input_shape,
                             seed=self.model_seed, checkpoint=self.checkpoint).to(dev, dtype)
        attacker_model = copy.deepcopy(model)  # weights as sent by the server, before the client's step
        client_model = model.train()
        inputs = preprocess.apply(images01)
        names, params = zip(*[(n, p) for n, p in client_model.named_parameters() if p.requires_grad])
        local = self.local_training
        try:
            if local is None:  # FedSGD: one step's gradient
                loss = client_loss(client_model(inputs), labels)
                grads, losses = torch.autograd.grad(loss, params), (float(loss.detach()),)
            else:  # FedAvg: K plain SGD steps (torch.optim.SGD), the weight delta θ_K − θ_0 is shared
                grads, losses = _local_training_delta(client_model, params, inputs, labels, local)
        except ValueError as exc:  # e.g. BatchNorm in training mode with one value per channel
            raise InvalidSpecError(f"model {self.model!r} cannot take a training step on a batch of "
                                   f"{self.batch_size if local is None or local.batch is None else local.batch} at "
                                   f"input shape {'x'.join(map(str, self.input_shape))}: {exc}. "
                                   f"Use a larger batch or input") from None
        defended, distortion = (), 0.0
        if self.defences:  # the client defends its update before sharing it (copa.threat.defences)
            true = tuple(g.detach() for g in grads)
            update = ClientUpdate(tuple(names), true, self.batch_size,
                                  lambda: _per_example_gradients(client_model, params, inputs, labels))
            grads, defended = apply_defences(self.defences, update, self.defence_seed)
            distortion = relative_distortion(grads, true)

        for p in attacker_model.parameters():
            p.grad = None
        observation = Observation(
            model=attacker_model.train(),
            model_name=self.model,
            parameter_names=tuple(names),
            gradients=tuple(g.detach().clone() for g in grads),
            labels=labels.clone() if self.label_known else None,
            batch_size=self.batch_size,
            input_shape=self.input_shape,
            num_classes=num_classes,
            preprocess=preprocess,
            defences=tuple(defended),
            local=local,
        )
        truth = GroundTruth(images01=images01.detach().clone(), labels=labels.clone(), indices=self.indices,
                            preprocess=preprocess, update_distortion=distortion, local_losses=losses)
        return observation, truth


_DEFAULTS = {f.name: f.default for f in fields(Scenario)}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _local_training_delta(model: nn.Module, params, inputs: torch.Tensor, labels: torch.Tensor,
                          local: LocalTraining) -> tuple[tuple[torch.Tensor, ...], tuple[float, ...]]:
    """The client's FedAvg update: ``local.steps`` steps of ``torch.optim.SGD(lr=local.lr)`` (no momentum, no
    weight decay) on the model, step k on the images ``local.chunk(k, B)`` (its mini-batches in order, cycling:
    local epochs when K · local batch > B); returns θ_K − θ_0 per parameter and the loss of each step (on its
    images, before the step). The attacks simulate the same steps differentiably
    (:class:`copa.attacks.GradientModel`)."""
    start = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=local.lr)
    losses = []
    for step in range(local.steps):
        chunk = local.chunk(step, inputs.shape[0])
        optimizer.zero_grad(set_to_none=True)
        loss = client_loss(model(inputs[chunk]), labels[chunk])
        loss.backward()
        losses.append(float(loss.detach()))
        optimizer.step()
    return tuple(p.detach() - p0 for p, p0 in zip(params, start)), tuple(losses)


def _per_example_gradients(model: nn.Module, params, inputs: torch.Tensor, labels: torch.Tensor):
    """Each example's gradients of the client's loss, stacked per parameter (B×...): one backward pass per
    example, so that any model works (for defences that clip per example, e.g. DP-SGD)."""
    rows = []
    for k in range(inputs.shape[0]):
        loss = client_loss(model(inputs[k:k + 1]), labels[k:k + 1])
        rows.append([g.detach() for g in torch.autograd.grad(loss, params)])
    return tuple(torch.stack(column) for column in zip(*rows))


def relative_distortion(defended, true) -> float:
    """‖g̃ − g‖ / ‖g‖ over all parameters together (the defence's cost to the update; inf if g = 0 ≠ g̃)."""
    difference = sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(defended, true)) ** 0.5
    norm = sum(float(b.double().pow(2).sum()) for b in true) ** 0.5
    return difference / norm if norm > 0 else (0.0 if difference == 0 else float("inf"))
