"""Leaderboard floors: attacks that ignore the gradients.

A real attack that does not beat these has learnt nothing from the gradients. Both output
images inside the valid box; with the label known they report it, otherwise they report none.
They read no update, so they take any kind (a gradient or a FedAvg weight delta).
"""

from __future__ import annotations

import torch

from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack


@register_attack
class Noise(Attack):
    """Uniform random images in [0, 1], mapped to the model's input space."""

    name = "noise"
    paper = "floor (no paper): uniform noise"
    description = "uniform random image in the valid pixel box; ignores the gradients"
    hyperparameters = {}
    update_kinds = ("gradient", "weight-delta")

    def reconstruct(self, observation, generator):
        shape = (observation.batch_size, *observation.input_shape)
        images01 = torch.rand(shape, generator=generator, dtype=observation.dtype).to(observation.device)
        return Reconstruction(images=observation.preprocess.apply(images01), labels=observation.labels,
                              forward_evals=0, gradient_evals=0)


@register_attack
class MeanImage(Attack):
    """A constant image: every pixel at ``level`` in [0, 1] (mid-grey by default)."""

    name = "mean-image"
    paper = "floor (no paper): constant image"
    description = "constant mid-grey image; ignores the gradients"
    update_kinds = ("gradient", "weight-delta")
    hyperparameters = {"level": Hyperparameter(0.5, "ours: the centre of the [0, 1] pixel range", minimum=0.0,
                                               maximum=1.0)}

    def reconstruct(self, observation, generator):
        shape = (observation.batch_size, *observation.input_shape)
        images01 = torch.full(shape, self.hp["level"], dtype=observation.dtype, device=observation.device)
        return Reconstruction(images=observation.preprocess.apply(images01), labels=observation.labels,
                              forward_evals=0, gradient_evals=0)
