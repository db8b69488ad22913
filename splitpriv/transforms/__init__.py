"""Message transforms that are not defenses: compressions (``quantize``, ``topk``, ``bottleneck``)."""
from __future__ import annotations

from splitpriv.config import build_registered
from splitpriv.cut import MessageTransform
from splitpriv.transforms.base import TRANSFORMS, register_transform
from splitpriv.transforms.compression import Bottleneck, Quantize, TopK


def build_transform(spec: dict, key: str = "transforms[0]") -> MessageTransform:
    """``{name: ..., **params}`` -> a MessageTransform; unknown names or parameters -> ConfigError."""
    return build_registered(TRANSFORMS, spec, key, "{name: quantize, bits: 4}")


def build_transforms(specs: list[dict]) -> list[MessageTransform]:
    return [build_transform(spec, f"transforms[{i}]") for i, spec in enumerate(specs)]


__all__ = ["TRANSFORMS", "register_transform", "build_transform", "build_transforms", "Bottleneck", "Quantize", "TopK"]
