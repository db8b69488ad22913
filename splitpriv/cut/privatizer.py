"""Role: privatize how the client trains (its loader and its optimizer)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from splitpriv.cut.component import CutComponent

if TYPE_CHECKING:
    from splitpriv.training import SplitLearningModule


class TrainingPrivatizer(CutComponent):
    """Wraps the client's training as Opacus's ``PrivacyEngine.make_private`` does: the private
    loader (``train_loader``) and the client's optimizer (``configure_client``); ``teardown``
    removes what only training needed once it ends (e.g. per-sample gradient hooks)."""

    def configure_client(self, module: "SplitLearningModule", optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The client's optimizer to use instead of ``optimizer``."""
        raise NotImplementedError

    def teardown(self, module: "SplitLearningModule") -> None:
        """Training has ended."""
