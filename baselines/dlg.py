"""DLG — Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019; github.com/mit-han-lab/dlg).

A dummy image (randn) — and, when the label is unknown, dummy label logits (randn, softmax) — are
optimised jointly with L-BFGS so that their gradients match the observed ones in squared L2
distance summed over all parameter tensors (:func:`copa.gradmatch.squared_l2_distance`). Defaults
are those of the authors' ``main.py``: 300 ``optimizer.step(closure)`` calls of
``torch.optim.LBFGS`` with its defaults (lr 1, max_iter 20, history_size 100). With a known label,
the label is fixed (one-hot) and only the image is optimised.

Every closure evaluation is one forward and one parameter gradient (plus the backward through
it); each is counted. The returned iterate is the one with the lowest distance among all evaluated
iterates (the attack's own loss; non-finite values — L-BFGS on DLG's objective can diverge to NaN —
are never kept).
"""

from __future__ import annotations

import math

import torch

from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack
from copa.errors import InvalidSpecError
from copa.gradmatch import GradientModel, squared_l2_distance

DLG_CODE = "mit-han-lab/dlg main.py"


@register_attack
class DLG(Attack):
    """DLG: L-BFGS on the squared-L2 gradient distance, image and (unknown) soft label jointly."""

    name = "dlg"
    paper = "Zhu, Liu & Han, NeurIPS 2019 (Deep Leakage from Gradients)"
    code = "github.com/mit-han-lab/dlg"
    description = "L-BFGS on the squared-L2 gradient distance; soft label optimised jointly when unknown"
    needs_label = False
    hyperparameters = {
        "iterations": Hyperparameter(300, f"{DLG_CODE}: for iters in range(300): optimizer.step(closure)",
                                     "L-BFGS steps (each up to max_iter closure evaluations)"),
        "lr": Hyperparameter(1.0, f"{DLG_CODE}: torch.optim.LBFGS default lr=1"),
        "max_iter": Hyperparameter(20, f"{DLG_CODE}: torch.optim.LBFGS default max_iter=20 per step"),
        "history_size": Hyperparameter(100, f"{DLG_CODE}: torch.optim.LBFGS default history_size=100"),
    }

    def validate(self):
        for key in ("iterations", "max_iter", "history_size"):
            if self.hp[key] < 1:
                raise InvalidSpecError(f"{key}={self.hp[key]} is invalid for attack {self.name!r}: "
                                       f"accepted are integers ≥ 1")
        if not (math.isfinite(self.hp["lr"]) and self.hp["lr"] > 0):
            raise InvalidSpecError(f"lr={self.hp['lr']} is invalid for attack {self.name!r}: "
                                   f"accepted are finite numbers > 0")

    def reconstruct(self, observation, generator):
        return self.run(observation, generator, observation.labels, info={})

    def run(self, observation, generator, labels, info):
        """Optimise from randn; ``labels`` fixed when given, else soft labels optimised jointly."""
        dtype, device = observation.dtype, observation.device
        shape = (observation.batch_size, *observation.input_shape)
        images = torch.randn(shape, generator=generator, dtype=dtype).to(device).requires_grad_(True)
        variables = [images]
        label_logits = None
        if labels is None:
            label_logits = torch.randn((observation.batch_size, observation.num_classes), generator=generator,
                                       dtype=dtype).to(device).requires_grad_(True)
            variables.append(label_logits)
        targets = tuple(g.detach() for g in observation.gradients)
        gradient_model = GradientModel(observation)
        optimizer = torch.optim.LBFGS(variables, lr=self.hp["lr"], max_iter=self.hp["max_iter"],
                                      history_size=self.hp["history_size"])
        first: list[float] = []
        best = {"loss": math.inf, "images": images.detach().clone(),
                "logits": None if label_logits is None else label_logits.detach().clone()}

        def objective():
            soft = labels if label_logits is None else torch.softmax(label_logits, dim=-1)
            return squared_l2_distance(gradient_model(images, soft), targets)

        def closure():
            optimizer.zero_grad()
            loss = objective()
            value = float(loss.detach())
            first[:] = first or [value]
            if value < best["loss"]:  # NaN compares False: never kept
                best.update(loss=value, images=images.detach().clone(),
                            logits=None if label_logits is None else label_logits.detach().clone())
            loss.backward()
            return loss

        steps, diverged = 0, False
        for _ in range(self.hp["iterations"]):
            loss = optimizer.step(closure)
            steps += 1
            if not (torch.isfinite(images).all() and math.isfinite(float(loss.detach()))):
                diverged = True  # later steps cannot recover a finite iterate
                break
        if not diverged:  # the final iterate is not evaluated inside the last step
            value = float(objective().detach())
            if value < best["loss"]:
                best.update(loss=value, images=images.detach().clone(),
                            logits=None if label_logits is None else label_logits.detach().clone())
        if labels is None:
            labels = best["logits"].argmax(dim=-1)
            info["soft_labels"] = torch.softmax(best["logits"], dim=-1).tolist()
        info.update(steps=steps, diverged=diverged,
                    initial_loss=first[0] if first and math.isfinite(first[0]) else None)
        evaluations = gradient_model.evaluations
        return Reconstruction(images=best["images"], labels=labels,
                              loss=best["loss"] if math.isfinite(best["loss"]) else None,
                              forward_evals=evaluations, gradient_evals=evaluations, info=info)
