"""Clipped differentially private noise on the message (the survey's perturbation tau, Sec. 3.2.1).

Each sample's message is clipped, then noised, in training *and* at inference::

    x' = x / max(1, ||x||_p / C)          (per sample; p = 1 for Laplace, p = 2 for Gaussian)
    m  = x' + noise,                      optionally clamped to [-lambda, lambda] (``output_bound``)

Two neighbouring inputs give clipped messages at most ``Delta_p = 2C`` apart, so each message
sent is one query of an (epsilon, delta)-DP mechanism *for the input it encodes*:

* Laplace (delta = 0): i.i.d. Laplace(0, b) noise per element with ``b = Delta_1 / epsilon``.
* Gaussian: i.i.d. N(0, sigma^2) noise with sigma from the **analytic Gaussian mechanism** of
  Balle & Wang (ICML 2018, Theorem 8), valid for every epsilon > 0 (the classical
  ``sigma = Delta_2 sqrt(2 ln(1.25/delta)) / epsilon`` holds only for epsilon < 1 and is not used).

The clamp to ``[-lambda, lambda]`` is post-processing and keeps the guarantee. The guarantee is
per query: a sample sent k times (k epochs, plus inference) composes to at most (k eps, k delta).
It covers the forward message only, not the labels or the gradients the server returns.
"""
from __future__ import annotations

import functools
import math

import torch

from defenses.base import Defense, is_number
from splitpriv.errors import ConfigError

MECHANISMS = ("laplace", "gaussian")


def _normal_cdf(t: float) -> float:
    return 0.5 * math.erfc(-t / math.sqrt(2.0))


@functools.lru_cache(maxsize=64)  # one bisection per (epsilon, delta, clip), not per step
def analytic_gaussian_sigma(epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest sigma for which N(0, sigma^2) noise on a query of L2 sensitivity Delta is
    (epsilon, delta)-DP (Balle & Wang 2018, Theorem 8), by bisection on the exact condition::

        Phi(Delta / (2 sigma) - epsilon sigma / Delta) - e^epsilon Phi(-Delta / (2 sigma) - epsilon sigma / Delta) <= delta

    with Phi the standard normal CDF, Delta = ``sensitivity``. The left side decreases in sigma.
    """

    def privacy_loss_tail(sigma: float) -> float:
        a, b = sensitivity / (2 * sigma), epsilon * sigma / sensitivity
        return _normal_cdf(a - b) - math.exp(epsilon) * _normal_cdf(-a - b)

    low = high = sensitivity
    while privacy_loss_tail(high) > delta:
        high *= 2
    while privacy_loss_tail(low) <= delta:
        low /= 2
    for _ in range(200):  # relative precision far below float resolution
        middle = (low + high) / 2
        low, high = (low, middle) if privacy_loss_tail(middle) <= delta else (middle, high)
    return high


def clip_per_sample(message: torch.Tensor, clip: torch.Tensor | float, norm: float) -> torch.Tensor:
    """``x / max(1, ||x||_norm / C)`` for each sample (row) of ``message`` flattened."""
    norms = message.flatten(1).norm(p=norm, dim=1)
    scale = (norms / clip).clamp_min(1.0)
    return message / scale.view(-1, *([1] * (message.dim() - 1)))


class DPNoise(Defense):
    """Per-sample clipping then Laplace or Gaussian noise on every message, at training and inference.

    Args:
        mechanism: ``laplace`` (L1 clipping, pure epsilon-DP) or ``gaussian`` (L2 clipping, (epsilon, delta)-DP).
        epsilon: privacy budget per query, > 0.
        delta: failure probability per query, in (0, 1); Gaussian only (Laplace is delta = 0).
        clip: the clipping norm C > 0, or ``median``: the median per-sample norm of the client's
            messages over the private training data, measured before training and recorded in
            the run's config (``resolved.defenses``) and checkpoint.
        output_bound: lambda > 0 clamps the noisy message to [-lambda, lambda]; None: no clamp.
    """

    name = "dp_noise"
    active_at_inference = True
    randomized = True

    def __init__(self, mechanism: str = "laplace", epsilon: float = 8.0, delta: float = 1e-5,
                 clip: float | str = "median", output_bound: float | None = None):
        super().__init__()
        if mechanism not in MECHANISMS:
            raise ConfigError("mechanism", mechanism, f"one of {list(MECHANISMS)}")
        if not is_number(epsilon) or epsilon <= 0:
            raise ConfigError("epsilon", epsilon, "a number > 0 (the privacy budget per query)")
        if not is_number(delta) or not 0 < delta < 1:
            raise ConfigError("delta", delta, "a number in (0, 1), e.g. 1e-5")
        if clip != "median" and (not is_number(clip) or clip <= 0):
            raise ConfigError("clip", clip, "a number > 0 or 'median' (calibrated on the private training data)")
        if output_bound is not None and (not is_number(output_bound) or output_bound <= 0):
            raise ConfigError("output_bound", output_bound, "a number > 0 or null (no bound)")
        self.mechanism, self.epsilon, self.output_bound = mechanism, float(epsilon), output_bound
        self.delta = float(delta) if mechanism == "gaussian" else 0.0
        self.norm = 1 if mechanism == "laplace" else 2
        self.calibrate_clip = clip == "median"
        # a buffer, so that load_run restores a calibrated clip from the checkpoint
        self.register_buffer("clip", torch.tensor(float("nan") if self.calibrate_clip else float(clip)))
        self.queries = 0

    # ------------------------------------------------------------------ calibration
    @torch.no_grad()
    def setup(self, module, private_train) -> None:
        if not self.calibrate_clip:
            return
        was_training = module.client.training
        module.client.eval()
        loader = torch.utils.data.DataLoader(private_train, batch_size=512)
        norms = torch.cat([module.client(x).flatten(1).norm(p=self.norm, dim=1) for x, _ in loader])
        module.client.train(was_training)
        self.clip.fill_(norms.median().item())
        if not self.clip > 0:
            raise ConfigError("clip", "median", f"a number > 0: the median message norm on the private training data is {self.clip.item()}")

    @property
    def sensitivity(self) -> float:
        """Delta_p = 2C: two clipped messages are at most 2C apart in the clipping norm."""
        return 2 * float(self.clip)

    @property
    def noise_scale(self) -> float:
        """Laplace b = Delta_1 / epsilon, or the Gaussian sigma of the analytic mechanism."""
        if self.mechanism == "laplace":
            return self.sensitivity / self.epsilon
        return analytic_gaussian_sigma(self.epsilon, self.delta, self.sensitivity)

    # ------------------------------------------------------------------ the mechanism
    def transform(self, message: torch.Tensor) -> torch.Tensor:
        if torch.isnan(self.clip):
            raise RuntimeError("dp_noise: clip='median' is not calibrated yet; call setup() with the private training data")
        clipped = clip_per_sample(message, self.clip, self.norm)
        scale = self.noise_scale
        if self.mechanism == "laplace":
            noise = torch.distributions.Laplace(0.0, scale).sample(clipped.shape).to(clipped)
        else:
            noise = torch.randn_like(clipped) * scale
        self.queries += len(message)
        noisy = clipped + noise
        return noisy if self.output_bound is None else noisy.clamp(-self.output_bound, self.output_bound)

    # ------------------------------------------------------------------ reporting
    def metrics(self) -> dict[str, float]:
        return {"epsilon_per_query": self.epsilon, "delta_per_query": self.delta, "queries": float(self.queries),
                "clip": float(self.clip), "noise_scale": self.noise_scale}

    def config(self) -> dict:
        return {"mechanism": self.mechanism, "epsilon": self.epsilon, "delta": self.delta, "clip": float(self.clip),
                "clip_calibrated": self.calibrate_clip, "norm": f"L{self.norm}", "sensitivity": self.sensitivity,
                "noise_scale": self.noise_scale, "output_bound": self.output_bound}
