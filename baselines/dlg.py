"""DLG — Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019; github.com/mit-han-lab/dlg).

A dummy image (randn) — and, when the label is unknown, dummy label logits (randn, softmax) — are
optimised jointly with L-BFGS so that their gradients match the observed ones in squared L2
distance summed over all parameter tensors (:func:`copa.attacks.squared_l2_distance`). Defaults
are those of the authors' ``main.py``: 300 ``optimizer.step(closure)`` calls of
``torch.optim.LBFGS`` with its defaults (lr 1, max_iter 20, history_size 100). With a known label,
the label is fixed (one-hot) and only the image is optimised.

FedAvg (``update_kinds`` includes ``"weight-delta"``): when the client trained K local SGD steps and
shared its weight delta, the dummy data's delta comes from replaying those steps
(:class:`copa.attacks.GradientModel`) and is matched in the same squared L2 distance — DLG's objective
on the update the client actually sent (as breaching's multi-step user; the DLG paper attacks gradients).

B independent instances (``reconstruct_batch``: e.g. B images under one global model) run as one
vectorised computation: per-instance gradients through ``torch.func.vmap``
(:class:`copa.attacks.GradientModel`) and :class:`copa.attacks.BatchedLBFGS`, which follows
``torch.optim.LBFGS`` per instance (its own history, step sizes and stopping tests); ``reconstruct``
is the batch of one. Every closure evaluation is one forward and one parameter gradient (plus the
backward through it); each is counted per instance. The returned iterate is the one with the lowest distance among all evaluated
iterates (the attack's own loss; non-finite values — L-BFGS on DLG's objective can diverge to NaN —
are never kept).
"""

from __future__ import annotations

import math

import torch

from copa.attacks import (
    STEP_CEILING,
    Attack,
    BatchedLBFGS,
    GradientModel,
    Hyperparameter,
    Reconstruction,
    progress,
    register_attack,
    squared_l2_distance,
)
from copa.errors import InvalidSpecError

DLG_CODE = "mit-han-lab/dlg main.py"


@register_attack
class DLG(Attack):
    """DLG: L-BFGS on the squared-L2 gradient distance, image and (unknown) soft label jointly."""

    name = "dlg"
    paper = "Zhu, Liu & Han, NeurIPS 2019 (Deep Leakage from Gradients)"
    code = "github.com/mit-han-lab/dlg"
    description = "L-BFGS on the squared-L2 gradient distance; soft label optimised jointly when unknown"
    needs_label = False
    batched = True
    update_kinds = ("gradient", "weight-delta")
    hyperparameters = {
        "iterations": Hyperparameter(300, f"{DLG_CODE}: for iters in range(300): optimizer.step(closure)",
                                     "L-BFGS steps (each up to max_iter closure evaluations)",
                                     minimum=1, maximum=STEP_CEILING),
        "lr": Hyperparameter(1.0, f"{DLG_CODE}: torch.optim.LBFGS default lr=1", minimum=0.0),
        "max_iter": Hyperparameter(20, f"{DLG_CODE}: torch.optim.LBFGS default max_iter=20 per step",
                                   minimum=1, maximum=10_000),
        "history_size": Hyperparameter(100, f"{DLG_CODE}: torch.optim.LBFGS default history_size=100",
                                       minimum=1, maximum=10_000),
    }

    def validate(self):  # the integers' ranges are declared above (Hyperparameter minimum / maximum)
        if not (math.isfinite(self.hp["lr"]) and self.hp["lr"] > 0):
            raise InvalidSpecError(f"lr={self.hp['lr']} is invalid for attack {self.name!r}: "
                                   f"accepted are finite numbers > 0")

    def reconstruct(self, observation, generator):
        return self.reconstruct_batch([observation], [generator])[0]

    def reconstruct_batch(self, observations, generators):
        """B independent instances at once: one vectorised L-BFGS (:class:`copa.attacks.BatchedLBFGS`)."""
        labels = [o.labels for o in observations]
        return self.run(observations, generators, labels, infos=[{} for _ in observations])

    def run(self, observations, generators, labels, infos):
        """Optimise every instance from its own randn draw; ``labels[b]`` fixed when given, else soft labels
        optimised jointly (all instances alike: all known or all unknown)."""
        first = observations[0]
        dtype, device = first.dtype, first.device
        known = labels[0] is not None
        gradient_model = GradientModel(observations)
        B = gradient_model.instances
        shape = (first.batch_size, *first.input_shape)
        draws = []
        for generator in generators:  # per instance: the image, then the label logits (the sequential order)
            image = torch.randn(shape, generator=generator, dtype=dtype)
            logits = None if known else torch.randn((first.batch_size, first.num_classes), generator=generator,
                                                    dtype=dtype)
            draws.append((image, logits))
        images = torch.stack([d[0] for d in draws]).to(device).requires_grad_(True)
        variables = [images]
        label_logits = None
        if not known:
            label_logits = torch.stack([d[1] for d in draws]).to(device).requires_grad_(True)
            variables.append(label_logits)
        fixed_labels = torch.stack(labels) if known else None
        optimizer = BatchedLBFGS(variables, lr=self.hp["lr"], max_iter=self.hp["max_iter"],
                                 history_size=self.hp["history_size"])
        best_loss = torch.full((B,), math.inf, dtype=torch.float64, device=device)
        best_images = images.detach().clone()
        best_logits = None if label_logits is None else label_logits.detach().clone()
        first_loss = torch.full((B,), math.nan, dtype=torch.float64, device=device)
        seen = torch.zeros(B, dtype=torch.bool, device=device)

        def objective(count):
            soft = fixed_labels if label_logits is None else torch.softmax(label_logits, dim=-1)
            return squared_l2_distance(gradient_model(images, soft, count=count), gradient_model.targets, batched=True)

        def keep_best(values, count):
            nonlocal best_images, best_logits
            values = values.to(torch.float64)
            better = count & (values < best_loss)  # NaN compares False: never kept
            best_loss.copy_(torch.where(better, values, best_loss))
            mask = better.reshape(-1, *[1] * (images.dim() - 1))
            best_images = torch.where(mask, images.detach(), best_images)
            if label_logits is not None:
                best_logits = torch.where(better[:, None, None], label_logits.detach(), best_logits)

        def closure(count):
            for v in variables:
                v.grad = None
            losses = objective(count)
            values = losses.detach()
            fresh = count & ~seen
            first_loss.copy_(torch.where(fresh, values.to(torch.float64), first_loss))
            seen.logical_or_(count)
            keep_best(values, count)
            losses.sum().backward()
            return values

        active = torch.ones(B, dtype=torch.bool, device=device)
        steps = [0] * B
        with progress.stage("L-BFGS", total=self.hp["iterations"]) as bar:
            for _ in range(self.hp["iterations"]):
                if not bool(active.any()):
                    break
                loss = optimizer.step(closure, active)
                for b in torch.nonzero(active).flatten().tolist():
                    steps[b] += 1
                finite = torch.isfinite(images.detach()).flatten(1).all(dim=1) & torch.isfinite(loss)
                active = active & finite  # a diverged instance stops: later steps cannot recover a finite iterate
                bar.step(loss=loss[active])
        diverged = ~active
        if bool(active.any()):  # the final iterate is not evaluated inside the last step
            with torch.no_grad():
                keep_best(objective(active), active)

        results = []
        for b, observation in enumerate(observations):
            info = infos[b]
            loss_b = float(best_loss[b])
            if known:
                labels_b = labels[b]
            else:
                labels_b = best_logits[b].argmax(dim=-1)
                info["soft_labels"] = torch.softmax(best_logits[b], dim=-1).tolist()
            initial = float(first_loss[b])
            info.update(steps=steps[b], diverged=bool(diverged[b]),
                        initial_loss=initial if math.isfinite(initial) else None)
            evaluations = gradient_model.evaluations[b]
            results.append(Reconstruction(images=best_images[b], labels=labels_b,
                                          loss=loss_b if math.isfinite(loss_b) else None,
                                          forward_evals=evaluations, gradient_evals=evaluations, info=info))
        return results
