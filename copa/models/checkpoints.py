"""Model metadata (:class:`ModelInfo`), initialisation schemes and checkpoint loading (weights only)."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import DataUnavailableError, InvalidSpecError, NotApplicableError
from .chains import ChainNet


# --------------------------------------------------------------------------------------------------
# Model info, init, checkpoints
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """How a model was built: enough to rebuild it and to know which attacks apply."""

    name: str
    spec: str | None
    num_classes: int
    in_shape: tuple[int, int, int]
    seed: int | None
    init: str
    checkpoint: str | None
    is_chain: bool
    not_chain_reason: str | None
    source: str
    description: str = ""


def _uniform_init(model: nn.Module) -> None:
    """DLG's ``weights_init``: every weight and bias ~ U(-0.5, 0.5)."""
    with torch.no_grad():
        for module in model.modules():
            for attr in ("weight", "bias"):
                param = getattr(module, attr, None)
                if isinstance(param, torch.Tensor):
                    param.uniform_(-0.5, 0.5)


#: Initialisation schemes: name → (description, function applied after construction or None).
INIT_SCHEMES: dict[str, tuple[str, Callable[[nn.Module], None] | None]] = {
    "default": ("PyTorch default init", None),
    "uniform": ("U(-0.5, 0.5) weights and biases (DLG weights_init)", _uniform_init),
}


def _check_init(init: str) -> str:
    if init not in INIT_SCHEMES:
        raise InvalidSpecError(f"init {init!r} is unknown: accepted are {', '.join(sorted(INIT_SCHEMES))}")
    return init


def model_info(model: nn.Module) -> ModelInfo:
    """The :class:`ModelInfo` of a model from :func:`create_model` (or of any :class:`ChainNet`)."""
    info = getattr(model, "copa_info", None)
    if isinstance(info, ModelInfo):
        return info
    if isinstance(model, ChainNet):
        return ModelInfo(
            name=f"chain:{model.spec}", spec=model.spec, num_classes=model.num_classes, in_shape=model.in_shape,
            seed=None, init="unknown (not built by create_model)", checkpoint=None, is_chain=model.is_chain,
            not_chain_reason=model.not_chain_reason, source="user spec",
        )
    raise NotApplicableError(f"{type(model).__name__} has no copa_info: build it with copa.models.create_model")


def _first_few(items: list[str], sep: str = ", ", limit: int = 8) -> str:
    more = f"{sep}... ({len(items) - limit} more)" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


_UNSAFE_GLOBAL_RE = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_CHECKPOINT_ACCEPTED = "accepted: a file written by torch.save(model.state_dict(), PATH)"


def _checkpoint_problem(err: Exception) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` refused a checkpoint (torch's own message
    spans many lines and suggests ``weights_only=False``, which copa never uses: it runs arbitrary code)."""
    text = str(err)
    if unsafe := _UNSAFE_GLOBAL_RE.search(text):
        return (f"holds a pickled {unsafe[1]} object, not only tensors: it cannot be loaded with "
                f"weights_only=True (copa never unpickles arbitrary objects); {_CHECKPOINT_ACCEPTED}")
    if "Weights only load failed" in text or isinstance(err, pickle.UnpicklingError):
        detail = text.split("WeightsUnpickler error:")[-1] if "WeightsUnpickler error:" in text else ""
        detail = " ".join(detail.split()).split(" Check the documentation")[0]
        return (f"is not a PyTorch file of tensors: torch.load(weights_only=True) refuses it"
                f"{f' ({detail})' if detail else ''}; {_CHECKPOINT_ACCEPTED}")
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first_sentence = first_line.split(". ")[0].rstrip(".")
    detail = f"{type(err).__name__}: {first_sentence}" if first_sentence else type(err).__name__
    return f"is not a readable PyTorch file, it may be truncated or corrupted ({detail}); {_CHECKPOINT_ACCEPTED}"


def _load_checkpoint(model: nn.Module, path: str | Path, which: str = "the model") -> None:
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size == 0:
        raise InvalidSpecError(f"checkpoint {str(path)!r} is empty (0 bytes); {_CHECKPOINT_ACCEPTED}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what is wrong
            warnings.simplefilter("ignore")
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors for garbage or non-weights files
        raise InvalidSpecError(f"checkpoint {str(path)!r} {_checkpoint_problem(err)}") from None
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise InvalidSpecError(
            f"checkpoint {str(path)!r} holds a {type(loaded).__name__}, not a state_dict of tensors "
            "(accepted: a state_dict, or a dict with it under 'state_dict' or 'model')"
        )
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    expected = model.state_dict()
    problems = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if problems or missing or unexpected:
        parts = []
        if problems:
            parts.append("shape mismatch for " + _first_few(problems, "; "))
        if missing:
            parts.append("missing " + _first_few(missing))
        if unexpected:
            parts.append("unexpected " + _first_few(unexpected))
        raise InvalidSpecError(f"checkpoint {str(path)!r} does not fit {which}: {' | '.join(parts)}")
    model.load_state_dict(state)
