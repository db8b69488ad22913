"""NoPeek: decorrelate the message from the input (Vepakomma et al., 2020).

The client minimises ``w_CE * CE(y_hat, y) + w_dcor * DCor(x, z)`` where ``x`` is the flattened
input batch and ``z`` the flattened message, so the server receives activations that still
predict the label but whose geometry says little about the raw input. DCor is the V-statistic
NoPeek trains on (:func:`splitpriv.measures.distance_correlation`); leakage is reported with the
bias-corrected estimator instead.
"""
from __future__ import annotations

import torch

from defenses.base import CutContext, Defense, StepMean, is_number
from splitpriv.errors import ConfigError
from splitpriv.measures import distance_correlation


class DistanceCorrelation(Defense):
    """NoPeek regulariser: adds ``weight * DCor(x, message)`` to the client's objective.

    The cross-entropy enters with weight w_CE = 1 (the server's gradient), so ``weight`` is
    w_dcor / w_CE. Training-time only: the deployed client sends its plain activations.
    """

    name = "distance_correlation"
    parameter_units = {"weight": "w_dcor / w_CE"}

    def __init__(self, weight: float = 0.5):
        super().__init__()
        if not is_number(weight) or weight < 0:
            raise ConfigError("weight", weight, "a number >= 0 (w_dcor relative to the cross-entropy)")
        self.weight = float(weight)
        self._dcor = StepMean()

    def client_loss(self, context: CutContext) -> torch.Tensor | None:
        if len(context.inputs) < 2:  # the last batch of an epoch may hold one sample: nothing to decorrelate
            return None
        dcor = distance_correlation(context.inputs, context.message)
        self._dcor.add(dcor.detach())
        return self.weight * dcor

    def metrics(self) -> dict[str, float]:
        return {"dcor": self._dcor.read()}

    def config(self) -> dict:
        return {"weight": self.weight}
