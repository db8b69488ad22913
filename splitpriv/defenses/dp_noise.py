"""Clipped differentially private noise on the message (the survey's perturbation tau, Sec. 3.2.1).

Each sample's message is clipped, then noised, in training *and* at inference::

    x' = x / max(1, ||x||_p / C)          (per sample; p = 1 for Laplace, p = 2 for Gaussian)
    m  = x' + noise,                      optionally clamped to [-lambda, lambda] (``output_bound``)

Two neighbouring inputs give clipped messages at most ``Delta_p = 2C`` apart, so each message
sent is one use of an (epsilon, delta)-DP mechanism *for the input it encodes* (``epsilon`` and
``delta`` are these per-message parameters):

* Laplace (delta = 0): i.i.d. Laplace(0, b) noise per element with ``b = Delta_1 / epsilon``.
* Gaussian: i.i.d. N(0, sigma^2) noise with sigma from the **analytic Gaussian mechanism** of
  Balle & Wang (ICML 2018, Theorem 8), valid for every epsilon > 0 (the classical
  ``sigma = Delta_2 sqrt(2 ln(1.25/delta)) / epsilon`` holds only for epsilon < 1 and is not used).

**Per person.** A private training sample is sent once per epoch (the validation slice once per
validation pass), and ``inference_releases`` more times after training (the deployed client
sending the same person's data). :mod:`defenses.accounting` composes these k releases into the
``(epsilon, delta)`` per sample that the metrics report (``epsilon_per_sample`` at
``accounting_delta``; Laplace also ``epsilon_per_sample_pure`` = k epsilon at delta 0). Under
Poisson sampling (next to ``dp_sgd``) a sample is sent at each step with probability q, so its
count in training is random, K ~ Binomial(steps, q): the accounting takes the mixture over K
(:func:`~defenses.accounting.sampled_composed_epsilon`), and the pure bound every step's release.
What it protects: the content of each message about the input it encodes, given the client's
weights. It does not cover the labels the server receives, the gradients it returns, nor what
the client's weights learned from the private data (they train on it without privacy; add
``dp_sgd`` for that). A ``median`` clip is computed from the private data and not privatised.

The noise comes from the defense's own generator, seeded from the operating system's entropy
(``noise_seed`` fixes it for a reproducible experiment, never for a deployment): whoever knows
the run's public seed cannot replay it.
"""
from __future__ import annotations

import functools
import math

import torch

from splitpriv.defenses.accounting import composed_epsilon, refuse_delta_above_one_in_n, sampled_composed_epsilon
from splitpriv.cut import MessageTransform, NoiseModel, is_number, private_generator
from splitpriv.defenses.base import Defense, register_defense
from splitpriv.errors import ConfigError

MECHANISMS = ("laplace", "gaussian")
MAX_GAUSSIAN_EPSILON = 700.0
MIN_EPSILON = 1e-4
MIN_CLIP, MAX_CLIP = 1e-12, 1e12


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


@register_defense
class DPNoise(Defense, MessageTransform):
    """Per-sample clipping then Laplace or Gaussian noise on every message, at training and inference.

    Args:
        mechanism: ``laplace`` (L1 clipping, pure epsilon-DP) or ``gaussian`` (L2 clipping, (epsilon, delta)-DP).
        epsilon: privacy budget of one message, > 0.
        delta: failure probability of one message, in (0, 1); Gaussian only (Laplace is delta = 0).
        clip: the clipping norm C > 0, or ``median``: the median per-sample norm of the client's
            messages over the private training data, measured before training and recorded in
            the run's config (``resolved.defenses``) and checkpoint.
        output_bound: lambda > 0 clamps the noisy message to [-lambda, lambda]; None: no clamp.
        inference_releases: messages of one person's sample after training (deployment) that the
            per-sample accounting includes, >= 0.
        accounting_delta: the total delta per sample at which ``epsilon_per_sample`` is reported.
        noise_seed: None (operating-system entropy) or a seed for a reproducible experiment.
    """

    name = "dp_noise"
    active_at_inference = True
    randomized = True
    # under autocast the noise would be rounded to bfloat16 (8-bit mantissa): the gaps between
    # representable noise values are what floating-point attacks on DP exploit (Mironov 2012)
    precisions = ("32-true",)
    parameter_units = {"epsilon": "per message", "delta": "per message", "clip": "C"}
    parameter_help = {"mechanism": "laplace or gaussian", "epsilon": "privacy budget per message, > 0",
                      "delta": "delta per message in (0, 1), gaussian only",
                      "clip": "clipping norm C > 0, or 'median' (calibrated on the private data)",
                      "output_bound": "clamp the noisy message to [-bound, bound]",
                      "inference_releases": "messages released per sample after training (for per-sample epsilon)",
                      "accounting_delta": "delta of the per-sample epsilon over every release",
                      "noise_seed": "fix the noise generator (reproducible runs only: never share it)"}

    def __init__(self, mechanism: str = "laplace", epsilon: float = 8.0, delta: float = 1e-5,
                 clip: float | str = "median", output_bound: float | None = None, inference_releases: int = 1,
                 accounting_delta: float = 1e-5, noise_seed: int | None = None):
        super().__init__()
        if mechanism not in MECHANISMS:
            raise ConfigError("mechanism", mechanism, f"one of {list(MECHANISMS)}")
        if not is_number(epsilon) or epsilon < MIN_EPSILON:
            raise ConfigError("epsilon", epsilon, f"a finite number >= {MIN_EPSILON} (the privacy budget of one message; "
                              f"below it the noise is over 1e4 times the clipping norm)")
        if mechanism == "gaussian" and epsilon > MAX_GAUSSIAN_EPSILON:
            raise ConfigError("epsilon", epsilon, f"at most {MAX_GAUSSIAN_EPSILON} for the Gaussian mechanism (its "
                              f"calibration needs exp(epsilon), which overflows beyond; such noise is negligible anyway)")
        if not is_number(delta) or not 0 < delta < 1:
            raise ConfigError("delta", delta, "a number in (0, 1), e.g. 1e-5")
        if clip != "median" and (not is_number(clip) or not MIN_CLIP <= clip <= MAX_CLIP):
            raise ConfigError("clip", clip, f"a number in [{MIN_CLIP:g}, {MAX_CLIP:g}] or 'median' (calibrated on the "
                              f"private training data); it is stored in 32 bits")
        if output_bound is not None and (not is_number(output_bound) or not 0 < output_bound < math.inf):
            raise ConfigError("output_bound", output_bound, "a finite number > 0 or null (no bound)")
        if not isinstance(inference_releases, int) or isinstance(inference_releases, bool) or inference_releases < 0:
            raise ConfigError("inference_releases", inference_releases, "an integer >= 0 (messages per sample after training)")
        if not is_number(accounting_delta) or not 0 < accounting_delta < 1:
            raise ConfigError("accounting_delta", accounting_delta, "a number in (0, 1), below 1 / (private samples)")
        if noise_seed is not None and (not isinstance(noise_seed, int) or isinstance(noise_seed, bool) or noise_seed < 0):
            raise ConfigError("noise_seed", noise_seed, "null (operating-system entropy) or an integer >= 0")
        self.mechanism, self.epsilon, self.output_bound = mechanism, float(epsilon), output_bound
        self.delta = float(delta) if mechanism == "gaussian" else 0.0
        self.norm = 1 if mechanism == "laplace" else 2
        self.calibrate_clip = clip == "median"
        self.inference_releases, self.accounting_delta, self.noise_seed = inference_releases, float(accounting_delta), noise_seed
        # a buffer, so that load_run restores a calibrated clip from the checkpoint
        self.register_buffer("clip", torch.tensor(float("nan") if self.calibrate_clip else float(clip)))
        self.generator = private_generator(noise_seed)
        self.training_messages = 0  # messages of private training samples sent in training mode
        self.training_steps = 0  # batches of them
        self.private_train_size = 0
        self.poisson_sampled = False  # another component's train_loader draws each sample per step (dp_sgd)
        self.sample_rate: float | None = None  # that draw's rate q; None: each pass sends every sample once

    # ------------------------------------------------------------------ calibration
    @torch.no_grad()
    def setup(self, module, private_train) -> None:
        self.private_train_size = len(private_train)
        refuse_delta_above_one_in_n("accounting_delta", self.accounting_delta, len(private_train))
        self.poisson_sampled = any(component.poisson_sampling for component in module.cut_pipeline)
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

    def train_loader(self, loader: torch.utils.data.DataLoader) -> torch.utils.data.DataLoader:
        """Under Poisson sampling each step draws every sample with rate q = 1 / len(loader) (the
        loader before or after dp_sgd wraps it has the same length): the accounting needs q."""
        self.sample_rate = 1 / len(loader) if self.poisson_sampled else None
        return loader

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
    def noise_free(self, message: torch.Tensor) -> torch.Tensor:
        """The deterministic part: per-sample clipping."""
        if torch.isnan(self.clip):
            raise RuntimeError("dp_noise: clip='median' is not calibrated yet; call setup() with the private training data")
        return clip_per_sample(message, self.clip, self.norm)

    def noise_model(self) -> NoiseModel:
        return NoiseModel(self.mechanism, self.noise_scale)

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        clipped = self.noise_free(message)
        noise = self._draw(clipped.shape).to(clipped)
        if self.training:
            self.training_messages += len(message)
            self.training_steps += 1
        noisy = clipped + noise
        return noisy if self.output_bound is None else noisy.clamp(-self.output_bound, self.output_bound)

    def _draw(self, shape: torch.Size) -> torch.Tensor:
        """Noise from the defense's own generator: Laplace(0, b) = b (E1 - E2) with E1, E2 ~ Exp(1)."""
        scale = self.noise_scale
        if self.mechanism == "laplace":
            return scale * (torch.empty(shape).exponential_(generator=self.generator)
                            - torch.empty(shape).exponential_(generator=self.generator))
        return scale * torch.randn(shape, generator=self.generator)

    # ------------------------------------------------------------------ accounting
    @property
    def releases_per_sample(self) -> int:
        """Messages of one private sample so far: passes over the private training data (each sends
        every sample once), plus ``inference_releases``."""
        passes = math.ceil(self.training_messages / self.private_train_size) if self.private_train_size else 0
        return passes + self.inference_releases

    def epsilon_per_sample(self) -> float:
        """The composed epsilon of one person's sample over all its releases, at ``accounting_delta``.
        Under Poisson sampling: the larger of a training sample's (K ~ Binomial(steps, q) releases,
        then ``inference_releases``) and the validation slice's (once per epoch, then the same)."""
        multiplier = self.noise_scale / self.sensitivity
        if self.sample_rate is None:
            return composed_epsilon(self.mechanism, multiplier, self.releases_per_sample, self.accounting_delta)
        epochs = round(self.training_steps * self.sample_rate)
        return max(sampled_composed_epsilon(self.mechanism, multiplier, self.training_steps, self.sample_rate,
                                            self.inference_releases, self.accounting_delta),
                   composed_epsilon(self.mechanism, multiplier, epochs + self.inference_releases, self.accounting_delta))

    def epsilon_per_sample_pure(self) -> float:
        """Laplace at delta 0: epsilon times the most releases a sample can have (under Poisson
        sampling, one at every step)."""
        most = self.releases_per_sample if self.sample_rate is None else self.training_steps + self.inference_releases
        return self.epsilon * most

    def resumed(self) -> None:
        """The epoch interrupted after the checkpoint sent its messages already: count its pass."""
        self.training_messages += self.private_train_size
        if self.sample_rate is not None:
            self.training_steps += round(1 / self.sample_rate)

    # the accounting travels in checkpoints (a resumed run continues it); the generator's state
    # only when a seed fixed it (otherwise a resumed or reloaded run draws fresh entropy)
    def get_extra_state(self):
        state = {"training_messages": self.training_messages, "private_train_size": self.private_train_size,
                 "training_steps": self.training_steps, "sample_rate": self.sample_rate}
        if self.noise_seed is not None:
            state["generator"] = self.generator.get_state()
        return state

    def set_extra_state(self, state) -> None:
        self.training_messages, self.private_train_size = state["training_messages"], state["private_train_size"]
        self.training_steps, self.sample_rate = state.get("training_steps", 0), state.get("sample_rate")
        if "generator" in state and self.noise_seed is not None:
            self.generator.set_state(state["generator"])

    # ------------------------------------------------------------------ reporting
    def metrics(self) -> dict[str, float]:
        spent = {"epsilon_per_message": self.epsilon, "delta_per_message": self.delta,
                 "releases_per_sample": float(self.releases_per_sample),
                 "epsilon_per_sample": self.epsilon_per_sample(), "delta_per_sample": self.accounting_delta,
                 "messages": float(self.training_messages), "clip": float(self.clip), "noise_scale": self.noise_scale}
        if self.mechanism == "laplace":
            spent["epsilon_per_sample_pure"] = self.epsilon_per_sample_pure()
        if self.sample_rate is not None:
            spent["sample_rate"] = self.sample_rate
        return spent

    def config(self) -> dict:
        return {"mechanism": self.mechanism, "epsilon": self.epsilon, "delta": self.delta, "clip": float(self.clip),
                "clip_calibrated": self.calibrate_clip, "norm": f"L{self.norm}", "sensitivity": self.sensitivity,
                "noise_scale": self.noise_scale, "output_bound": self.output_bound,
                "inference_releases": self.inference_releases, "accounting_delta": self.accounting_delta,
                "noise_source": "operating-system entropy" if self.noise_seed is None else "fixed seed (experiment only)"}
