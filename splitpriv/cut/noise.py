"""The randomness of a randomised transform: its distribution, and a generator no attacker can replay."""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseModel:
    """The distribution of the noise a randomised transform adds to each element of the message:
    ``laplace`` with scale b, or ``gaussian`` with standard deviation sigma (``scale``)."""

    family: str
    scale: float

    def negative_log_likelihood(self, residual: torch.Tensor) -> torch.Tensor:
        """-log p(residual) per element, up to a constant: |r| / b (Laplace) or r² / (2 sigma²) (Gaussian)."""
        if self.family == "laplace":
            return residual.abs() / self.scale
        return residual.pow(2) / (2 * self.scale ** 2)


def private_generator(seed: int | None = None) -> torch.Generator:
    """A generator for a component's randomness, seeded from the operating system's entropy unless
    ``seed`` fixes it. Never the global RNG: an attacker who knows the run's public seed could
    reseed it and replay the noise."""
    return torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
