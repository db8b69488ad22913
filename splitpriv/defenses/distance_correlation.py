"""NoPeek: decorrelate the message from the input (Vepakomma et al., 2020).

The client minimises ``w_CE * CE(y_hat, y) + w_dcor * DCor(x, z)`` where ``x`` is the flattened
input batch and ``z`` the flattened message, so the server receives activations that still
predict the label but whose geometry says little about the raw input. DCor is the V-statistic
NoPeek trains on (:func:`splitpriv.measures.distance_correlation`); leakage is reported with the
bias-corrected estimator instead.
"""
from __future__ import annotations

import logging

import torch

from splitpriv.cut import ClientLossTerm, CutContext, StepMean, is_number
from splitpriv.defenses.base import Defense, register_defense
from splitpriv.errors import ConfigError
from splitpriv.measures import distance_correlation

log = logging.getLogger("splitpriv")


@register_defense
class DistanceCorrelation(Defense, ClientLossTerm):
    """NoPeek regulariser: adds ``weight * DCor(x, message)`` to the client's objective.

    The cross-entropy enters with weight w_CE = 1 (the server's gradient), so ``weight`` is
    w_dcor / w_CE. Training-time only: the deployed client sends its plain activations.
    """

    name = "distance_correlation"
    parameter_units = {"weight": "w_dcor / w_CE"}
    parameter_help = {"weight": "privacy term weight w_dcor / w_CE, >= 0"}

    def __init__(self, weight: float = 0.5):
        super().__init__()
        if not is_number(weight) or weight < 0:
            raise ConfigError("weight", weight, "a number >= 0 (w_dcor relative to the cross-entropy)")
        self.weight = float(weight)
        self._dcor = StepMean()

    def train_loader(self, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """dCor needs two samples per batch: refuse batches of one, and drop an epoch's last batch when
        it would hold a single sample (a different one each epoch, the order being reshuffled)."""
        if loader.batch_size is None or loader.batch_size < 2:
            raise ConfigError("training.batch_size", loader.batch_size,
                              "an integer >= 2 with distance_correlation (dCor needs two samples per batch)")
        if len(loader.dataset) % loader.batch_size != 1 or loader.drop_last:
            return loader
        log.info("distance_correlation: the last batch of each epoch would hold 1 sample, which dCor cannot use: dropped")
        return torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                                           drop_last=True, generator=loader.generator)

    def client_loss(self, context: CutContext) -> torch.Tensor | None:
        dcor = distance_correlation(context.inputs, context.message)
        self._dcor.add(dcor.detach())
        return self.weight * dcor

    def metrics(self) -> dict[str, float]:
        return {"dcor": self._dcor.read()}

    def config(self) -> dict:
        return {"weight": self.weight}
