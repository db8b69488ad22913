"""dFIL (splitpriv.fisher_leakage): the Hutchinson trace against the exact Jacobian, and the bound
against an unbiased attacker that reaches it."""
from __future__ import annotations

import torch

from splitpriv.fisher_leakage import dfil, jacobian_norm_sq, mse_lower_bound
from splitpriv.models import build_model


def test_the_hutchinson_estimate_matches_the_exact_jacobian_of_a_real_client():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 8).eval()
    client, _ = model.split(model.default_cut())
    inputs = torch.randn(3, 1, 8, 8)
    exact = torch.stack([torch.autograd.functional.jacobian(lambda x: client(x[None])[0], x).flatten().square().sum()
                         for x in inputs]).double()
    estimate = jacobian_norm_sq(client, inputs, probes=400, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(estimate, exact, rtol=0.15)


def test_an_unbiased_attacker_meets_the_bound_for_an_orthogonal_encoder_and_never_beats_it():
    """m = W x + N(0, sigma^2): least squares x_hat = W^+ m is unbiased with per-element MSE
    sigma^2 tr((W^T W)^-1) / d, which equals 1 / dFIL when W has orthogonal columns of one length and
    exceeds it otherwise."""
    torch.manual_seed(0)
    d, k, sigma, draws = 12, 20, 0.3, 20000
    x = torch.rand(1, d, dtype=torch.float64)
    orthogonal = 2.0 * torch.linalg.qr(torch.randn(k, d, dtype=torch.float64))[0]
    skewed = torch.randn(k, d, dtype=torch.float64)
    for weights, tight in ((orthogonal, True), (skewed, False)):
        encoder = lambda inputs, w=weights: inputs @ w.T  # noqa: E731
        bound = float(mse_lower_bound(dfil(encoder, x, sigma, probes=2000, generator=torch.Generator().manual_seed(2))))
        messages = encoder(x) + sigma * torch.randn(draws, k, dtype=torch.float64)
        reconstructions = torch.linalg.lstsq(weights, messages.T).solution.T
        attack_mse = float((reconstructions - x).square().mean())
        assert attack_mse >= 0.9 * bound
        if tight:
            assert attack_mse <= 1.1 * bound
        else:
            assert attack_mse > 1.5 * bound
