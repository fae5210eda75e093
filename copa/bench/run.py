"""Run one attack on one scenario (or observation), score it, and make its record.

The runner is the only place where the observation and the ground truth meet: the attack gets the
observation, the scorer gets the reconstruction and the ground truth. The record is made by
:mod:`copa.bench.record`, written by :mod:`copa.bench.outputs`.
"""

from __future__ import annotations

from typing import Any

import torch
from threadpoolctl import threadpool_limits

from .. import metrics as metrics_mod
from ..attacks import Attack, Reconstruction, create_attack
from ..data import dataset_location
from ..errors import CopaError, InvalidSpecError, NotApplicableError, RunFailure
from ..hyperparameters import check_threads
from ..threat import GroundTruth, Observation, Scenario, resolve_device
from .executor import check_observed_gradients, execute, triage  # noqa: F401  (check_observed_gradients: public)
from .isolation import ISOLATION_MODES, attack_plugin, run_in_worker
from .record import add_outcome, mark_failed, mark_not_applicable, new_record, provenance



def run_attack(scenario: Scenario, attack: str | Attack, *, overrides: dict[str, Any] | None = None,
               seed: int = 0, device: str = "cpu", threads: int | None = None,
               metrics: tuple[str, ...] = metrics_mod.DEFAULT_METRICS,
               record_failures: bool = False, isolation: str = "auto", hide=(), limits=None,
               ) -> tuple[dict[str, Any], Reconstruction | None, GroundTruth]:
    """Build the scenario, run the attack on its observation, score the result.

    Returns ``(record, reconstruction, ground_truth)``. An attack that does not apply yields a record
    with ``status: "not-applicable"`` and its reason; ``reconstruction`` is then None.
    Bad inputs (names, options) raise :class:`~copa.errors.CopaError` before any work is done.
    With ``record_failures=True`` a run that cannot give a valid result yields a record with
    ``status: "failed"``, the reason and (for an exception) the traceback instead of propagating (the
    workflow uses this so that one failing image does not stop the others): an exception raised by the
    attack or by scoring its output (solver errors such as ``torch.linalg.LinAlgError``, out of memory),
    non-finite observed gradients (checked before the attack runs) and a non-finite reconstruction
    (never scored). Interrupts still propagate. Without ``record_failures`` these raise
    (the non-finite checks as :class:`RunFailure`). ``isolation``, ``hide``: see :func:`attack_observations`.
    """
    return run_attacks([scenario], attack, overrides=overrides, seeds=[seed], device=device, threads=threads,
                       metrics=metrics, record_failures=record_failures, isolation=isolation, hide=hide,
                       limits=limits)[0]


def set_threads(threads: int, what: str = "threads") -> None:
    """A job's CPU threads: torch's intra-op pool and, through threadpoolctl, the BLAS/LAPACK and OpenMP
    pools of NumPy and SciPy (SciPy's LAPACK factors the layer-wise attacks' Gram matrices). With several
    jobs at once an unpinned pool oversubscribes the cores (one attack ran 10× slower on 2 cores).
    A count outside 1 … :data:`~copa.hyperparameters.MAX_THREADS` raises one line naming ``what`` (e.g.
    ``--threads``)."""
    threads = check_threads(threads, what)
    torch.set_num_threads(int(threads))
    threadpool_limits(limits=int(threads))


def run_attacks(scenarios: list[Scenario], attack: str | Attack, *, overrides: dict[str, Any] | None = None,
                seeds: list[int] | None = None, device: str = "cpu", threads: int | None = None,
                metrics: tuple[str, ...] = metrics_mod.DEFAULT_METRICS, record_failures: bool = False,
                batch: bool = True, isolation: str = "auto", hide=(), limits=None,
                ) -> list[tuple[dict[str, Any], Reconstruction | None, GroundTruth | None]]:
    """:func:`run_attack` for several scenarios of one model (e.g. a cell's N images): a batched attack
    solves them as one vectorised computation (:func:`attack_observations`), others one after the other.
    ``seeds``: one per scenario (default 0 each). Returns ``(record, reconstruction, truth)`` per scenario.
    With ``record_failures``, a scenario whose client step fails for a reason other than a bad input
    (a :class:`CopaError`, raised) — e.g. out of memory on a GPU — gets a failed record and truth None.
    ``isolation`` and ``hide``: see :func:`attack_observations`; the scenarios' dataset files are hidden too.
    ``limits``: bounds on input pixels, batch and model size checked before allocation
    (:meth:`copa.threat.Scenario.build`; default those of observation files)."""
    if threads is not None:
        set_threads(threads)
    dev = resolve_device(device)
    for scenario in scenarios:  # unknown metric names, images too small for one: before the attack runs
        metrics_mod.check_metric_input(metrics, scenario.input_shape)
    attack_obj = attack if isinstance(attack, Attack) else create_attack(attack, overrides)
    seeds = seeds if seeds is not None else [0] * len(scenarios)
    built: dict[int, tuple[Observation, GroundTruth]] = {}
    out: dict[int, tuple[dict[str, Any], Reconstruction | None, GroundTruth | None]] = {}
    for k, scenario in enumerate(scenarios):
        try:
            built[k] = scenario.build(dev, limits=limits)
        except CopaError:  # a bad input (name, index, file): the caller's error, never a record
            raise
        except Exception as exc:  # e.g. out of memory in the client's forward pass on a GPU
            if not record_failures:
                raise
            out[k] = (_build_failure(scenario, attack_obj, seeds[k], dev, exc), None, None)
    order = sorted(built)
    results = attack_observations([built[k][0] for k in order], attack_obj, truths=[built[k][1] for k in order],
                                  seeds=[seeds[k] for k in order], device=dev, metrics=metrics,
                                  record_failures=record_failures,
                                  scenarios=[scenarios[k].to_dict() for k in order], batch=batch,
                                  isolation=isolation, hide=[*hide, *_dataset_locations(scenarios)])
    for k, (record, reconstruction) in zip(order, results, strict=True):
        out[k] = (record, reconstruction, built[k][1])
    return [out[k] for k in range(len(scenarios))]


def _dataset_locations(scenarios: list[Scenario]) -> list[str]:
    found = (dataset_location(s.dataset, s.data_root) for s in scenarios)
    return sorted({str(path) for path in found if path is not None})


def _build_failure(scenario: Scenario, attack: Attack, seed: int, device: torch.device,
                   exc: BaseException) -> dict[str, Any]:
    """The failed record of a scenario whose client step could not be computed (no observation exists)."""
    record = new_record(attack=attack, seed=seed, scenario=scenario.to_dict())
    mark_failed(record, exc)
    record["reason"] = record["reason"].replace("failed: ", "failed: building the client's step: ", 1)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    record.update(provenance(device))
    return record


def check_finite_images(images: torch.Tensor) -> None:
    """Raise :class:`RunFailure` when an attack's returned iterate has NaN or Inf entries."""
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        raise RunFailure(f"attack returned non-finite images ({int(images.numel() - finite.sum())} of "
                         f"{images.numel()} entries)")


def attack_observation(observation: Observation, attack: Attack, *, truth: GroundTruth | None = None,
                       seed: int = 0, device: torch.device | str | None = None,
                       metrics: tuple[str, ...] = metrics_mod.DEFAULT_METRICS, record_failures: bool = False,
                       scenario: dict[str, Any] | None = None, source: dict[str, Any] | None = None,
                       isolation: str = "auto", hide=()) -> tuple[dict[str, Any], Reconstruction | None]:
    """Run ``attack`` on ``observation``; score it against ``truth`` when given (else metrics are null).

    ``scenario`` (the :class:`Scenario` as a dict) or ``source`` (e.g. the observation file it came
    from) describe where the observation came from. Failures: see :func:`run_attack`.
    Returns ``(record, reconstruction)``; the reconstruction is None unless the status is ok.
    """
    return attack_observations([observation], attack, truths=[truth], seeds=[seed], device=device, metrics=metrics,
                               record_failures=record_failures, scenarios=[scenario], sources=[source],
                               isolation=isolation, hide=hide)[0]


def attack_observations(observations: list[Observation], attack: Attack, *, truths: list | None = None,
                        seeds: list[int] | None = None, device: torch.device | str | None = None,
                        metrics: tuple[str, ...] = metrics_mod.DEFAULT_METRICS, record_failures: bool = False,
                        scenarios: list | None = None, sources: list | None = None, batch: bool = True,
                        isolation: str = "auto", hide=(),
                        ) -> list[tuple[dict[str, Any], Reconstruction | None]]:
    """:func:`attack_observation` for B independent instances (observations of one model and weights).

    With ``batch`` and an attack that declares ``batched``, the applicable instances run as one
    vectorised ``reconstruct_batch`` call (each instance with its own seeded generator); each record
    then carries ``batch: {instances, seconds, members}`` (members: the scenarios' indices) and ``seconds``
    is its share of the batch's wall time.
    If the batched call raises, every instance is rerun alone (the record's ``batch`` entry says why),
    so one failing instance never fails the others. Returns one ``(record, reconstruction)`` per instance.

    ``isolation`` (:data:`~copa.bench.isolation.ISOLATION_MODES`): ``auto`` runs copa-bench's own attacks (and
    those the calling program registered itself) here and every plug-in's attack in a sandboxed worker process
    that gets only the observations
    (:func:`~copa.bench.isolation.run_in_worker`; the record's ``isolation`` entry says how it ran);
    ``always`` runs every attack there. ``hide``: paths the sandbox makes empty (the dataset, the run's
    outputs).
    """
    if isolation not in ISOLATION_MODES:
        raise InvalidSpecError(f"isolation {isolation!r} is invalid: accepted are {', '.join(ISOLATION_MODES)}")
    count = len(observations)
    truths = truths or [None] * count
    seeds = seeds if seeds is not None else [0] * count
    scenarios = scenarios or [None] * count
    sources = sources or [None] * count
    records: list[dict[str, Any]] = []
    devices = []
    for observation, truth, seed, scenario, source in zip(observations, truths, seeds, scenarios, sources, strict=True):
        devices.append(torch.device(device) if device is not None else observation.device)
        records.append(new_record(attack=attack, seed=seed, scenario=scenario, observation=observation, source=source,
                                  truth=truth))

    pending, settled = triage(attack, observations, stop_on_error=not record_failures)
    outcome: dict[int, Any] = {b: o.result for b, o in settled.items()}  # a Reconstruction, or the exception
    calls: dict[int, int] = {}
    if pending and (isolation == "always" or attack_plugin(attack) is not None):
        calls = _attack_in_worker(observations, pending, attack, seeds, batch, devices, records, outcome, hide,
                                  record_failures, scenarios)
    elif pending:
        members = [(scenarios[b] or {}).get("indices") for b in pending]  # which images ran together
        for b, result in execute(attack, observations, seeds, pending, batch=batch,
                                 stop_on_error=not record_failures).items():
            outcome[b], calls[b] = result.result, result.forward_calls
            records[b]["seconds"] = result.seconds
            if result.batch is not None:
                records[b]["batch"] = {**result.batch, **({"members": members} if "seconds" in result.batch else {})}
    return [_finish(records[b], outcome[b], observations[b], truths[b], calls.get(b), devices[b], metrics,
                    record_failures) for b in range(count)]


def _attack_in_worker(observations, pending, attack, seeds, batch, devices, records, outcome, hide,
                      record_failures, scenarios) -> dict[int, int]:
    """Run the pending instances in an isolated worker; fill ``outcome`` (a Reconstruction, or the exception
    the record will carry) and each record's ``seconds`` and ``isolation``; return the forward calls the
    worker counted per instance."""
    try:
        results, isolation = run_in_worker(attack, [observations[b] for b in pending], [seeds[b] for b in pending],
                                           batch=batch, device=devices[pending[0]], hidden=hide,
                                           threads=torch.get_num_threads())
    except CopaError:
        raise
    except Exception as exc:
        if not record_failures:
            raise
        for b in pending:
            outcome[b] = exc
        return {}
    members = [(scenarios[b] or {}).get("indices") for b in pending]  # which images ran together
    for b, result in zip(pending, results, strict=True):
        records[b]["seconds"] = result.seconds
        records[b]["isolation"] = isolation
        if result.batch is not None:  # as the runner's own batched call records it
            records[b]["batch"] = {**result.batch, **({"members": members} if "seconds" in result.batch else {})}
        if result.status == "ok":
            outcome[b] = Reconstruction(images=result.images, labels=result.labels, loss=result.loss,
                                        forward_evals=result.forward_evals if result.forward_evals is not None
                                        else result.forward_calls,
                                        gradient_evals=result.gradient_evals, info=result.info or {})
        elif result.status == "not-applicable":
            outcome[b] = NotApplicableError(result.reason)
        else:
            reason = result.reason or "failed: the attack failed in its worker process"
            outcome[b] = RunFailure(reason.removeprefix("failed: "))  # the same reason as in the runner's process
            if result.traceback:
                records[b]["worker_traceback"] = result.traceback
    return {b: result.forward_calls for b, result in zip(pending, results, strict=True)}


def _finish(record: dict[str, Any], outcome, observation: Observation, truth: GroundTruth | None,
            forward_calls: int | None, dev: torch.device, metrics: tuple[str, ...], record_failures: bool,
            ) -> tuple[dict[str, Any], Reconstruction | None]:
    """Check and score one instance's outcome (a Reconstruction, or the exception it ended with)."""
    reason = None
    failed = False
    scores = None
    reconstruction = outcome if isinstance(outcome, Reconstruction) else None
    try:
        if isinstance(outcome, NotApplicableError):
            reason = str(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            _check_shape(reconstruction, observation)
            check_finite_images(reconstruction.images)
            if truth is not None:
                recon01 = truth.preprocess.undo(reconstruction.images.detach().to(truth.images01))
                scores = metrics_mod.score_images(recon01, truth.images01, predicted_labels=reconstruction.labels,
                                                  true_labels=truth.labels, metrics=metrics)
    except Exception as exc:
        if not record_failures:
            raise
        mark_failed(record, exc)
        failed = True
    if failed:  # the exception and its frames are gone here: free the cached GPU memory they held
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        record.update(provenance(dev))
        return record, None
    if reason is not None:
        mark_not_applicable(record, reason)
        record.update(provenance(dev))
        return record, None

    add_outcome(record, reconstruction, scores, forward_calls)
    record.update(provenance(dev))
    return record, reconstruction


def _check_shape(reconstruction: Reconstruction, observation: Observation) -> None:
    expected = (observation.batch_size, *observation.input_shape)
    if tuple(reconstruction.images.shape) != expected:
        raise CopaError(f"attack returned images of shape {tuple(reconstruction.images.shape)}, expected {expected}")
