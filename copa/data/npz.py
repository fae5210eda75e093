"""``npz:PATH``: arrays ``{split}_images``, ``{split}_labels`` [, ``{split}_index``, ``classes``] in an .npz archive.

Loaded with ``allow_pickle=False``; every malformed archive (empty, a single .npy, truncated, pickled arrays,
wrong shapes or dtypes) is named as such.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import DataUnavailableError, InvalidSpecError
from .locations import _file_signature, _relative_to_here
from .pixels import _channel_stats, _uint8_to_unit
from .specs import DATASETS, DatasetKind, OpenedSplit


_NPZ_READ_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zlib.error)


@functools.lru_cache(maxsize=8)
def _read_npz(signature: tuple[str, int, int]) -> dict[str, np.ndarray]:
    """Every array of an .npz archive (key: _file_signature, so a changed file is read again)."""
    path = signature[0]
    try:
        with open(path, "rb") as file:
            head = file.read(6)
    except OSError as err:
        raise DataUnavailableError(f"npz file {path} cannot be read ({err.strerror or err})") from err
    if not head:
        raise InvalidSpecError(f"{path} is not a readable .npz archive: the file is empty (0 bytes); expected "
                               f"named arrays saved with numpy.savez or numpy.savez_compressed")
    if head == b"\x93NUMPY":
        raise InvalidSpecError(f"{path} is a single .npy array, not an .npz archive of named arrays")
    if not head.startswith(b"PK"):
        raise InvalidSpecError(f"{path} is not a readable .npz archive: it has no zip header; expected named "
                               f"arrays saved with numpy.savez or numpy.savez_compressed")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InvalidSpecError(f"{path} is a single .npy array, not an .npz archive of named arrays")
        with loaded as archive:
            return {key: archive[key] for key in archive.files}
    except _NPZ_READ_ERRORS as err:
        if isinstance(err, ValueError) and "allow_pickle" in str(err):
            raise InvalidSpecError(f"{path} is not a readable .npz archive: it holds object (pickled) arrays, "
                                   f"which are never loaded; store numeric arrays and class names as a string "
                                   f"array") from err
        reason = " ".join(str(err).split())
        raise InvalidSpecError(f"{path} is not a readable .npz archive: it is truncated or corrupted "
                               f"({type(err).__name__}: {reason}); copy it again or re-create it with numpy.savez") from err


def _npz_arrays(path_text: str) -> tuple[Path, dict[str, np.ndarray]]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataUnavailableError(f"npz file {path} not found" + (" (it is a folder: use folder:PATH)"
                                                                   if path.is_dir() else _relative_to_here(path)))
    return path, _read_npz(_file_signature(path.resolve()))


def _npz_splits(arrays: Mapping[str, np.ndarray]) -> list[str]:
    return sorted(key[: -len("_images")] for key in arrays if key.endswith("_images"))


def _npz_classes(path: Path, arrays: Mapping[str, np.ndarray]) -> tuple[str, ...] | None:
    if "classes" not in arrays:
        return None
    classes = arrays["classes"]
    if classes.ndim != 1:
        raise InvalidSpecError(f"{path}: 'classes' has shape {classes.shape}: expected one name per class (1-D)")
    return tuple(str(name) for name in classes.tolist())


def _npz_split_images(path: Path, arrays: Mapping[str, np.ndarray], split: str) -> np.ndarray:
    """``{split}_images`` checked and shaped N×C×H×W (uint8 0..255 or float in [0, 1])."""
    key = f"{split}_images"
    if key not in arrays:
        raise InvalidSpecError(f"{path} has no split {split!r} (no array {key!r}); splits present: "
                               f"{', '.join(_npz_splits(arrays)) or 'none'}")
    images = arrays[key]
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise InvalidSpecError(f"{path}: {key!r} has shape {images.shape}: expected N×H×W (grey) or N×C×H×W "
                               f"with C = 1 or 3, channels first")
    if np.issubdtype(images.dtype, np.floating):
        if images.size and not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
            raise InvalidSpecError(f"{path}: {key!r} holds floats outside [0, 1]: store uint8 0..255 or "
                                   f"floats in [0, 1]")
    elif images.dtype != np.uint8:
        raise InvalidSpecError(f"{path}: {key!r} has dtype {images.dtype}: expected uint8 (0..255) or float in [0, 1]")
    return images


def _npz_integer_array(path: Path, arrays: Mapping[str, np.ndarray], key: str, length: int) -> np.ndarray:
    values = arrays[key]
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer) or len(values) != length:
        raise InvalidSpecError(f"{path}: {key!r} has shape {values.shape} and dtype {values.dtype}: expected "
                               f"{length} integers, one per image")
    if (values < 0).any():
        raise InvalidSpecError(f"{path}: {key!r} holds negative values, e.g. {int(values.min())}")
    return values.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _npz_stats(signature: tuple[str, int, int], split: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = Path(signature[0])
    return _channel_stats(_npz_split_images(path, _read_npz(signature), split))


def _open_npz(path_text: str, split: str, root: Path, download: bool) -> OpenedSplit:
    path, arrays = _npz_arrays(path_text)
    images = _npz_split_images(path, arrays, split)
    if f"{split}_labels" not in arrays:
        raise InvalidSpecError(f"{path} has {split}_images but no {split}_labels")
    labels = _npz_integer_array(path, arrays, f"{split}_labels", len(images))
    classes = _npz_classes(path, arrays) or tuple(str(c) for c in range(_npz_count_classes(path_text, root, download)))
    if labels.size and labels.max() >= len(classes):
        raise InvalidSpecError(f"{path}: {split}_labels holds label {int(labels.max())} but there are "
                               f"{len(classes)} classes")
    index_key = f"{split}_index"
    if index_key in arrays:
        official_index = _npz_integer_array(path, arrays, index_key, len(images))
        values, counts = np.unique(official_index, return_counts=True)
        if (counts > 1).any():
            raise InvalidSpecError(f"{path}: {index_key!r} repeats official indices {values[counts > 1][:10].tolist()}")
    else:
        official_index = np.arange(len(images), dtype=np.int64)
    stats_split = "train" if "train_images" in arrays else split
    mean, std = _npz_stats(_file_signature(path.resolve()), stats_split)
    to_unit = _uint8_to_unit if images.dtype == np.uint8 else \
        (lambda picked: torch.from_numpy(np.ascontiguousarray(picked, dtype=np.float32)))
    return OpenedSplit(official_index, labels, classes, mean, std, lambda positions: to_unit(images[positions]))


def _npz_count_classes(path_text: str, root: Path, download: bool) -> int:
    """len(classes) when the archive names them, else 1 + the largest label of any split."""
    path, arrays = _npz_arrays(path_text)
    classes = _npz_classes(path, arrays)
    if classes is not None:
        return len(classes)
    largest_label = max((int(arrays[key].max()) for key in arrays if key.endswith("_labels") and arrays[key].size),
                        default=0)
    return largest_label + 1


DATASETS.register("npz", DatasetKind(_open_npz, _npz_count_classes, takes_path=True), form="npz:PATH",
                  description="arrays {split}_images, {split}_labels [, {split}_index, classes] in an .npz file")
