"""What one training step knows at the cut."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CutContext:
    """One training step at the cut, handed to loss terms and trainable parts."""

    inputs: torch.Tensor  # the client's input batch x (normalised)
    labels: torch.Tensor
    activation: torch.Tensor  # the client's output before any transform
    message: torch.Tensor  # what crosses the network (after every transform), still in the client's graph
    task_loss: torch.Tensor | None = None  # the server's cross-entropy on this batch (detached)
