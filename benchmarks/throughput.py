"""Instances per second of batched attack instances against the same instances run one after the other.

For each batched attack (DLG, iDLG, Inverting Gradients, R-GAP, COPA, COPA-GM), model and B, B real
images (one client image each, label known, the same global model) are attacked twice with the same
seeds:

* sequential: ``attack.reconstruct`` on each instance in turn (the batch of one);
* batched: one ``attack.reconstruct_batch`` call on all B (per-instance gradients through
  ``torch.func.vmap``, per-instance L-BFGS / Adam state; copa/attacks/gradmatch.py, copa/attacks/lbfgs.py;
  for the layer-wise attacks the weight-only blocks of every layer's systems built once and each stage's
  Adam run over all instances at once, copa/layerwise/recursion.py, copa/layerwise/solves.py,
  copa/attacks/copa.py).

Pairs where the attack does not apply (R-GAP/COPA need a chain: not lenet-zhu) are skipped.

For the optimisation attacks (DLG, iDLG, IG) the B = 1 row also runs the **reference**: the peer's plain
loop on the same observation (the way DLG's ``main.py``, breaching and inversefed write it) —
``torch.optim.LBFGS`` or ``torch.optim.Adam`` over the image, the model's forward, ``torch.autograd.grad``
with ``create_graph=True``, the attack's distance (and TV, IG's schedule, signed gradients and box) — for the
same iterations, and prints seconds per gradient evaluation of ours and of the reference and their ratio
(issue "Reproduce the paper at full fidelity": ours ≤ 1.2× the reference at B = 1).

Printed per row: seconds of both, instances per second of both and their ratio, and the mean of the
attacks' own final losses of both (a quality check: DLG's and IG's trajectories are chaotic, so long
runs are not bit-identical, but they must reach the same quality). The iteration counts are reduced
(``--iterations``) so that a row takes seconds: throughput per iteration is what batching changes.

    python benchmarks/throughput.py                                  # CPU, float32, B = 1 4 16 64
    python benchmarks/throughput.py --attacks rgap copa copa-gm --models cnn4_c1 cnn4_c2 --batch-sizes 1 4 16
    python benchmarks/throughput.py --device cuda --batch-sizes 1 16 64
    python benchmarks/throughput.py --json runs/throughput.json     # also write the rows
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from copa.attacks import create_attack  # noqa: E402
from copa.threat import Scenario, resolve_device  # noqa: E402

# iterations per attack: seconds per row, not the attacks' published counts
DEFAULT_OVERRIDES = {"dlg": {"iterations": 2}, "idlg": {"iterations": 2}, "ig": {"iterations": 40},
                     "copa": {"steps": 50},
                     "copa-gm": {"steps": 50, "steps_image": 100, "steps_layer1": 50, "steps_deeper": 50}}


def observations(model: str, count: int, dataset: str, split: str, dtype: str, device: torch.device):
    """``count`` single-image observations of consecutive images (the dataset's first official indices)."""
    from copa.data import available_indices

    indices = sorted(available_indices(dataset, split))[:count]
    if len(indices) < count:
        raise SystemExit(f"{dataset} {split} has {len(indices)} images, fewer than B = {count}")
    return [Scenario(model=model, dataset=dataset, split=split, indices=(int(i),), dtype=dtype).build(device)[0]
            for i in indices]


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_loop(attack_name: str, overrides: dict, observation, seed: int, device: torch.device) -> dict:
    """The peer's plain loop for ``attack_name`` on one observation: (seconds, gradient evaluations)."""
    attack = create_attack(attack_name, overrides)
    hp = attack.hp
    model, loss_fn, labels = observation.model, observation.loss_fn, observation.labels
    params = [dict(model.named_parameters())[n] for n in observation.parameter_names]
    targets = [g.detach() for g in observation.gradients]
    generator = torch.Generator().manual_seed(seed)
    shape = (observation.batch_size, *observation.input_shape)
    evaluations = 0

    def gradients(x):
        return torch.autograd.grad(loss_fn(model(x), labels), params, create_graph=True)

    _synchronise(device)
    start = time.perf_counter()
    if attack_name in ("dlg", "idlg"):
        x = torch.randn(shape, generator=generator, dtype=observation.dtype).to(device).requires_grad_(True)
        optimizer = torch.optim.LBFGS([x], lr=hp["lr"], max_iter=hp["max_iter"], history_size=hp["history_size"])

        def closure():
            nonlocal evaluations
            optimizer.zero_grad()
            distance = sum(((g - t) ** 2).sum() for g, t in zip(gradients(x), targets))
            distance.backward()
            evaluations += 1
            return distance

        for _ in range(hp["iterations"]):
            optimizer.step(closure)
    elif attack_name == "ig":
        lower, upper = observation.bounds()
        target_norm = torch.sqrt(sum((t * t).sum() for t in targets))
        for _ in range(hp["restarts"]):
            x = torch.randn(shape, generator=generator, dtype=observation.dtype).to(device).requires_grad_(True)
            optimizer = torch.optim.Adam([x], lr=hp["lr"])
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=attack.milestones(), gamma=0.1)
            for _ in range(hp["iterations"]):
                optimizer.zero_grad()
                grads = gradients(x)
                dot = sum((g * t).sum() for g, t in zip(grads, targets))
                norm = torch.sqrt(sum((g * g).sum() for g in grads))
                loss = 1 - dot / (norm * target_norm)
                dx, dy = (x[..., :, 1:] - x[..., :, :-1]).abs(), (x[..., 1:, :] - x[..., :-1, :]).abs()
                loss = loss + hp["tv_weight"] * (dx.mean() + dy.mean())
                loss.backward()
                evaluations += 1
                if hp["signed"]:
                    x.grad.sign_()
                optimizer.step()
                scheduler.step()
                if hp["boxed"]:
                    with torch.no_grad():
                        x.copy_(torch.maximum(torch.minimum(x, upper), lower))
    else:
        raise ValueError(f"no reference loop for {attack_name!r}")
    _synchronise(device)
    return {"seconds_reference": time.perf_counter() - start, "evaluations_reference": evaluations}


REFERENCE_ATTACKS = ("dlg", "idlg", "ig")


def measure(attack_name: str, overrides: dict, instances: list, seed: int, device: torch.device) -> dict:
    attack = create_attack(attack_name, overrides)

    def generators():
        return [torch.Generator().manual_seed(seed + b) for b in range(len(instances))]

    attack.reconstruct_batch(instances[:1], generators()[:1])  # warm-up (allocations, kernel selection)
    _synchronise(device)
    start = time.perf_counter()
    sequential = [attack.reconstruct(o, g) for o, g in zip(instances, generators())]
    _synchronise(device)
    seconds_sequential = time.perf_counter() - start
    start = time.perf_counter()
    batched = attack.reconstruct_batch(instances, generators())
    _synchronise(device)
    seconds_batched = time.perf_counter() - start
    n = len(instances)

    def mean_loss(results):
        losses = [r.loss for r in results if r.loss is not None]
        return statistics.fmean(losses) if losses else float("nan")

    difference = max(float((s.images - b.images).abs().max()) for s, b in zip(sequential, batched))
    reference = {}
    if n == 1 and attack_name in REFERENCE_ATTACKS:
        reference_loop(attack_name, overrides, instances[0], seed, device)  # warm-up, like ours
        reference = reference_loop(attack_name, overrides, instances[0], seed, device)
        ours_per_eval = seconds_sequential / max(1, sequential[0].gradient_evals or 0)
        reference_per_eval = reference["seconds_reference"] / max(1, reference["evaluations_reference"])
        reference.update(ms_per_eval=1e3 * ours_per_eval, ms_per_eval_reference=1e3 * reference_per_eval,
                         ratio_to_reference=ours_per_eval / reference_per_eval)
    return {"B": n, "seconds_sequential": seconds_sequential, "seconds_batched": seconds_batched,
            "per_s_sequential": n / seconds_sequential, "per_s_batched": n / seconds_batched,
            "ratio": seconds_sequential / seconds_batched, "loss_sequential": mean_loss(sequential),
            "loss_batched": mean_loss(batched), "max_abs_difference": difference, **reference}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet-zhu", "cnn4_c2"])
    parser.add_argument("--attacks", nargs="+", default=["dlg", "idlg", "ig", "rgap", "copa", "copa-gm"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 16, 64])
    parser.add_argument("--dataset", default="npz:../shared/data/cifar10_subset.npz")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="ATTACK:KEY=VALUE",
                        help="override an attack's iterations etc., e.g. --set ig:iterations=100")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    overrides = {name: dict(values) for name, values in DEFAULT_OVERRIDES.items()}
    for item in args.overrides:
        name, _, assignment = item.partition(":")
        key, sep, value = assignment.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r} is malformed: expected ATTACK:KEY=VALUE, e.g. ig:iterations=100")
        overrides.setdefault(name, {})[key] = value
    machine = (f"{torch.cuda.get_device_name(device)}" if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"{torch.get_num_threads()} torch threads")
    print(f"# throughput: {args.device} ({machine}), {args.dtype}, torch {torch.__version__}, "
          f"dataset {args.dataset} {args.split}")
    rows = []
    for model in args.models:
        pool = observations(model, max(args.batch_sizes), args.dataset, args.split, args.dtype, device)
        for attack in args.attacks:
            reason = create_attack(attack, overrides.get(attack, {})).applicable(pool[0])
            if reason:
                print(f"  {model} {attack}: skipped ({reason})", flush=True)
                continue
            for size in args.batch_sizes:
                row = {"model": model, "attack": attack, **measure(attack, overrides.get(attack, {}), pool[:size],
                                                                   args.seed, device)}
                row["settings"] = overrides.get(attack, {})
                rows.append(row)
                print(f"  {model} {attack} B={size}: {row['ratio']:.2f}x", flush=True)
    table = [[r["model"], r["attack"], ", ".join(f"{k}={v}" for k, v in r["settings"].items()), r["B"],
              f"{r['seconds_sequential']:.2f}", f"{r['seconds_batched']:.2f}", f"{r['per_s_sequential']:.2f}",
              f"{r['per_s_batched']:.2f}", f"{r['ratio']:.2f}x", f"{r['loss_sequential']:.4g}",
              f"{r['loss_batched']:.4g}", f"{r['max_abs_difference']:.1e}",
              f"{r['ms_per_eval']:.2f} / {r['ms_per_eval_reference']:.2f}" if "ratio_to_reference" in r else "",
              f"{r['ratio_to_reference']:.2f}x" if "ratio_to_reference" in r else ""] for r in rows]
    print(tabulate(table, headers=["model", "attack", "settings", "B", "s sequential", "s batched",
                                   "inst/s sequential", "inst/s batched", "ratio", "mean loss seq.",
                                   "mean loss batched", "max |Δ image|", "ms/eval B=1: ours / reference",
                                   "ours / reference"], tablefmt="github"))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"device": args.device, "machine": machine, "dtype": args.dtype,
                                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
