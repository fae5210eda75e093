"""Invertible element-wise activations of chain models (COPA and R-GAP invert them layer by layer)."""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidSpecError, NotApplicableError


# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------


class Activation(nn.Module):
    """An element-wise activation that also knows its inverse and derivative (as COPA needs).

    ``forward(z)`` maps pre-activations to activations, ``inverse(y)`` maps back (clipping at
    saturation), ``derivative(z)`` is σ'(z) evaluated at the pre-activation, and ``invertible`` says
    whether the inverse exists.
    """

    name: str = ""
    invertible: bool = True

    @property
    def token(self) -> str:
        """The spec token that builds this activation, e.g. ``'tanh'`` or ``'leakyrelu0.1'``."""
        return self.name

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return self.token if self.token != self.name else ""


class Tanh(Activation):
    """tanh; ``inverse`` clamps y into (-1, 1) by ``margin`` before atanh."""

    name = "tanh"
    margin = 1e-6

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.atanh(y.clamp(-1 + self.margin, 1 - self.margin))

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return 1 - torch.tanh(z) ** 2


class Sigmoid(Activation):
    """Logistic sigmoid; ``inverse`` clamps y into (0, 1) by ``margin`` before the logit."""

    name = "sigmoid"
    margin = 1e-6

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.logit(y, eps=self.margin)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z)
        return s * (1 - s)


class Identity(Activation):
    """No activation (a linear layer)."""

    name = "identity"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(z)


class LeakyReLU(Activation):
    """Leaky ReLU with ``slope`` > 0 on negative inputs (default 0.2, as in R-GAP's CNN6)."""

    name = "leakyrelu"
    default_slope = 0.2

    def __init__(self, slope: float = default_slope):
        super().__init__()
        if not (math.isfinite(slope) and slope > 0):
            raise InvalidSpecError(
                f"leakyrelu slope {slope!r} is invalid: use a finite slope > 0 (slope 0 is 'relu', not invertible)"
            )
        self.slope = float(slope)

    @property
    def token(self) -> str:
        return self.name if self.slope == self.default_slope else f"{self.name}{self.slope:g}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(z, self.slope)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.where(y >= 0, y, y / self.slope)

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.slope))


class Softplus(Activation):
    """softplus(z) = log(1 + e^z) with beta 1; ``inverse`` clamps y to ≥ ``margin`` (softplus > 0)."""

    name = "softplus"
    margin = 1e-6

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.softplus(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y = y.clamp(min=self.margin)
        return y + torch.log(-torch.expm1(-y))  # log(e^y - 1), stable for large y

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z)


class ReLU(Activation):
    """ReLU. Not invertible: it maps every negative pre-activation to 0."""

    name = "relu"
    invertible = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(z)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        raise NotApplicableError("activation relu is not invertible (negative pre-activations all map to 0)")

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        return (z > 0).to(z.dtype)


_ACTIVATION_CLASSES: dict[str, type[Activation]] = {
    cls.name: cls for cls in (Tanh, Sigmoid, Identity, Softplus, ReLU, LeakyReLU)
}
_LEAKY_RE = re.compile(r"leakyrelu(?P<slope>\d*\.?\d+)?")

#: Activation names accepted in specs and as model-name suffixes (``cnn2_c1-sigmoid``,
#: ``cnn2_c1-leakyrelu0.1``); a suffix replaces the activations of all but the last layer.
ACTIVATION_SUFFIXES: tuple[str, ...] = ("tanh", "sigmoid", "identity", "softplus", "leakyrelu", "leakyrelu<slope>", "relu")


def make_activation(token: str) -> Activation:
    """Build an activation from its spec token (``tanh``, ``leakyrelu0.01``, ...)."""
    if token in _ACTIVATION_CLASSES and token != "leakyrelu":
        return _ACTIVATION_CLASSES[token]()
    match = _LEAKY_RE.fullmatch(token)
    if match:
        slope = match["slope"]
        return LeakyReLU(float(slope)) if slope else LeakyReLU()
    raise InvalidSpecError(
        f"unknown activation {token!r}: accepted are tanh, sigmoid, identity, softplus, relu, "
        f"leakyrelu (slope 0.2) and leakyrelu<slope> (e.g. leakyrelu0.01)"
    )
