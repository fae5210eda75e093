"""The one way an attack is run on a chunk of instances, wherever it runs.

:func:`triage` checks each instance (finite, non-zero observed update; the attack's applicability) and
:func:`execute` runs the attack on those that passed: one vectorised ``reconstruct_batch`` call for a batched
attack (each instance with its own seeded generator), rerun one at a time if that call raises, else one instance
at a time; every instance seeded the same way, its forward calls counted, its wall time measured. The runner
(:func:`copa.bench.run.attack_observations`, for trusted attacks in its own process) and the sandboxed worker
(:mod:`copa.bench.worker`, for plug-ins and ``--isolate``) both call these two, so that an attack gives the same
bits in either place; ``copa verify`` reruns through the runner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from ..attacks import why_not_applicable
from ..errors import NotApplicableError, RunFailure
from .record import failure_reason


@dataclass
class Outcome:
    """What one instance ended with: a Reconstruction, or the exception (a :class:`NotApplicableError` for an
    attack that does not apply); its wall time (its share of a batched call's), the forward calls of its model,
    and the note on the batched call it was part of (``instances``, ``seconds``; or why it was rerun alone)."""

    result: Any
    seconds: float = 0.0
    forward_calls: int = 0
    batch: dict[str, Any] | None = None


def check_observed_gradients(observation) -> None:
    """Raise :class:`RunFailure` naming every observed gradient tensor with NaN or Inf entries, or when every
    gradient is zero (e.g. a defence that pruned everything): no attack can use such an update."""
    bad = []
    for name, grad in zip(observation.parameter_names, observation.gradients):
        finite = torch.isfinite(grad)
        if not bool(finite.all()):
            nan = int(torch.isnan(grad).sum())
            count = int(grad.numel() - finite.sum())
            bad.append(f"{name} has {count} non-finite entries of {grad.numel()} ({nan} NaN, {count - nan} Inf)")
    if bad:
        more = f"; ... ({len(bad) - 4} more tensors)" if len(bad) > 4 else ""
        raise RunFailure(f"observed gradients are not finite: {'; '.join(bad[:4])}{more}")
    if all(not bool(grad.any()) for grad in observation.gradients):
        defended = ", ".join(d.get("name", "?") for d in observation.defences) or "no defence"
        raise RunFailure(f"observed gradients are all zero ({defended}): the update carries nothing to attack")


def triage(attack, observations: list, *, stop_on_error: bool = False) -> tuple[list[int], dict[int, Outcome]]:
    """``(pending, settled)``: the instances the attack will run on, and those settled before it runs — a
    :class:`NotApplicableError` with the reason, or the failure of the observed-update check. With
    ``stop_on_error`` a failure other than not-applicable is raised instead."""
    pending, settled = [], {}
    for b, observation in enumerate(observations):
        try:
            check_observed_gradients(observation)
            reason = why_not_applicable(attack, observation)
        except NotApplicableError as exc:
            reason = str(exc)
        except Exception as exc:
            if stop_on_error:
                raise
            settled[b] = Outcome(exc)
            continue
        if reason is not None:
            settled[b] = Outcome(NotApplicableError(reason))
        else:
            pending.append(b)
    return pending, settled


def execute(attack, observations: list, seeds: list[int], pending: list[int], *, batch: bool,
            stop_on_error: bool = False) -> dict[int, Outcome]:
    """Run ``attack`` on the instances ``pending`` (module docstring); one :class:`Outcome` each. Exceptions of
    the attack are outcomes, not raised — unless ``stop_on_error`` (the command line's single run), when any but
    :class:`NotApplicableError` propagates at once. Interrupts always propagate."""
    counts = {b: 0 for b in pending}
    handles = [observations[b].model.register_forward_pre_hook(lambda module, args, b=b: _count(counts, b))
               for b in pending]
    outcomes: dict[int, Outcome] = {}
    note = None
    try:
        if batch and type(attack).batched and len(pending) > 1:
            torch.manual_seed(seeds[pending[0]])
            generators = [torch.Generator().manual_seed(seeds[b]) for b in pending]
            start = time.perf_counter()
            try:
                results = attack.reconstruct_batch([observations[b] for b in pending], generators)
            except Exception as exc:  # rerun alone below: each instance then gets its own status and reason
                if stop_on_error and not isinstance(exc, NotApplicableError):
                    raise
                note = {"instances": len(pending), "failed": failure_reason(exc), "rerun": "one at a time"}
            else:
                seconds = time.perf_counter() - start
                note = {"instances": len(pending), "seconds": seconds}
                for b, result in zip(pending, results, strict=True):
                    outcomes[b] = Outcome(result, seconds / len(pending), counts[b], note)
        for b in pending:
            if b in outcomes:
                continue
            torch.manual_seed(seeds[b])
            generator = torch.Generator().manual_seed(seeds[b])
            start = time.perf_counter()
            try:
                result = attack.reconstruct(observations[b], generator)
            except Exception as exc:
                if stop_on_error and not isinstance(exc, NotApplicableError):
                    raise
                result = exc
            outcomes[b] = Outcome(result, time.perf_counter() - start, counts[b], note)
    finally:
        for handle in handles:
            handle.remove()
    return outcomes


def _count(counts: dict[int, int], b: int) -> None:
    counts[b] += 1
