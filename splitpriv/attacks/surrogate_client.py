"""Passive inversion through a surrogate client (after PCAT, Gao & Zhang, USENIX Security 2023, and
FORA, Xu et al., CVPR 2024).

The honest-but-curious server neither queries the client nor knows its weights, but it trains the
server partition, knows the client's architecture, holds proxy data and sees the client's messages.
It trains a surrogate client f~ of the same architecture on its proxy images so that

    min_f~  w_task · CE(server(f~(x_p)), y_p)  +  w_mmd · MMD²_k(f~(x_p), z_obs)

the server (frozen, its own) classifies the surrogate's messages as it does the client's (PCAT's
pseudo-client), and the surrogate's messages are distributed like the observed ones z_obs (FORA's
feature-level matching; MMD² with a sum of Gaussian kernels k(a, b) = Σ_j exp(-||a - b||² / (2 s_j² m)),
s_j ∈ {2^-3 .. 2} times the median pairwise distance scale, m the message size). With ``w_task`` =
``task_weight`` and ``w_mmd`` = ``mmd_weight``; the task term needs proxy labels of the private classes
and is dropped otherwise. A decoder D then learns f~(x_p) -> x_p and decodes the observed messages of
the private test images: D(z). Unlike the papers' attackers, which train alongside the client during
training, this one attacks the trained client's messages after training.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import torch
import torch.nn.functional as F

from splitpriv.attacks.base import (Attack, AttackTarget, EarlyStopping, check_refinements, fit_with_early_stopping,
                                    holdout_split, register_attack)
from splitpriv.cut import is_number
from splitpriv.config import MAX_EPOCHS, is_int
from splitpriv.decoders import CAPACITIES, build_decoder
from splitpriv.errors import ConfigError

KERNEL_SCALES = (0.125, 0.25, 0.5, 1.0, 2.0)


def mmd2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Biased MMD² between two batches (flattened per sample) under a sum of Gaussian kernels whose
    widths are the scales of :data:`KERNEL_SCALES` times the mean squared distance of the pooled batch."""
    a, b = a.flatten(1), b.flatten(1)
    pooled = torch.cat([a, b])
    distances = torch.cdist(pooled, pooled).pow(2)
    bandwidth = distances.detach().mean().clamp_min(1e-12)
    kernel = sum(torch.exp(-distances / (2 * scale * bandwidth)) for scale in KERNEL_SCALES)
    n = len(a)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


@register_attack
class SurrogateClientInversion(Attack):
    name = "surrogate_client"
    grants = frozenset({"architecture", "server", "proxy"})

    def __init__(self, capacity: str = "large", surrogate_epochs: int = 30, task_weight: float = 1.0,
                 mmd_weight: float = 1.0, surrogate_lr: float = 1e-3, batch_size: int = 64, max_epochs: int = 500,
                 patience: int = 10, lr: float = 2e-3, refinements: int = 0):
        if capacity not in CAPACITIES:
            raise ConfigError("capacity", capacity, f"one of {sorted(CAPACITIES)}")
        for key, value in (("surrogate_epochs", surrogate_epochs), ("batch_size", batch_size), ("max_epochs", max_epochs),
                           ("patience", patience)):
            if not is_int(value) or not 1 <= value <= MAX_EPOCHS:
                raise ConfigError(key, value, f"an integer in [1, {MAX_EPOCHS:,}]")
        check_refinements(refinements)
        for key, value, positive in (("task_weight", task_weight, False), ("mmd_weight", mmd_weight, False),
                                     ("surrogate_lr", surrogate_lr, True), ("lr", lr, True)):
            if not is_number(value) or value < 0 or (positive and value == 0):
                raise ConfigError(key, value, "a number > 0" if positive else "a number >= 0")
        self.capacity, self.surrogate_epochs, self.batch_size = capacity, surrogate_epochs, batch_size
        self.task_weight, self.mmd_weight, self.surrogate_lr = float(task_weight), float(mmd_weight), float(surrogate_lr)
        # no refinements by default: the decoder learns the surrogate's messages, and refining it on them
        # did not lower its MSE on the client's (default digits sweep: as often higher as lower, CHANGELOG)
        self.stopping = EarlyStopping(max_epochs, patience, 1e-3, None, lr, 0.1, refinements=refinements)
        self.decoder = None
        self._summary: dict = {}

    @property
    def label(self) -> str:
        return f"{self.name}/{self.capacity}"

    def fit(self, target: AttackTarget) -> None:
        generator = torch.Generator().manual_seed(target.seed)
        torch.manual_seed(target.seed)
        surrogate = self._train_surrogate(target, generator)
        proxy = target.proxy
        with torch.no_grad():
            messages = torch.cat([surrogate(chunk) for chunk in proxy.inputs.split(512)])
        self.decoder = build_decoder(target.message_shape, target.image_shape, self.capacity).to(target.device)
        train_idx, holdout_idx = holdout_split(len(messages), self.stopping.holdout_fraction, generator)
        self._summary.update(fit_with_early_stopping(
            self.decoder, F.mse_loss, messages[train_idx], proxy.images[train_idx], messages[holdout_idx],
            proxy.images[holdout_idx], self.stopping, generator, self.progress))

    def _train_surrogate(self, target: AttackTarget, generator: torch.Generator) -> torch.nn.Module:
        surrogate, server, proxy, observed = target.architecture().to(target.device), target.server, target.proxy, target.observed
        server.eval()
        task_weight = self.task_weight if proxy.labels_are_private_classes else 0.0
        optimizer = torch.optim.Adam(surrogate.parameters(), lr=self.surrogate_lr)
        surrogate.train()
        for _ in range(self.surrogate_epochs):
            for batch in torch.randperm(len(proxy.inputs), generator=generator).split(self.batch_size):
                if len(batch) < 2:
                    continue
                messages = surrogate(proxy.inputs[batch])
                seen = observed[torch.randint(len(observed), (len(batch),), generator=generator)]
                loss = self.mmd_weight * mmd2(messages, seen)
                if task_weight:
                    loss = loss + task_weight * F.cross_entropy(server(messages), proxy.labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        surrogate.eval()
        with torch.no_grad():
            sample = proxy.inputs[:len(observed)]
            self._summary = {"surrogate_mmd2": float(mmd2(surrogate(sample), observed[:len(sample)])),
                             "task_term": bool(task_weight)}
        return surrogate

    def matching_steps(self, images_set_for: int, images_given: int) -> "SurrogateClientInversion":
        scaled = copy.copy(self)
        steps = lambda images: math.ceil(images / self.batch_size)  # noqa: E731 - the surrogate's epoch
        scaled.surrogate_epochs = max(1, round(self.surrogate_epochs * steps(images_set_for) / steps(images_given)))
        scaled.stopping = self.stopping.matching_steps(images_set_for, images_given)
        return scaled

    @torch.no_grad()
    def reconstruct(self, messages: torch.Tensor) -> torch.Tensor:
        return self.decoder(messages)

    def config(self) -> dict:
        return {"capacity": self.capacity, "surrogate_epochs": self.surrogate_epochs, "task_weight": self.task_weight,
                "mmd_weight": self.mmd_weight, "surrogate_lr": self.surrogate_lr, "batch_size": self.batch_size,
                **dataclasses.asdict(self.stopping)}

    def summary(self) -> dict:
        return dict(self._summary)
