"""Tests of copa.data: dataset specs, official indices, the real-data readers, preprocessing."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import socket
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from copa import data
from copa.data import locations, sample, torchvision_datasets
from copa.data import DATASETS, ImageSet, Preprocess, fit_to_input, load_images
from copa.errors import DataUnavailableError, InvalidSpecError, UnknownNameError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_NPZ = SHARED / "cifar10_subset.npz"
MNIST_NPZ = SHARED / "mnist_subset.npz"
MNIST_IDX = SHARED / "mnist"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.fixture(scope="module")
def cifar_arrays():
    with np.load(need(CIFAR_NPZ)) as archive:
        return {key: archive[key] for key in archive.files}


@pytest.fixture(scope="module")
def mnist_arrays():
    with np.load(need(MNIST_NPZ)) as archive:
        return {key: archive[key] for key in archive.files}


def write_npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


# ---------------------------------------------------------------------------------------------
# Specs and the registry


def test_registry_lists_every_kind_with_form_and_description():
    assert DATASETS.names() == ["cifar10", "cifar100", "fashion-mnist", "folder", "mnist", "npz", "sample"]
    forms = {entry.name: entry.meta["form"] for entry in DATASETS}
    assert forms["npz"] == "npz:PATH" and forms["folder"] == "folder:PATH" and forms["cifar10"] == "cifar10"
    assert all(entry.meta["description"] for entry in DATASETS)


def test_unknown_kind_suggests_close_name():
    with pytest.raises(UnknownNameError, match="'cifar-10'.*Did you mean 'cifar10'"):
        load_images("cifar-10", "train", [0])


def test_bare_npz_path_suggests_npz_form():
    with pytest.raises(UnknownNameError, match="npz:some/file.npz"):
        load_images("some/file.npz", "train", [0])


@pytest.mark.parametrize("spec, hint", [("npz:", "npz:PATH"), ("folder:", "folder:PATH"),
                                        ("cifar10:foo", "npz:PATH"), ("sample:", "sample"), ("", "npz:PATH")])
def test_malformed_spec_names_accepted_forms(spec, hint):
    with pytest.raises(InvalidSpecError) as err:
        load_images(spec, "train", [0])
    assert repr(spec) in str(err.value) and hint in str(err.value)


@pytest.mark.parametrize("indices, shown", [([], "empty"), ([0, -3], "[-3]"), ([1, 2, 1], "[1] are repeated"),
                                            ([0.5], "0.5"), (3, "[3]"), ([[0, 1]], "flat")])
def test_bad_indices_are_named(indices, shown):
    with pytest.raises(InvalidSpecError, match=__import__("re").escape(shown)):
        load_images("sample", "train", indices)


def test_num_classes_of_torchvision_datasets_needs_no_files(tmp_path):
    assert [data.num_classes(name, root=tmp_path) for name in ("cifar10", "cifar100", "mnist", "fashion-mnist")] \
        == [10, 100, 10, 10]


def test_default_data_root_reads_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("COPA_DATA_ROOT", str(tmp_path))
    spec = importlib.util.spec_from_file_location("copa.data._locations_env_check", locations.__file__)
    fresh = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, fresh)  # dataclasses look their module up there
    spec.loader.exec_module(fresh)
    assert fresh.DEFAULT_DATA_ROOT == tmp_path
    monkeypatch.delenv("COPA_DATA_ROOT")
    spec.loader.exec_module(fresh)
    assert fresh.DEFAULT_DATA_ROOT == Path("data")


def test_root_none_uses_default_root(monkeypatch, tmp_path):
    monkeypatch.setattr(locations, "DEFAULT_DATA_ROOT", tmp_path / "elsewhere")
    with pytest.raises(DataUnavailableError, match=str(tmp_path / "elsewhere" / "cifar-10-batches-py")):
        load_images("cifar10", "train", [0])


# ---------------------------------------------------------------------------------------------
# sample


def test_sample_images_are_fixed_rgb_32px():
    images = load_images("sample", "train", range(10))
    assert isinstance(images, ImageSet) and len(images) == 10
    assert images.images.shape == (10, 3, 32, 32) and images.images.dtype == torch.float32
    assert images.images.min() >= 0 and images.images.max() <= 1
    assert torch.equal(images.images * 255, (images.images * 255).round())  # uint8-quantised
    assert images.labels.dtype == torch.int64 and images.labels.tolist() == list(range(10))
    assert images.classes == data.SAMPLE_IMAGE_NAMES and images.classes[4] == "camera"
    camera = images.images[4]
    assert torch.equal(camera[0], camera[1]) and torch.equal(camera[1], camera[2])  # grey photo, repeated
    assert not torch.equal(images.images[0, 0], images.images[0, 2])  # the astronaut is in colour
    assert images.images.flatten(1).std(dim=1).min() > 0.02  # every tile holds a picture, not a flat colour


def test_sample_is_deterministic_offline_and_same_for_both_splits(monkeypatch):
    first = load_images("sample", "train", [0, 9]).images

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    sample._sample_images.cache_clear()
    rebuilt = load_images("sample", "train", [0, 9]).images
    assert torch.equal(first, rebuilt)
    assert torch.equal(load_images("sample", "test", [0, 9]).images, first)
    assert data.dataset_size("sample", "test") == 10 and data.num_classes("sample") == 10


def test_sample_statistics_match_its_images():
    every = load_images("sample", "train", range(10))
    per_channel = every.images.transpose(0, 1).reshape(3, -1).double()
    assert np.allclose(every.mean, per_channel.mean(dim=1).numpy(), atol=1e-9)
    assert np.allclose(every.std, per_channel.std(dim=1).numpy(), atol=1e-9)


def test_sample_rejects_other_splits():
    with pytest.raises(InvalidSpecError, match="'val'.*train, test"):
        load_images("sample", "val", [0])


def test_returned_order_follows_requested_indices():
    forward = load_images("sample", "train", [2, 7])
    backward = load_images("sample", "train", [7, 2])
    assert backward.indices == (7, 2) and backward.labels.tolist() == [7, 2]
    assert torch.equal(backward.images, forward.images.flip(0))


# ---------------------------------------------------------------------------------------------
# npz: the real CIFAR-10 and MNIST subsets


def test_cifar_npz_uses_official_index_not_position(cifar_arrays):
    spec = f"npz:{CIFAR_NPZ}"
    official = cifar_arrays["train_index"]
    position_of_10005 = int(np.flatnonzero(official == 10005)[0])
    assert position_of_10005 == 937 and int(np.flatnonzero(official == 3)[0]) == 3
    picked = load_images(spec, "train", [3, 10005])
    assert picked.indices == (3, 10005)
    expected = cifar_arrays["train_images"][[3, position_of_10005]]
    assert torch.equal(picked.images, torch.from_numpy(expected).float() / 255)
    assert picked.labels.tolist() == cifar_arrays["train_labels"][[3, position_of_10005]].tolist()
    assert not torch.equal(picked.images[1], torch.from_numpy(cifar_arrays["train_images"][10005 % 4660]).float() / 255)
    assert picked.images.shape == (2, 3, 32, 32) and picked.images.dtype == torch.float32
    assert picked.classes[:3] == ("airplane", "automobile", "bird") and picked.split == "train"


def test_cifar_npz_sizes_indices_and_stats(cifar_arrays):
    spec = f"npz:{CIFAR_NPZ}"
    assert data.dataset_size(spec, "train") == 4660 and data.dataset_size(spec, "test") == 846
    present = data.available_indices(spec, "train")
    assert present.dtype == np.int64 and np.array_equal(present, np.sort(cifar_arrays["train_index"]))
    assert data.num_classes(spec) == 10
    train = cifar_arrays["train_images"].astype(np.float64) / 255
    expected_mean = train.mean(axis=(0, 2, 3))
    test_set = load_images(spec, "test", [0])  # statistics come from the train split
    assert np.allclose(test_set.mean, expected_mean, atol=1e-12)
    assert np.allclose(test_set.std, train.transpose(1, 0, 2, 3).reshape(3, -1).std(axis=1, ddof=1), atol=1e-9)
    assert np.allclose(test_set.mean, torchvision_datasets._TORCHVISION_DATASETS["cifar10"].mean, atol=0.005)  # a fair sample


def test_cifar_npz_missing_index_summarises_ranges():
    need(CIFAR_NPZ)
    with pytest.raises(InvalidSpecError) as err:
        load_images(f"npz:{CIFAR_NPZ}", "train", [3, 5000])
    message = str(err.value)
    assert "index 5000 is not in" in message and "train" in message and "4660 images" in message
    assert "0–931, 10000–10931, 20000–20931, 30000–30931, 40000–40931" in message


def test_npz_missing_split_names_present_splits():
    need(CIFAR_NPZ)
    with pytest.raises(InvalidSpecError, match="no split 'val'.*splits present: test, train"):
        load_images(f"npz:{CIFAR_NPZ}", "val", [0])


def test_mnist_npz_is_grey(mnist_arrays):
    picked = load_images(f"npz:{MNIST_NPZ}", "test", [0, 9999])
    assert picked.images.shape == (2, 1, 28, 28)
    assert torch.equal(picked.images[:, 0], torch.from_numpy(mnist_arrays["test_images"][[0, 9999]]).float() / 255)
    assert len(picked.mean) == 1 and 0.1 < picked.mean[0] < 0.16


# ---------------------------------------------------------------------------------------------
# npz: synthetic archives and broken files


def test_npz_without_index_uses_positions_and_accepts_floats(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.random((5, 8, 6)).astype(np.float32)
    spec = write_npz(tmp_path / "float.npz", test_images=grey, test_labels=np.array([0, 1, 2, 1, 0]))
    picked = load_images(spec, "test", [4, 1])
    assert picked.images.shape == (2, 1, 8, 6) and picked.images.dtype == torch.float32
    assert torch.equal(picked.images[:, 0], torch.from_numpy(grey[[4, 1]]))
    assert picked.classes == ("0", "1", "2") and data.num_classes(spec) == 3
    assert np.allclose(picked.mean, [grey.mean()], atol=1e-6)  # no train split: statistics of this split
    with pytest.raises(InvalidSpecError, match="index 5 is not in.*5 images.*0–4"):
        load_images(spec, "test", [5])


def test_npz_statistics_come_from_train_split(tmp_path):
    ones = np.full((2, 3, 4, 4), 255, np.uint8)
    zeros = np.zeros((2, 3, 4, 4), np.uint8)
    spec = write_npz(tmp_path / "two.npz", train_images=ones, train_labels=[0, 0],
                     test_images=zeros, test_labels=[0, 0])
    assert load_images(spec, "test", [0]).mean == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("arrays, message", [
    ({"train_images": np.zeros((3, 4, 4), np.uint8), "train_labels": np.zeros(2, np.int64)}, "expected 3 integers"),
    ({"train_images": np.zeros((3, 4, 4), np.uint8)}, "no train_labels"),
    ({"train_images": np.full((1, 4, 4), 1.5), "train_labels": [0]}, "outside \\[0, 1\\]"),
    ({"train_images": np.zeros((1, 4, 4, 3), np.uint8), "train_labels": [0]}, "channels first"),
    ({"train_images": np.zeros((1, 4, 4), np.int32), "train_labels": [0]}, "dtype int32"),
    ({"train_images": np.zeros((2, 4, 4), np.uint8), "train_labels": [0, 0], "train_index": [7, 7]},
     "repeats official indices \\[7\\]"),
    ({"train_images": np.zeros((1, 4, 4), np.uint8), "train_labels": [3], "classes": np.array(["a", "b"])},
     "label 3 but there are 2 classes"),
])
def test_npz_inconsistent_arrays_are_explained(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    spec = write_npz(path, **arrays)
    with pytest.raises(InvalidSpecError, match=message) as err:
        load_images(spec, "train", [0])
    assert str(path) in str(err.value)


def test_npz_missing_file_is_unavailable(tmp_path):
    with pytest.raises(DataUnavailableError, match=str(tmp_path / "absent.npz")):
        load_images(f"npz:{tmp_path / 'absent.npz'}", "train", [0])


def test_npz_random_bytes_truncated_and_corrupted_files_are_invalid(tmp_path):
    rng = np.random.default_rng(1)
    good = tmp_path / "good.npz"
    np.savez_compressed(good, train_images=rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8),
                        train_labels=np.zeros(20, np.int64))
    raw = good.read_bytes()
    flipped = bytearray(raw)
    flipped[len(raw) // 3: len(raw) // 3 + 16] = bytes(16)
    broken = {"random.npz": rng.bytes(4096), "truncated.npz": raw[: len(raw) // 2], "flipped.npz": bytes(flipped),
              "empty.npz": b""}
    for name, content in broken.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InvalidSpecError, match=f"{tmp_path / name} is not a readable .npz"):
            load_images(f"npz:{tmp_path / name}", "train", [0])
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(InvalidSpecError, match="single .npy array"):
        load_images(f"npz:{tmp_path / 'single.npy'}", "train", [0])


def test_npz_rewritten_file_is_read_again(tmp_path):
    path = tmp_path / "changing.npz"
    write_npz(path, train_images=np.zeros((1, 2, 2), np.uint8), train_labels=[0])
    assert load_images(f"npz:{path}", "train", [0]).images.max() == 0
    write_npz(path, train_images=np.full((1, 2, 2), 255, np.uint8), train_labels=[0], extra=np.zeros(50))
    assert load_images(f"npz:{path}", "train", [0]).images.min() == 1


# ---------------------------------------------------------------------------------------------
# mnist: the official IDX files


def idx_root(tmp_path: Path, layout: str, compressed: bool = True) -> Path:
    """A data root holding the official t10k files in torchvision's layout or flat."""
    folder = tmp_path / ("MNIST/raw" if layout == "torchvision" else "")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        source = need(MNIST_IDX / name)
        if compressed:
            (folder / name).symlink_to(source)
        else:
            with gzip.open(source) as packed:
                (folder / name[:-3]).write_bytes(packed.read())
    return tmp_path


@pytest.mark.parametrize("layout, compressed", [("torchvision", True), ("flat", True), ("torchvision", False)])
def test_mnist_idx_files_match_subset(tmp_path, mnist_arrays, layout, compressed):
    root = idx_root(tmp_path, layout, compressed)
    wanted = [0, 1, 7, 4242, 9999]
    picked = load_images("mnist", "test", wanted, root=root)
    assert picked.images.shape == (5, 1, 28, 28) and picked.images.dtype == torch.float32
    assert torch.equal(picked.images[:, 0], torch.from_numpy(mnist_arrays["test_images"][wanted]).float() / 255)
    assert picked.labels.tolist() == mnist_arrays["test_labels"][wanted].tolist()
    assert data.dataset_size("mnist", "test", root=root) == 10000
    assert picked.mean == (0.1307,) and picked.std == (0.3081,) and len(picked.classes) == 10


def test_mnist_missing_train_split_names_files(tmp_path):
    root = idx_root(tmp_path, "torchvision")
    with pytest.raises(DataUnavailableError) as err:
        load_images("mnist", "train", [0], root=root)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and str(root / "MNIST" / "raw") in message
    assert "download=True" in message and "mnist_subset.npz" in message


def test_fashion_mnist_looks_in_its_own_folder(tmp_path):
    idx_root(tmp_path, "torchvision")  # MNIST's files must not be taken for Fashion-MNIST's
    with pytest.raises(DataUnavailableError, match="FashionMNIST"):
        load_images("fashion-mnist", "test", [0], root=tmp_path)


def test_corrupted_idx_file_is_invalid(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01")
    with pytest.raises(InvalidSpecError, match="t10k-images-idx3-ubyte.gz is not a valid IDX file"):
        load_images("mnist", "test", [0], root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "fashion-mnist"])
def test_official_datasets_accept_train_and_test_only(tmp_path, name):
    with pytest.raises(InvalidSpecError, match="split 'validation' is invalid.*train, test"):
        load_images(name, "validation", [0], root=tmp_path)


# ---------------------------------------------------------------------------------------------
# cifar10 through torchvision's class (a tiny tree in CIFAR's format; md5 checks patched out)


def write_cifar_tree(root: Path, batch: int = 4) -> np.ndarray:
    """Five training batches and a test batch of random images; returns the training images N×C×H×W."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (5 * batch, 3, 32, 32), dtype=np.uint8)
    for b in range(5):
        rows = train[b * batch:(b + 1) * batch]
        entry = {"data": rows.reshape(batch, -1), "labels": list(range(b, b + batch))}  # CIFAR rows: R, G, B planes
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(entry))
    (folder / "test_batch").write_bytes(pickle.dumps({"data": train[:batch].reshape(batch, -1), "labels": [0] * batch}))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    return train


def test_cifar10_reads_torchvision_layout_channels_first(tmp_path, monkeypatch):
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda *args, **kwargs: True)
    train = write_cifar_tree(tmp_path)
    picked = load_images("cifar10", "train", [5, 0], root=tmp_path)
    assert torch.equal(picked.images, torch.from_numpy(train[[5, 0]]).float() / 255)
    assert picked.labels.tolist() == [1 + 1, 0]  # index 5 = second batch, row 1
    assert picked.classes[0] == "airplane" and picked.mean == torchvision_datasets._TORCHVISION_DATASETS["cifar10"].mean
    assert data.dataset_size("cifar10", "train", root=tmp_path) == 20
    assert np.array_equal(data.available_indices("cifar10", "test", root=tmp_path), np.arange(4))


def test_failed_downloads_are_unavailable(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    with pytest.raises(DataUnavailableError, match="CIFAR-10 could not be downloaded.*no network"):
        load_images("cifar10", "train", [0], root=tmp_path, download=True)
    with pytest.raises(DataUnavailableError, match="MNIST could not be downloaded.*t10k-images-idx3-ubyte") as err:
        load_images("mnist", "test", [0], root=tmp_path, download=True)
    assert "\n" not in str(err.value) and "pass download=True" not in str(err.value)


def test_missing_cifar_explains_where_to_put_files(tmp_path):
    with pytest.raises(DataUnavailableError) as err:
        load_images("cifar100", "test", [0], root=tmp_path)
    message = str(err.value)
    assert f"{tmp_path / 'cifar-100-python'}/" in message and "cifar-100-python.tar.gz" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message and "download=True" in message


# ---------------------------------------------------------------------------------------------
# folder:PATH


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_folder_reads_classes_in_imagefolder_order(tmp_path):
    rng = np.random.default_rng(3)
    cat = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    dog_grey = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    write_png(tmp_path / "dog" / "a.png", dog_grey)
    write_png(tmp_path / "cat" / "b.png", cat)
    write_png(tmp_path / "cat" / "a.png", cat[::-1].copy())
    spec = f"folder:{tmp_path}"
    picked = load_images(spec, "train", [0, 1, 2])
    assert picked.classes == ("cat", "dog") and picked.labels.tolist() == [0, 0, 1]
    assert picked.images.shape == (3, 3, 6, 5)
    assert torch.equal(picked.images[1], torch.from_numpy(cat).permute(2, 0, 1).float() / 255)  # cat/b.png
    assert torch.equal(picked.images[2], (torch.from_numpy(dog_grey).float() / 255).expand(3, -1, -1))
    assert data.dataset_size(spec, "test") == 3 and data.num_classes(spec) == 2  # no split folders: one set


def test_folder_with_split_subfolders_keeps_labels_aligned(tmp_path):
    pixel = np.zeros((4, 4, 3), np.uint8)
    write_png(tmp_path / "train" / "ant" / "0.png", pixel)
    write_png(tmp_path / "train" / "bee" / "0.png", pixel + 255)
    write_png(tmp_path / "test" / "bee" / "0.png", pixel + 100)
    spec = f"folder:{tmp_path}"
    test_set = load_images(spec, "test", [0])
    assert test_set.labels.tolist() == [1] and test_set.classes == ("ant", "bee")
    assert test_set.mean == pytest.approx((0.5, 0.5, 0.5))  # from train/: one black, one white image
    with pytest.raises(InvalidSpecError, match="split subfolders train, test but no 'val'"):
        load_images(spec, "val", [0])


def test_folder_errors_name_the_file_or_folder(tmp_path):
    with pytest.raises(DataUnavailableError, match=str(tmp_path / "absent")):
        load_images(f"folder:{tmp_path / 'absent'}", "train", [0])
    (tmp_path / "flat.png").write_bytes(b"")
    with pytest.raises(InvalidSpecError, match="one subfolder of images per class"):
        load_images(f"folder:{tmp_path}", "train", [0])
    broken = tmp_path / "cls" / "broken.png"
    broken.parent.mkdir()
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InvalidSpecError, match=f"{broken} cannot be decoded"):
        load_images(f"folder:{tmp_path}", "train", [0])


def test_folder_images_of_different_sizes_are_refused_together(tmp_path):
    write_png(tmp_path / "a" / "small.png", np.zeros((4, 4, 3), np.uint8))
    write_png(tmp_path / "a" / "wide.png", np.zeros((4, 9, 3), np.uint8))
    assert load_images(f"folder:{tmp_path}", "train", [1]).images.shape == (1, 3, 4, 9)
    with pytest.raises(InvalidSpecError, match="differ in size.*small.png 4×4.*wide.png 9×4"):
        load_images(f"folder:{tmp_path}", "train", [0, 1])


# ---------------------------------------------------------------------------------------------
# Preprocess


CIFAR_MEAN = (0.4914672374725342, 0.4822617471218109, 0.4467701315879822)
CIFAR_STD = (0.24703224003314972, 0.24348513782024384, 0.26158785820007324)


@pytest.mark.parametrize("preprocess", [Preprocess("center"), Preprocess("none"),
                                        Preprocess("normalize", CIFAR_MEAN, CIFAR_STD)])
def test_preprocess_round_trip_and_bounds(preprocess):
    x01 = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    model_space = preprocess.apply(x01)
    assert torch.allclose(preprocess.undo(model_space), x01, atol=1e-12)
    lower, upper = preprocess.bounds(3, dtype=torch.float64)
    assert lower.shape == upper.shape == (1, 3, 1, 1)
    assert torch.allclose(lower, preprocess.apply(torch.zeros(1, 3, 1, 1, dtype=torch.float64)))
    assert torch.all(model_space >= lower - 1e-12) and torch.all(model_space <= upper + 1e-12)
    assert Preprocess.from_dict(preprocess.to_dict()) == preprocess


def test_preprocess_values_per_mode():
    x01 = torch.full((1, 3, 2, 2), 0.75)
    assert torch.allclose(Preprocess("center").apply(x01), torch.full_like(x01, 0.25))
    lower, upper = Preprocess("center").bounds(3)
    assert torch.equal(lower, torch.full((1, 3, 1, 1), -0.5)) and torch.equal(upper, torch.full((1, 3, 1, 1), 0.5))
    normalized = Preprocess("normalize", CIFAR_MEAN, CIFAR_STD).apply(x01)
    assert torch.allclose(normalized[0, :, 0, 0], (0.75 - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD))
    assert torch.equal(Preprocess("none").apply(x01), x01)
    assert Preprocess("center").undo(torch.tensor([[[[0.9]]]])).item() == pytest.approx(1.4)  # not clamped


def test_preprocess_single_value_statistics_cover_every_channel():
    grey_stats = Preprocess("normalize", (0.1307,), (0.3081,))
    lower, upper = grey_stats.bounds(3)
    assert torch.allclose(lower.flatten(), torch.full((3,), -0.1307 / 0.3081))
    with pytest.raises(InvalidSpecError, match="statistics for 3 channels but the images have 1"):
        Preprocess("normalize", CIFAR_MEAN, CIFAR_STD).apply(torch.zeros(1, 1, 2, 2))


def test_preprocess_rejects_bad_modes_and_statistics():
    with pytest.raises(InvalidSpecError, match="'standardize'.*center, normalize, none"):
        Preprocess("standardize")
    with pytest.raises(InvalidSpecError, match="normalize.*mean and std"):
        Preprocess("normalize")
    with pytest.raises(InvalidSpecError, match="positive std"):
        Preprocess("normalize", (0.5,), (0.0,))
    with pytest.raises(InvalidSpecError, match="unknown preprocess keys \\['scale'\\]"):
        Preprocess.from_dict({"mode": "center", "scale": 2})
    assert Preprocess("center", CIFAR_MEAN, CIFAR_STD) == Preprocess("center")  # statistics unused, dropped


# ---------------------------------------------------------------------------------------------
# fit_to_input


def test_fit_grey_28_to_rgb_32():
    grey = torch.rand(2, 1, 28, 28)
    fitted = fit_to_input(grey, (3, 32, 32))
    assert fitted.shape == (2, 3, 32, 32) and fitted.dtype == torch.float32
    assert torch.equal(fitted[:, 0], fitted[:, 2]) and fitted.min() >= 0 and fitted.max() <= 1
    assert torch.allclose(fit_to_input(torch.full((1, 1, 28, 28), 0.3), (3, 32, 32)), torch.tensor(0.3))


def test_fit_rgb_to_grey_uses_itu_601_weights():
    rgb = torch.rand(2, 3, 8, 8)
    grey = fit_to_input(rgb, (1, 8, 8))
    expected = 0.2989 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    assert grey.shape == (2, 1, 8, 8) and torch.allclose(grey[:, 0], expected, atol=1e-6)


def test_fit_resizes_shorter_side_then_centre_crops():
    wide = torch.zeros(1, 3, 16, 48)
    wide[..., 16:32] = 1.0  # a white centre square between black sides
    fitted = fit_to_input(wide, (3, 32, 32))
    assert fitted.shape == (1, 3, 32, 32)
    assert fitted[..., 4:28].min() > 0.99  # the centre square fills the crop; black sides are cut off
    unchanged = torch.rand(1, 3, 32, 32)
    assert torch.equal(fit_to_input(unchanged, (3, 32, 32)), unchanged)


def test_fit_rejects_impossible_channel_changes():
    with pytest.raises(InvalidSpecError, match="2-channel images to a 3-channel input"):
        fit_to_input(torch.zeros(1, 2, 4, 4), (3, 4, 4))
    with pytest.raises(InvalidSpecError, match="N×C×H×W"):
        fit_to_input(torch.zeros(3, 4, 4), (3, 4, 4))
