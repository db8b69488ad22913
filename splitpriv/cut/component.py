"""The lifecycle every component at the cut shares, whatever roles it plays."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from splitpriv.cut.noise import private_generator

if TYPE_CHECKING:
    from splitpriv.training import SplitLearningModule


class CutComponent(nn.Module):
    """A registered part of the cut pipeline. Its ``__init__`` parameters are its settings (config
    keys and command-line flags); every lifecycle hook is a no-op by default.

    A component with a private ``generator`` (see :func:`~splitpriv.cut.noise.private_generator`)
    gets a fresh one when copied or unpickled: two copies must never share a stream.
    """

    name: ClassVar[str] = "component"
    parameter_units: ClassVar[dict[str, str]] = {}  # parameter -> what its value means, for tables (e.g. 'per message')
    parameter_help: ClassVar[dict[str, str]] = {}  # parameter -> one line for its command-line flag's help
    precisions: ClassVar[tuple[str, ...] | None] = None  # the training precisions it works under; None: any
    poisson_sampling: ClassVar[bool] = False  # its train_loader draws each sample at each step with rate 1 / len(loader)

    def __getstate__(self):
        state = dict(self.__dict__)
        if isinstance(state.get("generator"), torch.Generator):
            state["generator"] = None
        return state

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if "generator" in state and state["generator"] is None:
            self.generator = private_generator(getattr(self, "noise_seed", None))

    def build(self, module: "SplitLearningModule", input_shape: tuple[int, ...]) -> None:
        """Called once the split module exists, in training and in ``load_run``: create parts whose
        shape depends on the cut (a decoder) or adapt the client (BatchNorm -> GroupNorm)."""

    def setup(self, module: "SplitLearningModule", private_train: torch.utils.data.Dataset) -> None:
        """Called once before training with the split module and the private training inputs."""

    def train_loader(self, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """The private training loader this component needs instead of ``loader`` (Poisson sampling
        for DP-SGD, no batch of one for distance correlation)."""
        return loader

    def resumed(self) -> None:
        """Training resumes from a checkpoint: what the interrupted epoch after it did has happened
        (e.g. messages were sent) but is not in the checkpoint."""

    def metrics(self) -> dict[str, float]:
        """Values to log (prefixed with the component's name), e.g. dcor, decoder MSE, spent epsilon."""
        return {}

    def config(self) -> dict[str, Any]:
        """The resolved parameters recorded in the run's config.yaml (e.g. a calibrated clip)."""
        return {}


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: what numeric parameters must be (NaN passes every '> 0'
    check, so it is refused here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class StepMean:
    """Mean of a per-step value since the last read: one epoch's mean when read at epoch end.

    Reading twice without new steps returns the same value (metrics are read at the end of the
    last epoch and again for metrics.json)."""

    def __init__(self):
        self.total, self.count, self.last = 0.0, 0, float("nan")

    def add(self, value: float) -> None:
        self.total += float(value)
        self.count += 1

    def read(self) -> float:
        if self.count:
            self.last = self.total / self.count
            self.total, self.count = 0.0, 0
        return self.last
