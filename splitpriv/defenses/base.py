"""The one small interface every defense at the cut implements.

A defense may
  (a) transform the message that crosses the cut (``transform``; ``active_at_inference`` says
      whether it also runs at validation/test/attack time); a randomised one also names its
      deterministic part (``noise_free``) and its noise (``noise_model``), which a white-box
      attacker is granted, and draws from its own generator (:func:`private_generator`);
  (b) add a loss term to the client's objective (``client_loss``),
  (c) own trainable parts with their own optimizer and update step (``configure_optimizer``,
      ``update``), e.g. a simulated attacker's decoder,
  (d) report its own metrics (``metrics``; ``parameter_units`` says what its parameters mean in tables),
and prepare itself once the split model exists (``build``, also when a run is loaded) and once the
private training data is known (``setup``). DP-SGD also replaces the private training loader
(``train_loader``), wraps the client's optimizer (``configure_client``) and removes its hooks when
training ends (``teardown``); ``resumed`` hears that an interrupted training continues. All hooks
are no-ops by default.

Adding a defense is one file with a ``Defense`` subclass registered by ``@register_defense``; its
``__init__`` parameters become command-line flags (``splitpriv train --defense NAME --PARAMETER VALUE``).
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from splitpriv.registry import Registry

if TYPE_CHECKING:
    from splitpriv.training import SplitLearningModule


DEFENSES = Registry("defense")  # name -> Defense subclass
register_defense = DEFENSES.register


@dataclass
class CutContext:
    """What one training step knows at the cut, handed to every defense hook."""

    inputs: torch.Tensor  # the client's input batch x (normalised)
    labels: torch.Tensor
    activation: torch.Tensor  # the client's output before any defense transform
    message: torch.Tensor  # what crosses the network (after every transform), still in the client's graph
    task_loss: torch.Tensor | None = None  # the server's cross-entropy on this batch (detached)


@dataclass(frozen=True)
class NoiseModel:
    """The distribution of the noise a randomised defense adds to each element of the message:
    ``laplace`` with scale b, or ``gaussian`` with standard deviation sigma (``scale``)."""

    family: str
    scale: float

    def negative_log_likelihood(self, residual: torch.Tensor) -> torch.Tensor:
        """-log p(residual) per element, up to a constant: |r| / b (Laplace) or r² / (2 sigma²) (Gaussian)."""
        if self.family == "laplace":
            return residual.abs() / self.scale
        return residual.pow(2) / (2 * self.scale ** 2)


def private_generator(seed: int | None = None) -> torch.Generator:
    """A generator for a defense's randomness, seeded from the operating system's entropy unless
    ``seed`` fixes it. Never the global RNG: an attacker who knows the run's public seed could
    reseed it and replay the noise."""
    return torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)


class Defense(nn.Module):
    """Base class: every hook is a no-op, so a defense overrides only what it does."""

    name: ClassVar[str] = "defense"
    active_at_inference: ClassVar[bool] = False
    randomized: ClassVar[bool] = False  # a fresh draw per query (attacks then use a noise-aware attacker)
    parameter_units: ClassVar[dict[str, str]] = {}  # parameter -> what its value means, for tables (e.g. 'per message')
    parameter_help: ClassVar[dict[str, str]] = {}  # parameter -> one line for its command-line flag's help

    # a copied or unpickled defense draws its own noise: two copies must never share a stream
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
        """The private training loader to use instead of ``loader`` (e.g. Poisson sampling for DP-SGD)."""
        return loader

    def configure_client(self, module: "SplitLearningModule", optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The client's optimizer to use instead of ``optimizer`` (e.g. a per-sample-clipping DP optimizer)."""
        return optimizer

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        """Map the message before it is sent (training, and inference if ``active_at_inference``)."""
        return message

    def noise_free(self, message: torch.Tensor) -> torch.Tensor:
        """``transform`` without its random draw (a randomised defense's deterministic part, e.g. the
        clipping before the noise): what a white-box attacker can differentiate through."""
        return self.transform(message)

    def noise_model(self) -> NoiseModel | None:
        """The distribution of the noise ``transform`` adds on top of ``noise_free``; None if none."""
        return None

    def client_loss(self, context: CutContext) -> torch.Tensor | None:
        """A term added to the client's objective, differentiable w.r.t. the client's parameters."""
        return None

    def configure_optimizer(self) -> torch.optim.Optimizer | None:
        """An optimizer for the defense's own trainable parts, separate from client and server."""
        return None

    def update(self, context: CutContext, optimizer: torch.optim.Optimizer | None) -> None:
        """One step of the defense's own trainable parts, after the client's step."""

    def wire_bytes_per_sample(self, tensor: torch.Tensor, backward: bool = False) -> float | None:
        """Bytes one sample of ``tensor`` (the message, or its gradient when ``backward``) takes on
        the wire when this transform is the last to shape it, e.g. a compression's serialised
        size; None: sent as dense floats."""
        return None

    def resumed(self) -> None:
        """Training resumes from a checkpoint: what the interrupted epoch after it did has happened
        (e.g. messages were sent) but is not in the checkpoint."""

    def teardown(self, module: "SplitLearningModule") -> None:
        """Training has ended: release what only training needed (e.g. per-sample gradient hooks)."""

    def metrics(self) -> dict[str, float]:
        """Values to log (prefixed with the defense name), e.g. dcor, decoder MSE, spent epsilon."""
        return {}

    def config(self) -> dict[str, Any]:
        """The resolved parameters recorded in the run's config.yaml (e.g. a calibrated clip)."""
        return {}


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool: what numeric defense parameters must be (NaN passes every
    '> 0' check, so it is refused here)."""
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
