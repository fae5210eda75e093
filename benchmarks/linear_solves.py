"""Time the layer systems of copa.layerwise: dense (float64) versus matrix-free, per conv layer.

For every conv layer of each model, the layer system ``[A; K(δ); P] x̃ = [z; g; 0]`` is built from
the TRUE quantities of a real image's forward/backward pass (``z_i`` and ``δ_i`` from the forward
pass, ``g_i`` the observed weight gradient) — this measures the linear algebra, not an attack —
and solved three ways:

* dense ``lstsq``: ``layer_system`` (tensor-op build) + LAPACK ``gelsd`` — what R-GAP and COPA's
  code do with ``np.linalg.lstsq`` on a loop-built matrix;
* dense ``normal``: the same matrix, pivoted Cholesky of its smaller Gram matrix;
* matrix-free: ``LayerOperator`` (conv / conv-transpose / unfold / fold) + PyTorch LSQR.

Printed per layer: build and solve seconds, rank or iterations, the relative error of the
recovered layer input against the true one, the PSNR (layer 0 only: the image, peak 1) and the
relative difference between the dense and matrix-free solutions. ``--reference`` also times
``numpy.linalg.lstsq`` on the dense matrix.

    python benchmarks/linear_solves.py                               # sample image 0
    python benchmarks/linear_solves.py --dataset npz:../shared/data/cifar10_subset.npz --index 3
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from tabulate import tabulate

from copa import layerwise as linalg
from copa.metrics import psnr
from copa.threat import Scenario, resolve_device


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def bench_model(name: str, args, device: torch.device) -> list[list]:
    scenario = Scenario(model=name, dataset=args.dataset, indices=(args.index,), model_seed=args.seed,
                        dtype="float64")
    obs, truth = scenario.build(device)
    analysis = linalg.analyse_chain(obs.model, obs.preprocess.apply(truth.images01), truth.labels)
    grads = obs.gradient_dict()
    rows = []
    for la in analysis.conv_layers:
        g = la.geometry
        grad = grads[f"weight_layers.{la.index}.weight"]
        true_x = la.input[0]

        def quality(x_padded: torch.Tensor) -> tuple[str, str]:
            x = g.unpad(x_padded.reshape(g.in_channels, *g.padded))
            rel = f"{_rel(x, true_x):.1e}"
            if la.index == 0:
                image = obs.preprocess.undo(x[None]).clamp(0, 1)
                return rel, f"{float(psnr(image, truth.images01)):.1f}"
            return rel, "–"

        system, t_build = _timed(lambda: linalg.layer_system(la.weight, la.delta, la.pre_activation, grad, g))
        (x_lstsq, info_lstsq), t_lstsq = _timed(lambda: linalg.solve_dense(system.matrix, system.rhs))
        (x_normal, info_normal), t_normal = _timed(
            lambda: linalg.solve_dense(system.matrix, system.rhs, method="normal"))
        op, t_op = _timed(lambda: linalg.LayerOperator(la.weight, la.delta, g))
        (x_free, info_free), t_free = _timed(
            lambda: linalg.solve_matrix_free(op, op.rhs(la.pre_activation, grad), tol=args.tol))
        label = f"{name} L{la.index}: {g.describe()}; U {system.matrix.shape[0]}×{system.matrix.shape[1]}"
        agree = f"{_rel(x_free, x_lstsq):.1e}"
        rows.append([label, "dense lstsq (gelsd)", f"{t_build:.3f}", f"{t_lstsq:.3f}", f"{t_build + t_lstsq:.3f}",
                     f"rank {info_lstsq.rank}/{g.unknowns}", *quality(x_lstsq), "ref"])
        rows.append(["", "dense normal (dpstrf)", f"{t_build:.3f}", f"{t_normal:.3f}", f"{t_build + t_normal:.3f}",
                     f"rank {info_normal.rank}/{g.unknowns}", *quality(x_normal), f"{_rel(x_normal, x_lstsq):.1e}"])
        rows.append(["", "matrix-free LSQR", f"{t_op:.3f}", f"{t_free:.3f}", f"{t_op + t_free:.3f}",
                     f"{info_free.iterations} it{'' if info_free.converged else ' (not converged)'}",
                     *quality(x_free), agree])
        if args.reference:
            (ref, *_), t_np = _timed(lambda: np.linalg.lstsq(system.matrix.cpu().numpy(), system.rhs.cpu().numpy(),
                                                             rcond=None))
            x_np = torch.from_numpy(ref).to(x_lstsq)
            rows.append(["", "numpy.linalg.lstsq", f"{t_build:.3f}", f"{t_np:.3f}", f"{t_build + t_np:.3f}", "",
                         *quality(x_np), f"{_rel(x_np, x_lstsq):.1e}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn2_c1", "cnn4_c2"])
    parser.add_argument("--dataset", default="sample", help="dataset spec (sample, npz:PATH, cifar10, ...)")
    parser.add_argument("--index", type=int, default=0, help="official index of the image (train split)")
    parser.add_argument("--seed", type=int, default=0, help="model seed")
    parser.add_argument("--tol", type=float, default=1e-12, help="LSQR atol = btol")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reference", action="store_true", help="also time numpy.linalg.lstsq on the dense matrix")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}, device {device}; dataset {args.dataset} index {args.index}, "
          f"model seed {args.seed}, LSQR tol {args.tol:g}")
    rows = []
    for name in args.models:
        rows += bench_model(name, args, device)
    headers = ["layer", "path", "build s", "solve s", "total s", "rank / iterations", "rel. error of x_i",
               "PSNR dB (layer 0)", "rel. diff to lstsq"]
    print(tabulate(rows, headers=headers, tablefmt="github"))


if __name__ == "__main__":
    main()
