"""Run one attack on one scenario, score it, and write its record.

The runner is the only place where the observation and the ground truth meet: the attack gets the
observation, the scorer gets the reconstruction and the ground truth. Outputs go to a directory:
``record.json`` (scenario, attack, hyperparameters, metrics, timing, evaluation counts,
provenance), ``images.npz`` (targets and reconstructions in [0, 1], float32, lossless: scores can be
recomputed from it) and ``reconstruction.png`` (targets on the top row, reconstructions below).
Every file is written atomically.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import platform
import subprocess
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics as metrics_mod
from .attacks import Attack, Reconstruction, create_attack
from .errors import CopaError, NotApplicableError
from .io import atomic_write, atomic_write_json
from .threat import GroundTruth, Observation, Scenario, resolve_device

RECORD_VERSION = 1


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str]:
    names = ["copa-bench", "torch", "torchvision", "numpy", "scipy", "torchmetrics"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the source tree copa was imported from, with '-dirty' if it has local changes."""
    src = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=src,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


class _ForwardCounter:
    """Counts calls of the observed model's forward (a fallback when an attack reports no counts)."""

    def __init__(self, model: torch.nn.Module):
        self.count = 0
        self._handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.count += 1

    def remove(self):
        self._handle.remove()


def run_attack(scenario: Scenario, attack: str | Attack, *, overrides: dict[str, Any] | None = None,
               seed: int = 0, device: str = "cpu", threads: int | None = None,
               metrics: tuple[str, ...] = ("mse", "psnr", "ssim", "lpips"),
               record_failures: bool = False,
               ) -> tuple[dict[str, Any], Reconstruction | None, GroundTruth]:
    """Build the scenario, run the attack on its observation, score the result.

    Returns ``(record, reconstruction, ground_truth)``. An attack that does not apply yields a record
    with ``status: "not-applicable"`` and its reason; ``reconstruction`` is then None.
    Bad inputs (names, options) raise :class:`~copa.errors.CopaError` before any work is done.
    With ``record_failures=True`` an exception raised by the attack (or by scoring its output) yields
    a record with ``status: "failed"``, the reason and the traceback instead of propagating (the
    workflow uses this so that one failing image does not stop the others); interrupts still propagate.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = resolve_device(device)
    attack_obj = attack if isinstance(attack, Attack) else create_attack(attack, overrides)
    observation, truth = scenario.build(dev)

    record: dict[str, Any] = {
        "record_version": RECORD_VERSION,
        "status": "ok",
        "reason": None,
        "scenario": scenario.to_dict(),
        "observation": observation.describe(),
        "attack": {"name": attack_obj.name, "paper": attack_obj.paper, "code": attack_obj.code},
        "hyperparameters": dict(attack_obj.hp),
        "seed": seed,
        "model": _model_description(observation),
    }
    reason = attack_obj.applicable(observation)
    reconstruction = None
    if reason is None:
        counter = _ForwardCounter(observation.model)
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        start = time.perf_counter()
        try:
            reconstruction = attack_obj.reconstruct(observation, generator)
        except NotApplicableError as exc:
            reason = str(exc)
        except Exception as exc:
            if not record_failures:
                raise
            return _failed(record, exc, dev), None, truth
        finally:
            seconds = time.perf_counter() - start
            counter.remove()
            record["seconds"] = seconds
    if reason is not None:
        record.update(status="not-applicable", reason=f"not applicable: {reason}")
        record.update(_provenance(dev))
        return record, None, truth

    try:
        _check_shape(reconstruction, observation)
        recon01 = truth.preprocess.undo(reconstruction.images.detach().to(truth.images01))
        scores = metrics_mod.score_images(recon01, truth.images01, predicted_labels=reconstruction.labels,
                                          true_labels=truth.labels, metrics=metrics)
    except Exception as exc:
        if not record_failures:
            raise
        return _failed(record, exc, dev), None, truth
    record["metrics"] = scores
    record["attack_loss"] = reconstruction.loss
    record["evaluations"] = {
        "forward": reconstruction.forward_evals if reconstruction.forward_evals is not None else counter.count,
        "gradient": reconstruction.gradient_evals,
        "forward_calls_counted": counter.count,
    }
    record["attack_info"] = reconstruction.info
    record.update(_provenance(dev))
    return record, reconstruction, truth


def _failed(record: dict[str, Any], exc: Exception, device: torch.device) -> dict[str, Any]:
    record.update(status="failed", reason=f"failed: {type(exc).__name__}: {exc}",
                  traceback=traceback.format_exc(limit=20))
    record.update(_provenance(device))
    return record


def _model_description(observation: Observation) -> dict[str, Any]:
    info = observation.model_info()
    return {"name": info.name, "spec": info.spec, "init": info.init, "seed": info.seed,
            "checkpoint": None if info.checkpoint is None else str(info.checkpoint), "is_chain": info.is_chain,
            "not_chain_reason": info.not_chain_reason,
            "parameters": int(sum(p.numel() for p in observation.model.parameters()))}


def _provenance(device: torch.device) -> dict[str, Any]:
    return {"device": device_description(device), "versions": package_versions(), "git_commit": git_commit(),
            "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _check_shape(reconstruction: Reconstruction, observation: Observation) -> None:
    expected = (observation.batch_size, *observation.input_shape)
    if tuple(reconstruction.images.shape) != expected:
        raise CopaError(f"attack returned images of shape {tuple(reconstruction.images.shape)}, expected {expected}")


def write_outputs(out_dir: str | Path, record: dict[str, Any], reconstruction: Reconstruction | None,
                  truth: GroundTruth) -> Path:
    """Write record.json, and for a finished run images.npz and reconstruction.png, each atomically.

    record.json is written last, so its presence marks a complete output directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target01 = truth.images01.detach().float().cpu()
    if reconstruction is not None:
        recon01 = truth.preprocess.undo(reconstruction.images.detach().to(truth.images01)).float().cpu()
        pairing = torch.as_tensor(record["metrics"]["pairing"])
        recon01 = recon01[pairing]

        def save_npz(path: Path) -> None:
            with path.open("wb") as fh:
                np.savez(fh, target=target01.numpy(), reconstruction=recon01.numpy(),
                         indices=np.asarray(truth.indices))

        atomic_write(out / "images.npz", save_npz)
        atomic_write(out / "reconstruction.png", lambda p: save_grid(p, target01, recon01.clamp(0, 1)))
    atomic_write_json(out / "record.json", record)
    return out / "record.json"


def save_grid(path: Path, target01: torch.Tensor, recon01: torch.Tensor) -> None:
    """Targets on the top row, paired reconstructions below (torchvision.utils.save_image)."""
    from torchvision.utils import save_image

    grid = torch.cat([target01, recon01])
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png", nrow=len(target01), padding=2, pad_value=1.0)
    path.write_bytes(buffer.getvalue())


def summary_line(record: dict[str, Any]) -> str:
    s = record["scenario"]
    head = f"{record['attack']['name']} on {s['model']} / {s['dataset']}:{s['split']} {s['indices']}"
    if record["status"] != "ok":
        return f"{head}: {record['status']} ({record['reason']})"
    mean = record["metrics"]["mean"]
    parts = [f"PSNR {mean['psnr']:.2f} dB", f"SSIM {mean['ssim']:.4f}"]
    if mean.get("lpips") is not None:
        parts.append(f"LPIPS {mean['lpips']:.4f}")
    acc = record["metrics"].get("label_accuracy")
    if acc is not None:
        parts.append(f"label acc {acc:.2f}")
    parts.append(f"{record['seconds']:.2f} s")
    return f"{head}: " + ", ".join(parts)
