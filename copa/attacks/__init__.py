"""The attack wing: the attack interface and registry, COPA and COPA-GM, the shared gradient-matching blocks.

Modules: :mod:`.base` (:class:`Attack`, :class:`Reconstruction`, the registry), :mod:`.copa` (COPA and
COPA-GM, Chen & Campbell, arXiv 2111.10178), :mod:`.gradmatch` (gradients of dummy data, distances,
total variation, label recovery — DLG, iDLG, Inverting Gradients and COPA-GM share them), :mod:`.lbfgs`
(per-instance L-BFGS for batched attacks), :mod:`.sandboxed` (plug-in attacks as declarations from their
sandboxed worker; :func:`load_plugins`), :mod:`.progress` (stage, step / total, loss and ETA of a running
attack: a tqdm bar, log lines or nothing) and :mod:`.checking` (:func:`check_attack`, the contract a
plug-in attack must meet, runnable by its author). Importing this package registers COPA and COPA-GM;
the baselines come as plug-ins (:mod:`copa.plugins`).
"""

from __future__ import annotations

from ..hyperparameters import STEP_CEILING, Hyperparameter
from . import copa as _copa  # noqa: F401  (registers copa and copa-gm)
from . import progress
from .base import (
    ATTACKS,
    Attack,
    Reconstruction,
    create_attack,
    parse_overrides,
    register_attack,
    why_not_applicable,
)
from .checking import check_attack
from .gradmatch import (
    GradientModel,
    cosine_distance,
    label_from_gradients,
    labels_from_gradients,
    last_linear,
    parameter_gradients,
    recover_labels,
    per_tensor_cosine_distance,
    squared_l2_distance,
    total_variation,
)
from .lbfgs import BatchedLBFGS
from .sandboxed import SandboxedAttack, load_plugins

__all__ = [
    "why_not_applicable",
    "recover_labels",
    "ATTACKS",
    "STEP_CEILING",
    "Attack",
    "BatchedLBFGS",
    "GradientModel",
    "Hyperparameter",
    "Reconstruction",
    "check_attack",
    "cosine_distance",
    "create_attack",
    "label_from_gradients",
    "labels_from_gradients",
    "last_linear",
    "load_plugins",
    "SandboxedAttack",
    "parameter_gradients",
    "parse_overrides",
    "per_tensor_cosine_distance",
    "progress",
    "register_attack",
    "squared_l2_distance",
    "total_variation",
]
