"""Defences: how an honest client perturbs its update before sharing it.

Following breaching's split of the threat-model case from the attack (Geiping et al., github
JonasGeiping/breaching: the user's update is defended before the server sees it), a defence lives
with the client: :meth:`copa.threat.Scenario.build` computes the true update, applies the scenario's
defences in order (:func:`apply_defences`) and only then makes the :class:`~copa.threat.Observation`.
The attacker sees the defended update and each defence's public description (:meth:`Defence.describe`:
name and parameters — Kerckhoffs: the mechanism is public, its random draws are not); the undefended
gradients never reach the observation.

A defence is one class registered with :func:`register_defence` — in this module, in a plug-in file
(``--plugin``, ``COPA_PLUGINS``, the workflow's ``plugins:``) or in an installed package's
``copa.attacks`` entry point. Its spec on the command line and in configs is ``NAME`` or
``NAME:key=value,key=value`` (:func:`parse_defence`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..errors import CopaError, InvalidSpecError
from ..hyperparameters import Hyperparameter, resolve_parameters
from ..registry import Registry, class_registrar


@dataclass(frozen=True)
class ClientUpdate:
    """What a defence may use: the true per-parameter gradients of the client's step (mean over its
    batch), their names, the batch size and, on demand, the per-example gradients (``per_example()``:
    one tensor per parameter with a leading batch dimension; computed only when a defence asks)."""

    names: tuple[str, ...]
    gradients: tuple[Tensor, ...]
    batch_size: int
    per_example: Callable[[], tuple[Tensor, ...]]


class Defence:
    """Base class of defences. Subclasses set ``name``, ``paper``, ``description``, ``parameters``
    (source-cited :class:`~copa.hyperparameters.Hyperparameter` defaults) and implement :meth:`apply`."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    description: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Hyperparameter]] = {}

    def __init__(self, **overrides: Any):
        self.params = resolve_parameters("defence", self.name, self.parameters, overrides, noun="parameter")
        self.validate()

    def validate(self) -> None:
        """Check parameter values (after type coercion); raise InvalidSpecError naming the bad one."""

    def apply(self, update: ClientUpdate, generator: torch.Generator) -> tuple[Tensor, ...]:  # pragma: no cover
        """Return the defended gradients (same shapes and order as ``update.gradients``); random draws
        come from ``generator`` only (seeded by the scenario's ``defence_seed``)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The public description that the observation carries: name and parameters."""
        return {"name": self.name, "parameters": dict(self.params)}

    def spec(self) -> str:
        """The canonical spec string, ``NAME`` or ``NAME:key=value,...`` (sorted keys, every parameter)."""
        if not self.params:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={self.params[k]!r}" if isinstance(self.params[k], str)
                                          else f"{k}={self.params[k]}" for k in sorted(self.params))


DEFENCES: Registry[type[Defence]] = Registry("defence")


register_defence = class_registrar(DEFENCES, Defence, "defence")


def parse_defence(spec: str) -> tuple[str, dict[str, str]]:
    """``"prune:p=0.9,seed=1"`` → ``("prune", {"p": "0.9", "seed": "1"})`` (values stay strings; the
    defence coerces them)."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidSpecError(f"defence {spec!r} is invalid: expected NAME or NAME:key=value,..., e.g. none")
    name, _, rest = spec.strip().partition(":")
    params: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSpecError(f"defence {spec!r} is malformed at {item!r}: expected NAME:key=value,...")
        params[key.strip()] = value.strip()
    return name.strip(), params


def create_defence(spec: str | Defence) -> Defence:
    """The defence of a spec string (``NAME`` or ``NAME:key=value,...``), its parameters checked."""
    if isinstance(spec, Defence):
        return spec
    name, params = parse_defence(spec)
    return DEFENCES.get(name)(**params)


def canonical_defences(specs: Sequence[str | Defence]) -> tuple[str, ...]:
    """The scenario's defences as canonical spec strings, ``none`` dropped (no defence is the empty tuple)."""
    return tuple(d.spec() for d in map(create_defence, specs) if d.name != NoDefence.name)


def apply_defences(specs: Sequence[str], update: ClientUpdate, seed: int) -> tuple[tuple[Tensor, ...], list[dict]]:
    """Apply the defences in order (each sees the previous one's output); return the defended
    gradients and the public descriptions. One generator seeded with ``seed`` serves them all."""
    gradients = update.gradients
    described = []
    generator = torch.Generator().manual_seed(int(seed))
    for spec in specs:
        defence = create_defence(spec)
        step = ClientUpdate(update.names, gradients, update.batch_size, update.per_example)
        defended = tuple(defence.apply(step, generator))
        if len(defended) != len(gradients) or any(a.shape != b.shape for a, b in zip(defended, gradients)):
            raise CopaError(f"defence {defence.name!r} returned {len(defended)} tensors of other shapes than the "
                            f"{len(gradients)} gradients it was given")
        gradients = tuple(g.detach() for g in defended)
        described.append(defence.describe())
    return gradients, described


@register_defence
class NoDefence(Defence):
    """The undefended update: the client shares its true gradients (the COPA paper's setting)."""

    name = "none"
    paper = "no defence (the COPA paper's and DLG's undefended setting)"
    description = "the client shares its true gradients"

    def apply(self, update, generator):
        return update.gradients
