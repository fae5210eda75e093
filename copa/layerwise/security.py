"""The COPA security metric: how much of each layer's input the gradients determine.

For every convolution ``i`` of a chain (Chen & Campbell, arXiv 2111.10178), the layer's input
``x̃_i`` (padded entries included) satisfies the linear system ``U_i x̃_i = [z_i; g_i; 0]`` with
``U_i = [A_i; K_i(δ_i); P_i]`` (forward, gradient and padding rows; see :mod:`copa.layerwise`). Its
rank deficiency ``def_i = rank(U_i) − unknowns_i ≤ 0`` is the dimension of the inputs the layer's
equations cannot tell apart.

COPA index (the authors' released definition, ``rgap()`` in ``hybrid.py`` of
github.com/CangxiongChen/training-data-leakage)::

    index = Σ_{conv layers i} round(def_i · (L − 1 − i) / (L − 1))

with ``L`` the number of weight layers including the final Linear (which is not in the sum) and
``i = 0`` the input layer, so deficits near the input weigh most. ``round`` is Python's (halves to
even: ``round(-2266.5) = -2266``), as in their code. ``0`` means every layer is uniquely solvable
(the most leaky model); the more negative, the more secure. A chain that is only its final
Linear (``L = 1``, no convolution) has index 0 and score 0: its input follows in closed form.
Their code counts the unknowns as ``C·(H+2p)·(W+2p)`` and adds one identity row per padded entry (R-GAP's ``padding_constraints``);
``δ_i`` comes from the attacked image and its true label, propagated down from the last layer.

Normalised score (ours, documented here): the weighted fraction of unknowns left undetermined,

    score = Σ_i w_i · (−def_i) / Σ_i w_i · unknowns_i,   w_i = (L − 1 − i) / (L − 1),

over the same conv layers and weights as the index, without rounding. It lies in ``[0, 1]``:
``0`` = every layer's input is determined (as leaky as the index 0), ``1`` = no equation
constrains anything; ``0.4`` reads "40 % of the (weighted) input dimensions are free", whatever
the input size. Padded entries count as unknowns (as in the index), but they are always pinned
by the padding rows, so they only ever lower the score.

Ranks: :func:`copa.layerwise.layer_rank` (exact block elimination; SVD blocks count singular values
``σ > σ_max · max(m, n) · ε₆₄``, NumPy's ``matrix_rank`` default, blocks with both sides above
:data:`copa.layerwise.GRAM_THRESHOLD` use a pivoted Cholesky of their Gram matrix, which resolves
``σ > √(N·ε₆₄)·σ_max``; the authors use an absolute ``1e-10`` on an SVD of the whole ``U``).
On the paper's models the rank drops are exact identities — e.g.
``Σ_{c,u,v} W[f',c,u,v]·g[f,c,u,v] = Σ_{p,q} δ[f,p,q]·z[f',p,q]`` gives ``F²`` dependent rows,
and input rows/columns that no kernel window reaches (``(H + 2p − k) mod s ≠ 0``, e.g. cnn2_c6,
cnn4_c3) are zero columns — so kept and dropped singular values are far apart (``rank_gap`` in the
report: ≥ 1e11 on every chain of the zoo where the rank comes from an SVD, 5e5 for cnn4_c3's
second layer, whose rank comes from a pivoted Cholesky) and the tolerance does not matter. Condition number: ``σ_max(U)/σ_rank(U)`` (the 2-norm condition of
the least-squares problem on the row space), from the eigenvalues of the smaller Gram matrix.

Several images of one model: :func:`security_reports`; the weights are shared, only ``δ`` differs,
so each layer's ranks for all images come from one :func:`copa.layerwise.layer_ranks` call
(:func:`security_report` is its batch of one).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InvalidSpecError
from .chain import ChainAnalysis, analyse_chain, check_chain
from .geometry import EPS64
from .operators import layer_system
from .ranks import GRAM_THRESHOLD, layer_ranks
from .solves import gram_singular_values
from ..models import ChainNet, create_model
from ..threat import Scenario
from .. import data as data_mod
from ..threat import resolve_device
import textwrap
from tabulate import tabulate

__all__ = ["DELTA_SOURCES", "LayerSecurity", "SecurityReport", "copa_index", "propagated_free_dimensions",
           "propagated_image_dimensions", "security_report", "security_reports"]

DELTA_SOURCES = {
    "image": "δ from the dataset image and its true label (the authors' setting)",
    "random": "δ from a uniform random image in [0, 1] (seeded), with the dataset image's label",
}


@dataclass
class LayerSecurity:
    """One weight layer of the security report.

    ``rank``/``deficiency`` are of ``U = [A; K; P]``; ``weight`` is ``(L−1−i)/(L−1)`` and
    ``contribution`` ``round(deficiency · weight)`` (0 for Linear layers, which are not in the
    index). ``tolerance`` holds the absolute singular-value thresholds of the two blocks the rank
    is computed from (see :func:`copa.layerwise.layer_rank`), ``rank_gap`` how far the kept and dropped
    singular values are apart, ``rank_method`` how each block's rank was obtained.
    ``condition_number`` is ``σ_max(U)/σ_rank(U)`` (``None`` if not
    computed, ``inf`` if ``σ_rank`` is below what the Gram eigenvalues resolve).

    ``noise_amplification`` is the layer's predicted amplification of a relative error in its
    right-hand side ``v`` (e.g. a defence's gradient noise) into a relative error of its least-squares
    solution: the condition number ``κ = σ_max/σ_rank`` over the nonzero singular values. With ``U``
    fixed, ``x = U⁺v`` gives ``‖δx‖/‖x‖ ≤ (κ/cos θ)·‖δv‖/‖v‖`` with ``cos θ = ‖Ux‖/‖v‖`` (1 for a
    consistent system); perturbing ``U`` as well (its gradient rows are built from the layer's ``δ``,
    which the observed gradients of the layers above determine) adds a ``κ²·tan θ`` term to first order
    (Golub & Van Loan, *Matrix Computations*, §5.3, sensitivity of the full-rank least-squares problem).
    For a rank-deficient layer the bound is for the component of ``x`` in the row space of ``U``; the
    null-space component is not determined by ``v`` at all (that is the deficiency). It is a bound, not an
    estimate: a random perturbation is amplified much less than ``κ`` (only its share along the smallest
    singular directions is). ``None`` whenever ``condition_number`` is.

    ``padding_rank``, ``gradient_rank`` and ``forward_rank`` split a conv layer's ``rank`` by the block
    elimination (``rank = padding_rank + gradient_rank + forward_rank``; :class:`copa.layerwise.LayerRank`);
    ``forward_rank`` is the rank of the forward rows projected off the padding and gradient rows, which
    :func:`propagated_free_dimensions` needs. ``None`` for Linear layers.
    """

    index: int
    kind: str
    description: str
    unknowns: int
    forward_rows: int
    gradient_rows: int
    padding_rows: int
    rank: int
    deficiency: int
    weight: float
    contribution: int
    condition_number: float | None
    tolerance: dict[str, float]
    rank_gap: float
    rank_method: str = ""
    seconds: float = 0.0
    noise_amplification: float | None = None
    padding_rank: int | None = None
    gradient_rank: int | None = None
    forward_rank: int | None = None

    def __post_init__(self):
        if self.noise_amplification is None and self.condition_number is not None:
            self.noise_amplification = self.condition_number

    @property
    def rows(self) -> int:
        return self.forward_rows + self.gradient_rows + self.padding_rows


TABLE_WIDTH = 120
"""The widest line of :meth:`SecurityReport.to_table` (``copa security``'s text): a terminal's width."""


@dataclass
class SecurityReport:
    """Per-layer ranks, the COPA index and the normalised score of one model (see module docstring)."""

    model: str
    layers: list[LayerSecurity]
    copa_index: int
    normalised_score: float
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def clean(value):
            if isinstance(value, float) and not math.isfinite(value):
                return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean({
            "model": self.model,
            "copa_index": self.copa_index,
            "normalised_score": self.normalised_score,
            "layers": [self._layer_dict(layer) for layer in self.layers],
            "notes": list(self.notes),
            "settings": dict(self.settings),
        })

    @property
    def conditioned(self) -> bool:
        """Whether condition numbers were computed (some layer has one; ``condition=False`` gives none)."""
        return any(layer.condition_number is not None for layer in self.layers)

    def _layer_dict(self, layer: LayerSecurity) -> dict[str, Any]:
        data = asdict(layer)
        if not self.conditioned:  # the new key only where it says something (condition numbers computed)
            data.pop("noise_amplification", None)
        return data

    def to_table(self, width: int = TABLE_WIDTH) -> str:
        """The report as text no wider than ``width`` columns (lines of prose wrapped): each layer's kind,
        then two tables — the rank count and the numerics (condition number, rank tolerance, rank gap and,
        when conditioned, the noise amplification κ)."""


        def fmt(value: float | None) -> str:
            if value is None:
                return "–"
            return "inf" if math.isinf(value) else f"{value:.3g}"

        def wrapped(text: str) -> str:
            return textwrap.fill(text, width=width, subsequent_indent="    ", break_on_hyphens=False)

        kinds = [wrapped(f"layer {layer.index}: {layer.description}") for layer in self.layers]
        ranks = tabulate([[layer.index, layer.unknowns, layer.forward_rows, layer.gradient_rows, layer.padding_rows,
                           layer.rank, layer.deficiency, f"{layer.weight:.3g}", layer.contribution]
                          for layer in self.layers],
                         headers=["layer", "unknowns", "fwd rows", "grad rows", "pad rows", "rank",
                                  "deficiency", "weight", "contribution"], tablefmt="github")
        numerics_headers = ["layer", "condition number", "tolerance (K₁ / forward)", "rank gap"]
        numerics_rows = [[layer.index, fmt(layer.condition_number),
                          " / ".join(f"{v:.1e}" for v in layer.tolerance.values()) or "–", fmt(layer.rank_gap)]
                         for layer in self.layers]
        if self.conditioned:
            numerics_headers.append("noise amplification κ")
            for row, layer in zip(numerics_rows, self.layers):
                row.append(fmt(layer.noise_amplification))
        numerics = tabulate(numerics_rows, headers=numerics_headers, tablefmt="github")
        legend = wrapped("unknowns: the layer's input entries, padding included; rows: its forward, gradient and "
                         "padding equations")
        lines = [f"COPA security of {self.model}", "", *kinds, "", ranks, legend, "", numerics, "",
                 wrapped(f"COPA index: {self.copa_index}  (0 = every layer uniquely solvable, i.e. most leaky; "
                         "more negative = more secure)"),
                 wrapped(f"normalised score: {self.normalised_score:.4f}  (weighted fraction of undetermined "
                         "unknowns; 0 = fully determined, 1 = nothing determined)")]
        propagated = propagated_image_dimensions(self.layers)
        if propagated is not None:
            undetermined, pixels = propagated
            lines.append(wrapped(f"propagated image fraction: {undetermined / pixels:.4f}  ({undetermined} of "
                                 f"{pixels} pixels left undetermined once each layer passes its undetermined "
                                 "directions down; ours, a lower bound; results/metric-validity/README.md)"))
        if self.conditioned:
            lines.append(wrapped("noise amplification: κ = σ_max/σ_rank of U, the first-order bound ‖δx‖/‖x‖ ≤ "
                                 "κ·‖δv‖/‖v‖ of the layer's least-squares solve (Golub & Van Loan, Matrix "
                                 "Computations, §5.3; for a rank-deficient layer on the row-space component only)"))
        lines += [wrapped(f"note: {note}") for note in self.notes]
        return "\n".join(lines)


def copa_index(deficits: list[int], num_weight_layers: int) -> int:
    """``Σ_i round(def_i · (L−1−i)/(L−1))`` for the conv-layer deficits ``def_0, def_1, ...``."""
    L = num_weight_layers
    if L < 1 or len(deficits) > L - 1:
        raise InvalidSpecError(f"{len(deficits)} conv deficits do not fit a chain of {L} weight layers")
    return int(sum(round(d * 1.0 * _layer_weight(i, L)) for i, d in enumerate(deficits)))


def propagated_free_dimensions(layers: Sequence[Any]) -> list[int] | None:
    """Undetermined dimensions of each conv layer's input once the layers above pass theirs down.

    The layer-wise attacks solve a chain backwards (Chen & Campbell, arXiv 2111.10178, §3): layer ``i``'s
    forward rows ``A_i x_i = z_i`` use ``z_i = σ⁻¹(x_{i+1})`` from the solution above, so the ``d_{i+1}``
    directions of ``x_{i+1}`` that layer ``i + 1`` leaves undetermined make ``z_i`` unknown along
    ``d_{i+1}`` directions. Layer ``i``'s own null space has ``−def_i`` dimensions; its forward rows,
    projected off the gradient and padding rows, have rank ``ρ_i = forward_rank`` among ``n_i =
    forward_rows`` rows, so ``n_i − ρ_i`` of them are redundant and absorb lost directions. In general
    position (the lost directions meet the ``ρ_i``-dimensional range of the projected forward rows in
    ``max(0, ρ_i + d_{i+1} − n_i)`` dimensions)::

        d_i = −def_i + max(0, ρ_i + d_{i+1} − n_i),   d = 0 above the last conv (the Linear is closed form).

    ``d_0`` is the image's undetermined dimension after propagation; the COPA index instead adds each
    layer's own ``def_i`` with a fixed weight, whether or not the layers below absorb it. First order
    (``δ_i``'s dependence on ``x_{i+1}`` is ignored) and a dimension count, not a conditioning measure;
    tests/test_security.py checks it against the exact null spaces of small chains. ``layers``: the
    report's layers (:class:`LayerSecurity` or their ``to_dict`` dicts) in chain order; returns one ``d_i``
    per conv layer in that order, or ``None`` if a conv layer has no ``forward_rank`` (reports written
    before it was recorded).
    """
    conv = [layer for layer in layers if _field(layer, "kind") == "conv"]
    if any(_field(layer, "forward_rank") is None for layer in conv):
        return None
    free, above = [], 0
    for layer in reversed(conv):
        lost = max(0, int(_field(layer, "forward_rank")) + above - int(_field(layer, "forward_rows")))
        above = -int(_field(layer, "deficiency")) + lost
        free.append(above)
    return free[::-1]


def propagated_image_dimensions(layers: Sequence[Any]) -> tuple[int, int] | None:
    """``(undetermined, pixels)`` of the input image after propagation (:func:`propagated_free_dimensions`'
    ``d_0``; 0 when the first layer is a Linear, solved in closed form) and its pixel count (unknowns minus
    padded entries); ``None`` without layers or when a conv layer has no ``forward_rank``. Its ratio is the
    propagated image fraction (``copa security``'s line, predictor ``propagated_image_fraction``)."""
    free = propagated_free_dimensions(layers)
    if free is None or not layers:
        return None
    image = layers[0]
    undetermined = free[0] if _field(image, "kind") == "conv" else 0
    return undetermined, int(_field(image, "unknowns")) - int(_field(image, "padding_rows"))


def _field(layer: Any, key: str) -> Any:
    """A field of a :class:`LayerSecurity` or of its ``to_dict`` dict."""
    return layer.get(key) if isinstance(layer, dict) else getattr(layer, key)


def _layer_weight(i: int, L: int) -> float:
    """``(L−1−i)/(L−1)``; 0 for a chain that is only its final Linear (``L = 1``, nothing to weigh)."""
    return (L - 1 - i) / (L - 1) if L > 1 else 0.0


def _resolve_model(model: str | nn.Module, seed: int, input_shape, num_classes: int) -> tuple[nn.Module, str]:

    if isinstance(model, str):
        module = create_model(model, num_classes=num_classes, in_shape=tuple(input_shape), seed=seed)
        name = model
    elif isinstance(model, nn.Module):
        module = model
        info = getattr(model, "copa_info", None)
        name = info.name if info is not None else (f"chain:{model.spec}" if isinstance(model, ChainNet)
                                                   else type(model).__name__)
    else:
        raise InvalidSpecError(f"model {model!r} is invalid: give a model name or an nn.Module")
    check_chain(module, name)
    return module, name


def _reference_inputs(module: nn.Module, dataset: str, indices, delta_source: str, seed: int,
                      device: torch.device, data_root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``B×C×H×W`` model inputs and ``(B,)`` labels for train images ``indices`` of ``dataset``: the client's
    batch of a :class:`copa.threat.Scenario` (float64, the COPA authors' preprocessing ``x − 0.5``,
    hybrid.py's MyTransform), or with ``delta_source="random"`` one seeded random image for every index
    (only the label differs)."""

    scenario = Scenario(model="security-metric", dataset=dataset, split="train", indices=indices,
                        preprocess="center", input_shape=tuple(module.in_shape), num_classes=module.num_classes,
                        data_root=data_root, dtype="float64")
    try:
        batch = scenario.load_batch(device)
    except InvalidSpecError as exc:
        if "too small for label" not in str(exc):
            raise
        raise InvalidSpecError(f"{dataset} images {list(indices)} have labels that do not fit a model with "
                               f"{module.num_classes} classes ({exc})") from None
    x01 = batch.images01
    if delta_source != "image":
        generator = torch.Generator().manual_seed(seed)
        x01 = torch.rand((1, *module.in_shape), generator=generator, dtype=torch.float64).to(device)
        x01 = x01.expand(len(batch.labels), -1, -1, -1)
    return batch.preprocess.apply(x01), batch.labels


def _reference_input(module: nn.Module, dataset: str, index: int, delta_source: str, seed: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``1×C×H×W`` input and ``(1,)`` label of one image (:func:`_reference_inputs` of ``[index]``)."""
    return _reference_inputs(module, dataset, [index], delta_source, seed, device)


def security_report(
    model: str | nn.Module,
    *,
    seed: int = 0,
    dataset: str = "sample",
    index: int = 0,
    delta_source: str = "image",
    input_shape: tuple[int, int, int] | None = None,
    condition: bool = True,
    device: str | torch.device = "cpu",
    data_root: str | None = None,
) -> SecurityReport:
    """The COPA security report of a chain model at its (seeded, untrained) weights.

    ``model``: a registered name (built with ``create_model(name, seed=seed)``, input shape
    ``input_shape`` or 3×32×32, as many classes as ``dataset``) or a chain module. ``δ`` of every
    layer comes from one example: ``dataset`` image ``index`` of the train split with its label,
    centred (``x − 0.5``) as in the authors' code, or a random image (``delta_source="random"``).
    ``condition=False`` skips the condition numbers (the Gram eigenvalues are most of the cost).
    ``data_root``: root of torchvision datasets (as the scenario's; default ``$COPA_DATA_ROOT`` or ./data).
    Raises :class:`NotApplicableError` for models that are not chains. The batch of one of
    :func:`security_reports`.
    """
    return security_reports(model, seed=seed, dataset=dataset, indices=[index], delta_source=delta_source,
                            input_shape=input_shape, condition=condition, device=device, data_root=data_root)[0]


def security_reports(
    model: str | nn.Module,
    *,
    indices: Sequence[int],
    seed: int = 0,
    dataset: str = "sample",
    delta_source: str = "image",
    input_shape: tuple[int, int, int] | None = None,
    condition: bool = True,
    device: str | torch.device = "cpu",
    data_root: str | None = None,
) -> list[SecurityReport]:
    """:func:`security_report` for several images of the same model: one report per index, in order.

    The chain is analysed per image (:func:`copa.layerwise.analyse_chain`); each conv layer's ranks
    for all images come from one :func:`copa.layerwise.layer_ranks` call, which does the weight-only
    work once and the ``K₁`` SVDs in one batch (issue 7: shared matrices, only ``δ`` differs). The
    ranks equal per-image :func:`security_report` calls. Timings are shares of the batch:
    ``settings["seconds"]`` is the batch's total wall time divided by ``len(indices)``, a layer's
    ``seconds`` its batched rank time divided by ``len(indices)`` plus that image's condition
    number. ``indices``: distinct official train indices (:func:`copa.data.load_images` checks them);
    with ``delta_source="random"`` every index gets the same seeded random image and its own label.
    """

    if delta_source not in DELTA_SOURCES:
        raise InvalidSpecError(f"delta_source {delta_source!r} is invalid: accepted are {', '.join(DELTA_SOURCES)}")
    start = time.perf_counter()
    dev = resolve_device(device)
    classes = data_mod.num_classes(dataset, root=data_root) if isinstance(model, str) else None
    shape = tuple(input_shape) if input_shape is not None else (3, 32, 32)
    module, name = _resolve_model(model, seed, shape, classes or 10)
    inputs, labels = _reference_inputs(module, dataset, indices, delta_source, seed, dev, data_root)
    indices = [int(i) for i in indices]
    batch = len(indices)
    analyses: list[ChainAnalysis] = [analyse_chain(module, inputs[j:j + 1], labels[j:j + 1]) for j in range(batch)]
    L = len(analyses[0].layers)
    notes: list[list[str]] = [[] for _ in range(batch)]
    layers: list[list[LayerSecurity]] = [[] for _ in range(batch)]
    for position, la0 in enumerate(analyses[0].layers):
        weight_i = _layer_weight(la0.index, L)
        if la0.kind == "conv":
            g = la0.geometry
            t0 = time.perf_counter()
            ranks = layer_ranks(la0.weight, [a.layers[position].delta for a in analyses], g)
            shared = (time.perf_counter() - t0) / batch
            for j, lr in enumerate(ranks):
                t0 = time.perf_counter()
                cond = None
                if condition:
                    cond = _condition_number(analyses[j].layers[position], lr.rank)
                    if cond is not None and math.isinf(cond):
                        notes[j].append(f"layer {la0.index}: σ_rank is below the Gram eigenvalues' resolution "
                                        "(√(N·ε)·σ_max); condition number reported as inf")
                layers[j].append(LayerSecurity(
                    la0.index, "conv", g.describe(), g.unknowns, g.forward_rows, g.gradient_rows, g.padding_rows,
                    lr.rank, lr.deficiency, weight_i, round(lr.deficiency * weight_i), cond,
                    {"gradient": lr.gradient_tolerance, "forward": lr.forward_tolerance}, lr.rank_gap,
                    f"padding rows: {lr.padding_rank}; gradient rows: {g.in_channels}×rank K₁ (SVD) = "
                    f"{lr.gradient_rank}; projected forward rows: {lr.forward_rank} ({lr.forward_method})",
                    shared + time.perf_counter() - t0, padding_rank=lr.padding_rank,
                    gradient_rank=lr.gradient_rank, forward_rank=lr.forward_rank))
        else:
            final = la0.index == L - 1
            d_in, d_out = la0.module.in_features, la0.module.out_features
            for j, analysis in enumerate(analyses):
                t0 = time.perf_counter()
                la = analysis.layers[position]
                usable = la.grad_bias is not None and bool((la.grad_bias.abs() > 0).any())
                rank = d_in if usable else 0
                layers[j].append(LayerSecurity(
                    la.index, "fc",
                    f"linear {d_in}→{d_out} ({'final, ' if final else ''}closed form x = g_W[r]/g_b[r])",
                    d_in, d_out, d_out * d_in, 0, rank, rank - d_in, 0.0 if final else weight_i, 0, None, {},
                    math.inf, "closed form (any non-zero bias gradient determines the input)",
                    time.perf_counter() - t0))
                if not final:
                    notes[j].append(f"layer {la.index} is a hidden Linear layer: its input follows in closed form "
                                    "from its weight and bias gradients; it is listed but not part of the index "
                                    "(conv layers only)")
    seconds = round((time.perf_counter() - start) / batch, 3)
    reports = []
    for j, index in enumerate(indices):
        conv = [layer for layer in layers[j] if layer.kind == "conv"]
        total = copa_index([layer.deficiency for layer in conv], L)
        denominator = sum(layer.weight * layer.unknowns for layer in conv)
        score = sum(layer.weight * -layer.deficiency for layer in conv) / denominator if denominator else 0.0
        settings = {"seed": seed, "dataset": dataset, "index": index, "delta_source": delta_source,
                    "delta_source_meaning": DELTA_SOURCES[delta_source], "input_shape": list(module.in_shape),
                    "num_classes": module.num_classes, "loss": "cross-entropy (mean)",
                    "preprocess": "center (x - 0.5)", "device": str(dev), "seconds": seconds}
        reports.append(SecurityReport(name, layers[j], total, score, [_RANK_NOTE, *notes[j]], settings))
    return reports


_RANK_NOTE = ("ranks by exact block elimination (padding rows, then the gradient rows per input channel, "
              "then the forward rows projected off their span); SVD blocks count σ > σ_max·max(m,n)·ε₆₄ "
              f"(ε₆₄ = {EPS64:.2e}), blocks larger than {GRAM_THRESHOLD} use a pivoted Cholesky of their Gram "
              "matrix (σ > √(N·ε₆₄)·σ_max); the authors' code uses an absolute 1e-10 on the whole U. "
              "'rank gap' = last kept / first dropped singular value (≫1: the tolerance does not matter)")


def _condition_number(la, rank: int) -> float | None:
    """``σ_max/σ_rank`` of the layer's ``U`` from the eigenvalues of its smaller Gram matrix."""
    if rank == 0:
        return None
    system = layer_system(la.weight, la.delta, la.pre_activation, la.grad_weight, la.geometry, layout="sparse")
    sv = gram_singular_values(system.matrix)
    if rank > sv.numel():
        return math.inf
    m, n = system.matrix.shape
    resolution = float(sv[0]) * math.sqrt(max(m, n) * EPS64)
    smallest = float(sv[rank - 1])
    return math.inf if smallest <= resolution else float(sv[0]) / smallest
