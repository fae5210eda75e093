"""What the attacker observes (:class:`Observation`) and what only the scorer sees (:class:`GroundTruth`).

See :mod:`copa.threat` for the threat model; :func:`check_same_model` is the one check that instances
of a batched attack share the model, its weights and the observation format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as data_mod
from ..errors import CopaError
from ..models import model_info


#: What a client shares: the gradient of one step (FedSGD), or the change of its weights after several local
#: SGD steps (FedAvg, McMahan et al., AISTATS 2017; inversefed's ``loss_steps(..., use_updates=True)``).
UPDATE_KINDS = ("gradient", "weight-delta")


@dataclass(frozen=True)
class LocalTraining:
    """The public hyperparameters of a FedAvg client's local training (McMahan et al., AISTATS 2017): ``steps``
    plain SGD steps (no momentum, no weight decay) of learning rate ``lr``, each on ``batch`` of the client's
    images taken in order, cycling (step k uses images ``(k mod B/batch)·batch`` onwards; inversefed
    ``loss_steps``: ``idx = i % (inputs.shape[0] // batch_size)``), ``batch`` None = all of them every step.
    The client shares ``θ_K − θ_0`` (the weight delta; inversefed ``use_updates=True``). In federated
    learning the server sets these, so the attacker knows them (breaching ``provide_local_hyperparams``)."""

    steps: int
    lr: float
    batch: int | None = None

    def chunk(self, step: int, batch_size: int) -> slice:
        """The client's images used by local step ``step`` (0-based) of a batch of ``batch_size``."""
        if self.batch is None:
            return slice(0, batch_size)
        start = (step % (batch_size // self.batch)) * self.batch
        return slice(start, start + self.batch)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "weight-delta", "local_steps": self.steps, "local_lr": self.lr, "local_batch": self.batch}


def client_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The client's training loss: cross-entropy with PyTorch's default mean over the batch (the COPA
    paper's and DLG's). ``labels`` may be class indices or soft labels (N×K). The one definition: the
    observation's ``loss_fn`` and the security metric's analysis use it too."""
    return F.cross_entropy(logits, labels)


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
    defences: tuple[dict[str, Any], ...] = ()  # public descriptions of the client's defences, in order
    meta: dict[str, Any] = field(default_factory=dict)
    #: None: ``gradients`` is one step's gradient (FedSGD). Else the client trained locally (FedAvg) and
    #: ``gradients`` holds its weight delta θ_K − θ_0 per parameter, in the same layout.
    local: LocalTraining | None = None

    @property
    def update_kind(self) -> str:
        """``"gradient"`` (FedSGD) or ``"weight-delta"`` (FedAvg: several local steps), :data:`UPDATE_KINDS`."""
        return "gradient" if self.local is None else "weight-delta"

    def update_description(self) -> str:
        """The shared update in words, for reasons and logs."""
        if self.local is None:
            return "a gradient (one step, FedSGD)"
        batch = "all its images" if self.local.batch is None else \
            f"{self.local.batch} image{'s' if self.local.batch > 1 else ''}"
        return (f"a weight delta after {self.local.steps} local SGD steps (lr {self.local.lr:g}, {batch} per step; "
                f"FedAvg)")

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
        """The client's training loss (:func:`client_loss`); ``labels`` may be soft (N×K)."""
        return client_loss(logits, labels)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model_name, "batch_size": self.batch_size, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "label_known": self.label_known,
                "preprocess": self.preprocess.to_dict(), "loss": self.loss,
                "defences": [dict(d) for d in self.defences],
                "update": {"kind": "gradient"} if self.local is None else self.local.to_dict()}


@dataclass(frozen=True)
class GroundTruth:
    """The client's private batch, for scoring only: images in [0, 1] at the model's input shape, and what
    the defences cost: ``update_distortion`` = ‖g̃ − g‖ / ‖g‖ over all parameters (defended vs true update;
    0 for an undefended one, None when the true update is unknown). ``local_losses``: the client's training
    loss (:func:`client_loss`) at each of its local steps, on that step's images before the step is taken (one
    entry for FedSGD; None when unknown) — the client's own, never shared: the attacker sees the update only."""

    images01: torch.Tensor
    labels: torch.Tensor
    indices: tuple[int, ...]
    preprocess: data_mod.Preprocess
    update_distortion: float | None = None
    local_losses: tuple[float, ...] | None = None


def as_observation_list(observations) -> list:
    """A single observation or a non-empty list/tuple of them, as a list."""
    if isinstance(observations, (list, tuple)):
        if not observations:
            raise ValueError("no observations given")
        return list(observations)
    return [observations]


def check_same_model(observations) -> None:
    """Batched instances must share the model, its weights and the observation format (one vmap)."""
    first = observations[0]
    for k, other in enumerate(observations[1:], start=1):
        for what, a, b in (("model", first.model_name, other.model_name),
                           ("parameter names", first.parameter_names, other.parameter_names),
                           ("batch size", first.batch_size, other.batch_size),
                           ("input shape", first.input_shape, other.input_shape),
                           ("number of classes", first.num_classes, other.num_classes),
                           ("dtype", first.dtype, other.dtype), ("device", first.device, other.device),
                           ("label knowledge", first.label_known, other.label_known),
                           ("update (local training)", first.local, other.local)):
            if a != b:
                raise CopaError(f"cannot batch attack instances 0 and {k}: their {what} differ ({a} vs {b}); "
                                f"batch only observations of one model and format")
        if other.model is not first.model:
            theirs = dict(other.model.named_parameters())
            for name, p in first.model.named_parameters():
                if not torch.equal(p, theirs[name]):
                    raise CopaError(f"cannot batch attack instances 0 and {k}: their weights differ "
                                    f"(parameter {name!r}); batch only observations of the same weights")
