"""``folder:PATH``: your images in class subfolders (torchvision's ImageFolder layout), optionally under
train/ and test/; read with torchvision's own ``make_dataset`` and ``default_loader``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset

from ..errors import DataUnavailableError, InvalidSpecError
from .locations import _file_signature, _relative_to_here
from .pixels import _channel_histograms, _stats_from_histograms, _uint8_to_unit
from .specs import DATASETS, DatasetKind, OFFICIAL_SPLITS, OpenedSplit


def _folder_split_dirs(folder: Path) -> list[Path]:
    """The split subfolders (train/, test/, ...) if ``folder`` is laid out by split, else []."""
    return [folder / split for split in OFFICIAL_SPLITS if (folder / split).is_dir()]


def _folder_root(path_text: str) -> Path:
    folder = Path(path_text).expanduser()
    if not folder.is_dir():
        hint = " (it is a file: use npz:PATH for .npz)" if folder.is_file() else _relative_to_here(folder)
        raise DataUnavailableError(f"image folder {folder} not found{hint}")
    return folder


def _folder_split_dir(folder: Path, split: str) -> Path:
    """PATH/<split> when it is a folder; PATH itself when PATH has no split subfolders."""
    if (folder / split).is_dir():
        return folder / split
    split_dirs = _folder_split_dirs(folder)
    if split_dirs:
        raise InvalidSpecError(f"image folder {folder} has split subfolders {', '.join(d.name for d in split_dirs)} "
                               f"but no {split!r}")
    return folder


def _folder_classes(folder: Path) -> list[str]:
    """Class names: subfolders of every split folder together (so labels agree across splits)."""
    try:
        return sorted({name for d in (_folder_split_dirs(folder) or [folder]) for name in find_classes(d)[0]})
    except FileNotFoundError as err:
        raise InvalidSpecError(f"image folder {folder}: {err} Expected one subfolder of images per class "
                               f"(torchvision ImageFolder layout)") from err


def _folder_samples(folder: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(file, label)]) in ImageFolder's sorted order (its own make_dataset)."""
    split_dir = _folder_split_dir(folder, split)
    classes = _folder_classes(folder)
    present = {c: i for i, c in enumerate(classes) if (split_dir / c).is_dir()}
    samples = make_dataset(str(split_dir), present, extensions=IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise InvalidSpecError(f"image folder {split_dir} holds no images ({', '.join(IMG_EXTENSIONS)}) "
                               f"in its class subfolders")
    return classes, samples


def _decode_image(path: str) -> np.ndarray:
    """One image file as 3×H×W uint8 RGB (grey and palette images are converted)."""
    try:
        return np.asarray(default_loader(path), dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, SyntaxError, ValueError) as err:  # PIL: unidentified, truncated, broken files
        raise InvalidSpecError(f"image file {path} cannot be decoded ({type(err).__name__}: {err}): replace or "
                               f"remove it") from err


@functools.lru_cache(maxsize=8)
def _folder_stats(files: tuple[tuple[str, int, int], ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Statistics over image files (key: their _file_signature), one image in memory at a time."""
    histograms = sum(_channel_histograms(_decode_image(signature[0])) for signature in files)
    return _stats_from_histograms(histograms)


def _stack_same_size(images: list[np.ndarray], files: list[str]) -> np.ndarray:
    sizes = {image.shape[1:] for image in images}
    if len(sizes) > 1:
        listing = ", ".join(f"{Path(f).name} {image.shape[2]}×{image.shape[1]}" for f, image in zip(files, images))
        raise InvalidSpecError(f"images picked from the folder differ in size ({listing}): pick images of one size "
                               f"or resize the folder's images to a common size")
    return np.stack(images)


def _open_folder(path_text: str, split: str, root: Path, download: bool) -> OpenedSplit:
    folder = _folder_root(path_text)
    classes, samples = _folder_samples(folder, split)
    files = [file for file, _ in samples]
    # A flat folder is the same images for every split; a split folder has its statistics from train/.
    stats_split = "train" if (folder / "train").is_dir() else split
    stats_files = files if stats_split == split else [file for file, _ in _folder_samples(folder, stats_split)[1]]
    mean, std = _folder_stats(tuple(_file_signature(Path(file)) for file in stats_files))

    def read_images(positions: np.ndarray) -> torch.Tensor:
        picked = [files[p] for p in positions.tolist()]
        return _uint8_to_unit(_stack_same_size([_decode_image(file) for file in picked], picked))

    return OpenedSplit(np.arange(len(samples), dtype=np.int64),
                       np.array([label for _, label in samples], dtype=np.int64), tuple(classes), mean, std, read_images)


def _folder_count_classes(path_text: str, root: Path, download: bool) -> int:
    return len(_folder_classes(_folder_root(path_text)))


DATASETS.register("folder", DatasetKind(_open_folder, _folder_count_classes, takes_path=True), form="folder:PATH",
                  description="your images in class subfolders (torchvision ImageFolder), optionally under "
                              "train/ and test/")
