"""Pixel values: uint8 images to float32 in [0, 1], and a dataset's per-channel statistics."""

from __future__ import annotations

import math

import numpy as np
import torch

def _stats_from_histograms(histograms: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and unbiased std per channel of uint8 images, from C×256 value counts (exact)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = histograms.astype(np.float64)
    n = counts.sum(axis=1)
    if not n.all():  # no images (an empty split): no statistics, and no numpy warning before the caller's error
        return tuple([math.nan] * len(n)), tuple([math.nan] * len(n))
    mean = counts @ values / n
    squared_deviation = (counts * (values[None, :] - mean[:, None]) ** 2).sum(axis=1)
    std = np.sqrt(squared_deviation / np.maximum(n - 1, 1))
    return tuple(mean.tolist()), tuple(std.tolist())


def _channel_histograms(images_uint8: np.ndarray) -> np.ndarray:
    """C×256 counts of each value per channel of N×C×H×W (or C×H×W) uint8 images."""
    by_channel = np.moveaxis(images_uint8, -3, 0)
    return np.stack([np.bincount(channel.ravel(), minlength=256) for channel in by_channel])


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and unbiased std of N×C×H×W images: uint8 (0..255) or float in [0, 1]."""
    if images.dtype == np.uint8:
        return _stats_from_histograms(_channel_histograms(images))
    per_channel = np.moveaxis(images, 1, 0).reshape(images.shape[1], -1)
    mean = per_channel.mean(axis=1, dtype=np.float64)
    std = per_channel.std(axis=1, dtype=np.float64, ddof=1 if per_channel.shape[1] > 1 else 0)
    return tuple(mean.tolist()), tuple(std.tolist())


def _uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)

