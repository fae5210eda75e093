"""The threat wing: what the client computes, what the attacker observes, what only the scorer sees.

Following breaching's separation of the *case* from the *attack* (Geiping et al., github
JonasGeiping/breaching): a :class:`Scenario` describes one honest client step — model and weights,
data, preprocessing, loss — and :func:`Scenario.build` returns

* an :class:`Observation`: everything a server-side attacker legitimately sees in federated learning
  (architecture and the weights it sent, the per-parameter gradients the client shared, the labels
  only if the scenario declares them known, input shape and preprocessing); and
* a :class:`GroundTruth`: the client's images and labels, used only to score a reconstruction.

Attacks receive the observation alone. The observation holds private copies of the weights taken
*before* the client's forward pass (so e.g. BatchNorm running statistics updated by the client do
not leak into it) and detached copies of the gradients; it holds no reference to the images.
The loss is cross-entropy with PyTorch's default mean reduction over the batch.

Modules: :mod:`.scenario` (:class:`Scenario`, the one declaration of its fields), :mod:`.observation`
(:class:`Observation`, :class:`GroundTruth`), :mod:`.defences` (the defence registry; defences run inside
``Scenario.build``, before the observation exists), :mod:`.observation_file` (observations saved by a
client, loaded ``weights_only``) and :mod:`.targets` (the ground truth that scores an observation file's
reconstruction).
"""

from __future__ import annotations

from .defences import (  # noqa: F401
    DEFENCES,
    ClientUpdate,
    Defence,
    NoDefence,
    apply_defences,
    create_defence,
    parse_defence,
    register_defence,
)
from .observation import UPDATE_KINDS, GroundTruth, LocalTraining, Observation, as_observation_list, check_same_model, client_loss  # noqa: F401
from .scenario import (  # noqa: F401
    DEFAULT_INPUT_SHAPE,
    ClientBatch,
    DTYPES,
    PREPROCESS_MODES,
    Scenario,
    ScenarioOption,
    parse_input_shape,
    resolve_device,
)

__all__ = ["DEFENCES", "ClientUpdate", "Defence", "NoDefence", "apply_defences", "create_defence", "parse_defence",
           "register_defence", "UPDATE_KINDS", "LocalTraining", "GroundTruth", "Observation", "as_observation_list", "check_same_model", "client_loss", "ClientBatch",
           "DEFAULT_INPUT_SHAPE", "DTYPES", "PREPROCESS_MODES", "Scenario", "ScenarioOption", "parse_input_shape",
           "resolve_device"]
