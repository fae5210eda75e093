"""Train a model so that attacks can target trained weights (``copa train``; ``copa attack --checkpoint``).

:func:`train` runs plain mini-batch SGD with cross-entropy on every available image of a dataset's
``train`` split and writes, for each chosen epoch E (0 = the untrained initialisation),

    OUT/epochE.pt     the model's state_dict (CPU tensors; torch.save, written atomically), loadable with
                      ``create_model(name, checkpoint=OUT/epochE.pt)`` / ``copa attack --checkpoint``
    OUT/epochE.json   hyperparameters, seed, epoch, train loss, test accuracy, data and model spec,
                      provenance (git commit, package versions, device) and the seconds spent so far

Seeding: the weights come from ``create_model(name, seed=seed)`` (bit-identical per seed), the order of
the training images from a ``torch.Generator`` seeded with ``seed`` (one ``randperm`` per epoch). Training
runs with ``torch.use_deterministic_algorithms(True)`` (restored afterwards), so the same seed, data and
thread count give bit-identical checkpoints on CPU.

Defaults (:data:`DEFAULTS`) and their sources:

    lr 0.01, momentum 0.9, weight decay 0   ours: common SGD settings for small CIFAR CNNs; the COPA paper
                                            (Chen & Campbell, arXiv 2111.10178) attacks untrained chains
                                            and states no training recipe
    batch size 64                           ours
    preprocess "center" (x − 0.5)           the COPA paper's convention (copa.data.Preprocess), so that
                                            the trained model sees inputs as the attack scenario feeds them
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import data as data_mod
from .errors import CopaError, DataUnavailableError, InvalidSpecError
from .io import atomic_write, atomic_write_json, check_writable
from .models import create_model
from .provenance import device_description, git_commit, package_versions, resolve_device

__all__ = ["DEFAULTS", "DEFAULT_SOURCES", "MAX_EPOCHS", "check_epochs", "checkpoint_paths", "parse_checkpoint_epochs",
           "train"]

DEFAULTS: dict[str, Any] = {"lr": 0.01, "momentum": 0.9, "batch_size": 64, "weight_decay": 0.0, "seed": 0,
                            "preprocess": "center"}
DEFAULT_SOURCES: dict[str, str] = {
    "lr": "ours (common SGD setting for small CIFAR CNNs; the COPA paper gives no training recipe)",
    "momentum": "ours (common SGD setting)",
    "batch_size": "ours",
    "weight_decay": "ours (none)",
    "seed": "ours",
    "preprocess": "COPA paper's convention, x - 0.5 (Chen & Campbell, arXiv 2111.10178)",
}
SEED_MAX = 2**63 - 1
MAX_EPOCHS = 1000
"""The most epochs :func:`train` runs (``copa train --epochs``; the workflow's ``ARCH@epochE`` has the same bound,
:data:`copa.bench.pipeline.MAX_TRAIN_EPOCH`): 3× to 5× the 200–300 epochs of the usual CIFAR-10 recipes
(He et al. 2016 train ResNets for 182), days of CPU for the benchmark's models on CIFAR-10's 50 000 images
already; a typo such as ``--epochs 1000000000`` is refused instead of running until killed."""
EVAL_BATCH = 1000  # images per forward pass when evaluating (memory only; does not change results)


def parse_checkpoint_epochs(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"0,1,5"`` (or a sequence of ints) → sorted unique epochs; one line naming a bad value."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    epochs = []
    for part in parts:
        try:
            if isinstance(part, bool):
                raise ValueError
            value = int(part.strip()) if isinstance(part, str) else int(part)
            if not isinstance(part, str) and value != part:
                raise ValueError
        except (TypeError, ValueError):
            raise InvalidSpecError(f"checkpoint epochs {text!r} are invalid: expected integers, e.g. 0,1,5") from None
        epochs.append(value)
    if not epochs:
        raise InvalidSpecError(f"checkpoint epochs {text!r} are invalid: give at least one epoch, e.g. 0,1,5")
    return tuple(sorted(set(epochs)))


def checkpoint_paths(out_dir: str | Path, epoch: int) -> tuple[Path, Path]:
    """(state_dict file, metadata file) of ``epoch`` under ``out_dir``."""
    out = Path(out_dir)
    return out / f"epoch{epoch}.pt", out / f"epoch{epoch}.json"


def _check_int(value: Any, what: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or \
            (high is not None and value > high):
        upper = f" to {high}" if high is not None else " or more"
        raise InvalidSpecError(f"{what} {value!r} is invalid: accepted are integers from {low}{upper}")
    return int(value)


def check_epochs(value: Any, what: str = "epochs") -> int:
    """``value`` as a number of epochs (an int from 0 to :data:`MAX_EPOCHS`), or one line naming it (``what``:
    e.g. ``--epochs``)."""
    return _check_int(value, what, 0, MAX_EPOCHS)


def _check_float(value: Any, what: str, *, positive: bool) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (number <= 0 if positive else number < 0):
        accepted = "a finite number > 0" if positive else "a finite number ≥ 0"
        raise InvalidSpecError(f"{what} {value!r} is invalid: accepted is {accepted}")
    return number


def _load_split(dataset: str, split: str, in_shape: tuple[int, int, int], max_images: int | None,
                data_root: str | Path | None) -> data_mod.ImageSet | None:
    indices = data_mod.available_indices(dataset, split, root=data_root)
    if max_images is not None:
        indices = indices[:max_images]
    if len(indices) == 0:
        return None
    return data_mod.load_images(dataset, split, [int(i) for i in indices], root=data_root)


def _model_input(images: data_mod.ImageSet, preprocess: data_mod.Preprocess, in_shape: tuple[int, int, int],
                 device: torch.device) -> torch.Tensor:
    return preprocess.apply(data_mod.fit_to_input(images.images, in_shape)).to(device)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on (x, y), in eval mode."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), EVAL_BATCH):
        logits = model(x[start:start + EVAL_BATCH])
        target = y[start:start + EVAL_BATCH]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(dim=1) == target).sum())
    return loss_sum / len(x), correct / len(x)


def _state_dict_cpu(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train(model_name: str, dataset: str, *, epochs: int, checkpoint_epochs: Sequence[int] | str,
          lr: float = DEFAULTS["lr"], momentum: float = DEFAULTS["momentum"],
          batch_size: int = DEFAULTS["batch_size"], weight_decay: float = DEFAULTS["weight_decay"],
          seed: int = DEFAULTS["seed"], preprocess: str = DEFAULTS["preprocess"],
          input_shape: tuple[int, int, int] = (3, 32, 32), data_root: str | Path | None = None,
          out_dir: str | Path, device: str | torch.device = "cpu", max_images: int | None = None,
          max_test_images: int | None = None, log: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Train ``model_name`` on ``dataset``'s train split for ``epochs`` epochs of SGD; write checkpoints.

    Every argument is checked before any work and before anything is written (a bad one raises a
    one-line :class:`~copa.errors.CopaError` naming it). ``max_images`` / ``max_test_images`` keep only
    the first N available train / test indices (for tests and quick runs). Test accuracy is measured on
    the ``test`` split when the dataset has one (else it is ``None``). Returns a summary: the written
    files and each checkpoint's metadata (as in its JSON file).
    """
    epochs = check_epochs(epochs)
    wanted = parse_checkpoint_epochs(checkpoint_epochs)
    for e in wanted:
        if e < 0 or e > epochs:
            raise InvalidSpecError(f"checkpoint epoch {e} is invalid: accepted are 0 to {epochs} (the epochs trained)")
    lr = _check_float(lr, "lr", positive=True)
    momentum = _check_float(momentum, "momentum", positive=False)
    weight_decay = _check_float(weight_decay, "weight decay", positive=False)
    batch_size = _check_int(batch_size, "batch size", 1)
    seed = _check_int(seed, "seed", 0, SEED_MAX)
    if max_images is not None:
        max_images = _check_int(max_images, "max images", 1)
    if max_test_images is not None:
        max_test_images = _check_int(max_test_images, "max test images", 0)
    dev = resolve_device(device)
    prep_mode = data_mod.Preprocess(preprocess).mode  # checks the mode; statistics added below
    check_writable(out_dir, what="output directory", directory=True)
    say = log or (lambda _text: None)

    started = time.perf_counter()
    n_classes = data_mod.num_classes(dataset, root=data_root)
    model = create_model(model_name, num_classes=n_classes, in_shape=tuple(input_shape), seed=seed)
    info = model.copa_info
    train_set = _load_split(dataset, "train", info.in_shape, max_images, data_root)
    if train_set is None:
        raise DataUnavailableError(f"dataset {dataset!r} has no train images to train on")
    try:
        test_set = None if max_test_images == 0 else _load_split(dataset, "test", info.in_shape, max_test_images,
                                                                 data_root)
        test_note = None if test_set is not None else "no test images (max_test_images 0 or empty split)"
    except (DataUnavailableError, InvalidSpecError) as err:
        test_set, test_note = None, f"no test split: {err}"
    prep = data_mod.Preprocess(prep_mode, train_set.mean, train_set.std)
    x_train = _model_input(train_set, prep, info.in_shape, dev)
    y_train = train_set.labels.to(dev)
    x_test = y_test = None
    if test_set is not None:
        x_test, y_test = _model_input(test_set, prep, info.in_shape, dev), test_set.labels.to(dev)

    model.to(dev)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    hyper = {"epochs": epochs, "lr": lr, "momentum": momentum, "batch_size": batch_size,
             "weight_decay": weight_decay, "optimizer": "torch.optim.SGD", "loss": "cross-entropy (mean over batch)",
             "shuffle": f"torch.randperm per epoch, torch.Generator().manual_seed({seed})",
             "defaults_sources": DEFAULT_SOURCES}
    data_spec = {"dataset": dataset, "data_root": None if data_root is None else str(data_root),
                 "train_split": "train", "train_images": len(train_set),
                 "train_indices": _ranges(train_set.indices),
                 "test_split": None if test_set is None else "test",
                 "test_images": 0 if test_set is None else len(test_set),
                 "test_note": test_note, "max_images": max_images, "max_test_images": max_test_images,
                 "preprocess": prep.to_dict(), "input_shape": list(info.in_shape), "num_classes": n_classes}
    model_spec = {"name": model_name, "spec": info.spec, "seed": seed, "init": info.init,
                  "num_classes": info.num_classes, "in_shape": list(info.in_shape), "source": info.source}
    provenance = {"git_commit": git_commit(), "packages": package_versions(), "device": device_description(dev),
                  "threads": torch.get_num_threads()}
    written: list[dict[str, Any]] = []

    def checkpoint(epoch: int, train_loss: float, train_loss_kind: str) -> None:
        test_loss, test_acc = (None, None) if x_test is None else _evaluate(model, x_test, y_test)
        pt, meta_path = checkpoint_paths(out_dir, epoch)
        state = _state_dict_cpu(model)
        atomic_write(pt, lambda p: torch.save(state, p))
        meta = {"epoch": epoch, "model": model_spec, "seed": seed, "hyperparameters": hyper, "data": data_spec,
                "train_loss": train_loss, "train_loss_kind": train_loss_kind, "test_loss": test_loss,
                "test_accuracy": test_acc, "checkpoint": pt.name, "provenance": provenance,
                "seconds": round(time.perf_counter() - started, 3)}
        atomic_write_json(meta_path, meta)
        written.append(meta)
        acc = "n/a" if test_acc is None else f"{100 * test_acc:.2f}%"
        say(f"epoch {epoch}: train loss {train_loss:.4f}, test accuracy {acc} -> {pt}")

    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=dev.type == "cuda")
    try:
        if 0 in wanted:
            loss0, _ = _evaluate(model, x_train, y_train)
            checkpoint(0, loss0, "evaluated on the train split before training")
        n = len(x_train)
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(n, generator=generator).to(dev)
            loss_sum = 0.0
            for start in range(0, n, batch_size):
                batch = order[start:start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
                loss_sum += float(loss.detach()) * len(batch)
            train_loss = loss_sum / n
            if not math.isfinite(train_loss):
                raise CopaError(f"training diverged at epoch {epoch} (train loss {train_loss}); try a smaller lr "
                                f"than {lr}")
            if epoch in wanted:
                checkpoint(epoch, train_loss, "mean over the epoch's mini-batches, during training")
            else:
                say(f"epoch {epoch}: train loss {train_loss:.4f}")
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
    return {"out_dir": str(out_dir), "files": [str(p) for m in written for p in checkpoint_paths(out_dir, m["epoch"])],
            "checkpoints": written, "seconds": round(time.perf_counter() - started, 3)}


def _ranges(indices: Sequence[int]) -> str:
    return data_mod.summarise_ranges(np.asarray(sorted(indices), dtype=np.int64))
