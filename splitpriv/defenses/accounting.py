"""The privacy of one person's sample over every release of it, composed by a real accountant.

A per-message guarantee (one message is (epsilon, delta)-DP for the input it encodes) says little
about a person whose sample is sent k times: once per training epoch, and again whenever the
deployed client sends it. The k releases compose adaptively; the privacy-loss-distribution (PLD)
accountant of ``dp-accounting`` (Meiser & Mohammadi 2018; Doroshenko et al. 2022) gives the
smallest epsilon it can certify for k uses of the mechanism at a total delta, far below k * epsilon
for Gaussian noise.

Mechanisms, with the noise multiplier z = noise scale / sensitivity:

* ``laplace``: Laplace(0, b) noise per element on an L1 sensitivity Delta_1, z = b / Delta_1 =
  1 / epsilon_message. dp-accounting's Laplace PLD is the one-dimensional mechanism; a shift of
  L1 norm Delta_1 concentrated in one coordinate is the worst case over d coordinates (the privacy
  loss is a sum of independent bounded per-coordinate terms; checked numerically in the tests).
* ``gaussian``: N(0, sigma^2) per element on an L2 sensitivity Delta_2, z = sigma / Delta_2
  (rotation invariant, so exact in any dimension).

Under Poisson sampling (``dp_sgd``'s loader draws each sample with probability q at every step)
the number of releases K of one sample is random, K ~ Binomial(steps, q): see
:func:`sampled_composed_epsilon`.

The discretisation is pessimistic: the epsilon returned is an upper bound.
"""
from __future__ import annotations

import functools

import numpy as np
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant, privacy_loss_distribution
from scipy.special import log_ndtr, ndtr
from scipy.stats import binom

from splitpriv.errors import ConfigError

MECHANISM_EVENTS = {"laplace": dp_event.LaplaceDpEvent, "gaussian": dp_event.GaussianDpEvent}
OVERFLOW_EPSILON = 700.0
DISCRETISATION = 1e-2  # the PLD's privacy-loss grid: a 0.1 s bound within 0.01 % of a 1e-4 grid's here


def refuse_delta_above_one_in_n(key: str, delta: float, private_samples: int) -> None:
    """A delta per sample of 1/N or more allows a mechanism that publishes one whole sample at random."""
    if private_samples and delta >= 1 / private_samples:
        raise ConfigError(key, delta, f"a delta below 1 / (private training samples) = {1 / private_samples:.3g}: "
                          f"at 1/N or more a mechanism may publish one whole sample")


@functools.lru_cache(maxsize=256)
def composed_epsilon(mechanism: str, noise_multiplier: float, releases: int, delta: float) -> float:
    """epsilon such that ``releases`` adaptive uses of the mechanism are (epsilon, ``delta``)-DP.

    0 releases spend nothing. ``noise_multiplier`` z as in the module docstring."""
    if releases == 0:
        return 0.0
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=DISCRETISATION)
    accountant.compose(MECHANISM_EVENTS[mechanism](noise_multiplier), releases)
    return float(accountant.get_epsilon(delta))


def _composition_profile(mechanism: str, noise_multiplier: float, releases: int):
    """epsilons -> delta of ``releases`` uses of the mechanism. Gaussian: exact, as j uses with
    multiplier z are one Gaussian use with mu = sqrt(j) / z (Dong, Roth & Su 2022, Cor. 2.13)::

        delta(epsilon) = Phi(-epsilon / mu + mu / 2) - e^epsilon Phi(-epsilon / mu - mu / 2)

    (the product in log space, so that no e^epsilon overflows). Laplace: the PLD's, pessimistic."""
    if mechanism == "gaussian":
        mu = np.sqrt(releases) / noise_multiplier
        return lambda e: ndtr(-e / mu + mu / 2) - np.exp(e + log_ndtr(-e / mu - mu / 2))
    one = privacy_loss_distribution.from_laplace_mechanism(noise_multiplier, value_discretization_interval=DISCRETISATION)
    composed = one.self_compose(releases)

    def profile(epsilons: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            deltas = np.asarray(composed.get_delta_for_epsilon(epsilons))
        # the PLD computes e^epsilon, which overflows near 709 (giving nan or -1e308): no delta is claimed there
        return np.where((epsilons < OVERFLOW_EPSILON) & (deltas >= 0) & (deltas <= 1), deltas, 1.0)
    return profile


@functools.lru_cache(maxsize=64)
def sampled_composed_epsilon(mechanism: str, noise_multiplier: float, steps: int, sample_rate: float,
                             fixed_releases: int, delta: float) -> float:
    """epsilon such that a sample sent at each of ``steps`` steps with probability ``sample_rate``
    (Poisson sampling), and ``fixed_releases`` times more, is (epsilon, ``delta``)-DP.

    Its number of releases in training is K ~ Binomial(steps, q), q = ``sample_rate``. The attacker
    is assumed to tell which messages are the sample's (so K is seen and the sampling's secrecy
    amplifies nothing); K does not depend on the data, so the privacy profile is the mixture

        delta(epsilon) = sum_k P(K = k) delta_{k + r}(epsilon)

    with delta_j the j-fold composition's profile (:func:`_composition_profile`) and r =
    ``fixed_releases``. The mass of K above k_max (at most delta / 1000) is counted as delta 1, the
    mass below k_min as k_min releases (delta_j grows with j): both make the epsilon an upper bound.
    """
    upper_tail = delta / 1000
    k_min, k_max = int(binom.ppf(upper_tail, steps, sample_rate)), int(binom.isf(upper_tail, steps, sample_rate))
    if k_max + fixed_releases == 0:
        return 0.0
    counts = np.arange(k_min, k_max + 1)
    weights = binom.pmf(counts, steps, sample_rate)
    weights[0] = binom.cdf(k_min, steps, sample_rate)
    beyond = float(binom.sf(k_max, steps, sample_rate))
    profiles = [(w, _composition_profile(mechanism, noise_multiplier, int(k) + fixed_releases))
                for w, k in zip(weights, counts) if k + fixed_releases]

    def mixed_delta(epsilons: np.ndarray) -> np.ndarray:
        return beyond + sum(w * profile(epsilons) for w, profile in profiles)

    # delta_mix(e) <= delta_{k_max + r}(e) + beyond, so this composition's epsilon bounds the mixture's
    low, high = 0.0, composed_epsilon(mechanism, noise_multiplier, k_max + fixed_releases, delta - beyond)
    for _ in range(4):  # each round narrows [low, high] 32-fold
        grid = np.linspace(low, high, 33)
        holds = mixed_delta(grid) <= delta
        if not holds.any():
            break
        within = int(np.argmax(holds))
        low, high = grid[max(within - 1, 0)], grid[within]
    return float(high)
