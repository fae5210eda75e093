"""R-GAP (Zhu & Blaschko, "R-GAP: Recursive Gradient Attack on Privacy", ICLR 2021).

The closed-form recursion: the last layer's input from its gradients, then per convolution the
minimum-norm least-squares solution of ``[A_i; K_i(δ_i); P_i] x̃_i = [z_i; g_i; 0]``, backwards to
the image. It is :func:`copa.layerwise.solve_backwards` without refinement — the same linear-algebra
module as COPA, no second copy. The last layer uses the bias trick ``x = g_W[r]/g_b[r]`` (least
squares over rows) with cross-entropy over all classes; R-GAP's original code attacked a one-logit
network with a logistic loss, where that layer's input follows from the single row.

Batched (``reconstruct_batch``): B observations of one model are solved in lockstep by
:func:`copa.layerwise.solve_backwards_batch`, which builds each layer's weight-only blocks once.
"""

from __future__ import annotations

from copa.attacks import Attack, Hyperparameter, Reconstruction, register_attack
from copa.layerwise import chain_problem, check_solver, solve_backwards_batch


@register_attack
class RGAP(Attack):
    name = "rgap"
    paper = "Zhu & Blaschko, ICLR 2021 (R-GAP)"
    code = "github.com/JunyiZhu-AI/R-GAP"
    description = "closed-form layer-wise least squares, backwards from the output"
    batched = True
    hyperparameters = {
        "solver": Hyperparameter("normal", "ours: 'normal' (Gram Cholesky, fast) or 'lstsq' (LAPACK gelsd, "
                                           "R-GAP's np.linalg.lstsq)"),
    }

    def validate(self):
        check_solver(self.hp["solver"])

    def applicable(self, observation):
        return chain_problem(observation) or super().applicable(observation)

    def reconstruct(self, observation, generator):
        return self.reconstruct_batch([observation], [generator])[0]

    def reconstruct_batch(self, observations, generators):
        solved = solve_backwards_batch(observations, solver=self.hp["solver"])
        return [Reconstruction(images=x.to(o.dtype), labels=o.labels, forward_evals=0, gradient_evals=0,
                               info={"layers": ctx.layer_info}) for o, (x, ctx) in zip(observations, solved)]
