"""The hybrid method as released: Chen & Campbell, "Understanding Training-Data Leakage from Gradients in
Neural Networks for Image Classification" (BMVC 2022, arXiv 2210.13231), code
github.com/CangxiongChen/training-data-leakage, ``hybrid.py`` at commit 7a8183d (``hybrid_solve``,
lines 563–646). A reimplementation on copa's own linear algebra (:mod:`copa.layerwise`), not a copy;
``Lnnn`` below are line numbers of that ``hybrid.py`` (``circulant_rep.py`` where named).

The method, for a chain (bias-free convolutions, invertible activations, a final Linear with bias),
one image, label known:

1. **Final Linear layer** (L579–585, ``fully_connected_invert`` L348–378): ``x = g_W[r]/g_b[r]`` for
   the *first* row ``r`` with ``g_b[r] ≠ 0`` (L371–375); ``∂ℓ/∂x = g_bᵀ W`` is passed down (L368).
2. **Each convolution ``i``, from the last to the image** (loop L588–644):

   a. ``z_i = σ_i⁻¹(x_{i+1})`` of the next layer's *corrected* input (L590; tanh clips ``x`` to
      ``±0.9999`` first, L87–88); ``δ_i = σ_i'(z_i) ⊙ ∂ℓ/∂x_{i+1}`` (L596–597) and
      ``∂ℓ/∂x_i = Wᵢᵀ δ_i`` for the next step down, computed now, before the correction (L593–594,
      ``conv_layer_der_x`` L507–515);
   b. **R-GAP step** (``rgap_one_layer`` L518–533 with ``get_U_V_conv`` L186–212): the minimum-norm
      least-squares solution of ``U x = v``, ``U = [A_i; K_i(δ_i)]``, ``v = [z_i; g_i]``
      (``np.linalg.lstsq(u, v, rcond=None)``, L524). The unknowns are the *unpadded* input: the
      circulant matrices drop the padded columns (``circulant_rep.py`` L58–64), so zero padding holds
      exactly and there are no padding rows (this path is v1, ``make_w_circulant`` L488–504;
      ``rgap_one_layer_v2``'s padding rows, L274–305, are used only by their plain ``rgap``);
   c. **gradient matching from the least-squares solution, at every layer** (L604–641,
      ``dynamic_dlg_soft_constr[_with_rgap]`` L800–846/L849–895, identical bodies): Adam
      (``torch.optim.Adam([x])``, default lr 1e-3, no schedule; L813/L862) on

          w_cos · Σ_t (1 − cos(∇_t(x), g_t))  +  w_tv · TV(x)  +  w_lin · ‖U x − v‖²

      with ``∇_t`` the gradients of the cross-entropy of the sub-network from layer ``i`` to the output
      (``dynamic_forward`` L696–713: every weight and bias from layer ``i`` on) with respect to its
      parameter tensors, cosine per tensor with eps 1e-10 (L831–833), ``TV`` the anisotropic mean
      absolute differences of ``x`` reshaped to the layer's input (``total_variation`` L13–18) and the
      *raw*, unnormalised linear residual (``square_norm`` L927–935: ``(ux − v)ᵀ(ux − v)``, in float64).
      Schedules (L604–641, with the paper's iteration counts from the comments of ``comparisons``,
      L949–950: ``DYN_dlg_iter`` 2000, ``DYN_dlg_iter_1st`` 10000):

      ==========  ==========================  ======  =====  ======
      layer       Adam steps                  w_cos   w_tv   w_lin
      ==========  ==========================  ======  =====  ======
      0 (image)   ``n_iter_dlg_1st`` = 10000  1       1      0.05
      1           ``4·n_iter_dlg`` = 8000     1       1      0.1
      ≥ 2         ``n_iter_dlg // 2`` = 1000  10      0.1    1
      ==========  ==========================  ======  =====  ======

      The *last* iterate is returned (L846/L895: ``x.detach()`` after the loop; no best-iterate
      selection) and becomes the layer's reconstruction, from which the next layer down starts (L643).

Deliberate differences from ``hybrid.py`` (everything else follows it):

* **Observed gradients, not the ground truth.** ``hybrid.py`` computes the target gradients of the
  sub-network from the *true* input of layer ``i`` (``x_true=model_info[str(i)]['input_to_layer']``,
  L610/L623/L635; L815–819). That is the observed gradient of those parameters (same weights, same
  label, same loss), so we match against ``observation.gradients`` — the honest equivalent, equal up to
  rounding; the attack never sees the image or any hidden activation of the client.
* **float64 by default.** ``hybrid.py`` casts the least-squares solution to float32 (L611/L624/L636) and
  runs the gradient-matching stage on a float32 model; only the linear penalty is float64 (``square_norm``
  casts ``x`` to ``u``'s dtype, L932). Default ``precision="float64"`` runs everything in float64;
  ``precision="float32"`` reproduces theirs (stage in float32, least squares and linear penalty float64).
* **A bug not copied: the gradient rows at strided, padded layers.** ``circ_rep_grad``
  (``circulant_rep.py`` L97–144) builds ``K_i(δ)`` on an input cropped by the stride residue
  ``r = (H + 2p − k) mod s`` (L114–115) and then zero-pads that crop, so when ``p > 0`` and ``r > 0`` the
  last ``r`` rows and columns of the real input that the kernel windows do reach get coefficient 0 (checked
  against :func:`copa.layerwise.gradient_matrix`: exactly those columns differ, e.g. ``k3 s2 p1`` on
  10×10). We use the exact ``K_i(δ)``; ``gradient_rows="circ_rep_grad"`` reproduces theirs (those columns
  zeroed, in the least-squares system and in the penalty). No chain of the zoo has such a layer
  (cnn6/cnn6-d's strided padded layers have ``r = 0``); seeded random chains can.
* **Inverse activations other than tanh.** tanh clips at ``±tanh_clip`` (0.9999, L87) as theirs. For the
  others copa's model's own ``inverse`` is used: sigmoid and softplus clamp into their range (theirs take a
  ``log`` of whatever comes, NaN outside it, L83–84/L93–94) and leaky ReLU uses the model's slope (theirs
  hard-code 0.01, PyTorch's default, L73; copa's chains use 0.2).
* **Matrix-free penalty.** ``‖U x − v‖²`` is evaluated with ``conv2d`` and ``unfold``
  (:func:`copa.layerwise.grad_apply`) rather than a dense product; the same value up to rounding (the
  tests compare it with the dense ``U`` of :func:`copa.layerwise.layer_system`).
* **Not reproduced because they do not change the result:** the extra objective evaluation every 50
  steps for printing (L842–844; it recomputes ``x.grad`` but Adam's state only changes in ``step``), the
  term ``weight_norm_x · xᵀx`` (weight 0 at every layer, L616/L629/L641), ``torch.manual_seed(10)`` before
  each stage (L606/L619/L631; nothing in the stage is random — the attack is deterministic and ignores
  the generator) and the rank computations of v2 (unused by ``hybrid_solve``).

Options beyond theirs: ``fc_rows="all"`` (copa's least-squares combination of every usable row,
:func:`copa.layerwise.fc_input_from_gradients`; the same to rounding on exact gradients) and
``solver="normal"`` (Gram Cholesky, faster; the same solution when a layer's system is consistent).

Batched instances (ours, issue 32): a cell's images of one model run each layer's gradient-matching stage as one
vectorised Adam run (per-instance objectives; Adam is elementwise, so each image follows its own trajectory, equal
to its one-at-a-time run up to rounding: tests/test_batched.py); the least-squares solves stay per image. One image
runs the unbatched computation.

Measured (tests/test_hybrid.py): cnn2_c2, CIFAR-10 train image 3, full defaults, float64: 27.49 dB, as the
authors' code on the same weights and observation (27.49 dB); ``precision="float32"``: 27.49 dB too.

Not the same as ``copa-gm`` (:mod:`copa.attacks.copa`, docs/copa.md): that keeps the constraints hard, has
a null-space stage, matches gradients only where a layer's system is inconsistent, keeps the best
iterate and normalises the linear penalty.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from copa.attacks import (
    STEP_CEILING,
    Attack,
    Hyperparameter,
    Reconstruction,
    per_tensor_cosine_distance,
    progress,
    register_attack,
    total_variation,
)
from copa.errors import InvalidSpecError, NotApplicableError
from copa.layerwise import (
    ConvGeometry,
    chain_context,
    chain_problem,
    check_solver,
    fc_input_from_gradients,
    grad_apply,
    input_gradient,
    layer_system,
    solve_dense,
)

HYBRID = "hybrid.py (CangxiongChen/training-data-leakage @ 7a8183d)"
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}
FC_ROWS = ("first", "all")
GRADIENT_ROWS = ("exact", "circ_rep_grad")


def _first_row_fc_input(grad_weight: Tensor, grad_bias: Tensor) -> Tensor:
    """``g_W[r] / g_b[r]`` for the first ``r`` with ``g_b[r] ≠ 0`` (hybrid.py L371–375)."""
    nonzero = torch.nonzero(grad_bias.reshape(-1)).flatten()
    if nonzero.numel() == 0:
        raise NotApplicableError("every bias gradient of the last layer is zero: its input cannot be recovered "
                                 "from the gradients (the loss is at a stationary point)")
    r = int(nonzero[0])
    return grad_weight[r] / grad_bias.reshape(-1)[r]


def _residue_keep(geometry: ConvGeometry, dtype: torch.dtype, device) -> Tensor:
    """``circ_rep_grad``'s columns: 1 on the input, 0 on its last ``(H + 2p − k) mod s`` rows and columns
    (only where ``p > 0`` does this differ from the exact ``K``, whose columns there are zero otherwise)."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = geometry.input, geometry.kernel, geometry.stride, geometry.padding
    rh, rw = (h + 2 * ph - kh) % sh, (w + 2 * pw - kw) % sw
    keep = torch.zeros(geometry.in_channels, h, w, dtype=dtype, device=device)
    keep[:, :h - rh, :w - rw] = 1
    return keep


class _LayerObjective:
    """hybrid.py's stage objective at conv layer ``index`` (L835–837): ``w_cos · Σ_t (1 − cos) + w_tv · TV +
    w_lin · ‖U x − v‖²`` of ``x`` (``B×C×H×W``, unpadded), one value per instance.

    B instances of one model (a cell's images, issue 32's speed work) share the sub-network's parameters; their
    gradients come from ``torch.func.vmap`` over ``torch.func.grad`` (as ``copa-gm``'s gradient matching) and
    every term is per instance, so the sum's gradient on instance b's slice is instance b's own objective's
    gradient. One instance takes plain ``torch.autograd.grad`` and the unbatched reductions: the computation of
    the one-image attack, unchanged."""

    def __init__(self, ctxs, index: int, geometry: ConvGeometry, zs: list[Tensor], deltas: list[Tensor],
                 keep: Tensor | None, loss_fn, labels: Tensor, dtype: torch.dtype, weights: dict[str, float]):
        ctx = ctxs[0]
        self.layers, self.acts = ctx.layers[index:], ctx.activations[index:]
        self.loss_fn, self.labels, self.weights = loss_fn, labels, weights
        # the sub-network's parameter tensors in hybrid.py's order (bias, then weight; L707–710) and the
        # observed gradients of the same tensors (in place of their gradients at the true input, L815–819)
        self.params, self.targets = [], []
        for k, layer in enumerate(ctx.layers[index:], start=index):
            if layer.bias is not None:
                self.params.append(layer.bias.detach().to(dtype).clone().requires_grad_(len(ctxs) == 1))
                self.targets.append(torch.stack([c.grads[k][1].to(dtype) for c in ctxs]))
            self.params.append(layer.weight.detach().to(dtype).clone().requires_grad_(len(ctxs) == 1))
            self.targets.append(torch.stack([c.grads[k][0].to(dtype) for c in ctxs]))
        # the linear system U x = v of L186–212 (U, V stacked at L205–206), in float64 (square_norm casts x
        # to u's dtype, L932)
        conv = ctx.layers[index]
        self.geometry, self.keep = geometry, keep
        self.weight = conv.weight.detach().to(torch.float64)
        self.stride, self.padding = conv.stride, conv.padding
        self.z = torch.stack([z.to(torch.float64) for z in zs])
        self.delta = torch.stack([d.to(torch.float64) for d in deltas])
        self.grad = torch.stack([c.grads[index][0].to(torch.float64) for c in ctxs])
        self.evaluations = 0  # per instance: every call evaluates every instance once
        self._per_instance = torch.func.vmap(torch.func.grad(self._instance_loss), in_dims=(None, 0, 0))

    def _logits(self, params: list[Tensor], x: Tensor) -> Tensor:
        out, k = x, 0
        for layer, act in zip(self.layers, self.acts):
            bias = None
            if layer.bias is not None:
                bias, k = params[k], k + 1
            weight, k = params[k], k + 1
            if isinstance(layer, nn.Linear):
                out = F.linear(out.flatten(1), weight, bias)
            else:
                out = F.conv2d(out, weight, bias, stride=layer.stride, padding=layer.padding)
            out = act(out)
        return out

    def _instance_loss(self, params: list[Tensor], x: Tensor, label: Tensor) -> Tensor:
        return self.loss_fn(self._logits(params, x.unsqueeze(0)), label.unsqueeze(0))

    def linear(self, x: Tensor) -> Tensor:
        """``‖U x − v‖² = ‖A x − z‖² + ‖K(δ) x − g‖²`` per instance (raw; square_norm L927–935), float64."""
        x64 = x.to(torch.float64)
        forward = F.conv2d(x64, self.weight, stride=self.stride, padding=self.padding) - self.z
        x_k = x64 if self.keep is None else x64 * self.keep
        delta = self.delta[0] if x.shape[0] == 1 else self.delta  # one instance: δ shared, as the unbatched attack
        gradient = grad_apply(self.geometry.pad(x_k), delta, self.geometry) - self.grad
        if x.shape[0] == 1:
            return (forward.square().sum() + gradient.square().sum()).unsqueeze(0)
        return forward.square().flatten(1).sum(1) + gradient.square().flatten(1).sum(1)

    def terms(self, x: Tensor) -> dict[str, Tensor]:
        self.evaluations += 1
        if x.shape[0] == 1:
            with torch.enable_grad():
                loss = self.loss_fn(self._logits(self.params, x), self.labels)
                grads = torch.autograd.grad(loss, self.params, create_graph=x.requires_grad)
            return {"cos": per_tensor_cosine_distance(grads, [t[0] for t in self.targets], eps=1e-10).unsqueeze(0),
                    "tv": total_variation(x).unsqueeze(0), "linear": self.linear(x)}
        grads = self._per_instance(self.params, x, self.labels)
        return {"cos": per_tensor_cosine_distance(grads, self.targets, eps=1e-10, batched=True),
                "tv": total_variation(x, batched=True), "linear": self.linear(x)}

    def __call__(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective of every instance ``(B,)`` and its terms."""
        t = self.terms(x)
        w = self.weights
        return w["cos"] * t["cos"] + w["tv"] * t["tv"] + w["linear"] * t["linear"], t


@register_attack
class Hybrid(Attack):
    """The authors' released hybrid method (R-GAP step, then soft-constrained gradient matching, at every
    layer); see the module docstring."""

    name = "hybrid"
    paper = "Chen & Campbell, BMVC 2022, arXiv 2210.13231 (hybrid method)"
    code = "github.com/CangxiongChen/training-data-leakage (hybrid.py @ 7a8183d)"
    description = ("layer-wise R-GAP least squares, then gradient matching with the layer's equations as a soft "
                   "penalty at every layer, last iterate (the authors' released hybrid.py)")
    needs_label = True
    batched = True
    hyperparameters = {
        "steps_image": Hyperparameter(10000, f"{HYBRID} L613: n_iter_dlg_1st, 10000 in the paper (L950)",
                                      minimum=0, maximum=STEP_CEILING),
        "steps_layer1": Hyperparameter(8000, f"{HYBRID} L626: 4·n_iter_dlg, n_iter_dlg 2000 in the paper (L949)",
                                       minimum=0, maximum=STEP_CEILING),
        "steps_deeper": Hyperparameter(1000, f"{HYBRID} L638: n_iter_dlg // 2, n_iter_dlg 2000 in the paper "
                                             "(L949)", minimum=0, maximum=STEP_CEILING),
        "gm_weight_image": Hyperparameter(1.0, f"{HYBRID} L615: weight_cossim 1 at layer 0", minimum=0.0),
        "gm_weight_layer1": Hyperparameter(1.0, f"{HYBRID} L628: weight_cossim 1 at layer 1", minimum=0.0),
        "gm_weight_deeper": Hyperparameter(10.0, f"{HYBRID} L640: weight_cossim 10 at layers ≥ 2", minimum=0.0),
        "tv_weight_image": Hyperparameter(1.0, f"{HYBRID} L615: weight_tv 1 at layer 0", minimum=0.0),
        "tv_weight_layer1": Hyperparameter(1.0, f"{HYBRID} L628: weight_tv 1 at layer 1", minimum=0.0),
        "tv_weight_deeper": Hyperparameter(0.1, f"{HYBRID} L640: weight_tv 0.1 at layers ≥ 2", minimum=0.0),
        "linear_weight_image": Hyperparameter(0.05, f"{HYBRID} L615: weight_sqnorm 0.05 at layer 0 (raw "
                                                    "‖Ux − v‖²)", minimum=0.0),
        "linear_weight_layer1": Hyperparameter(0.1, f"{HYBRID} L628: weight_sqnorm 0.1 at layer 1", minimum=0.0),
        "linear_weight_deeper": Hyperparameter(1.0, f"{HYBRID} L640: weight_sqnorm 1 at layers ≥ 2", minimum=0.0),
        "lr": Hyperparameter(1e-3, f"{HYBRID} L813/L862: torch.optim.Adam([x]), default lr 1e-3, no schedule",
                             minimum=0.0),
        "tanh_clip": Hyperparameter(0.9999, f"{HYBRID} L87: tanh inverse clips to ±0.9999", minimum=0.0,
                                    maximum=1.0),
        "precision": Hyperparameter("float64", "ours: 'float64' (default) or 'float32' — hybrid.py's gradient-"
                                               "matching stage (float32 model and x_init, L611; linear penalty "
                                               "float64, L932)"),
        "fc_rows": Hyperparameter("first", f"{HYBRID} L371–375: 'first' non-zero bias-gradient row; 'all': "
                                           "copa's least squares over every usable row"),
        "gradient_rows": Hyperparameter("exact", "ours: 'exact' K(δ); 'circ_rep_grad' reproduces hybrid.py's "
                                                 "circulant_rep.py L97–144 (last stride-residue rows/columns "
                                                 "dropped at padded strided layers: a bug)"),
        "solver": Hyperparameter("lstsq", f"{HYBRID} L524: np.linalg.lstsq → 'lstsq' (LAPACK gelsd, minimum-norm); "
                                          "'normal': Gram Cholesky (faster, same on consistent systems)"),
    }

    def validate(self):
        check_solver(self.hp["solver"])
        choices = {"precision": tuple(PRECISIONS), "fc_rows": FC_ROWS, "gradient_rows": GRADIENT_ROWS}
        for key, accepted in choices.items():
            if self.hp[key] not in accepted:
                raise InvalidSpecError(f"{key}={self.hp[key]!r} is invalid: accepted are "
                                       f"{', '.join(repr(a) for a in accepted)}")
        if not self.hp["lr"] > 0:
            raise InvalidSpecError(f"lr={self.hp['lr']!r} is invalid: expected > 0")
        if not 0 < self.hp["tanh_clip"] < 1:
            raise InvalidSpecError(f"tanh_clip={self.hp['tanh_clip']!r} is invalid: expected 0 < tanh_clip < 1")

    def applicable(self, observation):
        return chain_problem(observation) or super().applicable(observation)

    def schedule(self, index: int) -> dict[str, Any]:
        """Steps and weights of layer ``index``'s stage (0 = image; hybrid.py L604–641)."""
        key = "image" if index == 0 else "layer1" if index == 1 else "deeper"
        return {"steps": self.hp[f"steps_{key}"], "cos": self.hp[f"gm_weight_{key}"],
                "tv": self.hp[f"tv_weight_{key}"], "linear": self.hp[f"linear_weight_{key}"]}

    def _inverse(self, act: nn.Module, y: Tensor) -> Tensor:
        if getattr(act, "name", None) == "tanh":  # hybrid.py L87–88
            clip = self.hp["tanh_clip"]
            return torch.atanh(y.clamp(-clip, clip))
        return act.inverse(y)

    def reconstruct(self, observation, generator):
        return self.reconstruct_batch([observation], [generator])[0]

    def reconstruct_batch(self, observations, generators):
        """B instances of one model: the linear algebra of each layer per instance, its gradient-matching stage
        for all of them in one vectorised Adam run (:class:`_LayerObjective`; Adam is elementwise, so each
        instance follows its own trajectory). The attack ignores the generators (it is deterministic)."""
        start = time.perf_counter()
        ctxs = [chain_context(o) for o in observations]  # checks the chain; float64 model copy and observed gradients
        if any(o.labels is None for o in observations):
            raise NotApplicableError("hybrid needs the label (gradient matching uses it)")
        ctx = ctxs[0]
        layers, acts = ctx.layers, ctx.activations
        labels = torch.cat([o.labels for o in observations]).to(ctx.model.weight_layers[0].weight.device)
        dtype = PRECISIONS[self.hp["precision"]]
        last = len(layers) - 1
        # 1. the final Linear layer (L579–585)
        x_next, grad_x = [], []
        for c in ctxs:
            gw, gb = c.grads[last]
            x_next.append(_first_row_fc_input(gw, gb) if self.hp["fc_rows"] == "first"
                          else fc_input_from_gradients(gw, gb))
            grad_x.append(gb.reshape(-1) @ layers[last].weight)  # ∂ℓ/∂x of the FC input (L366)
        if last == 0:
            return [Reconstruction(images=x.reshape(1, *ctx.input_shapes[0]).to(o.dtype), labels=o.labels,
                                   forward_evals=0, gradient_evals=0,
                                   info={"layers": [], "seconds_total": time.perf_counter() - start})
                    for o, x in zip(observations, x_next)]
        previous = ConvGeometry.from_conv(layers[last - 1], ctx.input_shapes[last - 1][-2:])
        x_next = [x.reshape(previous.out_channels, *previous.output) for x in x_next]
        grad_x = [g.reshape(x.shape) for g, x in zip(grad_x, x_next)]
        infos, loss = [[] for _ in ctxs], [None] * len(ctxs)
        evaluations = 0
        # 2. every convolution, backwards (L588–644)
        for i in range(last - 1, -1, -1):
            layer_start = time.perf_counter()
            module, act = layers[i], acts[i]
            geometry = ConvGeometry.from_conv(module, ctx.input_shapes[i][-2:])
            keep = (_residue_keep(geometry, torch.float64, module.weight.device)
                    if self.hp["gradient_rows"] == "circ_rep_grad" else None)
            zs, deltas, grads_below, starts, solves = [], [], [], [], []
            for b, c in enumerate(ctxs):
                z = self._inverse(act, x_next[b])                                # L590
                delta = act.derivative(z) * grad_x[b]                            # L596–597
                grads_below.append(input_gradient(delta, module.weight, geometry))  # L593–594, before the correction
                x_ls, solve = self._least_squares(module, geometry, z, delta, c.grads[i][0], keep)
                zs.append(z), deltas.append(delta), solves.append(solve)
                starts.append(x_ls.reshape(geometry.in_channels, *geometry.input))
            schedule = self.schedule(i)
            objective = _LayerObjective(ctxs, i, geometry, zs, deltas, keep, observations[0].loss_fn, labels, dtype,
                                        schedule)
            x_i, stages = self._match(objective, torch.stack(starts).to(dtype), schedule["steps"],
                                      stage=f"layer {i} gradient matching")
            evaluations += objective.evaluations
            seconds = time.perf_counter() - layer_start
            for b, c in enumerate(ctxs):
                loss[b] = stages[b]["objective_final"]
                rhs_norm = float(torch.linalg.vector_norm(torch.cat([zs[b].reshape(-1), c.grads[i][0].reshape(-1)])))
                infos[b].append({"layer": i, "unknowns": geometry.interior_unknowns,
                                 "rows": geometry.forward_rows + geometry.gradient_rows, "rank": solves[b].rank,
                                 "solver": solves[b].method, "residual_least_squares": solves[b].residual_norm,
                                 "residual_relative": solves[b].residual_norm / rhs_norm if rhs_norm > 0 else 0.0,
                                 "steps": int(schedule["steps"]),
                                 "weights": {k: schedule[k] for k in ("cos", "tv", "linear")},
                                 **stages[b], "seconds": seconds})
            x_next = [x.to(torch.float64) for x in x_i]                      # L643: the next layer starts here
            grad_x = grads_below
        seconds = time.perf_counter() - start
        return [Reconstruction(images=x.reshape(1, *ctx.input_shapes[0]).to(o.dtype), labels=o.labels, loss=loss[b],
                               forward_evals=evaluations, gradient_evals=evaluations,
                               info={"layers": infos[b], "seconds_total": seconds})
                for b, (o, x) in enumerate(zip(observations, x_next))]

    def _least_squares(self, module: nn.Conv2d, geometry: ConvGeometry, z: Tensor, delta: Tensor, grad: Tensor,
                       keep: Tensor | None):
        """Minimum-norm least squares of ``[A; K(δ)] x = [z; g]`` over the unpadded input (L518–533)."""
        system = layer_system(module.weight, delta, z, grad, geometry, include_padding=False)
        interior = geometry.interior_mask(system.matrix.device).reshape(-1)
        matrix = system.matrix[:, interior]
        if keep is not None:
            rows = slice(geometry.forward_rows, geometry.forward_rows + geometry.gradient_rows)
            matrix[rows] = matrix[rows] * keep.reshape(1, -1)
        return solve_dense(matrix, system.rhs, method=self.hp["solver"])

    def _match(self, objective: _LayerObjective, x_start: Tensor, steps: int,
               stage: str = "gradient matching") -> tuple[Tensor, list[dict[str, Any]]]:
        """Adam from the least-squares solutions ``(B, C, H, W)``; the last iterate is returned (L810–846), with
        each instance's objective facts."""
        x = x_start.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([x], lr=self.hp["lr"])
        batch = x.shape[0]
        initial = lowest = None
        lowest_step = [0] * batch
        with progress.stage(stage, total=int(steps)) as bar:
            for step in range(int(steps)):
                optimizer.zero_grad()
                values, _ = objective(x)
                values.sum().backward()
                v = values.detach().tolist()
                if initial is None:
                    initial, lowest = list(v), list(v)
                for b in range(batch):
                    if v[b] < lowest[b]:
                        lowest[b], lowest_step[b] = v[b], step
                optimizer.step()
                bar.step(loss=sum(v) / batch)
        x = x.detach()
        final, terms = objective(x)
        final = final.tolist()
        if initial is None:
            initial, lowest, lowest_step = list(final), list(final), [int(steps)] * batch
        facts = []
        for b in range(batch):
            if final[b] < lowest[b]:
                lowest[b], lowest_step[b] = final[b], int(steps)
            facts.append({"objective_initial": initial[b], "objective_final": final[b],
                          "objective_lowest": lowest[b], "objective_lowest_step": lowest_step[b],
                          **{f"{k}_final": float(t[b]) for k, t in terms.items()}})
        return x, facts
