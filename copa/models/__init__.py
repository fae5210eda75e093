"""Target models: the COPA paper's chain CNNs, R-GAP's CNN6, DLG's LeNet, Inverting Gradients' ConvNet, ResNet-18.

Use :func:`create_model`; every model it returns carries ``model.copa_info`` (a :class:`ModelInfo`).

Chain models
------------
COPA (Chen & Campbell, arXiv 2111.10178) and R-GAP (Zhu & Blaschko, ICLR 2021) solve for the input
layer by layer, backwards, so they need a *chain*: convolutions without bias, each followed by an
invertible element-wise activation, and a final Linear layer with bias. :class:`ChainNet` builds such
a network from a one-line spec:

    spec   := layer (whitespace layer)*
    layer  := conv | hidden | final
    conv   := "c" OUT "k" KERNEL ["s" STRIDE] ["p" PADDING] ["b"] ":" ACT    Conv2d (no bias unless "b")
    hidden := "fc" WIDTH ":" ACT                                             Linear with bias to WIDTH
    final  := "fc" ":" ACT                                                   Linear with bias to num_classes
    ACT    := tanh | sigmoid | identity | softplus | relu | leakyrelu[SLOPE]

STRIDE defaults to 1, PADDING to 0, SLOPE to 0.2 (R-GAP's CNN6; ``leakyrelu0.01`` is PyTorch's
default). The parts of a conv token come in the order shown. Convolutions come first, the last layer
must be the final ``fc``, and the input is flattened before the first Linear; the Linear input sizes
follow from ``in_shape``. Example, COPA's ``cnn3_c1``: ``c6k3:tanh c3k4s2:tanh fc:identity``.

A chain architecture is added in one line::

    register_chain("my_cnn", "c8k3p1:tanh c4k3s2:tanh fc:identity", description="...", source="...")

and an anonymous one is built directly with ``create_model("chain:c8k3p1:tanh fc:identity")``.
``create_model("random-chain:SEED")`` builds the seeded random chain of :func:`random_chain_spec`
(depth 1–4, the population of the security-metric study; even seeds rank-deficient, odd full-rank).
Activation variants of a registered chain are named with a suffix (see :data:`ACTIVATION_SUFFIXES`):
``cnn2_c1-sigmoid`` replaces the activations of all layers but the last by ``sigmoid``.

Seeding
-------
Construction runs under ``torch.random.fork_rng`` with ``torch.manual_seed(seed)``: the same
``(name, seed)`` gives bit-identical weights and the caller's global RNG is left untouched.
"""

from __future__ import annotations

# every public name of the rooms, as copa.models.NAME (the zoo registers the architectures on import)
from .activations import (
    ACTIVATION_SUFFIXES,
    Activation,
    Identity,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softplus,
    Tanh,
    make_activation,
)
from .chains import (
    CHAIN_GRAMMAR,
    ChainNet,
    DEFAULT_IN_SHAPE,
    LayerShape,
    LayerSpec,
    LayerTrace,
    chain_layer_shapes,
    chain_not_chain_reason,
    format_chain_spec,
    parse_chain_spec,
    with_hidden_activation,
)
from .random_chains import (
    LayerCount,
    RANDOM_CHAIN_ACTIVATIONS,
    RANDOM_CHAIN_ATTEMPTS,
    RANDOM_CHAIN_CHANNELS,
    RANDOM_CHAIN_DEPTHS,
    RANDOM_CHAIN_KERNELS,
    RANDOM_CHAIN_MAX_ROWS,
    RANDOM_CHAIN_MAX_UNKNOWNS,
    RANDOM_CHAIN_PREFIX,
    RANDOM_CHAIN_STRIDES,
    chain_layer_counts,
    random_chain_spec,
)
from .checkpoints import INIT_SCHEMES, ModelInfo, model_info
from .factory import MODELS, create_model, register_chain
from .zoo import COPA_PAPER, DLG_PAPER, IG_PAPER, InvertingGradientsConvNet, RGAP_PAPER

__all__ = [
    "CHAIN_GRAMMAR",
    "COPA_PAPER",
    "DEFAULT_IN_SHAPE",
    "DLG_PAPER",
    "IG_PAPER",
    "RGAP_PAPER",
    "ACTIVATION_SUFFIXES",
    "Activation",
    "ChainNet",
    "INIT_SCHEMES",
    "InvertingGradientsConvNet",
    "LayerCount",
    "LayerShape",
    "LayerSpec",
    "LayerTrace",
    "MODELS",
    "ModelInfo",
    "RANDOM_CHAIN_PREFIX",
    "chain_layer_counts",
    "chain_layer_shapes",
    "chain_not_chain_reason",
    "create_model",
    "format_chain_spec",
    "make_activation",
    "model_info",
    "parse_chain_spec",
    "random_chain_spec",
    "register_chain",
    "with_hidden_activation",
]
