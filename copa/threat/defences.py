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

Shipped defences: ``none``; ``dp-gaussian`` (DP-SGD, Abadi et al. CCS 2016, with its (ε, δ) from Opacus'
RDP accountant); ``prune`` and ``noise`` (DLG's defences, Zhu, Liu & Han, NeurIPS 2019, Sec. 6);
``quantize`` (uniform k-bit, QSGD's unbiased stochastic rounding optional, Alistarh et al. NeurIPS 2017).
"""

from __future__ import annotations

import math
import warnings
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
    #: The parameter that sets the defence's strength (the x axis of the privacy curves), or None.
    strength: ClassVar[str | None] = None
    #: True for a defence that recomputes the update from the client's per-example gradients (DP-SGD):
    #: it must come first, since it would silently discard what the defences before it did.
    needs_true_update: ClassVar[bool] = False

    def __init__(self, **overrides: Any):
        self.params = resolve_parameters("defence", self.name, self.parameters, overrides, noun="parameter")
        self.validate()

    def validate(self) -> None:
        """Check parameter values (after type coercion); raise InvalidSpecError naming the bad one."""

    def apply(self, update: ClientUpdate, generator: torch.Generator) -> tuple[Tensor, ...]:  # pragma: no cover
        """Return the defended gradients (same shapes and order as ``update.gradients``); random draws
        come from ``generator`` only (seeded by the scenario's ``defence_seed``)."""
        raise NotImplementedError

    def require(self, key: str, ok: bool, accepted: str) -> None:
        """Raise the one-line error for a parameter value that is not accepted (``accepted``: e.g. ``[0, 1)``)."""
        if not ok:
            raise InvalidSpecError(f"defence {self.name!r}: {key}={self.params[key]!r} is outside {accepted}")

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
    defence coerces them). A value in matching quotes loses them (:meth:`Defence.spec` quotes strings). A
    repeated key, an empty item (``prune:p=0.9,``) and a colon with nothing after it (``prune:``) are refused:
    none of them may silently pick a value."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidSpecError(f"defence {spec!r} is invalid: expected NAME or NAME:key=value,..., e.g. none")
    name, colon, rest = spec.strip().partition(":")
    if colon and not rest.strip():
        shown = name.strip() or "NAME"
        keys = ", ".join(sorted(DEFENCES.get(shown).parameters)) if shown in DEFENCES else None
        accepted = (f"accepted is {shown!r} (it has no parameters)" if keys == "" else
                    f"accepted are {shown!r} (its defaults) or '{shown}:key=value,...'"
                    + (f" with key one of {keys}" if keys else ""))
        raise InvalidSpecError(f"defence {spec!r} is malformed: nothing after ':'; {accepted}")
    params: dict[str, str] = {}
    for item in (part.strip() for part in rest.split(",")) if colon else ():
        if not item:
            raise InvalidSpecError(f"defence {spec!r} is malformed: it has an empty item (',,' or a ',' at an end); "
                                   f"expected NAME:key=value,...")
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InvalidSpecError(f"defence {spec!r} is malformed at {item!r}: expected NAME:key=value,...")
        value = value.strip()
        if key.strip() in params:
            raise InvalidSpecError(f"defence {spec!r} gives the parameter {key.strip()!r} twice ({key.strip()}="
                                   f"{params[key.strip()]}, {key.strip()}={value}): accepted is each parameter once, "
                                   f"NAME:key=value,...")
        params[key.strip()] = value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" \
            else value
    return name.strip(), params


def create_defence(spec: str | Defence) -> Defence:
    """The defence of a spec string (``NAME`` or ``NAME:key=value,...``), its parameters checked."""
    if isinstance(spec, Defence):
        return spec
    name, params = parse_defence(spec)
    return DEFENCES.get(name)(**params)


def canonical_defences(specs: Sequence[str | Defence]) -> tuple[str, ...]:
    """The scenario's defences as canonical spec strings, ``none`` dropped (no defence is the empty tuple).
    A defence that needs the true update (:attr:`Defence.needs_true_update`) must come first."""
    defences = [d for d in map(create_defence, specs) if d.name != NoDefence.name]
    for position, defence in enumerate(defences[1:], 1):
        if defence.needs_true_update:
            raise InvalidSpecError(f"defence {defence.name!r} must come first: it recomputes the update from the "
                                   f"client's per-example gradients and would discard "
                                   f"{', '.join(repr(d.name) for d in defences[:position])} before it")
    return tuple(d.spec() for d in defences)


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


def _randn_like(g: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal draws shaped like ``g`` from the (CPU) defence generator, on ``g``'s device."""
    return torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device)


@register_defence
class DPGaussian(Defence):
    """DP-SGD's Gaussian mechanism on the client's step (Abadi et al., "Deep Learning with Differential
    Privacy", CCS 2016, Algorithm 1): each example's whole gradient (all parameters together) is clipped to
    L2 norm ``clip`` (g / max(1, ‖g‖₂/C)), the clipped gradients are summed, N(0, σ²C²) is added to every
    coordinate (σ = ``sigma``, the noise multiplier) and the sum is divided by the batch size B. So with
    σ = 0 the update is the mean of the clipped per-example gradients, and the noise in it has std σC/B.

    ``sample_rate`` (q), ``steps`` and ``delta`` do not change the update: they state the privacy of a
    training run of ``steps`` such rounds with Poisson sampling rate q, (ε, δ) from Opacus' RDP accountant
    (:meth:`privacy`, carried in :meth:`describe`). It uses the client's true per-example gradients, so it
    must be the first defence."""

    name = "dp-gaussian"
    strength = "sigma"
    paper = "Abadi et al., Deep Learning with Differential Privacy, CCS 2016 (DP-SGD, Algorithm 1)"
    description = "clip each example's gradient to norm C, sum, add N(0, sigma^2 C^2), divide by B"
    parameters = {
        "sigma": Hyperparameter(1.0, "source: Opacus examples/mnist.py --sigma default (noise multiplier)"),
        "clip": Hyperparameter(1.0, "source: Opacus examples/mnist.py --max-per-sample-grad_norm default (C)"),
        "sample_rate": Hyperparameter(0.01, "source: Abadi et al. 2016 Sec. 5.2 (MNIST lot L = 600 of N = 60000)"),
        "steps": Hyperparameter(1, "ours: the scenario is one shared step; set the rounds of the training run"),
        "delta": Hyperparameter(1e-5, "source: Abadi et al. 2016 Sec. 5 and Opacus examples/mnist.py --delta"),
    }
    needs_true_update = True
    accountant = "opacus RDP"

    def validate(self):
        p = self.params
        self.require("sigma", math.isfinite(p["sigma"]) and p["sigma"] >= 0, "[0, inf)")
        self.require("clip", math.isfinite(p["clip"]) and p["clip"] > 0, "(0, inf)")
        self.require("sample_rate", 0 < p["sample_rate"] <= 1, "(0, 1]")
        self.require("steps", p["steps"] >= 1, "{1, 2, ...}")
        self.require("delta", 0 < p["delta"] < 1, "(0, 1)")

    @staticmethod
    def clip_per_example(per_example: Sequence[Tensor], clip: float) -> tuple[Tensor, ...]:
        """Each example's gradient (row k of every tensor) divided by max(1, ‖g_k‖₂/C), the norm taken over
        all its parameters together (Abadi et al. 2016, Algorithm 1, "Clip gradient")."""
        norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in per_example]).sum(0).sqrt()
        factors = 1.0 / torch.clamp(norms / clip, min=1.0)
        return tuple(g * factors.view(-1, *([1] * (g.dim() - 1))) for g in per_example)

    def apply(self, update, generator):
        sigma, clip = self.params["sigma"], self.params["clip"]
        clipped = self.clip_per_example(update.per_example(), clip)
        return tuple((g.sum(0) + sigma * clip * _randn_like(g[0], generator)) / update.batch_size for g in clipped)

    def privacy(self) -> dict[str, Any]:
        """(ε, δ) of ``steps`` rounds at sampling rate q and noise multiplier σ, from Opacus' RDP accountant
        (``opacus.accountants.RDPAccountant``, its default orders); σ = 0 gives ε = inf."""
        if not hasattr(self, "_privacy"):
            p = self.params
            epsilon = math.inf
            if p["sigma"] > 0:
                try:
                    from opacus.accountants import RDPAccountant  # deferred: opacus takes ≈ 3 s to import
                except ImportError as exc:  # a dependency of copa-bench: an incomplete install, not a run failure
                    raise CopaError(f"defence 'dp-gaussian' states its privacy with Opacus' accountant, which "
                                    f"cannot be imported here ({exc}): pip install 'opacus>=1.4'") from None
                accountant = RDPAccountant()
                accountant.history = [(p["sigma"], p["sample_rate"], p["steps"])]
                with warnings.catch_warnings():  # "optimal order is the largest/smallest alpha": advisory
                    warnings.simplefilter("ignore", UserWarning)
                    epsilon = float(accountant.get_epsilon(delta=p["delta"]))
            self._privacy = {"epsilon": epsilon, "delta": p["delta"], "sample_rate": p["sample_rate"],
                             "steps": p["steps"], "noise_multiplier": p["sigma"], "accountant": self.accountant}
        return dict(self._privacy)

    def describe(self):
        return {**super().describe(), "privacy": self.privacy()}


@register_defence
class Prune(Defence):
    """DLG's gradient pruning (Zhu, Liu & Han, "Deep Leakage from Gradients", NeurIPS 2019, Sec. 6, gradient
    compression and sparsification): per gradient tensor, the k = max(1, round((1 − p)·numel)) entries of
    largest magnitude are kept and the rest set to zero (Python's round, half to even); among equal
    magnitudes the lower flat index is kept (a stable sort)."""

    name = "prune"
    strength = "p"
    paper = "Zhu, Liu & Han, Deep Leakage from Gradients, NeurIPS 2019, Sec. 6 (gradient pruning)"
    description = "per tensor, zero all but the largest-magnitude (1 - p) fraction of entries"
    parameters = {
        "p": Hyperparameter(0.3, "source: Zhu et al. 2019 Sec. 6: from a 30% pruning ratio DLG's reconstructions "
                                 "are no longer recognisable"),
    }

    def validate(self):
        self.require("p", 0 <= self.params["p"] < 1, "[0, 1)")

    @staticmethod
    def kept(numel: int, p: float) -> int:
        """How many entries of a tensor of ``numel`` entries are kept at pruning ratio ``p``."""
        return max(1, round((1 - p) * numel))

    def apply(self, update, generator):
        out = []
        for g in update.gradients:
            flat = g.flatten()
            keep = self.kept(flat.numel(), self.params["p"])
            order = torch.sort(flat.abs(), descending=True, stable=True).indices[:keep]
            out.append(torch.zeros_like(flat).index_copy(0, order, flat[order]).view_as(g))
        return tuple(out)


QUANTIZE_ROUNDING = ("deterministic", "stochastic")
QUANTIZE_MAX_BITS = 64  # ours: wider than any float's mantissa, so the quantiser is then the identity


@register_defence
class Quantize(Defence):
    """Uniform k-bit quantisation of each gradient tensor: 2^k evenly spaced levels from its minimum to its
    maximum (min + i·Δ, Δ = (max − min)/(2^k − 1), the affine quantiser of Jacob et al., CVPR 2018, Sec. 2.1);
    each entry goes to the nearest level (``deterministic``; halves to even) or, ``stochastic``, to one of
    its two neighbouring levels with probabilities that make it unbiased (QSGD's rounding, Alistarh et al.,
    NeurIPS 2017, Sec. 3.1), drawn from the defence generator. A tensor with max == min is left as is."""

    name = "quantize"
    strength = "bits"
    paper = "uniform k-bit quantisation (Jacob et al., CVPR 2018); QSGD's rounding (Alistarh et al., NeurIPS 2017)"
    description = "per tensor, round entries to 2^bits levels spanning [min, max]"
    parameters = {
        "bits": Hyperparameter(8, "source: Jacob et al. 2018: 8-bit integer quantisation"),
        "rounding": Hyperparameter("deterministic", "ours: nearest level; 'stochastic' is QSGD's unbiased rounding"),
    }

    def validate(self):
        self.require("bits", 1 <= self.params["bits"] <= QUANTIZE_MAX_BITS, f"{{1, 2, ..., {QUANTIZE_MAX_BITS}}}")
        self.require("rounding", self.params["rounding"] in QUANTIZE_ROUNDING,
                     "{" + ", ".join(map(repr, QUANTIZE_ROUNDING)) + "}")

    def apply(self, update, generator):
        return tuple(self._quantize(g, generator) for g in update.gradients)

    def _quantize(self, g: Tensor, generator: torch.Generator) -> Tensor:
        low, high = g.min(), g.max()
        if not bool(high > low):
            return g
        top = float(2 ** self.params["bits"] - 1)
        step = (high - low) / top
        position = (g - low) / step
        if self.params["rounding"] == "stochastic":
            level = position.floor()
            level = level + (torch.rand(g.shape, generator=generator, dtype=g.dtype).to(g.device) < position - level)
        else:
            level = position.round()
        return low + level.clamp(0, top) * step


@register_defence
class GaussianNoise(Defence):
    """DLG's noisy-gradient defence (Zhu, Liu & Han, NeurIPS 2019, Sec. 6, Gaussian noise), with the noise
    relative to each tensor's scale: g + N(0, (scale·rms(g))²) per entry, rms(g) = sqrt(mean(g²)) over the
    tensor. Ours: relative, so that one ``scale`` is one signal-to-noise ratio on every layer and model (DLG's
    variances 10⁻⁴…10⁻¹ are absolute, tied to its LeNet's gradient scale); the RMS rather than the standard
    deviation, so that a constant or one-entry tensor is noised too. An all-zero tensor stays zero."""

    name = "noise"
    strength = "scale"
    paper = "Zhu, Liu & Han, Deep Leakage from Gradients, NeurIPS 2019, Sec. 6 (noisy gradients)"
    description = "per tensor, add N(0, (scale * rms(g))^2) to every entry"
    parameters = {
        "scale": Hyperparameter(0.1, "ours: noise std a tenth of each tensor's RMS (DLG's variances are absolute)"),
    }

    def validate(self):
        self.require("scale", math.isfinite(self.params["scale"]) and self.params["scale"] >= 0, "[0, inf)")

    def apply(self, update, generator):
        return tuple(g + self.params["scale"] * g.pow(2).mean().sqrt() * _randn_like(g, generator)
                     for g in update.gradients)
