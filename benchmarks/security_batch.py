"""Time the COPA security metric of B images: B ``security_report`` calls versus one ``security_reports``.

``security_reports`` (issue 7) analyses the chain per image but computes each conv layer's ranks
for all B images with one ``copa.layerwise.ranks.layer_ranks`` call: the weight-only work (the interior
forward Gram ``A_intᵀA_int`` of the tall-and-large Gram path, the per-channel convolution weights)
once, the B ``K₁`` SVDs in one batched call, the rest per image. Both give the same ranks (checked
here). Condition numbers are per image either way and left out unless ``--condition``. Each time is
the best of ``--repeat`` interleaved runs, on ``--threads`` threads (default 1): torch's, and
OpenBLAS's/OpenMP's through their environment variables (SciPy's LAPACK runs the pivoted Cholesky),
unless those are already set.

    python benchmarks/security_batch.py                                   # cnn4_c2, cnn3_c1; B = 1, 4, 8
    python benchmarks/security_batch.py --models cnn2_c6 --batch-sizes 2 4 --repeat 1
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def _best_of(fns, repeat: int):
    """Results of ``fns`` and the best wall time of each over ``repeat`` rounds (interleaved, so that a
    busy machine slows both alike)."""
    best, outs = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeat):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            outs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return outs, best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cnn4_c2", "cnn3_c1"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--dataset", default="sample", help="dataset whose train images 0..B-1 give δ (default sample)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing; the best is reported (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--condition", action="store_true", help="also compute the condition numbers (per image)")
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before NumPy/SciPy load BLAS
        os.environ.setdefault(var, str(args.threads))
    import torch
    from tabulate import tabulate

    from copa.layerwise.security import security_report, security_reports

    torch.set_num_threads(args.threads)
    kwargs = {"dataset": args.dataset, "condition": args.condition}
    security_report("cnn2_c1", input_shape=(3, 8, 8), **kwargs)  # warm-up: imports, data
    rows = []
    for name in args.models:
        for b in args.batch_sizes:
            indices = list(range(b))
            (singles, batched), (t_seq, t_bat) = _best_of(
                [lambda: [security_report(name, index=i, **kwargs) for i in indices],
                 lambda: security_reports(name, indices=indices, **kwargs)], args.repeat)
            same = all([la.rank for la in r.layers] == [la.rank for la in s.layers] for r, s in zip(batched, singles))
            if not same:
                raise SystemExit(f"{name}, B={b}: batched ranks differ from per-image ranks")
            rows.append([name, b, f"{t_seq:.2f}", f"{t_bat:.2f}", f"{t_seq / b:.2f}", f"{t_bat / b:.2f}",
                         f"{t_seq / t_bat:.2f}×"])
            print(f"{name} B={b}: sequential {t_seq:.2f} s, batched {t_bat:.2f} s", flush=True)
    print()
    print(tabulate(rows, headers=["model", "B", "sequential (s)", "batched (s)", "sequential / image",
                                  "batched / image", "speed-up"], tablefmt="github"))
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"thread(s), best of {args.repeat}, dataset {args.dataset}, condition numbers "
          f"{'on' if args.condition else 'off'}")


if __name__ == "__main__":
    main()
