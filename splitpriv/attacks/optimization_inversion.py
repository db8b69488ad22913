"""White-box regularised maximum likelihood inversion (rMLE, He et al., ACSAC 2019).

Given the client's weights (the deployed client's deterministic part f, defenses included) and an
observed message z, find the image x̂ in [0, 1] that explains it::

    x̂ = argmin_{x ∈ [0,1]^d}  D(f(normalize(x)), z)  +  λ_TV · TV(x)

    deterministic client:    D = ||f(x) - z||² / ||z||²      (relative, so one λ_TV suits every cut)
    noise n on top of f:     D = (1/m) Σ_k -log p_n(z_k - f(x)_k)   (m message elements)
                                = mean |z - f(x)| / b  (Laplace(b)),  mean (z - f(x))² / (2σ²)  (Gaussian(σ))
    TV(x) = mean_{c,i,j} |x_{c,i+1,j} - x_{c,i,j}| + |x_{c,i,j+1} - x_{c,i,j}|   (anisotropic)

with ``tv_weight`` = λ_TV. Against a randomised defense the attacker holding the weights knows the
mechanism, so it fits the noise-free client (the clipping included) to the observed message under
the noise's likelihood: a deterministic objective, optimised and stopped on without fresh draws.
Projected Adam from a neutral grey start (x = 0.5, no proxy data), clamped to [0, 1] after every
step, all observed messages optimised as one batch; it stops when the loss improves by less than
``tolerance`` (relative) over ``check_every`` steps.
"""
from __future__ import annotations

import torch

from splitpriv.attacks.base import Attack, AttackTarget, register_attack
from splitpriv.cut import is_number
from splitpriv.config import is_int
from splitpriv.errors import ConfigError


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV per image (see the module docstring), shape (N,)."""
    vertical = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).mean(1)
    horizontal = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).mean(1)
    return vertical + horizontal


@register_attack
class OptimizationInversion(Attack):
    name = "optimization_inversion"
    grants = frozenset({"weights"})

    def __init__(self, tv_weight: float = 0.05, lr: float = 0.05, max_steps: int = 2000, check_every: int = 50,
                 tolerance: float = 1e-3, start: float | str = 0.5):
        for key, value in (("max_steps", max_steps), ("check_every", check_every)):
            if not is_int(value) or not 1 <= value <= 10_000_000:
                raise ConfigError(key, value, "an integer in [1, 10,000,000]")
        for key, value, ok, allowed in (("tv_weight", tv_weight, lambda v: v >= 0, "a number >= 0"),
                                        ("lr", lr, lambda v: v > 0, "a number > 0"),
                                        ("tolerance", tolerance, lambda v: v >= 0, "a number >= 0")):
            if not is_number(value) or not ok(value):
                raise ConfigError(key, value, allowed)
        if start != "random" and not (is_number(start) and 0 <= start <= 1):
            raise ConfigError("start", start, "a grey level in [0, 1] or 'random'")
        self.tv_weight, self.lr, self.max_steps = float(tv_weight), float(lr), max_steps
        self.check_every, self.tolerance, self.start = check_every, float(tolerance), start
        self.target: AttackTarget | None = None
        self._steps = 0

    def fit(self, target: AttackTarget) -> None:
        self.target = target  # nothing to learn in advance: the optimisation runs per message

    def distance(self, predicted: torch.Tensor, messages: torch.Tensor) -> torch.Tensor:
        """D per image (module docstring): the noise's negative log-likelihood, or the relative squared error."""
        if self.target.noise is not None:
            return self.target.noise.negative_log_likelihood(messages - predicted).flatten(1).mean(1)
        scale = messages.flatten(1).pow(2).sum(1).clamp_min(1e-12)
        return (predicted - messages).flatten(1).pow(2).sum(1) / scale

    def reconstruct(self, messages: torch.Tensor) -> torch.Tensor:
        shape = (len(messages), *self.target.image_shape)
        if self.start == "random":
            images = torch.rand(shape, generator=torch.Generator().manual_seed(self.target.seed))
        else:
            images = torch.full(shape, self.start)
        images = images.to(messages.device).requires_grad_(True)
        optimizer = torch.optim.Adam([images], lr=self.lr)
        previous = float("inf")
        for step in range(1, self.max_steps + 1):
            distance = self.distance(self.target.client(self.target.normalize(images)), messages)
            loss = (distance + self.tv_weight * total_variation(images)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                images.clamp_(0, 1)
            if step % self.check_every == 0:
                if loss.item() > previous * (1 - self.tolerance):
                    break
                previous = loss.item()
        self._steps = step
        return images.detach()

    def config(self) -> dict:
        return {"tv_weight": self.tv_weight, "lr": self.lr, "max_steps": self.max_steps, "check_every": self.check_every,
                "tolerance": self.tolerance, "start": self.start}

    def summary(self) -> dict:
        return {"steps": self._steps}
