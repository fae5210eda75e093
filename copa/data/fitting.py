"""Fitting images to a model's input shape: channels (grey ↔ RGB) and size (resize to cover, centre crop)."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF

from ..errors import InvalidSpecError


def fit_to_input(images01: torch.Tensor, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """Adapt N×C×H×W images in [0, 1] to a model's (C, H, W).

    Channels: grey→RGB repeats the channel; RGB→grey uses torchvision's rgb_to_grayscale (ITU-R
    601-2 luma weights). Size: if H, W differ, resize (antialiased bilinear, torchvision v2
    ``resize``) so the image covers the target — for a square target, the shorter side becomes
    the target side — then ``center_crop``. The result is clamped to [0, 1].
    """
    if images01.ndim != 4 or not images01.is_floating_point():
        raise InvalidSpecError(f"fit_to_input needs float N×C×H×W images; got {images01.dtype} of shape "
                               f"{tuple(images01.shape)}")
    if len(in_shape) != 3 or any(int(n) < 1 for n in in_shape):
        raise InvalidSpecError(f"input shape {tuple(in_shape)!r} is invalid: expected (C, H, W) of positive sizes")
    channels, height, width = (int(n) for n in in_shape)
    have = images01.shape[1]
    if have != channels:
        if (have, channels) == (1, 3):
            images01 = images01.expand(-1, 3, -1, -1)
        elif (have, channels) == (3, 1):
            images01 = TF.rgb_to_grayscale(images01, num_output_channels=1)
        else:
            raise InvalidSpecError(f"cannot fit {have}-channel images to a {channels}-channel input: "
                                   f"accepted are 1↔3 channel conversions")
    h, w = images01.shape[-2:]
    if (h, w) == (height, width):
        return images01.contiguous()
    scale = max(height / h, width / w)
    covering = [max(height, round(h * scale)), max(width, round(w * scale))]
    resized = TF.resize(images01, covering, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(resized, [height, width]).clamp_(0.0, 1.0).contiguous()
