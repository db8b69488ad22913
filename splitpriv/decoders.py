"""Inversion decoders: from a message's shape back to the input image, in [0, 1].

Shared by the attacker-aware defense (a simulated attacker during training) and the decoder
inversion attacks. Capacity ``small`` / ``medium`` / ``large`` sets width and depth. A 4-D
message (C, h, w) is upsampled to the image size and refined by convolutions; a flat message
(D,) first goes through a linear layer to a coarse feature map.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from splitpriv.errors import ConfigError

# capacity -> (channels, conv layers after upsampling, hidden units for flat messages)
CAPACITIES = {"small": (16, 1, 256), "medium": (32, 1, 512), "large": (32, 2, 1024), "xlarge": (64, 3, 2048)}


def build_decoder(message_shape: Sequence[int], image_shape: Sequence[int], capacity: str = "medium") -> nn.Module:
    """A decoder mapping messages of per-sample ``message_shape`` to images of ``image_shape``."""
    if capacity not in CAPACITIES:
        raise ConfigError("capacity", capacity, f"one of {sorted(CAPACITIES)}")
    width, depth, hidden = CAPACITIES[capacity]
    channels, height, width_px = image_shape
    layers: list[nn.Module] = []
    if len(message_shape) == 3:
        in_channels = message_shape[0]
    elif len(message_shape) == 1:
        coarse = max(height // 4, 1)
        layers += [nn.Linear(message_shape[0], hidden), nn.ReLU(), nn.Linear(hidden, width * coarse * coarse),
                   nn.ReLU(), nn.Unflatten(1, (width, coarse, coarse))]
        in_channels = width
    else:
        raise ConfigError("message shape", tuple(message_shape), "(C, H, W) or (D,) per sample")
    # a message already at the image size needs no resampling (Identity keeps the layer indices)
    same_size = len(message_shape) == 3 and tuple(message_shape[1:]) == (height, width_px)
    layers += [nn.Identity() if same_size else nn.Upsample(size=(height, width_px), mode="bilinear", align_corners=False),
               nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    for _ in range(depth):
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
    layers += [nn.Conv2d(width, channels, 3, padding=1), nn.Sigmoid()]
    return nn.Sequential(*layers)
