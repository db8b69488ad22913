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


def reconstruction_metrics(reconstructions: torch.Tensor, originals: torch.Tensor) -> dict[str, float]:
    """Mean MSE, PSNR (dB) and SSIM over the images, each image in [0, 1].

    PSNR = 10 log10(1 / MSE_i) per image i, then averaged; SSIM with a Gaussian window of
    :func:`~splitpriv.measures.ssim_window` taps (11, or 7 on 8x8 digits) and sigma = 1.5 * taps / 11,
    averaged over images.
    """
    _check_unit_range(reconstructions, "reconstructions")
    _check_unit_range(originals, "originals")
    preds, target = reconstructions.detach().float(), originals.detach().float()
    return {
        "mse": float(mean_squared_error(preds, target)),
        "psnr": float(peak_signal_noise_ratio(preds, target, data_range=1.0, dim=(1, 2, 3))),
        "ssim": float(ssim(preds, target)),
    }


def worst_case(per_attack: dict[str, dict[str, float]]) -> dict[str, float | str]:
    """The strongest attacker on each metric: lowest MSE, highest PSNR, highest SSIM, highest
    semantic leakage — each may come from a different attack, so each names its attack."""
    if not per_attack:
        raise ValueError("worst case of no attacks")
    worst: dict[str, float | str] = {}
    for metric, pick in (("mse", min), ("psnr", max), ("ssim", max), ("classifier_accuracy", max)):
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
