"""The threat model: what the client computes, what the attacker observes, what only the scorer sees.

Following breaching's separation of the *case* from the *attack* (Geiping et al., github
JonasGeiping/breaching): a :class:`Scenario` describes one honest client step — model and weights,
data, preprocessing, loss — and :func:`Scenario.build` returns

* an :class:`Observation`: everything a server-side attacker legitimately sees in federated learning
  (architecture and the weights it sent, the per-parameter gradients the client shared, the labels
  only if the scenario declares them known, input shape and preprocessing); and
* a :class:`GroundTruth`: the client's images and labels, used only to score a reconstruction.

Attacks receive the observation alone. The observation holds private copies of the weights taken
*before* the client's forward pass (so e.g. BatchNorm running statistics updated by the client do
not leak into it) and detached copies of the gradients; it holds no reference to the images.
The loss is cross-entropy with PyTorch's default mean reduction over the batch.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from .errors import CopaError, InvalidSpecError
from .models import create_model, model_info

PREPROCESS_MODES = ("center", "normalize", "none")
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


def resolve_device(device: str | torch.device) -> torch.device:
    """Return a torch device, refusing CUDA when none is available (instead of failing later)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidSpecError(f"device {device!r} is invalid: accepted are 'cpu', 'cuda', 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CopaError(f"device {device!r} requested but CUDA is not available here (torch.cuda.is_available() "
                        f"is False); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise InvalidSpecError(f"device {device!r} is not supported: accepted are 'cpu', 'cuda', 'cuda:N'")
    return dev


@dataclass(frozen=True)
class Scenario:
    """One honest client step to attack.

    Defaults: the COPA paper's setting (Chen & Campbell, arXiv 2111.10178, and the authors' code):
    one image, label known, untrained seeded model, cross-entropy, images centred (x - 0.5).
    ``indices`` are official dataset indices (see :mod:`copa.data`); the batch size is their count.
    """

    model: str
    dataset: str = "sample"
    split: str = "train"
    indices: tuple[int, ...] = (0,)
    model_seed: int = 0
    checkpoint: str | None = None
    label_known: bool = True
    preprocess: str = "center"
    input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE
    num_classes: int | None = None
    data_root: str | None = None
    download: bool = False
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "indices", tuple(int(i) for i in self.indices))
        object.__setattr__(self, "input_shape", parse_input_shape(self.input_shape))
        if not self.indices:
            raise InvalidSpecError("scenario has no image indices: give at least one index")
        if self.preprocess not in PREPROCESS_MODES:
            raise InvalidSpecError(f"preprocess {self.preprocess!r} is invalid: accepted are {', '.join(PREPROCESS_MODES)}")
        if self.dtype not in DTYPES:
            raise InvalidSpecError(f"dtype {self.dtype!r} is invalid: accepted are {', '.join(DTYPES)}")
        if self.num_classes is not None and int(self.num_classes) < 1:
            raise InvalidSpecError(f"num_classes {self.num_classes!r} is invalid: must be a positive integer")

    @property
    def batch_size(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["indices"] = list(self.indices)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InvalidSpecError(f"unknown scenario keys {unknown}: accepted are {sorted(known)}")
        return cls(**d)

    def build(self, device: str | torch.device = "cpu") -> tuple[Observation, GroundTruth]:
        """Run the client's step and split its result into the attacker's view and the ground truth."""
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
        labels = images.labels.to(dev)

        model = create_model(self.model, num_classes=num_classes, in_shape=self.input_shape,
                             seed=self.model_seed, checkpoint=self.checkpoint).to(dev, dtype)
        attacker_model = copy.deepcopy(model)  # weights as sent by the server, before the client's step
        client_model = model.train()
        inputs = preprocess.apply(images01)
        try:
            logits = client_model(inputs)
        except ValueError as exc:  # e.g. BatchNorm in training mode with one value per channel
            raise InvalidSpecError(f"model {self.model!r} cannot take a training step on a batch of "
                                   f"{self.batch_size} at input shape {'x'.join(map(str, self.input_shape))}: {exc}. "
                                   f"Use a larger batch or input") from None
        loss = F.cross_entropy(logits, labels)
        names, params = zip(*[(n, p) for n, p in client_model.named_parameters() if p.requires_grad])
        grads = torch.autograd.grad(loss, params)

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
        )
        truth = GroundTruth(images01=images01.detach().clone(), labels=labels.clone(), indices=self.indices,
                            preprocess=preprocess)
        return observation, truth


@dataclass(frozen=True)
class Observation:
    """What the attacker sees. See the module docstring for what is deliberately absent."""

    model: nn.Module
    model_name: str
    parameter_names: tuple[str, ...]
    gradients: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None
    batch_size: int
    input_shape: tuple[int, int, int]
    num_classes: int
    preprocess: data_mod.Preprocess
    loss: str = "cross-entropy (mean over the batch)"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.gradients[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.gradients[0].dtype

    @property
    def label_known(self) -> bool:
        return self.labels is not None

    def gradient_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.parameter_names, self.gradients))

    def model_info(self):
        return model_info(self.model)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The valid image box [0, 1] mapped into the model's input space (1×C×1×1 lower, upper)."""
        return self.preprocess.bounds(self.input_shape[0], dtype=self.dtype, device=self.device)

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The client's training loss (cross-entropy, mean reduction); ``labels`` may be soft (N×K)."""
        return F.cross_entropy(logits, labels)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "batch_size": self.batch_size, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "label_known": self.label_known,
                "preprocess": self.preprocess.to_dict(), "loss": self.loss}


@dataclass(frozen=True)
class GroundTruth:
    """The client's private batch, for scoring only: images in [0, 1] at the model's input shape."""

    images01: torch.Tensor
    labels: torch.Tensor
    indices: tuple[int, ...]
    preprocess: data_mod.Preprocess
