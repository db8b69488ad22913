"""Role: parameters at the cut trained with their own optimizer."""
from __future__ import annotations

import torch

from splitpriv.cut.component import CutComponent
from splitpriv.cut.context import CutContext


class TrainablePart(CutComponent):
    """Owns parameters trained apart from client and server (a simulated attacker's decoder, a
    bottleneck's codec). The training step zeroes their gradients before the client's backward, so
    what that backward leaves on them is this step's, then calls ``update`` after the client's step."""

    def configure_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def update(self, context: CutContext, optimizer: torch.optim.Optimizer) -> None:
        """One step of the part's own parameters."""
        raise NotImplementedError
