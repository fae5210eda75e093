"""torchvision's datasets: cifar10, cifar100 (pickled batches), mnist, fashion-mnist (IDX files), under a data root.

Read with torchvision's own readers; a missing dataset's error names the files, the place and the offline
subset to use instead; ``download=True`` lets torchvision fetch them (a failed download leaves no empty folders).
"""

from __future__ import annotations

import functools
import gzip
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torchvision.datasets.mnist import read_image_file, read_label_file

from ..errors import DataUnavailableError, InvalidSpecError
from .locations import OFFLINE_SUBSETS, _file_signature
from .pixels import _uint8_to_unit
from .specs import DATASETS, DatasetKind, OpenedSplit, _check_official_split


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


def _open_cifar(info: _TorchvisionDataset, root: Path, split: str, download: bool) -> OpenedSplit:
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
    return OpenedSplit(
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


def _open_idx(info: _TorchvisionDataset, root: Path, split: str, download: bool) -> OpenedSplit:
    files = _find_idx_files(info, root, split)
    if files is None and download:
        _download(info, root, split)
        files = _find_idx_files(info, root, split)
    if files is None:
        raise DataUnavailableError(f"{info.title} {split} split not found: {_where_to_put_files(info, root, split)}")
    images, labels = _read_idx_pair(*(_file_signature(path) for path in files))
    return OpenedSplit(
        official_index=np.arange(len(images), dtype=np.int64),
        labels=labels,
        classes=tuple(info.dataset_class.classes),
        mean=info.mean,
        std=info.std,
        read_images=lambda positions: _uint8_to_unit(images[positions]),
    )


def _torchvision_kind(info: _TorchvisionDataset) -> DatasetKind:
    opener = _open_cifar if info.layout == "cifar" else _open_idx

    def open_split(path: str, split: str, root: Path, download: bool) -> OpenedSplit:
        _check_official_split(info.title, split)
        return opener(info, root, split, download)

    return DatasetKind(open_split=open_split, count_classes=lambda path, root, download: info.classes)


for _info in _TORCHVISION_DATASETS.values():
    DATASETS.register(_info.name, _torchvision_kind(_info), form=_info.name,
                      description=f"{_info.title} via torchvision under --data-root ({_info.home})")
