"""A run's output directory: ``record.json``, ``images.npz`` (targets and reconstructions in [0, 1], float32,
lossless: scores can be recomputed from it) and ``reconstruction.png`` (targets on the top row,
reconstructions below). Every file is written atomically; record.json last, so that its presence marks
a complete directory."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import save_image

from ..attacks import Reconstruction
from ..errors import CopaError
from ..io import atomic_write, atomic_write_json
from ..threat import GroundTruth


def write_outputs(out_dir: str | Path, record: dict[str, Any], reconstruction: Reconstruction | None,
                  truth: GroundTruth | None, *, preprocess=None) -> Path:
    """Write record.json, and for a finished run images.npz and reconstruction.png, each atomically.

    With ``truth``, images.npz holds the targets, the paired reconstructions and the indices, and the
    PNG shows targets above reconstructions; without it (an observation file's run) they hold the
    reconstruction alone, mapped to [0, 1] image space with ``preprocess`` (the observation's). The
    npz keeps the reconstruction unclamped (float32, so scores can be recomputed); the PNG is clamped.
    record.json is written last, so its presence marks a complete output directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if reconstruction is not None:
        if truth is not None:
            target01 = truth.images01.detach().float().cpu()
            recon01 = truth.preprocess.undo(reconstruction.images.detach().to(truth.images01)).float().cpu()
            pairing = torch.as_tensor(record["metrics"]["pairing"])
            recon01 = recon01[pairing]
            arrays = {"target": target01.numpy(), "reconstruction": recon01.numpy(),
                      "indices": np.asarray(truth.indices)}
        else:
            if preprocess is None:
                raise CopaError("write_outputs needs the preprocessing to map a reconstruction without targets to [0, 1]")
            target01 = None
            recon01 = preprocess.undo(reconstruction.images.detach()).float().cpu()  # unclamped, as with targets
            arrays = {"reconstruction": recon01.numpy()}

        atomic_write(out / "images.npz", lambda p: save_npz(p, arrays))
        atomic_write(out / "reconstruction.png", lambda p: save_grid(p, target01, recon01.clamp(0, 1)))
    atomic_write_json(out / "record.json", record)
    return out / "record.json"


def save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` with fixed zip timestamps, so that the same arrays give the same bytes (np.savez
    stamps each member with the current time); ``np.load`` reads it as usual."""
    with zipfile.ZipFile(path, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)


def save_grid(path: Path, target01: torch.Tensor | None, recon01: torch.Tensor) -> None:
    """Targets on the top row (when given), paired reconstructions below (torchvision.utils.save_image)."""
    grid = recon01 if target01 is None else torch.cat([target01, recon01])
    buffer = io.BytesIO()
    save_image(grid, buffer, format="png", nrow=len(recon01), padding=2, pad_value=1.0)
    path.write_bytes(buffer.getvalue())
