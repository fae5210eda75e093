"""``sample``: ten photographs that ship with scikit-image, 32×32 RGB, offline."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import skimage.data
import torch

from ..errors import DataUnavailableError
from .fitting import fit_to_input
from .pixels import _channel_stats, _uint8_to_unit
from .specs import DATASETS, DatasetKind, OpenedSplit, _check_official_split

SAMPLE_IMAGE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "clock", "brick",
                      "hubble_deep_field")
"""The photographs of ``sample``, in label order (functions of ``skimage.data`` that need no download)."""
SAMPLE_SIZE = 32  # CIFAR's size, the COPA paper's input


@functools.lru_cache(maxsize=1)
def _sample_images() -> np.ndarray:
    """10×3×32×32 uint8: each photograph in RGB, its centre square resized (antialiased) and quantised."""
    tiles = []
    for name in SAMPLE_IMAGE_NAMES:
        try:
            photo = np.asarray(getattr(skimage.data, name)())
        except Exception as err:  # noqa: BLE001 - scikit-image raises various errors for a missing file
            raise DataUnavailableError(f"scikit-image's sample photograph {name!r} cannot be loaded ({err}): "
                                       f"reinstall scikit-image") from err
        as_tensor = torch.from_numpy(photo).to(torch.float32).div(255.0)
        as_nchw = as_tensor[None, None] if as_tensor.ndim == 2 else as_tensor[..., :3].permute(2, 0, 1)[None]
        tiles.append(fit_to_input(as_nchw, (3, SAMPLE_SIZE, SAMPLE_SIZE)))
    return torch.cat(tiles).mul(255.0).round().to(torch.uint8).numpy()


def _open_sample(path: str, split: str, root: Path, download: bool) -> OpenedSplit:
    """The same 10 images for "train" and "test": a fixed, offline stand-in for a real dataset.

    Labels are fixed, arbitrary class ids: image i has label i and class name SAMPLE_IMAGE_NAMES[i].
    """
    _check_official_split("sample", split)
    images = _sample_images()
    mean, std = _channel_stats(images)
    return OpenedSplit(np.arange(len(images), dtype=np.int64), np.arange(len(images), dtype=np.int64),
                       SAMPLE_IMAGE_NAMES, mean, std, lambda positions: _uint8_to_unit(images[positions]))


DATASETS.register("sample", DatasetKind(_open_sample, lambda path, root, download: len(SAMPLE_IMAGE_NAMES),
                                        bundled=True),
                  form="sample", description="10 photographs shipped with scikit-image, 32×32 RGB, label i = "
                                             "photo i (offline; train and test are the same images)")
