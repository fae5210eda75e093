"""Datasets, addressed by official index, and the preprocessing between images and a model.

A dataset *spec* names where images come from::

    cifar10 | cifar100 | mnist | fashion-mnist    torchvision's datasets under a data root
    sample                                        10 photographs shipped with scikit-image (offline)
    npz:PATH                                      arrays in an .npz archive (e.g. an offline subset)
    folder:PATH                                   a folder of images in class subfolders (ImageFolder)

:func:`load_images` returns an :class:`ImageSet`: float32 images in [0, 1], N×C×H×W, exactly as
stored (no resizing), with their labels and the dataset's per-channel statistics. Images are
addressed by *official index*: the position torchvision's dataset object gives the image, so
``cifar10`` train index 3 is the image ``torchvision.datasets.CIFAR10(train=True)[3]`` returns,
and an npz subset that stores ``{split}_index`` is addressed by those stored indices.

:class:`Preprocess` maps [0, 1] images into the model's input space and back, and
:func:`fit_to_input` adapts images to a model's input shape.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset
from torchvision.datasets.mnist import read_image_file, read_label_file

from .errors import DataUnavailableError, InvalidSpecError, UnknownNameError
from .registry import Registry

__all__ = [
    "DATASETS", "DEFAULT_DATA_ROOT", "PREPROCESS_MODES", "SAMPLE_IMAGE_NAMES", "DatasetKind", "ImageSet",
    "Preprocess", "available_indices", "dataset_size", "fit_to_input", "load_images", "num_classes",
]

DEFAULT_DATA_ROOT = Path(os.environ.get("COPA_DATA_ROOT") or "./data")
"""Root of torchvision's dataset folders when ``root`` is not given: ``$COPA_DATA_ROOT``, else ./data."""

OFFICIAL_SPLITS = ("train", "test")
PREPROCESS_MODES = ("center", "normalize", "none")
OFFLINE_SUBSETS = "../shared/data"  # where this project's offline subsets live, relative to the checkout


# ---------------------------------------------------------------------------------------------
# The image set


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Images picked from one split of one dataset, in the order their indices were asked for."""

    images: torch.Tensor = field(repr=False)  # float32 in [0, 1], N×C×H×W (C = 1 grey, 3 RGB), as stored
    labels: torch.Tensor = field(repr=False)  # int64, N
    indices: tuple[int, ...]                  # official indices, as requested
    classes: tuple[str, ...]                  # class names; labels index into them
    mean: tuple[float, ...]                   # the dataset's per-channel statistics (see load_images)
    std: tuple[float, ...]
    spec: str                                 # the dataset spec the images came from
    split: str

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------------------------------------
# What each kind of dataset hands over


@dataclass(frozen=True)
class _Split:
    """One opened split: what it holds, and a reader of the images at given storage positions."""

    official_index: np.ndarray                       # int64, the official index of each stored image
    labels: np.ndarray                               # int64, one per stored image
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    read_images: Callable[[np.ndarray], torch.Tensor]  # positions -> float32 N×C×H×W in [0, 1]


@dataclass(frozen=True)
class DatasetKind:
    """How one kind of dataset spec is opened: the object :data:`DATASETS` holds for each name.

    ``open_split(path, split, root, download)`` returns the opened split and
    ``count_classes(path, root, download)`` the number of classes; ``path`` is the text after
    ``kind:`` in the spec ("" for kinds without a path).
    """

    open_split: Callable[[str, str, Path, bool], _Split]
    count_classes: Callable[[str, Path, bool], int]
    takes_path: bool = False


DATASETS: Registry[DatasetKind] = Registry("dataset")


# ---------------------------------------------------------------------------------------------
# Public functions


def load_images(spec: str, split: str, indices: Sequence[int], *, root: str | os.PathLike | None = None,
                download: bool = False) -> ImageSet:
    """Load the images at official ``indices`` of ``split`` of dataset ``spec``.

    ``mean``/``std`` are published constants for the torchvision datasets (see
    :data:`_TORCHVISION_DATASETS`); for ``npz``, ``folder`` and ``sample`` they are computed per
    channel over every image of the ``train`` split when the dataset has one, else of the requested
    split (unbiased std, as Inverting Gradients computes them: Geiping et al. 2020,
    inversefed/data/data.py ``_get_meanstd``).
    """
    kind, path = _parse_spec(spec)
    split = _check_split_name(split)
    wanted = validate_indices(indices)
    opened = kind.open_split(path, split, _resolve_root(root), download)
    positions = _positions_of(opened.official_index, wanted, f"{spec} {split}")
    return ImageSet(
        images=opened.read_images(positions).contiguous(),
        labels=torch.from_numpy(opened.labels[positions].astype(np.int64)),
        indices=tuple(int(i) for i in wanted),
        classes=opened.classes,
        mean=opened.mean,
        std=opened.std,
        spec=spec,
        split=split,
    )


def dataset_size(spec: str, split: str, *, root: str | os.PathLike | None = None, download: bool = False) -> int:
    """How many images ``split`` of ``spec`` holds (for a subset: how many it stores)."""
    kind, path = _parse_spec(spec)
    return len(kind.open_split(path, _check_split_name(split), _resolve_root(root), download).official_index)


def available_indices(spec: str, split: str, *, root: str | os.PathLike | None = None,
                      download: bool = False) -> np.ndarray:
    """The official indices present in ``split`` of ``spec``, ascending (int64)."""
    kind, path = _parse_spec(spec)
    opened = kind.open_split(path, _check_split_name(split), _resolve_root(root), download)
    return np.sort(opened.official_index)


def num_classes(spec: str, *, root: str | os.PathLike | None = None, download: bool = False) -> int:
    """How many classes ``spec`` has (torchvision's datasets answer without their files)."""
    kind, path = _parse_spec(spec)
    return kind.count_classes(path, _resolve_root(root), download)


# ---------------------------------------------------------------------------------------------
# Checking the arguments


def _accepted_forms() -> str:
    return ", ".join(entry.meta.get("form", entry.name) for entry in DATASETS)


def _parse_spec(spec: str) -> tuple[DatasetKind, str]:
    """Split ``kind[:PATH]`` and look the kind up."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidSpecError(f"dataset spec {spec!r} is invalid: accepted forms are {_accepted_forms()}")
    name, has_colon, path = spec.strip().partition(":")
    try:
        entry = DATASETS.entry(name)
    except UnknownNameError as err:
        if spec.endswith(".npz"):
            raise UnknownNameError(f"{err} For an .npz file, write npz:{spec}.") from None
        if "/" in spec or os.sep in spec:
            raise UnknownNameError(f"{err} For a file or folder, write npz:{spec} or folder:{spec}.") from None
        raise
    if entry.obj.takes_path and not path:
        raise InvalidSpecError(f"dataset spec {spec!r} names no path: write {entry.meta['form']}")
    if not entry.obj.takes_path and has_colon:
        raise InvalidSpecError(f"dataset spec {spec!r} is invalid: {name} takes no ':' argument; "
                               f"accepted forms are {_accepted_forms()}")
    return entry.obj, path


def _check_split_name(split: str) -> str:
    if not isinstance(split, str) or not split:
        raise InvalidSpecError(f"split {split!r} is invalid: give a split name such as 'train' or 'test'")
    return split


def _check_official_split(title: str, split: str) -> None:
    if split not in OFFICIAL_SPLITS:
        raise InvalidSpecError(f"split {split!r} is invalid for {title}: accepted are {', '.join(OFFICIAL_SPLITS)}")


def validate_indices(indices: Sequence[int]) -> np.ndarray:
    """Official indices as a 1-D int64 array: non-empty, non-negative, no repeats."""
    if isinstance(indices, (int, np.integer)):
        raise InvalidSpecError(f"indices {indices!r} is a single number: give a sequence, e.g. [{indices}]")
    huge = [i for i in np.ravel(np.asarray(indices, dtype=object)) if isinstance(i, int) and not -2 ** 63 <= i < 2 ** 63]
    if huge:
        raise InvalidSpecError(f"index {huge[0]} is out of range: official indices are integers from 0 to the "
                               f"split's size - 1")
    wanted = np.asarray(indices)
    if wanted.size == 0:
        raise InvalidSpecError("indices are empty: give at least one image index")
    if wanted.ndim != 1 or wanted.dtype == bool or not np.issubdtype(wanted.dtype, np.integer):
        raise InvalidSpecError(f"indices {list(np.ravel(wanted))[:10]!r} are invalid: give a flat sequence of ints")
    wanted = wanted.astype(np.int64)
    negative = wanted[wanted < 0]
    if negative.size:
        raise InvalidSpecError(f"indices {negative.tolist()} are negative: official indices start at 0")
    values, counts = np.unique(wanted, return_counts=True)
    if (counts > 1).any():
        raise InvalidSpecError(f"indices {values[counts > 1].tolist()} are repeated: each image may be asked for once")
    return wanted


def summarise_ranges(sorted_indices: np.ndarray, most: int = 8) -> str:
    """'0–931, 10000–10931': the runs of consecutive values in an ascending array."""
    if sorted_indices.size == 0:
        return "none"
    breaks = np.flatnonzero(np.diff(sorted_indices) != 1)
    starts = np.concatenate([sorted_indices[:1], sorted_indices[breaks + 1]])
    ends = np.concatenate([sorted_indices[breaks], sorted_indices[-1:]])
    runs = [f"{a}" if a == b else f"{a}–{b}" for a, b in zip(starts[:most].tolist(), ends[:most].tolist())]
    more = f", … ({len(starts)} runs in all)" if len(starts) > most else ""
    return ", ".join(runs) + more


def _positions_of(official_index: np.ndarray, wanted: np.ndarray, where: str) -> np.ndarray:
    """Storage positions of the wanted official indices; error naming any that are absent."""
    order = np.argsort(official_index, kind="stable")
    sorted_index = official_index[order]
    slot = np.minimum(np.searchsorted(sorted_index, wanted), max(len(sorted_index) - 1, 0))
    found = sorted_index[slot] == wanted if len(sorted_index) else np.zeros(len(wanted), bool)
    if not found.all():
        missing = wanted[~found]
        shown = ", ".join(map(str, missing[:10].tolist())) + (", …" if missing.size > 10 else "")
        noun = "index {} is" if missing.size == 1 else "indices {} are"
        raise InvalidSpecError(f"{noun.format(shown)} not in {where} ({len(sorted_index)} images; official indices "
                               f"present: {summarise_ranges(sorted_index)})")
    return order[slot]


def dataset_location(spec: str, root: str | os.PathLike | None = None) -> Path | None:
    """Where a dataset's images are read from: the file or folder of ``npz:PATH`` / ``folder:PATH``, the data
    root of a torchvision dataset, None for the bundled ``sample`` photographs (public, in scikit-image).
    The isolated attack worker hides this path (:mod:`copa.bench.isolation`)."""
    kind, path = _parse_spec(spec)
    if kind.takes_path:
        return Path(path).expanduser().resolve()
    if kind.open_split is _open_sample:
        return None
    return _resolve_root(root)


def _resolve_root(root: str | os.PathLike | None) -> Path:
    return Path(DEFAULT_DATA_ROOT if root is None else root).expanduser().resolve()


def _file_signature(path: Path) -> tuple[str, int, int]:
    """(path, mtime, size): a cache key that changes when the file does."""
    stat = path.stat()
    return str(path), stat.st_mtime_ns, stat.st_size


# ---------------------------------------------------------------------------------------------
# Per-channel statistics


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


# ---------------------------------------------------------------------------------------------
# torchvision's datasets: cifar10, cifar100, mnist, fashion-mnist


@dataclass(frozen=True)
class _TorchvisionDataset:
    name: str
    title: str
    dataset_class: type
    layout: str            # "cifar": pickled batches in `folder`; "idx": MNIST-style IDX files
    folder: str            # cifar: extracted folder under ROOT; idx: torchvision's class folder (ROOT/<folder>/raw)
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    home: str              # where the files are published
    offline_subset: str | None = None


# Normalisation constants. CIFAR-10/100: Inverting Gradients' inversefed/consts.py (Geiping et al.
# 2020), computed over the training sets. MNIST: the PyTorch examples' mnist/main.py (0.1307, 0.3081).
# Fashion-MNIST: the widely used training-set values (0.2860, 0.3530).
_TORCHVISION_DATASETS = {
    info.name: info
    for info in (
        _TorchvisionDataset(
            "cifar10", "CIFAR-10", torchvision.datasets.CIFAR10, "cifar", "cifar-10-batches-py", 10,
            (0.4914672374725342, 0.4822617471218109, 0.4467701315879822),
            (0.24703224003314972, 0.24348513782024384, 0.26158785820007324),
            "https://www.cs.toronto.edu/~kriz/cifar.html", "cifar10_subset.npz"),
        _TorchvisionDataset(
            "cifar100", "CIFAR-100", torchvision.datasets.CIFAR100, "cifar", "cifar-100-python", 100,
            (0.5071598291397095, 0.4866936206817627, 0.44120192527770996),
            (0.2673342823982239, 0.2564384639263153, 0.2761504650115967),
            "https://www.cs.toronto.edu/~kriz/cifar.html"),
        _TorchvisionDataset(
            "mnist", "MNIST", torchvision.datasets.MNIST, "idx", "MNIST", 10, (0.1307,), (0.3081,),
            torchvision.datasets.MNIST.mirrors[0], "mnist_subset.npz"),
        _TorchvisionDataset(
            "fashion-mnist", "Fashion-MNIST", torchvision.datasets.FashionMNIST, "idx", "FashionMNIST", 10,
            (0.2860,), (0.3530,), torchvision.datasets.FashionMNIST.mirrors[0]),
    )
}


def _idx_file_stems(split: str) -> tuple[str, str]:
    prefix = "train" if split == "train" else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _where_to_put_files(info: _TorchvisionDataset, root: Path, split: str, offer_download: bool = True) -> str:
    """How to make a missing dataset available: the files, the place, and the alternatives."""
    if info.layout == "cifar":
        archive = torchvision.datasets.CIFAR10.filename if info.name == "cifar10" else \
            torchvision.datasets.CIFAR100.filename
        place = f"expected {root / info.folder}/ (extract {archive} from {info.home} into {root})"
    else:
        images, labels = _idx_file_stems(split)
        place = (f"expected {images}[.gz] and {labels}[.gz] in {root / info.folder / 'raw'}/ or {root}/ "
                 f"(from {info.home})")
    download = ", or pass download=True (--download)" if offer_download else ""
    subset = f", or use the offline subset npz:{OFFLINE_SUBSETS}/{info.offline_subset}" if info.offline_subset else ""
    return f"{place}{download}{subset}"


def _download(info: _TorchvisionDataset, root: Path, split: str) -> None:
    """Let torchvision's class fetch the files into ``root``; on failure, remove the folders it made empty."""
    existed = {path for path in (root, *root.parents) if path.exists()}
    try:
        info.dataset_class(str(root), train=split == "train", download=True)
    except (OSError, RuntimeError, ValueError, EOFError, tarfile.TarError) as err:
        _remove_empty_folders(root, keep=existed)
        reason = " ".join(str(err).split())  # torchvision's messages span lines
        raise DataUnavailableError(f"{info.title} could not be downloaded ({type(err).__name__}: {reason}): "
                                   f"{_where_to_put_files(info, root, split, offer_download=False)}") from err


def _remove_empty_folders(root: Path, keep: set[Path]) -> None:
    """Remove the empty folders under and above ``root`` that did not exist before (a failed download's)."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    for folder in (root, *root.parents):
        if folder in keep or not folder.is_dir() or any(folder.iterdir()):
            break
        folder.rmdir()


@functools.lru_cache(maxsize=4)
def _cifar_dataset(name: str, root: str, split: str) -> Any:
    """torchvision's CIFAR dataset object (it reads the whole split; kept for later calls)."""
    info = _TORCHVISION_DATASETS[name]
    return info.dataset_class(root, train=split == "train", download=False)


def _open_cifar(info: _TorchvisionDataset, root: Path, split: str, download: bool) -> _Split:
    folder = root / info.folder
    if download:
        try:
            _cifar_dataset(info.name, str(root), split)
        except RuntimeError:  # missing or failing torchvision's md5 check
            _download(info, root, split)
    elif not folder.is_dir():
        raise DataUnavailableError(f"{info.title} not found: {_where_to_put_files(info, root, split)}")
    try:
        dataset = _cifar_dataset(info.name, str(root), split)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise DataUnavailableError(f"{info.title} at {folder}/ is incomplete or corrupted ({err}): "
                                   f"{_where_to_put_files(info, root, split)}") from err
    images_hwc = dataset.data  # N×H×W×C uint8, as torchvision stores it
    return _Split(
        official_index=np.arange(len(images_hwc), dtype=np.int64),
        labels=np.asarray(dataset.targets, dtype=np.int64),
        classes=tuple(dataset.classes),
        mean=info.mean,
        std=info.std,
        read_images=lambda positions: _uint8_to_unit(images_hwc[positions]).permute(0, 3, 1, 2),
    )


def _find_idx_files(info: _TorchvisionDataset, root: Path, split: str) -> tuple[Path, Path] | None:
    """The split's images and labels IDX files (plain or .gz), in ROOT/<Class>/raw or ROOT itself."""
    found = []
    for stem in _idx_file_stems(split):
        candidates = [folder / name for folder in (root / info.folder / "raw", root) for name in (stem, stem + ".gz")]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            return None
        found.append(existing[0])
    return found[0], found[1]


def _read_idx(path: Path, reader: Callable[[str], torch.Tensor]) -> torch.Tensor:
    """Read an IDX file with torchvision's reader, which wants an uncompressed file path."""
    try:
        if path.suffix != ".gz":
            return reader(str(path))
        with tempfile.TemporaryDirectory(prefix="copa-idx-") as tmp:
            plain = Path(tmp) / path.stem
            with gzip.open(path, "rb") as compressed, open(plain, "wb") as out:
                shutil.copyfileobj(compressed, out)
            return reader(str(plain))
    except (OSError, EOFError, AssertionError, ValueError, TypeError, KeyError, RuntimeError, zlib.error) as err:
        raise InvalidSpecError(f"{path} is not a valid IDX file ({type(err).__name__}: {err})") from err


@functools.lru_cache(maxsize=4)
def _read_idx_pair(images_file: tuple[str, int, int],
                   labels_file: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """N×1×H×W uint8 images and int64 labels from two IDX files (keys: _file_signature)."""
    images = _read_idx(Path(images_file[0]), read_image_file).numpy()[:, None]
    labels = _read_idx(Path(labels_file[0]), read_label_file).numpy()
    if len(images) != len(labels):
        raise InvalidSpecError(f"{images_file[0]} holds {len(images)} images but {labels_file[0]} "
                               f"holds {len(labels)} labels")
    return images, labels


def _open_idx(info: _TorchvisionDataset, root: Path, split: str, download: bool) -> _Split:
    files = _find_idx_files(info, root, split)
    if files is None and download:
        _download(info, root, split)
        files = _find_idx_files(info, root, split)
    if files is None:
        raise DataUnavailableError(f"{info.title} {split} split not found: {_where_to_put_files(info, root, split)}")
    images, labels = _read_idx_pair(*(_file_signature(path) for path in files))
    return _Split(
        official_index=np.arange(len(images), dtype=np.int64),
        labels=labels,
        classes=tuple(info.dataset_class.classes),
        mean=info.mean,
        std=info.std,
        read_images=lambda positions: _uint8_to_unit(images[positions]),
    )


def _torchvision_kind(info: _TorchvisionDataset) -> DatasetKind:
    opener = _open_cifar if info.layout == "cifar" else _open_idx

    def open_split(path: str, split: str, root: Path, download: bool) -> _Split:
        _check_official_split(info.title, split)
        return opener(info, root, split, download)

    return DatasetKind(open_split=open_split, count_classes=lambda path, root, download: info.classes)


for _info in _TORCHVISION_DATASETS.values():
    DATASETS.register(_info.name, _torchvision_kind(_info), form=_info.name,
                      description=f"{_info.title} via torchvision under --data-root ({_info.home})")


# ---------------------------------------------------------------------------------------------
# npz:PATH


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
                                                                   if path.is_dir() else ""))
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


def _open_npz(path_text: str, split: str, root: Path, download: bool) -> _Split:
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
    return _Split(official_index, labels, classes, mean, std, lambda positions: to_unit(images[positions]))


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


# ---------------------------------------------------------------------------------------------
# folder:PATH


def _folder_split_dirs(folder: Path) -> list[Path]:
    """The split subfolders (train/, test/, ...) if ``folder`` is laid out by split, else []."""
    return [folder / split for split in OFFICIAL_SPLITS if (folder / split).is_dir()]


def _folder_root(path_text: str) -> Path:
    folder = Path(path_text).expanduser()
    if not folder.is_dir():
        raise DataUnavailableError(f"image folder {folder} not found" + (" (it is a file: use npz:PATH for .npz)"
                                                                         if folder.is_file() else ""))
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


def _open_folder(path_text: str, split: str, root: Path, download: bool) -> _Split:
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

    return _Split(np.arange(len(samples), dtype=np.int64), np.array([label for _, label in samples], dtype=np.int64),
                  tuple(classes), mean, std, read_images)


def _folder_count_classes(path_text: str, root: Path, download: bool) -> int:
    return len(_folder_classes(_folder_root(path_text)))


DATASETS.register("folder", DatasetKind(_open_folder, _folder_count_classes, takes_path=True), form="folder:PATH",
                  description="your images in class subfolders (torchvision ImageFolder), optionally under "
                              "train/ and test/")


# ---------------------------------------------------------------------------------------------
# sample: ten photographs that ship with scikit-image

SAMPLE_IMAGE_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "clock", "brick",
                      "hubble_deep_field")
"""The photographs of ``sample``, in label order (functions of ``skimage.data`` that need no download)."""
SAMPLE_SIZE = 32  # CIFAR's size, the COPA paper's input


@functools.lru_cache(maxsize=1)
def _sample_images() -> np.ndarray:
    """10×3×32×32 uint8: each photograph in RGB, its centre square resized (antialiased) and quantised."""
    import skimage.data

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


def _open_sample(path: str, split: str, root: Path, download: bool) -> _Split:
    """The same 10 images for "train" and "test": a fixed, offline stand-in for a real dataset.

    Labels are fixed, arbitrary class ids: image i has label i and class name SAMPLE_IMAGE_NAMES[i].
    """
    _check_official_split("sample", split)
    images = _sample_images()
    mean, std = _channel_stats(images)
    return _Split(np.arange(len(images), dtype=np.int64), np.arange(len(images), dtype=np.int64),
                  SAMPLE_IMAGE_NAMES, mean, std, lambda positions: _uint8_to_unit(images[positions]))


DATASETS.register("sample", DatasetKind(_open_sample, lambda path, root, download: len(SAMPLE_IMAGE_NAMES)),
                  form="sample", description="10 photographs shipped with scikit-image, 32×32 RGB, label i = "
                                             "photo i (offline; train and test are the same images)")


# ---------------------------------------------------------------------------------------------
# Preprocessing


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


# ---------------------------------------------------------------------------------------------
# Fitting images to a model's input


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
