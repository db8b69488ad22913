"""SSIM with the window it states, and the two distance correlations (training loss vs leakage number)."""
import dcor
import pytest
import torch
import torch.nn.functional as F

from splitpriv.attacks.metrics import message_dcor, reconstruction_metrics
from splitpriv.data import load_images
from splitpriv.measures import (bias_corrected_distance_correlation, distance_correlation, ssim, ssim_sigma,
                                ssim_window)

# ----------------------------------------------------------------------------- SSIM


def _reference_ssim(preds: torch.Tensor, target: torch.Tensor, window: int, sigma: float) -> float:
    """SSIM of Wang et al. (2004) with an explicit ``window``-tap Gaussian written out here,
    C1 = 0.01², C2 = 0.03², in the convention splitpriv reports (torchmetrics >= 1.4.2): the map
    reflect-padded to the image's size and averaged over every pixel (Wang et al.'s own code averages
    only the valid region), then over images."""
    taps = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    gauss = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = (gauss[:, None] * gauss[None, :] / gauss.sum() ** 2).view(1, 1, window, window)
    pad = (window - 1) // 2

    def local_mean(images):
        return F.conv2d(F.pad(images, (pad,) * 4, mode="reflect"), kernel)

    x, y = preds.double(), target.double()
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x, var_y = local_mean(x * x) - mu_x ** 2, local_mean(y * y) - mu_y ** 2
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x.clamp_min(0) + var_y.clamp_min(0) + c2))
    return float(ssim_map.flatten(1).mean(1).mean())


def _noisy_pair(size: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(12, 1, size, size, generator=generator)
    preds = (target + 0.2 * torch.randn(12, 1, size, size, generator=generator)).clamp(0, 1)
    return preds, target


@pytest.mark.parametrize("size, window", [(8, 7), (28, 11), (8, 5), (28, 3)])
def test_ssim_uses_the_window_it_states(size, window):
    preds, target = _noisy_pair(size)
    expected = _reference_ssim(preds, target, window, 1.5 * window / 11)
    assert float(ssim(preds, target, window)) == pytest.approx(expected, abs=1e-5)


def test_two_windows_give_different_ssim():
    """torchmetrics ignores kernel_size with a Gaussian window: every window used to score the same."""
    preds, target = _noisy_pair(28)
    values = {window: float(ssim(preds, target, window)) for window in (3, 7, 11)}
    assert len({round(v, 4) for v in values.values()}) == 3, values


def test_leakage_ssim_on_digits_uses_a_7_tap_window():
    preds, target = _noisy_pair(8)
    assert ssim_window(8) == 7 and ssim_window(28) == 11
    assert reconstruction_metrics(preds, target)["ssim"] == pytest.approx(_reference_ssim(preds, target, 7, 1.5 * 7 / 11), abs=1e-5)


def test_a_window_no_gaussian_sigma_gives_is_refused():
    with pytest.raises(ValueError, match="taps"):
        ssim_sigma(4)


# ----------------------------------------------------------------------------- distance correlation


@pytest.mark.parametrize("batch, input_shape, message_shape, dtype", [
    (4, (3,), (4,), torch.float64), (64, (1, 8, 8), (32, 4, 4), torch.float32), (97, (20,), (5,), torch.float64)])
def test_both_distance_correlations_equal_the_dcor_package(batch, input_shape, message_shape, dtype):
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, *input_shape, generator=generator, dtype=dtype)
    z = torch.randn(batch, *message_shape, generator=generator, dtype=dtype) + x.flatten(1)[:, :1].view(-1, *[1] * len(message_shape))
    x_np, z_np = x.flatten(1).double().numpy(), z.flatten(1).double().numpy()
    assert distance_correlation(x, z).item() == pytest.approx(dcor.distance_correlation(x_np, z_np), abs=1e-4)
    assert bias_corrected_distance_correlation(x.double(), z.double()).item() == pytest.approx(
        dcor.u_distance_correlation_sqr(x_np, z_np), abs=1e-9)


@pytest.fixture(scope="module")
def digit_vectors():
    return load_images("digits").images[:512].flatten(1).double() / 255


def test_bias_corrected_dcor_is_near_zero_on_independent_data_where_the_v_statistic_is_not(digit_vectors):
    """512 digits against independent 32x8x8 ReLU 'messages': the leakage number must read ~0."""
    messages = torch.relu(torch.randn(512, 32 * 8 * 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert abs(message_dcor(digit_vectors, messages)) < 0.02
    assert distance_correlation(digit_vectors, messages) > 0.4  # the V-statistic's bias at this size


def test_bias_corrected_dcor_is_near_one_on_linear_functions_of_the_input(digit_vectors):
    rotation, _ = torch.linalg.qr(torch.randn(64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    assert message_dcor(digit_vectors, 3 * digit_vectors @ rotation + 1) == pytest.approx(1.0, abs=1e-9)
    full_rank = torch.randn(64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert message_dcor(digit_vectors, digit_vectors @ full_rank) > 0.85


def test_distance_correlation_constant_input_is_zero_with_finite_gradient():
    x = torch.ones(16, 1, 8, 8, requires_grad=True)
    z = torch.randn(16, 10, requires_grad=True)
    value = distance_correlation(x, z)
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(x.grad).all() and torch.isfinite(z.grad).all()
    assert bias_corrected_distance_correlation(x.detach().double(), z.detach().double()).item() == 0.0


def test_distance_correlations_need_enough_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        distance_correlation(torch.randn(1, 4), torch.randn(1, 3))
    with pytest.raises(ValueError, match="at least 4 samples"):
        bias_corrected_distance_correlation(torch.randn(3, 4), torch.randn(3, 3))
