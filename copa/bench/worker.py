"""The sandboxed worker (:mod:`copa.sandbox`): ``python -m copa.bench.worker DIR`` — the only process of
copa-bench that imports an untrusted plug-in (:func:`copa.plugins.import_in_worker`).

``DIR/request.json`` says what to do (``kind``):

* ``describe``: import the plug-ins and write ``DIR/description.json``, what each registered
  (:func:`copa.attacks.sandboxed.describe_registered`): the runner registers their attacks from it;
* ``attack``: rebuild each observation from its file ``DIR/observation-K.pt`` — nothing else of the client's
  reaches the worker —, run the attack as the runner would (applicability, one seeded generator per instance, a
  batched call for a batched attack, else one instance at a time) and write ``DIR/result.pt`` (tensors and
  plain data only: the runner reads it with ``torch.load(weights_only=True)``);
* ``check``: run :func:`copa.attacks.check_attack` on the plug-in's attack (``copa check``) and write
  ``DIR/check.json``.

Exit status 2 with one line on stderr: the request itself is bad (an unknown attack, a bad hyperparameter, a
plug-in that cannot be imported).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import torch


def _instance_failure(exc: BaseException, seconds: float = 0.0) -> dict:
    from ..errors import NotApplicableError
    from .record import failure_reason

    if isinstance(exc, NotApplicableError):
        return {"status": "not-applicable", "reason": str(exc), "seconds": seconds}
    return {"status": "failed", "reason": " ".join(failure_reason(exc).split()), "seconds": seconds,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-20000:]}


def _instance_result(reconstruction, seconds: float, forward_calls: int) -> dict:
    from ..attacks import Reconstruction
    from .record import canonical_json

    if not isinstance(reconstruction, Reconstruction) or not isinstance(reconstruction.images, torch.Tensor):
        return {"status": "failed", "reason": f"failed: the attack returned {type(reconstruction).__name__}, not a "
                                              f"Reconstruction with an images tensor", "seconds": seconds}
    labels = reconstruction.labels
    return {"status": "ok", "images": reconstruction.images.detach().cpu().clone(),
            "labels": None if labels is None else torch.as_tensor(labels).detach().cpu().to(torch.int64).clone(),
            "loss": None if reconstruction.loss is None else float(reconstruction.loss),
            "forward_evals": reconstruction.forward_evals, "forward_calls": forward_calls,
            "gradient_evals": reconstruction.gradient_evals,
            "info_json": canonical_json(reconstruction.info or {}), "seconds": seconds}


def serve(folder: Path) -> dict:
    """Carry out the request in ``folder`` (module docstring); return what was written. An attack's progress
    (request ``progress``: ``log`` or ``quiet``, every ``progress_interval`` seconds) goes to standard error as
    ``[progress]`` lines, which the runner forwards while the worker runs."""
    from ..attacks import ATTACKS
    from ..plugins import import_in_worker, import_trusted
    from .run import set_threads

    request = json.loads((folder / "request.json").read_text())
    if request.get("threads"):
        set_threads(int(request["threads"]))
    import_trusted(request.get("extensions") or ())
    for target in request.get("plugins") or ():
        import_in_worker(target)
    kind = request.get("kind")
    if kind == "describe":
        from ..attacks.sandboxed import describe_registered

        answer = {target: describe_registered(target) for target in request["plugins"]}
        (folder / "description.json").write_text(json.dumps(answer))
        return answer
    attack_class = ATTACKS.get(request["attack"])
    if kind == "check":
        from ..attacks import check_attack

        passed = check_attack(attack_class, overrides=request["overrides"], model=request["model"],
                              input_shape=tuple(request["input_shape"]))
        (folder / "check.json").write_text(json.dumps({"passed": list(passed)}))
        return {"passed": passed}
    return _serve_attack(folder, request, attack_class(**request["hyperparameters"]))


def _serve_attack(folder: Path, request: dict, attack) -> dict:
    from ..attacks import progress, why_not_applicable
    from ..errors import NotApplicableError
    from ..threat.observation_file import Limits, load_observation
    from .run import check_observed_gradients

    device = torch.device(request["device"])
    observations = [load_observation(folder / name, device=device, limits=Limits(max_parameters=2**62,
                    max_input_pixels=2**62, max_batch_size=2**62, max_num_classes=2**62))[0]
                    for name in request["observations"]]
    seeds = request["seeds"]
    results: dict[int, dict] = {}
    pending = []
    for b, observation in enumerate(observations):
        try:
            check_observed_gradients(observation)
            reason = why_not_applicable(attack, observation)
        except Exception as exc:
            results[b] = _instance_failure(exc)
            continue
        if reason is not None:
            results[b] = _instance_failure(NotApplicableError(reason))
        else:
            pending.append(b)
    with progress.reporting("log" if request.get("progress") == "log" else "quiet", attack.name, stream=sys.stderr,
                            interval=float(request.get("progress_interval", progress.DEFAULT_LOG_INTERVAL))):
        _attack_pending(attack, observations, pending, seeds, request["batch"], results)
    result = {"instances": [results[b] for b in range(len(observations))]}
    torch.save(result, folder / "result.pt")
    return result


def _attack_pending(attack, observations, pending: list[int], seeds: list[int], batch: bool,
                    results: dict[int, dict]) -> None:
    """Run ``attack`` on the applicable instances ``pending`` as the runner would; fill ``results``."""
    counts = {b: 0 for b in pending}
    handles = []
    for b in pending:
        def count(module, args, b=b):
            counts[b] += 1
        handles.append(observations[b].model.register_forward_pre_hook(count))
    batch_note = None
    if batch and type(attack).batched and len(pending) > 1:
        torch.manual_seed(seeds[pending[0]])
        generators = [torch.Generator().manual_seed(seeds[b]) for b in pending]
        start = time.perf_counter()
        try:
            reconstructions = attack.reconstruct_batch([observations[b] for b in pending], generators)
        except Exception as exc:  # noqa: BLE001 - rerun alone below: each instance then gets its own status
            batch_note = {"instances": len(pending), "failed": _instance_failure(exc)["reason"],
                          "rerun": "one at a time"}
        else:
            total = time.perf_counter() - start
            batch_note = {"instances": len(pending), "seconds": total}
            for b, reconstruction in zip(pending, reconstructions, strict=True):
                results[b] = _instance_result(reconstruction, total / len(pending), counts[b])
    for b in pending:
        if b in results:
            continue
        torch.manual_seed(seeds[b])
        start = time.perf_counter()
        try:
            reconstruction = attack.reconstruct(observations[b], torch.Generator().manual_seed(seeds[b]))
        except Exception as exc:
            results[b] = _instance_failure(exc, time.perf_counter() - start)
        else:
            results[b] = _instance_result(reconstruction, time.perf_counter() - start, counts[b])
    for handle in handles:
        handle.remove()
    for b in pending:
        if batch_note is not None:
            results[b]["batch"] = batch_note


def main(argv: list[str] | None = None) -> int:
    from ..errors import CopaError

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m copa.bench.worker DIR", file=sys.stderr)
        return 2
    try:
        serve(Path(argv[0]))
    except CopaError as exc:
        print(f"copa worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
