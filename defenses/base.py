"""The one small interface every defense at the cut implements.

A defense may
  (a) transform the message that crosses the cut (``transform``; ``active_at_inference`` says
      whether it also runs at validation/test/attack time),
  (b) add a loss term to the client's objective (``client_loss``),
  (c) own trainable parts with their own optimizer and update step (``configure_optimizer``,
      ``update``), e.g. a simulated attacker's decoder,
  (d) report its own metrics (``metrics``),
and prepare itself once the split model and the private training data are known (``setup``).

Adding a defense is one file with a ``Defense`` subclass plus one line in ``defenses/__init__.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from splitpriv.training import SplitLearningModule


@dataclass
class CutContext:
    """What one training step knows at the cut, handed to every defense hook."""

    inputs: torch.Tensor  # the client's input batch x (normalised)
    labels: torch.Tensor
    activation: torch.Tensor  # the client's output before any defense transform
    message: torch.Tensor  # what crosses the network (after every transform), still in the client's graph
    task_loss: torch.Tensor | None = None  # the server's cross-entropy on this batch (detached)


class Defense(nn.Module):
    """Base class: every hook is a no-op, so a defense overrides only what it does."""

    name: ClassVar[str] = "defense"
    active_at_inference: ClassVar[bool] = False
    randomized: ClassVar[bool] = False  # a fresh draw per query (attacks then use a noise-aware attacker)

    def setup(self, module: "SplitLearningModule", private_train: torch.utils.data.Dataset) -> None:
        """Called once before training with the split module and the private training inputs."""

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        """Map the message before it is sent (training, and inference if ``active_at_inference``)."""
        return message

    def client_loss(self, context: CutContext) -> torch.Tensor | None:
        """A term added to the client's objective, differentiable w.r.t. the client's parameters."""
        return None

    def configure_optimizer(self) -> torch.optim.Optimizer | None:
        """An optimizer for the defense's own trainable parts, separate from client and server."""
        return None

    def update(self, context: CutContext, optimizer: torch.optim.Optimizer | None) -> None:
        """One step of the defense's own trainable parts, after the client's step."""

    def metrics(self) -> dict[str, float]:
        """Values to log (prefixed with the defense name), e.g. dcor, decoder MSE, spent epsilon."""
        return {}

    def config(self) -> dict[str, Any]:
        """The resolved parameters recorded in the run's config.yaml (e.g. a calibrated clip)."""
        return {}
