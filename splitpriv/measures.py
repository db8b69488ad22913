"""Measures shared by defenses and attacks: SSIM with the window it states, and distance correlation.

Both are core arithmetic (torch only), so that a defense's training term and an attack's score
use one definition.
"""
from __future__ import annotations

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

SSIM_WINDOW = 11  # Wang et al. (2004): an 11-tap Gaussian window with sigma 1.5
SSIM_SIGMA = 1.5


def ssim_window(image_size: int) -> int:
    """The largest odd window <= ``SSIM_WINDOW`` that fits the image (7 for 8x8 digits)."""
    return min(SSIM_WINDOW, image_size - 1 if image_size % 2 == 0 else image_size)


def ssim_sigma(window: int) -> float:
    """The Gaussian sigma that gives a ``window``-tap kernel: Wang et al.'s ratio sigma / window = 1.5 / 11.

    torchmetrics sizes a Gaussian window from sigma alone (taps = 2 * int(3.5 sigma + 0.5) + 1) and
    ignores ``kernel_size``, so the window is chosen through sigma; the assertion keeps the two in step.
    """
    sigma = SSIM_SIGMA * window / SSIM_WINDOW
    taps = 2 * int(3.5 * sigma + 0.5) + 1
    if taps != window:
        raise ValueError(f"no Gaussian SSIM window of {window} taps (sigma {sigma:.3f} gives {taps})")
    return sigma


def ssim(preds: torch.Tensor, target: torch.Tensor, window: int | None = None, reduction: str = "elementwise_mean") -> torch.Tensor:
    """SSIM of images in [0, 1] (``data_range`` 1) with a Gaussian window of ``window`` taps
    (default: :func:`ssim_window` of the image side) and sigma = 1.5 * window / 11.

    ``reduction='none'`` gives one value per image. Differentiable (the decoder defense trains on it).
    The SSIM map is averaged over every pixel, reflect-padded at the borders (torchmetrics >= 1.4.2;
    Wang et al.'s code averages only where the window lies inside the image).
    """
    window = window or ssim_window(min(target.shape[-2:]))
    return structural_similarity_index_measure(preds, target, data_range=1.0, sigma=ssim_sigma(window),
                                               gaussian_kernel=True, reduction=reduction)


# ----------------------------------------------------------------------------- distance correlation


def _pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """a_jk = ||x_j - x_k||_2 with x flattened per sample."""
    flat = x.reshape(len(x), -1)
    # cdist's matrix-multiply form: ~6x faster than the difference form on MNIST-sized messages
    # (error ~1e-5 in dCor), and its backward is 0, not NaN, at zero distance (constant inputs)
    return torch.cdist(flat, flat, compute_mode="use_mm_for_euclid_dist")


def _double_centered(distances: torch.Tensor) -> torch.Tensor:
    """A_jk = a_jk - a_j. - a_.k + a_.. (row, column and grand means)."""
    return distances - distances.mean(0, keepdim=True) - distances.mean(1, keepdim=True) + distances.mean()


def _u_centered(distances: torch.Tensor) -> torch.Tensor:
    """Ã_jk = a_jk - a_j·/(n-2) - a_·k/(n-2) + a_··/((n-1)(n-2)) for j != k, and Ã_jj = 0
    (Székely & Rizzo 2014, Eq. 3.1; a_j· the row sum)."""
    n = len(distances)
    rows, cols, total = distances.sum(1, keepdim=True), distances.sum(0, keepdim=True), distances.sum()
    centered = distances - rows / (n - 2) - cols / (n - 2) + total / ((n - 1) * (n - 2))
    return centered * (1 - torch.eye(n, dtype=distances.dtype, device=distances.device))


def _check_batches(x: torch.Tensor, z: torch.Tensor, minimum: int) -> None:
    if len(x) != len(z):
        raise ValueError(f"x and z must hold the same number of samples, got {len(x)} and {len(z)}")
    if len(x) < minimum:
        raise ValueError(f"this distance correlation needs a batch of at least {minimum} samples, got {len(x)}")


def distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Sample distance correlation dCor(x, z) of two batches (Székely et al., 2007), in [0, 1]:
    the V-statistic that NoPeek trains on (``dcor.distance_correlation``).

    With A, B the double-centred pairwise Euclidean distance matrices of the n samples of ``x``
    and ``z`` (each flattened per sample)::

        dCov²(x, z) = (1/n²) Σ_jk A_jk B_jk,   dVar²(x) = dCov²(x, x)
        dCor(x, z)  = sqrt( dCov²(x, z) / sqrt(dVar²(x) · dVar²(z)) ),   0 if either dVar² = 0

    Biased upwards on small batches of high-dimensional data (about 0.99 for independent MNIST
    images and 26x26x32 messages at n = 512), so it is a training loss, not a leakage number: see
    :func:`bias_corrected_distance_correlation`. Memory and time O(n²); constant inputs give 0 with
    a finite gradient.
    """
    _check_batches(x, z, 2)
    a, b = _double_centered(_pairwise_distances(x)), _double_centered(_pairwise_distances(z.to(x.dtype)))
    covariance = (a * b).mean()
    variance_product = (a * a).mean() * (b * b).mean()
    tiny = torch.finfo(a.dtype).tiny
    squared = torch.where(variance_product > 0, covariance / variance_product.clamp_min(tiny).sqrt(), torch.zeros_like(covariance))
    return squared.clamp_min(tiny).sqrt()


def bias_corrected_distance_correlation(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The bias-corrected squared distance correlation R*²(x, z) (Székely & Rizzo 2014), equal to
    ``dcor.u_distance_correlation_sqr``: about 0 for independent x and z at any dimension, 1 for
    z a similarity transform of x; it may be slightly negative.

    With Ã, B̃ the U-centred distance matrices (:func:`_u_centered`) of the n >= 4 samples::

        (Ã · B̃) = 1/(n(n-3)) Σ_{j≠k} Ã_jk B̃_jk
        R*²(x, z) = (Ã · B̃) / sqrt((Ã · Ã)(B̃ · B̃)),   0 if either product is 0
    """
    _check_batches(x, z, 4)
    a, b = _u_centered(_pairwise_distances(x)), _u_centered(_pairwise_distances(z.to(x.dtype)))
    covariance = (a * b).sum()  # the common factor 1/(n(n-3)) cancels
    variance_product = (a * a).sum() * (b * b).sum()
    if variance_product <= 0:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    return covariance / variance_product.sqrt()
