"""Preprocessing: [0, 1] images into a model's input space and back (center, normalize, none)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InvalidSpecError

PREPROCESS_MODES = ("center", "normalize", "none")


@dataclass(frozen=True)
class Preprocess:
    """Scenario preprocessing after images are in [0, 1].

    ``center``: x - 0.5, the COPA paper's convention (Chen & Campbell, arXiv 2111.10178, and their
    code); ``normalize``: (x - mean) / std with the dataset's statistics, Inverting Gradients'
    convention (Geiping et al. 2020); ``none``: x unchanged. ``mean``/``std`` are needed for
    ``normalize`` only and dropped for the other modes; one-value statistics apply to every channel.
    """

    mode: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self):
        if self.mode not in PREPROCESS_MODES:
            raise InvalidSpecError(f"preprocess mode {self.mode!r} is invalid: accepted are "
                                   f"{', '.join(PREPROCESS_MODES)}")
        if self.mode != "normalize":
            object.__setattr__(self, "mean", ())
            object.__setattr__(self, "std", ())
            return
        mean, std = _float_tuple(self.mean, "mean"), _float_tuple(self.std, "std")
        if not mean or len(mean) != len(std):
            raise InvalidSpecError(f"preprocess 'normalize' needs mean and std of one value per channel; got mean "
                                   f"{mean!r} and std {std!r}")
        if not all(np.isfinite(mean)) or not all(np.isfinite(s) and s > 0 for s in std):
            raise InvalidSpecError(f"preprocess 'normalize' needs finite mean and positive std; got mean {mean!r} "
                                   f"and std {std!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def _shift_scale(self, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale) shaped C×1×1 so that model input = (x - shift) / scale."""
        if self.mode == "normalize":
            if len(self.mean) not in (1, channels):
                raise InvalidSpecError(f"preprocess 'normalize' has statistics for {len(self.mean)} channels but "
                                       f"the images have {channels}")
            shift = torch.tensor(self.mean, dtype=like.dtype, device=like.device)
            scale = torch.tensor(self.std, dtype=like.dtype, device=like.device)
        else:
            shift = torch.full((1,), 0.5 if self.mode == "center" else 0.0, dtype=like.dtype, device=like.device)
            scale = torch.ones(1, dtype=like.dtype, device=like.device)
        return shift.expand(channels)[:, None, None], scale.expand(channels)[:, None, None]

    def apply(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (N×C×H×W or C×H×W) -> model input space."""
        if self.mode == "none":
            return x01
        shift, scale = self._shift_scale(x01.shape[-3], x01)
        return (x01 - shift) / scale

    def undo(self, x: torch.Tensor) -> torch.Tensor:
        """Model input space -> [0, 1] image space (not clamped)."""
        if self.mode == "none":
            return x
        shift, scale = self._shift_scale(x.shape[-3], x)
        return x * scale + shift

    def bounds(self, channels: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The image box [0, 1] in model space, (lower, upper) each 1×C×1×1: Inverting Gradients' box constraint."""
        zeros = torch.zeros(1, channels, 1, 1, dtype=dtype, device=device)
        return self.apply(zeros), self.apply(zeros + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocess:
        if not isinstance(d, Mapping) or "mode" not in d:
            raise InvalidSpecError(f"preprocess {d!r} is invalid: expected a mapping with 'mode' (and 'mean', 'std')")
        unknown = sorted(set(d) - {"mode", "mean", "std"})
        if unknown:
            raise InvalidSpecError(f"unknown preprocess keys {unknown}: accepted are mode, mean, std")
        return cls(d["mode"], tuple(d.get("mean", ())), tuple(d.get("std", ())))


def _float_tuple(values: Any, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise InvalidSpecError(f"preprocess {name} {values!r} is invalid: give a sequence of numbers") from None
