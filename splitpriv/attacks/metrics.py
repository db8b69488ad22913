"""Leakage metrics: how close reconstructions come to the private images.

Always on images in [0, 1] with an explicit ``data_range=1`` (torchmetrics): PSNR and SSIM on
normalised tensors would depend on the data set's mean and std, not on the leak.
"""
from __future__ import annotations

import torch
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.image import peak_signal_noise_ratio

from splitpriv.measures import bias_corrected_distance_correlation, ssim


def _check_unit_range(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4:
        raise ValueError(f"{name} must be images (N, C, H, W), got shape {tuple(images.shape)}")
    if images.min() < 0 or images.max() > 1:
        raise ValueError(f"{name} must lie in [0, 1] (got [{images.min():.3g}, {images.max():.3g}]); "
                         "map model inputs back with SplitData.to_unit_range first")


RECOGNISABLE_SSIM = 0.5  # per-image SSIM at or above which a reconstruction counts as recognisable


MAX_PSNR = 100.0  # dB: an image's MSE below 1e-10 (far under 8-bit quantisation's) counts as perfect


def reconstruction_metrics(reconstructions: torch.Tensor, originals: torch.Tensor,
                           recognisable_ssim: float = RECOGNISABLE_SSIM) -> dict[str, float]:
    """How close reconstructions come to the originals, each image in [0, 1]: the means over images,
    and how the leak spreads over them.

    * ``mse``, ``psnr`` (10 log10(1 / MSE_i) per image, at most ``MAX_PSNR`` dB so that one perfect
      image does not make the mean infinite, which JSON could not record; then averaged), ``ssim`` (a Gaussian window of
      :func:`~splitpriv.measures.ssim_window` taps, 11 or 7 on 8x8 digits, sigma = 1.5 * taps / 11);
    * ``mse_p10``, ``mse_p50``, ``mse_p90``: quantiles of the per-image MSE (the best-reconstructed
      tenth of the images has MSE at most ``mse_p10``);
    * ``recognisable_share``: the share of images whose own SSIM is at least ``recognisable_ssim``,
      so that a defense protecting most images but leaking some shows.
    """
    _check_unit_range(reconstructions, "reconstructions")
    _check_unit_range(originals, "originals")
    preds, target = reconstructions.detach().float(), originals.detach().float()
    per_image_mse = (preds - target).pow(2).flatten(1).mean(1)
    per_image_ssim = ssim(preds, target, reduction="none")
    quantiles = torch.quantile(per_image_mse, torch.tensor([0.1, 0.5, 0.9]))
    return {
        "mse": float(mean_squared_error(preds, target)),
        "psnr": float(peak_signal_noise_ratio(preds, target, data_range=1.0, dim=(1, 2, 3), reduction="none")
                      .clamp_max(MAX_PSNR).mean()),
        "ssim": float(per_image_ssim.mean()),
        "mse_p10": float(quantiles[0]), "mse_p50": float(quantiles[1]), "mse_p90": float(quantiles[2]),
        "recognisable_share": float((per_image_ssim >= recognisable_ssim).float().mean()),
    }


# metric -> whether the attacker wants it small (min) or large (max)
LEAKAGE_METRICS = {"mse": min, "psnr": max, "ssim": max, "classifier_accuracy": max, "recognisable_share": max,
                   "mse_p10": min}


def worst_case(per_attack: dict[str, dict[str, float]]) -> dict[str, float | str]:
    """The strongest attacker on each metric: lowest MSE, highest PSNR, highest SSIM, highest
    semantic leakage, largest recognisable share, lowest 10th-percentile MSE; each may come from a
    different attack, so each names its attack."""
    if not per_attack:
        raise ValueError("worst case of no attacks")
    worst: dict[str, float | str] = {}
    for metric, pick in LEAKAGE_METRICS.items():
        candidates = {label: m[metric] for label, m in per_attack.items() if m.get(metric) is not None}
        if candidates:
            label = pick(candidates, key=candidates.get)
            worst[metric], worst[f"{metric}_attack"] = candidates[label], label
    return worst


@torch.no_grad()
def message_dcor(inputs: torch.Tensor, messages: torch.Tensor) -> float:
    """The bias-corrected squared distance correlation R*²(x, message) of the deployed client over
    one batch (:func:`splitpriv.measures.bias_corrected_distance_correlation`; O(n²) memory)."""
    return float(bias_corrected_distance_correlation(inputs.flatten(1).double(), messages.flatten(1).double()))
