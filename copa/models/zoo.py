"""The registered architectures: the COPA paper's chains, R-GAP's CNN6 / CNN6-d, DLG's LeNet, Inverting Gradients'
ConvNet and ResNet-18, each with the paper and code it comes from."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidSpecError
from .chains import DEFAULT_IN_SHAPE, _check_shape
from .factory import MODELS, register_chain


COPA_PAPER = "Chen & Campbell, arXiv 2111.10178 (COPA), authors' targets.py"
RGAP_PAPER = "Zhu & Blaschko, ICLR 2021 (R-GAP), JunyiZhu-AI/R-GAP models/"
DLG_PAPER = "Zhu, Liu & Han, NeurIPS 2019 (DLG), mit-han-lab/dlg models/vision.py"
IG_PAPER = "Geiping et al., NeurIPS 2020 (Inverting Gradients), JonasGeiping/invertinggradients inversefed/nn/models.py"

# --------------------------------------------------------------------------------------------------
# Other architectures
# --------------------------------------------------------------------------------------------------


class InvertingGradientsConvNet(nn.Module):
    """ConvNet of Inverting Gradients (Geiping et al., NeurIPS 2020; inversefed ``ConvNet``, width 64).

    Eight 3×3 convs (padding 1, with bias) each followed by BatchNorm and ReLU, widths w, 2w, 2w, 4w,
    4w, 4w, then MaxPool2d(3), two more 4w convs, MaxPool2d(3), flatten, Linear. The original's
    ``OrderedDict`` lists ``conv6`` twice, so only one ``conv6`` exists; layer names (and so
    state_dict keys) match the original. Its Linear has 36·w inputs for 32×32; here it is computed
    from ``in_shape``.
    """

    def __init__(self, width: int = 64, num_classes: int = 10, in_shape: Sequence[int] = DEFAULT_IN_SHAPE):
        super().__init__()
        channels, height, width_px = _check_shape(tuple(in_shape))
        pooled_h, pooled_w = height // 3 // 3, width_px // 3 // 3  # two MaxPool2d(3), stride 3, no padding
        if pooled_h < 1 or pooled_w < 1:
            raise InvalidSpecError(f"in_shape {tuple(in_shape)} is too small for convnet: it needs height and width ≥ 9")
        plan = [(channels, width), (width, 2 * width), (2 * width, 2 * width), (2 * width, 4 * width)]
        plan += [(4 * width, 4 * width)] * 4
        modules: list[tuple[str, nn.Module]] = []
        for i, (c_in, c_out) in enumerate(plan):
            modules += [
                (f"conv{i}", nn.Conv2d(c_in, c_out, kernel_size=3, padding=1)),
                (f"bn{i}", nn.BatchNorm2d(c_out)),
                (f"relu{i}", nn.ReLU()),
            ]
            if i == 5:
                modules.append(("pool0", nn.MaxPool2d(3)))
        modules += [
            ("pool1", nn.MaxPool2d(3)),
            ("flatten", nn.Flatten()),
            ("linear", nn.Linear(4 * width * pooled_h * pooled_w, num_classes)),
        ]
        self.model = nn.Sequential(OrderedDict(modules))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _resnet18(num_classes: int, in_shape: tuple[int, int, int]) -> nn.Module:
    import torchvision  # deferred: only ResNet-18 needs torchvision's models (≈ 1 s to import)

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_shape[0] != 3:  # same first conv for other channel counts, with torchvision's init
        model.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model



# --- the COPA paper's chains (authors' targets.py; input 3×32×32, 10 classes) --------------------
_COPA = dict(description="untrained tanh chain CNN from the COPA paper", source=COPA_PAPER)
register_chain("cnn2_c0", "c1k3s2:tanh fc:tanh", **_COPA)
register_chain("cnn2_c1", "c6k3:tanh fc:identity", **_COPA)
register_chain("cnn2_c2", "c6k4s2:tanh fc:identity", **_COPA)
register_chain("cnn2_c4", "c1k3:tanh fc:tanh", **_COPA)
register_chain("cnn2_c5", "c3k3p1:tanh fc:tanh", **_COPA)
register_chain("cnn2_c6", "c12k5s2:tanh fc:identity", **_COPA)
register_chain("cnn3_c1", "c6k3:tanh c3k4s2:tanh fc:identity", **_COPA)
register_chain("cnn3_c2", "c6k4s2:tanh c3k3s2:tanh fc:identity", **_COPA)
register_chain("cnn3_c3", "c6k3:tanh c9k3:tanh fc:identity", **_COPA)
register_chain("cnn3_c4", "c1k3:tanh c6k3:tanh fc:identity", **_COPA)
register_chain("cnn3_c8", "c9k3:tanh c3k4s2:tanh fc:tanh", **_COPA)
register_chain("cnn3_c9", "c5k3:tanh c7k3:tanh fc:tanh", **_COPA)
register_chain("cnn4_c1", "c6k3:tanh c5k4s2:tanh c3k4:tanh fc:identity", **_COPA)
register_chain("cnn4_c2", "c16k5:tanh c6k5s2:tanh c32k5p2:tanh fc:identity", **_COPA)
register_chain("cnn4_c3", "c6k5:tanh c16k5s2:tanh c16k5p2:tanh fc:identity", **_COPA)

# --- R-GAP's CNN6 / CNN6-d: bias-free convs, leaky ReLU 0.2. R-GAP's own head is a bias-free
# Linear(3200, 1) for binary labels; here it is the usual Linear with bias to num_classes.
register_chain(
    "cnn6",
    "c12k4s2p2:leakyrelu c36k3s2p1:leakyrelu c36k3p1:leakyrelu c36k3p1:leakyrelu c64k3s2p1:leakyrelu "
    "c128k3p1:leakyrelu fc:identity",
    description="R-GAP's 6-conv CNN (leaky ReLU 0.2, bias-free convs)", source=RGAP_PAPER,
)
register_chain(
    "cnn6-d",
    "c12k4s2p2:leakyrelu c20k3s2p1:leakyrelu c36k3p1:leakyrelu c36k3p1:leakyrelu c64k3s2p1:leakyrelu "
    "c128k3p1:leakyrelu fc:identity",
    description="R-GAP's CNN6-d: CNN6 with a 20-channel second conv (rank-deficient)", source=RGAP_PAPER,
)

# --- DLG's LeNet: convs with bias and sigmoid, plain Linear head, everything U(-0.5, 0.5).
register_chain(
    "lenet-zhu",
    "c12k5s2p2b:sigmoid c12k5s2p2b:sigmoid c12k5p2b:sigmoid fc:identity",
    description="DLG's LeNet (sigmoid, convs with bias, U(-0.5, 0.5) init); optimisation targets only",
    source=DLG_PAPER, init="uniform",
)

MODELS.register(
    "convnet",
    lambda num_classes, in_shape: InvertingGradientsConvNet(64, num_classes, in_shape),
    description="Inverting Gradients' ConvNet, width 64 (BatchNorm, ReLU, max pooling); optimisation targets only",
    source=IG_PAPER, init="default", is_chain=False, spec=None,
    not_chain_reason="uses BatchNorm, max pooling and ReLU (not invertible)",
)
MODELS.register(
    "resnet18",
    _resnet18,
    description="torchvision ResNet-18 (weights=None); optimisation targets only",
    source="He et al., CVPR 2016; torchvision.models.resnet18", init="default", is_chain=False, spec=None,
    not_chain_reason="residual connections, BatchNorm, pooling and ReLU (not invertible)",
)
