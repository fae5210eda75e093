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

The rooms: ``specs`` (the spec, :data:`DATASETS`, the readers), ``indices``, ``locations`` (the data
root), ``pixels`` (uint8 → [0, 1], per-channel statistics), one room per kind of dataset
(``torchvision_datasets``, ``npz``, ``folder``, ``sample``: each registers itself in :data:`DATASETS` on
import), ``preprocess`` and ``fitting``.
"""

from __future__ import annotations

# every public name of the rooms, as copa.data.NAME
from .fitting import fit_to_input
from .indices import summarise_ranges, validate_indices
from .locations import DEFAULT_DATA_ROOT, OFFLINE_SUBSETS
from .preprocess import PREPROCESS_MODES, Preprocess
from .specs import (
    DATASETS,
    OFFICIAL_SPLITS,
    DatasetKind,
    ImageSet,
    OpenedSplit,
    available_indices,
    dataset_location,
    dataset_size,
    load_images,
    num_classes,
)

# the kinds of dataset: each room registers its kinds in DATASETS on import
from . import folder, npz, torchvision_datasets
from .sample import SAMPLE_IMAGE_NAMES, SAMPLE_SIZE

__all__ = [
    "DATASETS", "DEFAULT_DATA_ROOT", "PREPROCESS_MODES", "SAMPLE_IMAGE_NAMES", "DatasetKind", "ImageSet",
    "Preprocess", "available_indices", "dataset_size", "fit_to_input", "load_images", "num_classes",
]
