"""iDLG — improved DLG (Zhao, Mopuri & Bilen, arXiv 2001.02610; github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients).

The label is read off the output layer's gradient (:func:`copa.attacks.label_from_gradients`:
the single negative entry of ``∂ℓ/∂b = softmax − onehot``, or without a bias iDLG's rule on the row
sums of ``∂ℓ/∂W``), then DLG runs with that label fixed: L-BFGS on the image only. Batch size 1.

It needs no label — that is its point. When the scenario does give the label, iDLG still extracts
one and reports it (``info["extracted_label"]``, ``info["extracted_matches_known"]``), but optimises
with the given label: the attacker then knows it for certain, and the rule can fail where it does
not hold (e.g. a saturated softmax, ``p_y = 1``). With the label known, iDLG is DLG with a fixed label.
"""

from __future__ import annotations

from copa.attacks import Hyperparameter, label_from_gradients, register_attack
from copa.errors import NotApplicableError

from .dlg import DLG

IDLG_CODE = "PatrickZH/Improved-Deep-Leakage-from-Gradients iDLG.py"


@register_attack
class IDLG(DLG):
    """iDLG: the label from the output layer's gradient, then DLG with that label fixed."""

    name = "idlg"
    paper = "Zhao, Mopuri & Bilen, arXiv 2001.02610 (iDLG)"
    code = "github.com/PatrickZH/Improved-Deep-Leakage-from-Gradients"
    description = "label from the output layer's gradient, then DLG (L-BFGS, squared L2) with it fixed; batch 1"
    needs_label = False
    hyperparameters = {
        "iterations": Hyperparameter(300, f"{IDLG_CODE}: Iteration = 300 optimizer.step(closure) calls"),
        "lr": Hyperparameter(1.0, f"{IDLG_CODE}: lr = 1.0 (torch.optim.LBFGS)"),
        "max_iter": Hyperparameter(20, f"{IDLG_CODE}: torch.optim.LBFGS default max_iter=20 per step"),
        "history_size": Hyperparameter(100, f"{IDLG_CODE}: torch.optim.LBFGS default history_size=100"),
    }

    def applicable(self, observation):
        try:
            label_from_gradients(observation)
        except NotApplicableError as exc:
            return str(exc)
        return super().applicable(observation)

    def reconstruct_batch(self, observations, generators):
        labels, infos = [], []
        for observation in observations:
            extracted, rule = label_from_gradients(observation)
            info = {"extracted_label": rule["label"], "label_rule": rule["rule"], "output_layer": rule["layer"],
                    "label_sign_unique": rule["unique_sign"]}
            if observation.label_known:
                info["extracted_matches_known"] = bool((extracted == observation.labels).all())
                labels.append(observation.labels)
            else:
                labels.append(extracted)
            infos.append(info)
        return self.run(observations, generators, labels, infos=infos)
