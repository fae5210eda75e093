"""check_attack: the contract every attack must meet, runnable by plug-in authors.

In the spirit of scikit-learn's ``check_estimator``: :func:`check_attack` takes an attack class (or
registered name) and runs a fixed list of checks on small real observations, raising
:class:`AttackContractError` naming the first check that fails and what was expected. The checks:

* **declaration** — a subclass of :class:`~copa.attacks.Attack` with a ``name`` (no spaces), a ``paper``;
  every hyperparameter a :class:`~copa.hyperparameters.Hyperparameter` with a non-empty source whose
  default survives type coercion; ``update_kinds`` a non-empty tuple of :data:`copa.threat.UPDATE_KINDS`;
  ``describe()`` is JSON;
* **bad input** — an unknown hyperparameter and a wrong-typed one raise a
  :class:`~copa.errors.CopaError` naming the attack;
* **applicability** — ``applicable`` returns None or a reason (str); an attack with ``needs_label``
  refuses an observation without labels;
* **output** — ``reconstruct`` returns a :class:`~copa.attacks.Reconstruction` whose images have the
  observation's batch, shape, dtype and device and are finite; labels None or one per image; a finite
  loss or None; non-negative evaluation counts or None; an attack that reads weight deltas does so on a
  FedAvg observation (two local steps), and one that does not is refused it;
* **observation untouched** — the observed gradients, labels and weights are bit-identical afterwards
  (an attack works on copies);
* **determinism** — the same seed gives the same images (bit-identical on the CPU);
* **batch** — ``reconstruct_batch`` on two instances returns two reconstructions, each equal to
  ``reconstruct`` of that instance with the same seed (within ``batch_tolerance``: a vectorised
  computation may round differently).

The observations come from :class:`copa.threat.Scenario` on the bundled ``sample`` photographs; an
attack never receives the ground truth here either. Use ``overrides`` to make a slow attack quick
(e.g. ``{"iterations": 5}``): the contract does not depend on how well it reconstructs.
``copa check --attack NAME [--plugin FILE] [--set key=value]`` runs it from the command line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import CopaError
from ..hyperparameters import Hyperparameter
from ..threat import UPDATE_KINDS, Scenario
from .base import ATTACKS, Attack, Reconstruction, why_not_applicable

CHECKS = ("declaration", "bad input", "applicability", "output", "observation untouched", "determinism", "batch")


class AttackContractError(CopaError):
    """An attack that breaks the contract of :func:`check_attack` (the message names the check)."""


def _fail(attack_name: str, check: str, what: str) -> AttackContractError:
    return AttackContractError(f"attack {attack_name!r} fails check {check!r}: {what}")


def _observations(model: str, input_shape: Sequence[int], indices: Sequence[int], label_known: bool, dtype: str,
                  local_steps: int = 1):
    return [Scenario(model=model, dataset="sample", indices=(int(i),), input_shape=tuple(input_shape),
                     label_known=label_known, dtype=dtype, local_steps=local_steps).build("cpu")[0] for i in indices]


def _snapshot(observation) -> list[torch.Tensor]:
    tensors = [g.detach().clone() for g in observation.gradients]
    tensors += [t.detach().clone() for t in observation.model.state_dict().values()]
    if observation.labels is not None:
        tensors.append(observation.labels.clone())
    return tensors


def check_attack(attack: str | type[Attack], *, overrides: dict[str, Any] | None = None, model: str = "cnn2_c1",
                 input_shape: Sequence[int] = (3, 16, 16), dtype: str = "float64", seed: int = 0,
                 batch_tolerance: float = 1e-5) -> list[str]:
    """Run every check of the module docstring on ``attack`` (a class or a registered name); return the
    names of the checks passed, or raise :class:`AttackContractError` at the first failure.

    ``model``/``input_shape``/``dtype``: the scenario of the observations (a chain by default, so that
    layer-wise attacks apply too); ``overrides``: hyperparameters for a quick run."""
    cls = ATTACKS.get(attack) if isinstance(attack, str) else attack
    name = getattr(cls, "name", None) or repr(cls)
    overrides = dict(overrides or {})

    # declaration
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise _fail(name, "declaration", f"{cls!r} is not a subclass of copa.attacks.Attack")
    if not isinstance(cls.name, str) or not cls.name or any(c.isspace() for c in cls.name):
        raise _fail(name, "declaration", f"name {cls.name!r} must be a non-empty string without spaces")
    if not isinstance(cls.paper, str) or not cls.paper:
        raise _fail(name, "declaration", "paper must name the method's source (a non-empty string)")
    kinds = cls.update_kinds
    if not isinstance(kinds, tuple) or not kinds or any(k not in UPDATE_KINDS for k in kinds):
        raise _fail(name, "declaration", f"update_kinds {kinds!r} must be a non-empty tuple of "
                                         f"{', '.join(map(repr, UPDATE_KINDS))}")
    for key, hp in cls.hyperparameters.items():
        if not isinstance(hp, Hyperparameter):
            raise _fail(name, "declaration", f"hyperparameter {key!r} is a {type(hp).__name__}, not a Hyperparameter")
        if not isinstance(hp.source, str) or not hp.source.strip():
            raise _fail(name, "declaration", f"hyperparameter {key!r} has no source (paper, code file or 'ours: why')")
        if hp.coerce(key, hp.default) != hp.default:
            raise _fail(name, "declaration", f"hyperparameter {key!r}: its default {hp.default!r} does not survive "
                                             f"type coercion")
    try:
        json.dumps(cls.describe())
    except (TypeError, ValueError) as exc:
        raise _fail(name, "declaration", f"describe() is not JSON-serialisable: {exc}") from None
    passed = ["declaration"]

    # bad input
    try:
        cls(**{"no_such_hyperparameter_": 1})
    except CopaError as exc:
        if name not in str(exc):
            raise _fail(name, "bad input", f"the unknown-hyperparameter error does not name the attack: {exc}") from None
    else:
        raise _fail(name, "bad input", "an unknown hyperparameter was accepted")
    for key, hp in cls.hyperparameters.items():
        if isinstance(hp.default, (bool, int, float)):
            try:
                cls(**{key: "not-a-number"})
            except CopaError as exc:
                if name not in str(exc):
                    raise _fail(name, "bad input", f"the wrong-type error for {key!r} does not name the attack: "
                                                   f"{exc}") from None
            else:
                raise _fail(name, "bad input", f"{key}='not-a-number' was accepted for a "
                                               f"{type(hp.default).__name__} hyperparameter")
            break
    instance = cls(**overrides)
    passed.append("bad input")

    # applicability
    observations = _observations(model, input_shape, (0, 1), True, dtype)
    reason = why_not_applicable(instance, observations[0])
    if reason is not None and not isinstance(reason, str):
        raise _fail(name, "applicability", f"applicable() returned {reason!r}: expected None or a reason (str)")
    unlabelled = _observations(model, input_shape, (0,), False, dtype)[0]
    if cls.needs_label and why_not_applicable(instance, unlabelled) is None:
        raise _fail(name, "applicability", "needs_label is set, but an observation without labels was accepted")
    passed.append("applicability")
    if reason is not None:  # the remaining checks need an observation the attack applies to
        raise _fail(name, "applicability", f"does not apply to {model} at {'x'.join(map(str, input_shape))} "
                                           f"({reason}): pass a model= and input_shape= it applies to")

    # output, observation untouched, determinism
    before = _snapshot(observations[0])
    result = instance.reconstruct(observations[0], torch.Generator().manual_seed(seed))
    _check_output(name, result, observations[0])
    fedavg = _observations(model, input_shape, (0,), True, dtype, local_steps=2)[0]
    fedavg_reason = why_not_applicable(instance, fedavg)
    if "weight-delta" in cls.update_kinds and fedavg_reason is None:
        _check_output(name, instance.reconstruct(fedavg, torch.Generator().manual_seed(seed)), fedavg)
    elif "weight-delta" not in cls.update_kinds and fedavg_reason is None:
        raise _fail(name, "output", "update_kinds excludes 'weight-delta', but a FedAvg observation was accepted")
    passed.append("output")
    after = _snapshot(observations[0])
    if len(before) != len(after) or any(not torch.equal(a, b) for a, b in zip(before, after)):
        raise _fail(name, "observation untouched", "the observation's gradients, weights or labels changed: work on "
                                                   "copies")
    passed.append("observation untouched")
    again = cls(**overrides).reconstruct(observations[0], torch.Generator().manual_seed(seed))
    if not torch.equal(result.images, again.images):
        raise _fail(name, "determinism", "two runs with the same seed gave different images: draw every random "
                                         "number from the generator you are given")
    passed.append("determinism")

    # batch
    generators = [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)]
    batch = instance.reconstruct_batch(observations, generators)
    if not isinstance(batch, list) or len(batch) != len(observations):
        raise _fail(name, "batch", f"reconstruct_batch returned {type(batch).__name__} of length "
                                   f"{len(batch) if hasattr(batch, '__len__') else '?'}: expected a list of 2")
    for k, (observation, item) in enumerate(zip(observations, batch)):
        _check_output(name, item, observation, check="batch")
        alone = cls(**overrides).reconstruct(observation, torch.Generator().manual_seed(seed + k))
        gap = float((item.images - alone.images).abs().max())
        if not gap <= batch_tolerance:
            raise _fail(name, "batch", f"instance {k} of reconstruct_batch differs from reconstruct by {gap:.3g} "
                                       f"(tolerance {batch_tolerance:g})")
    passed.append("batch")
    return passed


def _check_output(name: str, result: Any, observation, check: str = "output") -> None:
    if not isinstance(result, Reconstruction):
        raise _fail(name, check, f"reconstruct returned {type(result).__name__}: expected copa.attacks.Reconstruction")
    expected = (observation.batch_size, *observation.input_shape)
    if not isinstance(result.images, torch.Tensor) or tuple(result.images.shape) != expected:
        shape = tuple(result.images.shape) if isinstance(result.images, torch.Tensor) else type(result.images).__name__
        raise _fail(name, check, f"images of shape {shape}: expected {expected}")
    if result.images.dtype != observation.dtype or result.images.device != observation.device:
        raise _fail(name, check, f"images are {result.images.dtype} on {result.images.device}: expected "
                                 f"{observation.dtype} on {observation.device} (the observation's)")
    if not bool(torch.isfinite(result.images).all()):
        raise _fail(name, check, "images contain NaN or Inf")
    if result.labels is not None and tuple(torch.as_tensor(result.labels).shape) != (observation.batch_size,):
        raise _fail(name, check, f"labels of shape {tuple(torch.as_tensor(result.labels).shape)}: expected "
                                 f"({observation.batch_size},) or None")
    if result.loss is not None and not (isinstance(result.loss, (int, float)) and math.isfinite(result.loss)):
        raise _fail(name, check, f"loss {result.loss!r}: expected a finite number or None")
    for what in ("forward_evals", "gradient_evals"):
        value = getattr(result, what)
        if value is not None and (not isinstance(value, int) or value < 0):
            raise _fail(name, check, f"{what} {value!r}: expected a non-negative int or None")
