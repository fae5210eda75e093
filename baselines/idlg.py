"""iDLG — improved DLG (Zhao, Mopuri & Bilen, arXiv 2001.02610; github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients).

The label is read off the output layer's gradient (:func:`copa.attacks.label_from_gradients`:
the single negative entry of ``∂ℓ/∂b = softmax − onehot``, or without a bias iDLG's rule on the row
sums of ``∂ℓ/∂W``), then DLG runs with that label fixed: L-BFGS on the image only. iDLG's rule is for
one image; for a batch the labels come from the batch label-count rule, the generalisation of its
argument per class (:func:`copa.attacks.recover_labels`). On a FedAvg weight delta both read the mean
step gradient and DLG simulates the client's local steps (:mod:`baselines.dlg`).

It needs no label — that is its point. When the scenario does give the label, iDLG still extracts
one and reports it (``info["extracted_label"]``, ``info["extracted_matches_known"]``), but optimises
with the given label: the attacker then knows it for certain, and the rule can fail where it does
not hold (e.g. a saturated softmax, ``p_y = 1``). With the label known, iDLG is DLG with a fixed label.
"""

from __future__ import annotations

from copa.attacks import (
    STEP_CEILING,
    Hyperparameter,
    recover_labels,
    register_attack,
)
from copa.errors import NotApplicableError

from .dlg import DLG

IDLG_CODE = "PatrickZH/Improved-Deep-Leakage-from-Gradients iDLG.py"


@register_attack
class IDLG(DLG):
    """iDLG: the label from the output layer's gradient, then DLG with that label fixed."""

    name = "idlg"
    paper = "Zhao, Mopuri & Bilen, arXiv 2001.02610 (iDLG)"
    code = "github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients"
    description = "labels from the output layer's gradient, then DLG (L-BFGS, squared L2) with them fixed"
    needs_label = False
    hyperparameters = {
        "iterations": Hyperparameter(300, f"{IDLG_CODE}: Iteration = 300 optimizer.step(closure) calls",
                                     minimum=1, maximum=STEP_CEILING),
        "lr": Hyperparameter(1.0, f"{IDLG_CODE}: lr = 1.0 (torch.optim.LBFGS)", minimum=0.0),
        "max_iter": Hyperparameter(20, f"{IDLG_CODE}: torch.optim.LBFGS default max_iter=20 per step",
                                   minimum=1, maximum=10_000),
        "history_size": Hyperparameter(100, f"{IDLG_CODE}: torch.optim.LBFGS default history_size=100",
                                       minimum=1, maximum=10_000),
    }

    def applicable(self, observation):
        try:
            recover_labels(observation)
        except NotApplicableError as exc:
            return str(exc)
        return super().applicable(observation)

    def reconstruct_batch(self, observations, generators):
        labels, infos = [], []
        for observation in observations:
            extracted, info = recover_labels(observation)
            if observation.label_known:
                info["extracted_matches_known"] = bool((extracted == observation.labels).all())
                labels.append(observation.labels)
            else:
                labels.append(extracted)
            infos.append(info)
        return self.run(observations, generators, labels, infos=infos)
