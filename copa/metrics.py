"""Image-reconstruction metrics: MSE, PSNR, SSIM, LPIPS, label accuracy, and batch pairing.

Conventions, in the style of ``torchmetrics.functional``:

* every image metric takes two tensors of shape ``N×C×H×W`` holding images in ``[0, 1]``
  (the caller has already undone any normalisation) and returns a per-image tensor of shape
  ``N`` (float64);
* both inputs are clamped to ``[0, 1]`` first, so a reconstruction that overshoots the valid range
  is scored as it would be displayed;
* shapes must match exactly, otherwise :class:`~copa.errors.InvalidSpecError` names both shapes.

:func:`score_images` pairs a reconstructed batch with the target batch (Hungarian matching on
MSE, as gradient-leakage attacks recover a batch in arbitrary order) and returns a
JSON-serialisable report.

Every image metric is registered with :func:`register_metric`, which declares what tables need (label,
unit, whether higher is better, decimals; :class:`MetricInfo`): the records, records.csv and the
leaderboard take their metric columns from the registry, so a new metric is one registration (in a
plug-in file, :mod:`copa.plugins`) and its name in the workflow's ``metrics:``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from .errors import CopaError, InvalidSpecError, unknown_name
from .registry import Registry

__all__ = [
    "METRICS",
    "DEFAULT_METRICS",
    "DEFAULT_HEADLINE_METRIC",
    "MetricInfo",
    "register_metric",
    "metric_info",
    "metric_order",
    "LPIPSUnavailable",
    "SSIM_WINDOW",
    "LPIPS_MIN_SIZE",
    "mse",
    "psnr",
    "ssim",
    "lpips",
    "lpips_available",
    "lpips_weights_path",
    "label_accuracy",
    "match_pairs",
    "check_metric_names",
    "check_metric_input",
    "score_images",
]

METRICS: Registry[Any] = Registry("metric")

DEFAULT_METRICS = ("mse", "psnr", "ssim", "lpips")
"""The metrics a run is scored with unless told otherwise (the workflow's ``metrics`` default)."""

DEFAULT_HEADLINE_METRIC = "psnr"
"""The headline metric unless the workflow's ``headline_metric`` names another: the leaderboard's overview and
Spearman table (its statistics also ± std and median), the plots' axes, the validity study's best attack.
PSNR is what the COPA paper (Chen & Campbell, arXiv 2111.10178) and its baselines report first."""


class LPIPSUnavailable(CopaError):
    """LPIPS cannot be computed because its pretrained backbone weights are not on disk."""


# --------------------------------------------------------------------------------------------
# input checks


def _check_pair(x: Tensor, y: Tensor, what: str) -> None:
    for name, t in (("reconstruction", x), ("target", y)):
        if not isinstance(t, Tensor):
            raise InvalidSpecError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.shape != y.shape:
        raise InvalidSpecError(
            f"{what}: reconstruction shape {tuple(x.shape)} does not match target shape {tuple(y.shape)}; "
            "both must be the same N×C×H×W"
        )
    if x.ndim != 4:
        raise InvalidSpecError(
            f"{what}: expected images of shape N×C×H×W (4 dimensions), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise InvalidSpecError(f"{what}: the batch is empty (shape {tuple(x.shape)})")


def _prepare(x: Tensor, y: Tensor, what: str) -> tuple[Tensor, Tensor]:
    """Check shapes, clamp to [0, 1] and convert to float64."""
    _check_pair(x, y, what)
    return x.to(torch.float64).clamp(0.0, 1.0), y.to(torch.float64).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# MSE / PSNR


def mse(x: Tensor, y: Tensor) -> Tensor:
    """Per-image mean squared error over all channels and pixels, in float64.

    >>> target = torch.zeros(2, 1, 2, 2)
    >>> reconstruction = torch.tensor([0.5, 0.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    >>> mse(reconstruction, target)
    tensor([0.2500, 0.0000], dtype=torch.float64)
    """
    x, y = _prepare(x, y, "mse")
    return (x - y).pow(2).flatten(1).mean(1)


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """Per-image peak signal-to-noise ratio in dB with peak value 1: ``10·log10(1 / mse)``.

    Computed per image in float64 (as in Geiping et al. 2020, "Inverting Gradients", who average
    per-image PSNR over a batch). Identical images (``mse == 0``) give ``+inf``.

    >>> target = torch.zeros(2, 1, 2, 2)
    >>> reconstruction = torch.tensor([0.1, 0.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    >>> psnr(reconstruction, target).round(decimals=2)  # MSE 0.01 → 20 dB
    tensor([20., inf], dtype=torch.float64)
    """
    return 10.0 * torch.log10(1.0 / mse(x, y))


# --------------------------------------------------------------------------------------------
# SSIM

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11  # int(3.5 * sigma + 0.5) * 2 + 1, the Gaussian window torchmetrics and skimage use


def ssim(x: Tensor, y: Tensor) -> Tensor:
    """Per-image structural similarity (Wang et al. 2004), computed in float64.

    Defaults from Wang et al. 2004: 11×11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03,
    data range 1; colour images are the mean over channels. The SSIM map comes from
    ``torchmetrics.functional.structural_similarity_index_measure`` (``gaussian_kernel=True``,
    ``sigma=1.5``, ``kernel_size=11``, ``data_range=1.0``), but is averaged over the valid
    region only (the 5-pixel border, where the window leaves the image, is cropped), as in the
    authors' reference code (``ssim_index.m``, ``filter2(..., 'valid')``) and
    ``skimage.metrics.structural_similarity``. torchmetrics' own mean also includes the
    reflect-padded border, which on 32×32 images shifts SSIM by up to ~0.03 from the reference
    values; with the crop the result matches scikit-image to float64 rounding.

    Images smaller than 11×11 raise :class:`~copa.errors.InvalidSpecError`.

    >>> image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    >>> ssim(torch.cat([image, 1 - image, image.clamp(0.2, 0.8)]), image.expand(3, -1, -1, -1)).round(decimals=4)
    tensor([ 1.0000, -0.9726,  0.9597], dtype=torch.float64)
    """
    # deferred (also LPIPS's below): torchmetrics takes ≈ 3 s to import
    from torchmetrics.functional.image import structural_similarity_index_measure

    x, y = _prepare(x, y, "ssim")
    h, w = x.shape[-2:]
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise InvalidSpecError(
            f"ssim: images of {h}×{w} pixels are smaller than the {SSIM_WINDOW}×{SSIM_WINDOW} Gaussian "
            f"window (sigma {SSIM_SIGMA}, Wang et al. 2004); SSIM needs images of at least "
            f"{SSIM_WINDOW}×{SSIM_WINDOW}"
        )
    _, ssim_map = structural_similarity_index_measure(
        x,
        y,
        gaussian_kernel=True,
        sigma=SSIM_SIGMA,
        kernel_size=SSIM_WINDOW,
        data_range=1.0,
        k1=0.01,
        k2=0.03,
        reduction="none",
        return_full_image=True,
    )
    pad = (SSIM_WINDOW - 1) // 2
    return ssim_map[..., pad : h - pad, pad : w - pad].flatten(1).mean(1)


# --------------------------------------------------------------------------------------------
# LPIPS

# torchvision weight enums that torchmetrics' LPIPS backbones load (``_weight_map`` in
# torchmetrics/functional/image/lpips.py, always ``.DEFAULT``).
_LPIPS_BACKBONES = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}

# Smallest H and W each backbone accepts: below this a pooling layer gets an empty input.
# AlexNet: conv 11/4 pad 2 → maxpool 3/2 → conv 5 pad 2 → maxpool 3/2 needs ≥3 pixels, so H ≥ 31.
LPIPS_MIN_SIZE = {"alex": 31, "vgg": 16, "squeeze": 17}


def _check_lpips_net(net: str) -> None:
    if net not in _LPIPS_BACKBONES:
        raise unknown_name("LPIPS network", net, _LPIPS_BACKBONES)


def lpips_weights_path(net: str = "alex") -> Path:
    """Where torchvision looks for the ImageNet weights of the LPIPS backbone ``net``.

    That is ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``, e.g.
    ``~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth`` (moved by ``$TORCH_HOME``).
    """
    _check_lpips_net(net)
    import torchvision  # deferred: only LPIPS needs torchvision's models

    weights = getattr(torchvision.models, _LPIPS_BACKBONES[net]).DEFAULT
    filename = Path(urlparse(weights.url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _lpips_linear_weights_path(net: str) -> Path:
    """The LPIPS linear-layer weights (Zhang et al. 2018, v0.1) that torchmetrics ships in its wheel."""
    from torchmetrics.functional.image import lpips as tm_lpips  # deferred: torchmetrics

    return Path(tm_lpips.__file__).resolve().parent / "lpips_models" / f"{net}.pth"


def lpips_available(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS-``net`` can run without any download; ``(False, reason)`` if not.

    Needs torchvision's ImageNet weights of the backbone in the torch hub cache (see
    :func:`lpips_weights_path`) and the linear-layer weights bundled with torchmetrics. On
    success the second item names the backbone weights file.
    """
    _check_lpips_net(net)
    try:  # deferred: whether LPIPS's backends import at all (torchmetrics[image], torchvision)
        import torchvision  # noqa: F401
        from torchmetrics.functional.image import lpips as _  # noqa: F401
    except ImportError as e:
        return False, f"LPIPS needs torchvision and torchmetrics[image]: {e}"
    linear = _lpips_linear_weights_path(net)
    if not linear.is_file():
        return False, (
            f"the LPIPS-{net} linear-layer weights {linear} are missing from the installed torchmetrics; "
            "reinstall torchmetrics"
        )
    backbone = lpips_weights_path(net)
    if not backbone.is_file():
        import torchvision  # deferred: only LPIPS needs torchvision's models

        url = getattr(torchvision.models, _LPIPS_BACKBONES[net]).DEFAULT.url
        return False, (
            f"LPIPS-{net} needs torchvision's ImageNet {_LPIPS_BACKBONES[net]} file {backbone.name}, which is "
            f"not at {backbone}; download {url} on a machine with network access and copy it to "
            f"{backbone.parent}/ (or point $TORCH_HOME at a directory whose hub/checkpoints/ holds it)"
        )
    return True, f"LPIPS-{net} backbone weights found at {backbone}"


@functools.lru_cache(maxsize=4)
def _lpips_network(net: str, backbone_file: str):
    """Build torchmetrics' LPIPS module once per (network, weights file).

    Called only after :func:`lpips_available` saw the weights file, so torchvision loads it from
    the cache and never downloads (it verifies the hash only when downloading).
    """
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # deferred: torchmetrics

    return LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none", normalize=True)


def lpips(x: Tensor, y: Tensor, net: str = "alex") -> Tensor:
    """Per-image LPIPS distance (Zhang et al. 2018, v0.1 linear weights; AlexNet backbone by default).

    Lower is more similar; identical images give 0. Computed with torchmetrics' LPIPS with
    ``normalize=True``, which maps the clamped ``[0, 1]`` inputs to the ``[-1, 1]`` range LPIPS
    expects. Grey images (C = 1) are repeated to 3 channels. Raises :class:`LPIPSUnavailable`,
    without trying to download anything, when the backbone weights are not on disk (see
    :func:`lpips_available`); raises :class:`~copa.errors.InvalidSpecError` for images smaller
    than the backbone accepts (:data:`LPIPS_MIN_SIZE`, 31×31 for AlexNet).
    """
    _check_lpips_net(net)
    _check_pair(x, y, "lpips")
    channels, h, w = x.shape[1:]
    if channels not in (1, 3):
        raise InvalidSpecError(f"lpips: expected 1 (grey) or 3 (RGB) channels, got {channels} (shape {tuple(x.shape)})")
    if h < LPIPS_MIN_SIZE[net] or w < LPIPS_MIN_SIZE[net]:
        raise InvalidSpecError(
            f"lpips: images of {h}×{w} pixels are too small for LPIPS-{net}, which needs at least "
            f"{LPIPS_MIN_SIZE[net]}×{LPIPS_MIN_SIZE[net]}"
        )
    ok, reason = lpips_available(net)
    if not ok:
        raise LPIPSUnavailable(reason)
    try:
        metric = _lpips_network(net, str(lpips_weights_path(net)))
    except Exception as e:  # e.g. a truncated or foreign weights file
        raise LPIPSUnavailable(f"LPIPS-{net} could not be built from {lpips_weights_path(net)}: {e}") from e

    x = x.detach().to(torch.float32).clamp(0.0, 1.0)
    y = y.detach().to(torch.float32).clamp(0.0, 1.0)
    if channels == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    metric = metric.to(x.device)
    metric.reset()
    try:
        with torch.no_grad():
            metric.update(x, y)
            scores = metric.compute()
    finally:
        metric.reset()
    return scores.reshape(-1).to(torch.float64)


# --------------------------------------------------------------------------------------------
# labels and pairing


def _as_label_tensor(labels: Any, name: str) -> Tensor:
    try:
        t = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as e:
        raise InvalidSpecError(f"{name} must be a sequence or tensor of integer labels, got {labels!r}") from e
    return t.reshape(-1).cpu()


def label_accuracy(predicted: Any, true: Any) -> float | None:
    """Fraction of labels predicted correctly, position by position.

    Returns ``None`` when ``predicted`` (or ``true``) is ``None``: an attack that does not
    estimate labels has no label accuracy, which is not the same as an accuracy of 0 (``None``
    also stays valid JSON, unlike NaN). Lengths must match.

    >>> label_accuracy([3, 1, 4, 1], [3, 1, 5, 9])
    0.5
    >>> label_accuracy(None, [3, 1]) is None
    True
    """
    if predicted is None or true is None:
        return None
    p = _as_label_tensor(predicted, "predicted labels")
    t = _as_label_tensor(true, "true labels")
    if p.numel() != t.numel():
        raise InvalidSpecError(f"label_accuracy: {p.numel()} predicted labels but {t.numel()} true labels")
    if t.numel() == 0:
        raise InvalidSpecError("label_accuracy: no labels given")
    return float((p == t).to(torch.float64).mean())


def _mse_matrix(reconstruction: Tensor, target: Tensor) -> Tensor:
    """``cost[i, j]`` = MSE between ``target[i]`` and ``reconstruction[j]`` (float64, no N² copies)."""
    r = reconstruction.flatten(1)
    t = target.flatten(1)
    dist = torch.cdist(t, r, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
    return dist.pow(2) / r.shape[1]


def match_pairs(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Pair reconstructed images with target images; ``reconstruction[perm[i]]`` pairs with ``target[i]``.

    Gradient-leakage attacks recover a batch in arbitrary order, so images are paired by the
    assignment that minimises the total per-pair MSE (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``), computed on the clamped images. Returns a long
    tensor ``perm`` of shape N (on the CPU); N = 1 gives ``[0]``.

    >>> target = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1, 1)
    >>> match_pairs(target[[2, 0, 1]], target)  # the attack returned them in the order 2, 0, 1
    tensor([1, 2, 0])
    """
    reconstruction, target = _prepare(reconstruction, target, "match_pairs")
    n = target.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    from scipy.optimize import linear_sum_assignment  # deferred: scipy.optimize takes ≈ 1 s to import

    cost = _mse_matrix(reconstruction, target).cpu().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = torch.empty(n, dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return perm


# --------------------------------------------------------------------------------------------
# registry and report

_METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class MetricInfo:
    """How tables show a metric (declared by :func:`register_metric`): its label, unit, direction and
    decimals. ``higher_is_better`` is None for a metric not registered in this process. ``legend``: what a
    special value means, for the tables' legend (PSNR: ``inf``); ``needs``: what it needs that may be missing,
    a plural noun phrase (LPIPS: its AlexNet weights), for the tables' note on n/a cells."""

    name: str
    label: str
    unit: str = ""
    higher_is_better: bool | None = None
    digits: int = 4
    description: str = ""
    legend: str = ""
    needs: str = ""

    @property
    def arrow(self) -> str:
        """↑ when higher is better, ↓ when lower is, '' when unknown."""
        return {True: "↑", False: "↓", None: ""}[self.higher_is_better]

    @property
    def sign(self) -> int:
        """+1 when higher is better (or unknown), −1 when lower is: ``sign · value`` grows with the quality of
        a reconstruction, so the best of several values is the largest ``sign · value``."""
        return -1 if self.higher_is_better is False else 1

    @property
    def heading(self) -> str:
        """A table header: label, unit and arrow, e.g. ``PSNR dB ↑``."""
        return " ".join(part for part in (self.label, self.unit, self.arrow) if part)


def register_metric(name: str, fn: Callable[[Tensor, Tensor], Tensor] | None = None, *, label: str,
                    higher_is_better: bool, digits: int, description: str, unit: str = "",
                    replace: bool = False, **meta: Any):
    """Register the image metric ``fn(reconstruction, target)`` (N×C×H×W images in [0, 1] → per-image
    tensor of shape N) under ``name`` with what tables need: ``label`` (e.g. "PSNR"), ``unit`` (e.g. "dB"),
    ``higher_is_better`` (shown as ↑ / ↓) and ``digits`` (decimals). Without ``fn``, a decorator.
    Extra keywords (``source``, ``legend``, ``needs``: :class:`MetricInfo`, ...) are kept as metadata, as by
    :meth:`copa.registry.Registry.register`."""
    settings = dict(label=label, higher_is_better=higher_is_better, digits=digits, description=description,
                    unit=unit, **meta)
    if fn is None:
        return functools.partial(register_metric, name, replace=replace, **settings)
    _check_metric_declaration(name, fn, settings)
    return METRICS.register(name, fn, replace=replace, **settings)


def _check_metric_declaration(name: Any, fn: Any, settings: dict[str, Any]) -> None:
    """Raise :class:`~copa.errors.CopaError` naming the first bad part of a metric's declaration."""
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        raise CopaError(f"metric name {name!r} is invalid: use a letter, then letters, digits or _ "
                        "(it names table columns, e.g. psnr, psnr_mean)")
    digits = settings["digits"]
    checks = [("fn", fn, callable(fn), "a function (reconstruction, target) -> per-image tensor"),
              *((key, settings[key], isinstance(settings[key], str) and bool(settings[key].strip()),
                 "a non-empty string") for key in ("label", "description")),
              ("unit", settings["unit"], isinstance(settings["unit"], str), "a string ('' for none)"),
              ("higher_is_better", settings["higher_is_better"], isinstance(settings["higher_is_better"], bool),
               "True or False"),
              ("digits", digits, type(digits) is int and 0 <= digits <= 12, "an integer from 0 to 12 (decimals)")]
    for what, value, ok, accepted in checks:
        if not ok:
            raise CopaError(f"metric {name!r}: {what} {value!r} is invalid: expected {accepted}")


def metric_info(name: str) -> MetricInfo:
    """The table metadata of metric ``name``. A name not registered in this process (a plug-in's, read back
    from records) is shown by its name with 4 decimals and no direction."""
    if name not in METRICS:
        return MetricInfo(name, label=str(name))
    meta = METRICS.entry(name).meta
    return MetricInfo(name, meta["label"], meta["unit"], meta["higher_is_better"], meta["digits"],
                      meta["description"], meta.get("legend", ""), meta.get("needs", ""))


def metric_order(names: Iterable[str]) -> list[str]:
    """``names`` without repeats: the registered ones in registration order (the tables' column order),
    then any others in the order given."""
    names = list(dict.fromkeys(names))
    return [n for n in METRICS.in_registration_order() if n in names] + [n for n in names if n not in METRICS]


# registration order is the tables' column order (results/leaderboard.md: PSNR, SSIM, LPIPS)
register_metric(
    "psnr", psnr, label="PSNR", unit="dB", higher_is_better=True, digits=2,
    description="peak signal-to-noise ratio in dB, peak 1 (+inf for identical images)",
    source="standard; per-image average as in Geiping et al. 2020 (arXiv 2003.14053)",
    legend="`inf` is an exact recovery (its std is then undefined, –)",
)
register_metric(
    "ssim", ssim, label="SSIM", higher_is_better=True, digits=4,
    description="structural similarity, 11×11 Gaussian window, sigma 1.5, valid region",
    source="Wang et al. 2004, IEEE TIP 13(4); matches skimage structural_similarity",
)
register_metric(
    "lpips", lpips, label="LPIPS", higher_is_better=False, digits=4,
    description="learned perceptual image patch similarity, AlexNet backbone",
    source="Zhang et al. 2018 (arXiv 1801.03924), v0.1 weights via torchmetrics",
    needs="AlexNet weights",
)
register_metric(
    "mse", mse, label="MSE", higher_is_better=False, digits=4,
    description="mean squared error per image, on [0, 1] images", source="standard",
)


def check_metric_names(metrics: str | Iterable[str]) -> list[str]:
    """The metric names as a list; :class:`~copa.errors.UnknownNameError` (with close matches) for an
    unknown one, :class:`~copa.errors.InvalidSpecError` when ``metrics`` is not a name or names.

    Cheap: callers can check the names before an attack runs instead of after it."""
    if isinstance(metrics, str):
        names = [metrics]
    else:
        try:
            names = list(metrics)
        except TypeError:
            raise InvalidSpecError(f"metrics {metrics!r} is invalid: give a metric name or a sequence of names "
                                   f"({', '.join(METRICS.names())})") from None
    for name in names:
        METRICS.entry(name)  # UnknownNameError with close matches
    return names


def check_metric_input(metrics: str | Iterable[str], input_shape: Sequence[int]) -> None:
    """Raise :class:`~copa.errors.InvalidSpecError` when images of ``input_shape`` (C, H, W) cannot be
    scored with ``metrics`` — SSIM's 11×11 window needs at least 11×11 pixels — so callers can refuse
    before an attack runs instead of after it."""
    c, h, w = (int(n) for n in input_shape)
    if "ssim" in check_metric_names(metrics) and min(h, w) < SSIM_WINDOW:
        raise InvalidSpecError(f"input shape {c}x{h}x{w} is too small for the metric ssim: its {SSIM_WINDOW}×"
                               f"{SSIM_WINDOW} Gaussian window (Wang et al. 2004) needs images of at least "
                               f"{SSIM_WINDOW}×{SSIM_WINDOW}")


def score_images(
    reconstruction: Tensor,
    target: Tensor,
    *,
    predicted_labels: Any = None,
    true_labels: Any = None,
    metrics: Iterable[str] = DEFAULT_METRICS,
) -> dict[str, Any]:
    """Pair a reconstructed batch with its target batch, then score every pair.

    Pairing comes first (:func:`match_pairs`); ``predicted_labels``, given in reconstruction
    order, are permuted the same way before :func:`label_accuracy`. Returns a JSON-serialisable
    dict::

        {"per_image": {"mse": [...], ...},   # in target order
         "mean": {"mse": ..., ...},          # mean over images of the per-image values
         "pairing": [perm...],               # reconstruction[perm[i]] pairs with target[i]
         "label_accuracy": float | None,     # None when labels were not predicted / given
         "lpips_missing": str | None}        # why LPIPS was not computed, or None

    LPIPS never raises here: when its weights are not on disk (or the images are smaller than
    the backbone accepts) its per-image values and mean are ``None`` and ``lpips_missing`` holds
    the reason. A perfect reconstruction has PSNR ``inf`` (and so a mean of ``inf``); ``json``
    writes it as ``Infinity``, which Python's ``json`` reads back but strict JSON parsers
    reject. Unknown metric names raise :class:`~copa.errors.UnknownNameError`.
    """
    names = check_metric_names(metrics)
    _check_pair(reconstruction, target, "score_images")

    perm = match_pairs(reconstruction, target)
    paired = reconstruction[perm.to(reconstruction.device)]
    if predicted_labels is not None:
        predicted = _as_label_tensor(predicted_labels, "predicted labels")
        if predicted.numel() != perm.numel():
            raise InvalidSpecError(
                f"score_images: {predicted.numel()} predicted labels for a batch of {perm.numel()} images"
            )
        predicted_labels = predicted[perm]

    per_image: dict[str, list[float | None]] = {}
    mean: dict[str, float | None] = {}
    lpips_missing: str | None = None
    n = target.shape[0]
    with torch.no_grad():
        for name in names:
            if name == "lpips":
                lpips_missing = _lpips_skip_reason(target)
                if lpips_missing is not None:
                    per_image[name], mean[name] = [None] * n, None
                    continue
                try:
                    values = lpips(paired, target)
                except LPIPSUnavailable as e:
                    lpips_missing = str(e)
                    per_image[name], mean[name] = [None] * n, None
                    continue
            else:
                values = METRICS.get(name)(paired, target)
            values = values.detach().to(torch.float64).cpu()
            per_image[name] = [float(v) for v in values.tolist()]
            mean[name] = float(values.mean())

    return {
        "per_image": per_image,
        "mean": mean,
        "pairing": perm.tolist(),
        "label_accuracy": label_accuracy(predicted_labels, true_labels),
        "lpips_missing": lpips_missing,
    }


def _lpips_skip_reason(target: Tensor, net: str = "alex") -> str | None:
    """Why LPIPS-``net`` cannot score these images, or None if it can."""
    channels, h, w = target.shape[1:]
    if channels not in (1, 3):
        return f"LPIPS needs 1 or 3 channels, the images have {channels}"
    if h < LPIPS_MIN_SIZE[net] or w < LPIPS_MIN_SIZE[net]:
        return (
            f"images of {h}×{w} pixels are too small for LPIPS-{net}, which needs at least "
            f"{LPIPS_MIN_SIZE[net]}×{LPIPS_MIN_SIZE[net]}"
        )
    ok, reason = lpips_available(net)
    return None if ok else reason
