"""Convolution geometry of the layer-wise systems: shapes, padding, strides (R-GAP and COPA unknowns are the
zero-padded input ``x̃``, padded entries included, as in both papers' code)."""

from __future__ import annotations
import math
from collections.abc import Sequence
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from ..errors import InvalidSpecError, NotApplicableError


DENSE_DTYPE = torch.float64
EPS64 = torch.finfo(torch.float64).eps


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        pair = (value, value)
    else:
        pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise InvalidSpecError(f"{name} {value!r} is invalid: give an int or a pair of ints")
    return pair  # type: ignore[return-value]




@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one bias-free, zero-padded ``Conv2d`` (groups 1, dilation 1) applied to one image.

    ``input`` is ``(H, W)`` of the unpadded input, ``padded`` ``(H+2p, W+2p)`` and ``output``
    ``(H', W')``. The counts below are those of :func:`layer_system`'s blocks.
    """

    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    input: tuple[int, int]

    def __post_init__(self):
        for name in ("kernel", "stride", "padding", "input"):
            object.__setattr__(self, name, _pair(getattr(self, name), name))
        sizes = (self.in_channels, self.out_channels, *self.kernel, *self.stride, *self.input)
        if min(sizes) < 1 or min(self.padding) < 0:
            raise InvalidSpecError(f"convolution geometry {self} has a non-positive size")
        if min(self.output) < 1:
            raise InvalidSpecError(f"kernel {self.kernel} does not fit the padded input {self.padded}")

    @classmethod
    def from_conv(cls, module: nn.Module, in_hw: Sequence[int]) -> ConvGeometry:
        """The geometry of ``module`` (an ``nn.Conv2d``) on inputs of spatial size ``in_hw``."""
        if not isinstance(module, nn.Conv2d):
            raise NotApplicableError(f"{type(module).__name__} is not a Conv2d")
        problems = []
        if module.groups != 1:
            problems.append(f"groups={module.groups}")
        if tuple(module.dilation) != (1, 1):
            problems.append(f"dilation={tuple(module.dilation)}")
        if module.padding_mode != "zeros":
            problems.append(f"padding_mode={module.padding_mode!r}")
        if isinstance(module.padding, str):
            problems.append(f"padding={module.padding!r}")
        if problems:
            raise NotApplicableError(f"convolution {module} is not supported ({', '.join(problems)}): the layer "
                                     "systems need groups 1, dilation 1 and numeric zero padding")
        return cls(module.in_channels, module.out_channels, tuple(module.kernel_size), tuple(module.stride),
                   tuple(module.padding), _pair(tuple(in_hw), "input size"))

    @property
    def padded(self) -> tuple[int, int]:
        return (self.input[0] + 2 * self.padding[0], self.input[1] + 2 * self.padding[1])

    @property
    def output(self) -> tuple[int, int]:
        (hp, wp), (kh, kw), (sh, sw) = self.padded, self.kernel, self.stride
        return ((hp - kh) // sh + 1, (wp - kw) // sw + 1)

    @property
    def unknowns(self) -> int:
        """Entries of the padded input ``x̃``: the columns of ``U``."""
        return self.in_channels * self.padded[0] * self.padded[1]

    @property
    def interior_unknowns(self) -> int:
        return self.in_channels * self.input[0] * self.input[1]

    @property
    def forward_rows(self) -> int:
        return self.out_channels * self.output[0] * self.output[1]

    @property
    def gradient_rows(self) -> int:
        return self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]

    @property
    def padding_rows(self) -> int:
        return self.unknowns - self.interior_unknowns

    @property
    def rows(self) -> int:
        return self.forward_rows + self.gradient_rows + self.padding_rows

    @property
    def output_padding(self) -> tuple[int, int]:
        """Rows/columns of ``x̃`` past the last kernel window (never touched by the convolution)."""
        (hp, wp), (kh, kw), (sh, sw), (ho, wo) = self.padded, self.kernel, self.stride, self.output
        return (hp - (ho - 1) * sh - kh, wp - (wo - 1) * sw - kw)

    def interior_mask(self, device: torch.device | str | None = None) -> Tensor:
        """Boolean ``C×(H+2p)×(W+2p)`` mask, True on the real (unpadded) entries of ``x̃``."""
        (ph, pw), (h, w) = self.padding, self.input
        mask = torch.zeros(self.in_channels, *self.padded, dtype=torch.bool, device=device)
        mask[:, ph:ph + h, pw:pw + w] = True
        return mask

    def pad(self, x: Tensor) -> Tensor:
        """``(..., C, H, W)`` → ``(..., C, H+2p, W+2p)`` with zeros."""
        ph, pw = self.padding
        return F.pad(x, (pw, pw, ph, ph)) if ph or pw else x

    def unpad(self, x_padded: Tensor) -> Tensor:
        """``(..., C, H+2p, W+2p)`` (or flat ``(..., unknowns)``) → ``(..., C, H, W)``."""
        if x_padded.shape[-1] == self.unknowns and (x_padded.dim() < 3 or x_padded.shape[-3:] != (
                self.in_channels, *self.padded)):
            x_padded = x_padded.reshape(*x_padded.shape[:-1], self.in_channels, *self.padded)
        (ph, pw), (h, w) = self.padding, self.input
        return x_padded[..., ph:ph + h, pw:pw + w]

    def describe(self) -> str:
        c, f, (kh, kw), (sh, sw), (ph, pw) = self.in_channels, self.out_channels, self.kernel, self.stride, self.padding
        return (f"conv {c}→{f} k{kh}x{kw} s{sh}x{sw} p{ph}x{pw} on {c}x{self.input[0]}x{self.input[1]} "
                f"→ {f}x{self.output[0]}x{self.output[1]}")


def check_weight(weight: Tensor, geometry: ConvGeometry) -> Tensor:
    expected = (geometry.out_channels, geometry.in_channels, *geometry.kernel)
    if tuple(weight.shape) != expected:
        raise InvalidSpecError(f"weight of shape {tuple(weight.shape)} does not fit {geometry.describe()} "
                               f"(expected {expected})")
    return weight


def as_map(t: Tensor, shape: tuple[int, ...], what: str) -> Tensor:
    """Accept ``shape`` or ``(1, *shape)`` or a flat vector; return ``shape``."""
    if t.numel() != math.prod(shape):
        raise InvalidSpecError(f"{what} of shape {tuple(t.shape)} does not fit the layer (expected {shape}, "
                               "one example)")
    return t.reshape(shape)
