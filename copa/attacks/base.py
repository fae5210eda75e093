"""The attack interface and registry.

An attack is a class with a ``name``, references, source-cited hyperparameter defaults, an
applicability check and ``reconstruct(observation, generator)``. It sees only the
:class:`~copa.threat.Observation` — never the ground truth — and must pick any restart or iterate
by its own loss. Register it with :func:`register_attack`; plug-in modules (installed packages'
``copa.attacks`` entry points — the baselines are registered that way —, ``COPA_PLUGINS`` and
``--plugin`` files, :mod:`copa.plugins`) are described by their sandboxed worker on first use
(:mod:`copa.attacks.sandboxed`), so adding an attack is adding one file. :func:`copa.attacks.check_attack` checks the contract every attack must meet.

Example::

    from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack

    @register_attack
    class Zeros(Attack):
        name = "zeros"
        paper = "-"
        hyperparameters = {"value": Hyperparameter(0.0, "illustration")}

        def reconstruct(self, observation, generator):
            shape = (observation.batch_size, *observation.input_shape)
            images = torch.full(shape, self.hp["value"], dtype=observation.dtype, device=observation.device)
            return Reconstruction(images=images, labels=observation.labels)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import InvalidSpecError
from ..hyperparameters import Hyperparameter, resolve_parameters
from ..registry import Registry, class_registrar

ATTACKS: Registry[type[Attack]] = Registry("attack")


@dataclass
class Reconstruction:
    """An attack's output.

    ``images``: B×C×H×W in the model's input (preprocessed) space; ``labels``: the labels the attack
    used or estimated (None if it has none); ``loss``: the attack's own final objective;
    ``forward_evals``/``gradient_evals``: model evaluations it spent (None: not counted by the attack,
    the runner then reports the forward calls it counted itself).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    loss: float | None = None
    forward_evals: int | None = None
    gradient_evals: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class of attacks. Subclasses set the class attributes and implement :meth:`reconstruct`."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    code: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_label: ClassVar[bool] = False
    hyperparameters: ClassVar[dict[str, Hyperparameter]] = {}
    batched: ClassVar[bool] = False  # True: reconstruct_batch solves its instances in one vectorised computation
    #: The client updates the attack can read (:data:`copa.threat.UPDATE_KINDS`): ``"gradient"`` (FedSGD) and/or
    #: ``"weight-delta"`` (FedAvg, several local steps). Checked before :meth:`applicable` (:func:`why_not_applicable`).
    update_kinds: ClassVar[tuple[str, ...]] = ("gradient",)

    def __init__(self, **overrides: Any):
        self.hp: dict[str, Any] = resolve_parameters("attack", self.name, self.hyperparameters, overrides)
        try:
            self.validate()
        except InvalidSpecError as exc:  # every refusal names the attack, whatever its validate() says
            if f"attack {self.name!r}" in str(exc):
                raise
            raise InvalidSpecError(f"attack {self.name!r}: {exc}") from None

    def validate(self) -> None:
        """Check hyperparameter values (after type coercion); raise InvalidSpecError naming the bad one."""

    def applicable(self, observation) -> str | None:
        """Return None if the attack applies to this observation, else the reason it does not."""
        if self.needs_label and not observation.label_known:
            return f"attack {self.name!r} needs the label, but the scenario keeps it unknown"
        return None

    def reconstruct(self, observation, generator: torch.Generator) -> Reconstruction:  # pragma: no cover
        raise NotImplementedError

    def reconstruct_batch(self, observations, generators) -> list[Reconstruction]:
        """Attack B independent instances (observations of one model and weights, each with its own
        generator). The default runs them one after the other; a vectorised attack overrides this (and
        sets ``batched = True``), and must give each instance what :meth:`reconstruct` would give it alone
        with the same generator (tests/test_batched.py checks the built-in ones)."""
        return [self.reconstruct(o, g) for o, g in zip(observations, generators, strict=True)]

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {"name": cls.name, "paper": cls.paper, "code": cls.code, "description": cls.description,
                "needs_label": cls.needs_label, "batched": cls.batched, "update_kinds": list(cls.update_kinds),
                "hyperparameters": {k: {"default": h.default, "source": h.source, "help": h.help}
                                    for k, h in cls.hyperparameters.items()}}


register_attack = class_registrar(ATTACKS, Attack, "attack")


def why_not_applicable(attack: Attack, observation) -> str | None:
    """None if ``attack`` can run on ``observation``, else the reason: first whether it reads the kind of update
    the client shared (``attack.update_kinds``), then the attack's own :meth:`Attack.applicable`. The runner,
    the isolated worker and :func:`copa.attacks.check_attack` all ask here."""
    kind = getattr(observation, "update_kind", "gradient")
    if kind not in attack.update_kinds:
        return (f"attack {attack.name!r} reads {' or '.join(k + 's' for k in attack.update_kinds)}, but the client "
                f"shared {observation.update_description()}")
    return attack.applicable(observation)


def create_attack(name: str, overrides: dict[str, Any] | None = None, plugins=(), extensions=()) -> Attack:
    """Instantiate a registered attack with hyperparameter overrides (strings are coerced), after loading the
    trusted code and describing the untrusted ``plugins`` (:func:`copa.attacks.sandboxed.load_plugins`)."""
    from .sandboxed import load_plugins  # deferred: that module builds on this one's Attack

    load_plugins(plugins, extensions)
    return ATTACKS.get(name)(**(overrides or {}))


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Parse ``["key=value", ...]`` from ``--set``; values stay strings (the attack coerces them)."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSpecError(f"--set {item!r} is malformed: expected key=value, e.g. --set iterations=24000")
        result[key.strip()] = value
    return result
