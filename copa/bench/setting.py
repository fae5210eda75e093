"""The client setting: how the client computed its update besides its model and images — its defence chain and
its federated-learning parameters — as one object that travels config → cells → records → tables → verify.

Each federated axis is one declaration in :data:`AXES` (plus its entry in workflow/schemas/config.schema.yaml):
its config key (the :class:`~copa.threat.Scenario` field of the same name, or the client's batch, which shapes
the instances' indices), the value of the COPA paper's FedSGD setting (not shown in tags and labels, so the
paper's and earlier runs' paths and table labels do not change) and its type and bounds. A config gives each
axis one value or a list; :func:`setting_axis` is their product with the ``defences`` axis. The label
(``none; local_steps=2; client_batch=4``) is rendered for display only; records carry the values themselves.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidSpecError
from ..threat.defences import canonical_defences

NO_DEFENCE = "none"


@dataclass(frozen=True)
class SettingAxis:
    """One federated parameter of the client's step. ``paper``: its value in the COPA paper's setting (one
    gradient step on one image), which tags and labels leave out; ``kind``: int or float; ``nullable``: None
    is a value (``local_batch: null``, all images per step); ``minimum`` (exclusive when ``above``);
    ``scenario``: a :class:`~copa.threat.Scenario` field of the same name (else it shapes the indices)."""

    name: str
    paper: Any
    kind: type
    help: str
    minimum: float = 1
    above: bool = False
    nullable: bool = False
    scenario: bool = True
    needs: str | None = None
    """An axis that must differ from its paper value for this one to matter (``local_lr`` needs ``local_steps``:
    one step of FedSGD shares the gradient, whatever the learning rate); otherwise this axis takes its paper
    value, so that settings computing the same update are one setting."""

    def check(self, value: Any) -> Any:
        """``value`` of this axis, or one line naming it and what is accepted."""
        if value is None and self.nullable:
            return None
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, self.kind) and not isinstance(value, bool) and math.isfinite(value)
        if ok and (value > self.minimum if self.above else value >= self.minimum):
            return value
        kind = "integers" if self.kind is int else "finite numbers"
        bound = f"{'>' if self.above else '≥'} {self.minimum:g}"
        raise InvalidSpecError(f"{self.name}: {value!r} is invalid: accepted are {kind} {bound}"
                               + (" or null" if self.nullable else "") + ", or a list of them")

    def values(self, config: dict[str, Any]) -> list[Any]:
        """The config's value(s) of this axis as a checked list without repeats (absent: the paper's value)."""
        given = config.get(self.name, self.paper)
        values = given if isinstance(given, list) else [given]
        if not values:
            raise InvalidSpecError(f"{self.name}: [] is empty: give one value or a list of them")
        values = [self.check(v) for v in values]
        if len(set(values)) != len(values):
            raise InvalidSpecError(f"{self.name}: {values} repeats a value: list each setting once")
        return values

    def text(self, value: Any) -> str:
        """The value in a tag or label: ``2``, ``0.01``, ``all`` (None)."""
        return "all" if value is None else f"{value:g}" if self.kind is float else str(value)


AXES: tuple[SettingAxis, ...] = (
    SettingAxis("local_steps", 1, int, "local SGD steps before the client shares its update (FedAvg's K; 1 = FedSGD)"),
    SettingAxis("local_lr", 1e-4, float, "learning rate of the local SGD steps (inversefed's loss_steps default 1e-4)",
                minimum=0, above=True, needs="local_steps"),
    SettingAxis("local_batch", None, int, "images per local step (null: all the client's images)", nullable=True,
                needs="local_steps"),
    SettingAxis("client_batch", 1, int, "images per client step: a cell's instances are the indices in chunks of this "
                                        "many", scenario=False),
)
"""The client setting's federated axes, in the order tags and labels name them."""
AXIS_NAMES = tuple(axis.name for axis in AXES)


@dataclass(frozen=True)
class Setting:
    """One client setting: a canonical defence chain and one value per axis of :data:`AXES` (the paper's FedSGD
    value where none is given). ``Setting.of(("prune:p=0.9",), local_steps=2)``; ``setting.local_steps``."""

    defences: tuple[str, ...] = ()
    axes: tuple[tuple[str, Any], ...] = field(default=tuple((a.name, a.paper) for a in AXES))

    @classmethod
    def of(cls, defences=(), **values: Any) -> Setting:
        unknown = sorted(set(values) - set(AXIS_NAMES))
        if unknown:
            raise InvalidSpecError(f"unknown client-setting axes {unknown}: accepted are {', '.join(AXIS_NAMES)}")
        return cls(tuple(defences), _effective({a.name: a.check(values.get(a.name, a.paper)) for a in AXES}))

    @classmethod
    def from_scenario(cls, scenario: dict[str, Any]) -> Setting:
        """The setting of a record's scenario (its dict): the defence specs and every axis' value (the client's
        batch is the number of indices); keys a record made before an axis existed lack take the paper's value."""
        values = {a.name: scenario.get(a.name, a.paper) for a in AXES if a.scenario}
        values["client_batch"] = len(scenario.get("indices") or [None])
        return cls(tuple(scenario.get("defences") or ()), _effective(values))

    def as_params(self) -> dict[str, Any]:
        """Plain data for a workflow rule's params (Snakemake reruns a cell whose params change)."""
        return {"defences": list(self.defences), **dict(self.axes)}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Setting:
        """The setting back from :meth:`as_params`."""
        return cls.of(tuple(params.get("defences") or ()), **{k: v for k, v in params.items() if k != "defences"})

    def __getattr__(self, name: str) -> Any:
        if name in AXIS_NAMES:
            return dict(self.axes)[name]
        raise AttributeError(name)

    def federated(self) -> list[tuple[str, Any]]:
        """The ``(axis, value)`` pairs that differ from the paper's setting, in :data:`AXES` order."""
        paper = {a.name: a.paper for a in AXES}
        return [(name, value) for name, value in self.axes if value != paper[name]]

    def scenario_fields(self) -> dict[str, Any]:
        """The :class:`~copa.threat.Scenario` fields this setting fixes (its defences and the scenario axes)."""
        return {"defences": self.defences, **{a.name: getattr(self, a.name) for a in AXES if a.scenario}}

    @property
    def defence(self) -> str:
        """The defence chain as the config names it (``none``, ``prune:p=0.9+quantize:bits=4``)."""
        return "+".join(self.defences) or NO_DEFENCE

    @property
    def tag(self) -> str:
        """Path-safe, the workflow's wildcard: the defence tag, then ``+local-steps-2`` … for each axis that
        differs from the paper's (so the paper's and the defence runs' paths are unchanged)."""
        axes = {a.name: a for a in AXES}
        return defence_tag(self.defences) + "".join(f"+{name.replace('_', '-')}-{axes[name].text(value)}"
                                                    for name, value in self.federated())

    @property
    def label(self) -> str:
        """The setting for display, as the tables' ``defence`` column names it: ``none; local_steps=2``."""
        return self.defence + setting_suffix(self)


PAPER_SETTING = Setting()
"""The COPA paper's setting: no defence, one gradient step on one image (FedSGD)."""


def setting_suffix(setting: Setting) -> str:
    """``; local_steps=K; client_batch=B`` … for the axes that differ from the paper's setting (else empty)."""
    axes = {a.name: a for a in AXES}
    return "".join(f"; {name}={axes[name].text(value)}" for name, value in setting.federated())


def defence_chain(alternative: str) -> tuple[str, ...]:
    """One entry of the ``defences`` axis (``none``, ``prune:p=0.9``, ``prune:p=0.5+quantize:bits=4``) as
    the scenario's canonical defence specs (``()`` for none); bad names and values raise one line."""
    if not isinstance(alternative, str) or not alternative.strip():
        raise InvalidSpecError(f"defences: {alternative!r} is invalid: expected a defence spec such as none or "
                               f"prune:p=0.9 (chain several with +)")
    return canonical_defences([part for part in alternative.split("+")])


def defence_tag(chain: tuple[str, ...]) -> str:
    """A path-safe name of a defence chain: ``none``, ``prune-p-0.9``, ``prune-p-0.5+quantize-bits-4-...``."""
    if not chain:
        return NO_DEFENCE
    return "+".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", spec).strip("-") for spec in chain)


def setting_axis(config: dict[str, Any], *, note: Callable[[str], Any] | None = None) -> dict[str, Setting]:
    """Every client setting of the config, tag → :class:`Setting`: the product of the ``defences`` axis and every
    axis of :data:`AXES`, in config order; a ``client_batch`` larger than the ``indices`` list is refused by name,
    and so are two entries that are the same setting.

    A ``local_batch`` must divide the client's batch (the K steps cycle through its mini-batches:
    :class:`copa.threat.LocalTraining`): the product leaves out each (``local_batch``, ``client_batch``) pair where
    it does not (or is larger) and says so in one line to ``note``; a ``local_batch`` that fits no configured
    ``client_batch`` is refused by name."""
    defences: dict[str, tuple[str, ...]] = {}
    for alternative in config.get("defences") or [NO_DEFENCE]:
        chain = defence_chain(alternative)
        if defence_tag(chain) in defences:
            raise InvalidSpecError(f"defences: {alternative!r} repeats the defence {defence_tag(chain)!r}: list each "
                                   f"setting once")
        defences[defence_tag(chain)] = chain
    per_axis = [axis.values(config) for axis in AXES]
    count = len(config.get("indices") or ())
    for b in per_axis[AXIS_NAMES.index("client_batch")]:
        if b > count:
            raise InvalidSpecError(f"client_batch: {b} is larger than the {count} configured indices: accepted are "
                                   f"1 to {count}")
    settings, skipped, fits = [], {}, set()
    for chain in defences.values():
        for values in itertools.product(*per_axis):
            axes = _effective(dict(zip(AXIS_NAMES, values, strict=True)))
            local, client = dict(axes)["local_batch"], dict(axes)["client_batch"]
            if local is not None and client % local:
                skipped.setdefault(local, set()).add(client)
            else:
                settings.append(Setting(chain, axes))
                fits.add(values[AXIS_NAMES.index("local_batch")])
    for local in skipped:
        if local not in fits:
            batches = per_axis[AXIS_NAMES.index("client_batch")]
            raise InvalidSpecError(f"local_batch: {local} divides no configured client_batch ({batches}): accepted "
                                   f"are divisors of one of them, or null (all the client's images every step)")
    if skipped and note is not None:
        note("local_batch: skipped " + "; ".join(f"{local} with client_batch {', '.join(map(str, sorted(clients)))}"
                                                 for local, clients in skipped.items())
             + " (a local batch must divide the client's batch)")
    return {s.tag: s for s in settings}  # settings made equal by _effective are one


def _effective(values: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The axes' values in :data:`AXES` order, each axis whose ``needs`` is at its paper value set to its own, and
    a ``local_batch`` equal to the ``client_batch`` set to null (all images every step: the same client step, as
    :class:`copa.threat.Scenario` describes it), so that settings computing the same update are one."""
    paper = {a.name: a.paper for a in AXES}
    effective = {a.name: paper[a.name] if a.needs and values[a.needs] == paper[a.needs] else values[a.name]
                 for a in AXES}
    if effective["local_batch"] == effective["client_batch"]:
        effective["local_batch"] = None
    return tuple(effective.items())
