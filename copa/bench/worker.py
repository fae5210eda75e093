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
import traceback
from pathlib import Path

import torch

from ..attacks import ATTACKS, Reconstruction, check_attack, progress
from ..attacks.sandboxed import describe_registered
from ..errors import CopaError, NotApplicableError
from ..plugins import import_in_worker, import_trusted
from ..threat.observation_file import Limits, load_observation
from .executor import execute, triage
from .record import canonical_json, failure_reason
from .run import set_threads


def _instance_failure(exc: BaseException, seconds: float = 0.0) -> dict:
    if isinstance(exc, NotApplicableError):
        return {"status": "not-applicable", "reason": str(exc), "seconds": seconds}
    return {"status": "failed", "reason": " ".join(failure_reason(exc).split()), "seconds": seconds,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-20000:]}


def _instance_result(reconstruction, seconds: float, forward_calls: int) -> dict:
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
    request = json.loads((folder / "request.json").read_text())
    if request.get("threads"):
        set_threads(int(request["threads"]))
    import_trusted(request.get("extensions") or ())
    for target in request.get("plugins") or ():
        import_in_worker(target)
    kind = request.get("kind")
    if kind == "describe":
        answer = {target: describe_registered(target) for target in request["plugins"]}
        (folder / "description.json").write_text(json.dumps(answer))
        return answer
    attack_class = ATTACKS.get(request["attack"])
    if kind == "check":
        passed = check_attack(attack_class, overrides=request["overrides"], model=request["model"],
                              input_shape=tuple(request["input_shape"]))
        (folder / "check.json").write_text(json.dumps({"passed": list(passed)}))
        return {"passed": passed}
    return _serve_attack(folder, request, attack_class(**request["hyperparameters"]))


def _serve_attack(folder: Path, request: dict, attack) -> dict:
    """Rebuild the observations, run the attack through the one executor (:mod:`copa.bench.executor`) as the
    runner would, write ``result.pt``."""
    device = torch.device(request["device"])
    observations = [load_observation(folder / name, device=device, limits=Limits(max_parameters=2**62,
                    max_input_pixels=2**62, max_batch_size=2**62, max_num_classes=2**62))[0]
                    for name in request["observations"]]
    pending, settled = triage(attack, observations)
    with progress.reporting("log" if request.get("progress") == "log" else "quiet", attack.name, stream=sys.stderr,
                            interval=float(request.get("progress_interval", progress.DEFAULT_LOG_INTERVAL))):
        outcomes = {**settled, **execute(attack, observations, request["seeds"], pending, batch=request["batch"])}
    instances = []
    for b in range(len(observations)):
        outcome = outcomes[b]
        if isinstance(outcome.result, BaseException):
            entry = _instance_failure(outcome.result, outcome.seconds)
        else:
            entry = _instance_result(outcome.result, outcome.seconds, outcome.forward_calls)
        if outcome.batch is not None:
            entry["batch"] = outcome.batch
        instances.append(entry)
    result = {"instances": instances}
    torch.save(result, folder / "result.pt")
    return result


def main(argv: list[str] | None = None) -> int:
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
