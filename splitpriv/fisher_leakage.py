"""Fisher information leakage of a client's messages (dFIL; Maeng, Guo, Hazelwood and Suh, "Bounding
the Invertibility of Privacy-Preserving Instance Encoding Using Fisher Information", NeurIPS 2023).

A message ``m = f(x) + n`` with ``n`` i.i.d. noise whose Fisher information about its location is
``1 / s^2`` per element (Gaussian N(0, sigma^2): s = sigma; Laplace(0, b): s = b) carries the Fisher
information matrix about the input ``x`` (d elements)::

    I(x) = J_f(x)^T J_f(x) / s^2          dFIL(x) = tr(I(x)) / d

and every unbiased reconstruction ``x_hat(m)`` has  E ||x_hat - x||^2 / d  >=  1 / dFIL(x)  (the
Cramer-Rao bound, tr(I^-1) / d >= d / tr(I) by the arithmetic-harmonic mean inequality on I's
eigenvalues). Here f = ``client`` (the deterministic part, clipping included), s = ``noise_scale``.
For a client without noise the bound is void, and ||J_f||_F^2 / d ranks how much the message moves
with its input. The trace is estimated as tr(J^T J) = E_v ||J v||^2 with v ~ N(0, I_d)
(Hutchinson), each term one Jacobian-vector product.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp


def jacobian_norm_sq(client: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, probes: int = 16,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """||J_f(x)||_F^2 per sample of ``inputs`` (N, ...), the mean of ``probes`` Hutchinson terms.
    ``client`` must treat samples independently (a module in eval mode)."""
    total = torch.zeros(len(inputs), dtype=torch.float64, device=inputs.device)
    with torch.no_grad():  # forward-mode only: no graph for the parameters' gradients
        for _ in range(probes):
            direction = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype).to(inputs.device)
            _, tangent = jvp(client, (inputs,), (direction,))
            total += tangent.flatten(1).double().square().sum(1)
    return total / probes


def dfil(client: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, noise_scale: float, probes: int = 16,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """dFIL(x) = ||J_f(x)||_F^2 / (s^2 d) per sample, s = ``noise_scale``, d = the input's elements."""
    if not noise_scale > 0:
        raise ValueError(f"noise_scale must be > 0, got {noise_scale}")
    elements = inputs[0].numel()
    return jacobian_norm_sq(client, inputs, probes, generator) / (noise_scale ** 2 * elements)


def mse_lower_bound(fisher_leakage: torch.Tensor) -> torch.Tensor:
    """The least per-element MSE any unbiased attacker reaches: 1 / dFIL."""
    return 1.0 / fisher_leakage
