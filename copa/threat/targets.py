"""The targets file: the ground truth that scores the reconstruction of an observation file (``copa attack
--observation FILE --targets FILE.npz``) — the client's images, which the observation file never holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataUnavailableError, InvalidSpecError
from .observation import GroundTruth, Observation


def load_targets(path: str | Path, observation: Observation):
    """The :class:`~copa.threat.GroundTruth` in an npz (``images`` N×C×H×W in [0, 1], optional ``labels``)
    to score an observation's reconstruction; shapes must match the observation. The ``images.npz`` that
    ``copa attack`` writes is accepted as it is: its ``target`` is the images (its ``reconstruction`` and
    ``indices`` are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"targets file {str(path)!r} does not exist (or is not a file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:
        raise InvalidSpecError(f"targets file {str(path)!r} cannot be read as an npz of arrays "
                               f"({type(err).__name__}: {err})") from None
    if "images" not in arrays and "target" in arrays:  # copa attack's own images.npz
        arrays = {"images": arrays["target"], **({"labels": arrays["labels"]} if "labels" in arrays else {})}
    if "images" not in arrays:
        raise InvalidSpecError(f"targets file {str(path)!r} has no array 'images' (found {sorted(arrays)}): expected "
                               f"'images' N×C×H×W in [0, 1] and optional 'labels', or the 'target' of an images.npz "
                               f"that copa attack wrote")
    unknown = sorted(set(arrays) - {"images", "labels"})
    if unknown:
        raise InvalidSpecError(f"targets file {str(path)!r} has unknown arrays {unknown}: accepted are images, labels "
                               f"(or an images.npz of copa attack: target, reconstruction, indices)")
    images = arrays["images"]
    expected = (observation.batch_size, *observation.input_shape)
    if images.dtype.kind != "f" or tuple(images.shape) != expected:
        raise InvalidSpecError(f"targets file {str(path)!r}: 'images' is {images.dtype} of shape {tuple(images.shape)}:"
                               f" expected float of shape {expected} (the observation's batch and input shape)")
    if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise InvalidSpecError(f"targets file {str(path)!r}: 'images' must be finite and in [0, 1] "
                               f"(found range [{np.nanmin(images):.4g}, {np.nanmax(images):.4g}])")
    labels = arrays.get("labels")
    if labels is None:
        if observation.labels is None:
            raise InvalidSpecError(f"targets file {str(path)!r} has no 'labels' and the observation has none: add "
                                   f"'labels' (int, shape ({observation.batch_size},))")
        labels_t = observation.labels.detach().cpu()
    else:
        if labels.dtype.kind not in "iu" or tuple(labels.shape) != (observation.batch_size,):
            raise InvalidSpecError(f"targets file {str(path)!r}: 'labels' is {labels.dtype} of shape "
                                   f"{tuple(labels.shape)}: expected integers of shape ({observation.batch_size},)")
        if labels.min() < 0 or labels.max() >= observation.num_classes:
            raise InvalidSpecError(f"targets file {str(path)!r}: 'labels' {labels.tolist()} are not class indices in "
                                   f"[0, {observation.num_classes})")
        labels_t = torch.as_tensor(labels, dtype=torch.int64)
    images01 = torch.as_tensor(images).to(device=observation.device, dtype=observation.dtype)
    return GroundTruth(images01=images01, labels=labels_t.to(observation.device),
                       indices=tuple(range(observation.batch_size)), preprocess=observation.preprocess)
