import torch
from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack


@register_attack
class GreyGuess(Attack):
    name = "grey-guess"
    paper = "my paper"
    hyperparameters = {"level": Hyperparameter(0.4, "my choice")}

    def reconstruct(self, observation, generator):
        shape = (observation.batch_size, *observation.input_shape)
        images01 = torch.full(shape, self.hp["level"], dtype=observation.dtype, device=observation.device)
        return Reconstruction(images=observation.preprocess.apply(images01), labels=observation.labels)
