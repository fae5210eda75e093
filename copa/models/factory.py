"""The model registry and factory: :data:`MODELS`, :func:`register_chain`, :func:`create_model` (timm-style
``register_model`` / ``create_model``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidSpecError, NotApplicableError, UnknownNameError, unknown_name
from ..registry import Registry
from .activations import make_activation
from .chains import ChainNet, DEFAULT_IN_SHAPE, LayerSpec, _check_num_classes, _check_shape, chain_not_chain_reason, format_chain_spec, parse_chain_spec, with_hidden_activation
from .random_chains import RANDOM_CHAIN_PREFIX, _random_chain_seed, random_chain_spec
from .checkpoints import INIT_SCHEMES, ModelInfo, _check_init, _load_checkpoint


MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

# --------------------------------------------------------------------------------------------------
# Registry and factory
# --------------------------------------------------------------------------------------------------


def _chain_factory(layers: list[LayerSpec]) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
        return ChainNet(layers, num_classes=num_classes, in_shape=in_shape)

    return build


def register_chain(name: str, spec: str, *, description: str = "", source: str = "", init: str = "default") -> None:
    """Register a chain architecture under ``name`` from a one-line spec (grammar: module docstring).

    ``init`` is ``"default"`` (PyTorch default init) or ``"uniform"`` (U(-0.5, 0.5), DLG).
    """
    layers = parse_chain_spec(spec)
    reason = chain_not_chain_reason(layers)
    MODELS.register(
        name, _chain_factory(layers), spec=format_chain_spec(layers), description=description, source=source,
        init=_check_init(init), is_chain=reason is None, not_chain_reason=reason,
    )


def _split_activation_suffix(name: str) -> tuple[str, str] | None:
    base, dash, suffix = name.rpartition("-")
    if not dash or not base:
        return None
    try:
        make_activation(suffix)
    except InvalidSpecError:
        return None
    return base, suffix


def _unknown_model(name: str) -> UnknownNameError:
    """Unknown model name; for ``CHAIN-SUFFIX`` with a registered chain, also why the suffix is not accepted."""
    err = unknown_name(MODELS.kind, name, MODELS.names())
    base, dash, suffix = name.rpartition("-")
    if dash and base in MODELS and MODELS.entry(base).meta.get("spec"):
        try:
            make_activation(suffix)
        except InvalidSpecError as bad:
            reason = str(bad).split(":")[0] if suffix.startswith("leakyrelu") and suffix != "leakyrelu" else \
                f"unknown activation {suffix!r}"
            return UnknownNameError(f"{err} As an activation variant of {base!r}, '-{suffix}' is not accepted "
                                    f"({reason}): accepted suffixes are -tanh, -sigmoid, -identity, -softplus, "
                                    f"-relu, -leakyrelu, -leakyrelu<slope> (e.g. {base}-sigmoid).")
    return err


def create_model(
    name: str,
    num_classes: int = 10,
    in_shape: tuple[int, int, int] = DEFAULT_IN_SHAPE,
    seed: int = 0,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """Build model ``name`` under ``torch.manual_seed(seed)`` (caller's RNG untouched); load ``checkpoint``.

    ``name`` is a registered name (``MODELS.names()``), a registered chain with an activation suffix
    (``cnn2_c1-sigmoid``), ``chain:<spec>``, or ``random-chain:SEED`` (the chain
    :func:`random_chain_spec` samples for ``SEED`` and ``in_shape``; ``seed`` still seeds the weights).
    The result carries ``model.copa_info`` (for ``chain:``/``random-chain:`` names its ``spec`` is the chain's).
    """
    num_classes = _check_num_classes(num_classes)
    in_shape = _check_shape(in_shape)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InvalidSpecError(f"seed {seed!r} is invalid: use an int")
    if not isinstance(name, str):
        raise InvalidSpecError(f"model name {name!r} is invalid: use a string")

    layers: list[LayerSpec] | None
    if name.startswith("chain:"):
        layers = parse_chain_spec(name[len("chain:"):])
        factory, meta = _chain_factory(layers), {"init": "default", "source": "user spec", "description": ""}
    elif name.startswith(RANDOM_CHAIN_PREFIX):
        chain_seed = _random_chain_seed(name)
        layers = parse_chain_spec(random_chain_spec(chain_seed, in_shape=in_shape))
        stratum = "deficient" if chain_seed % 2 == 0 else "full-rank"
        factory, meta = _chain_factory(layers), {
            "init": "default", "source": f"copa.models.random_chain_spec({chain_seed}, in_shape={in_shape})",
            "description": f"seeded random chain ({stratum} stratum: even seeds deficient, odd full-rank)"}
    else:
        if name in MODELS:
            entry = MODELS.entry(name)
            layers = None if entry.meta.get("spec") is None else parse_chain_spec(entry.meta["spec"])
        elif split := _split_activation_suffix(name):
            base, suffix = split
            entry = MODELS.entry(base)
            if entry.meta.get("spec") is None:
                raise NotApplicableError(
                    f"activation suffix '-{suffix}' in {name!r} only applies to chain models; "
                    f"{base!r} is not one (chains: {', '.join(n for n in MODELS.names() if MODELS.entry(n).meta.get('spec'))})"
                )
            layers = with_hidden_activation(entry.meta["spec"], suffix)
        else:
            raise _unknown_model(name)
        factory = entry.obj if layers is None else _chain_factory(layers)
        meta = entry.meta

    init_description, init_fn = INIT_SCHEMES[meta.get("init", "default")]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(num_classes=num_classes, in_shape=in_shape)
        if init_fn is not None:
            init_fn(model)
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint,
                         f"model {name!r} ({'x'.join(map(str, in_shape))} input, {num_classes} classes)")

    reason = chain_not_chain_reason(layers) if layers is not None else meta.get("not_chain_reason")
    model.copa_info = ModelInfo(
        name=name,
        spec=None if layers is None else format_chain_spec(layers),
        num_classes=num_classes,
        in_shape=in_shape,
        seed=seed,
        init=f"{init_description}, torch.manual_seed({seed})",
        checkpoint=None if checkpoint is None else str(checkpoint),
        is_chain=layers is not None and reason is None,
        not_chain_reason=reason if layers is not None else (reason or "not a chain architecture"),
        source=meta.get("source", ""),
        description=meta.get("description", ""),
    )
    return model
