"""A dataset spec, the kinds of dataset it names (:data:`DATASETS`), and reading images by official index.

Each kind registers a :class:`DatasetKind` from its own room (torchvision_datasets, npz, folder, sample);
this room parses ``kind[:PATH]``, checks the split and the indices, and asks the kind for the images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InvalidSpecError, UnknownNameError
from ..registry import Registry
from .indices import _positions_of, validate_indices
from .locations import _resolve_root

OFFICIAL_SPLITS = ("train", "test")


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


@dataclass(frozen=True)
class OpenedSplit:
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
    ``kind:`` in the spec ("" for kinds without a path). ``bundled``: the images ship with an installed
    package (``sample``), so they are read from no file or data root of the user's.
    """

    open_split: Callable[[str, str, Path, bool], OpenedSplit]
    count_classes: Callable[[str, Path, bool], int]
    takes_path: bool = False
    bundled: bool = False


DATASETS: Registry[DatasetKind] = Registry("dataset")


# ---------------------------------------------------------------------------------------------
# Reading a spec's images


def load_images(spec: str, split: str, indices: Sequence[int], *, root: str | os.PathLike | None = None,
                download: bool = False) -> ImageSet:
    """Load the images at official ``indices`` of ``split`` of dataset ``spec``.

    ``mean``/``std`` are published constants for the torchvision datasets (see
    :mod:`copa.data.torchvision_datasets`); for ``npz``, ``folder`` and ``sample`` they are computed per
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


def dataset_location(spec: str, root: str | os.PathLike | None = None) -> Path | None:
    """Where a dataset's images are read from: the file or folder of ``npz:PATH`` / ``folder:PATH``, the data
    root of a torchvision dataset, None for the bundled ``sample`` photographs (public, in scikit-image).
    The isolated attack worker hides this path (:mod:`copa.bench.isolation`)."""
    kind, path = _parse_spec(spec)
    if kind.takes_path:
        return Path(path).expanduser().resolve()
    if kind.bundled:
        return None
    return _resolve_root(root)
