"""Role: transform the message before it is sent."""
from __future__ import annotations

from typing import ClassVar

import torch

from splitpriv.cut.component import CutComponent
from splitpriv.cut.noise import NoiseModel


class MessageTransform(CutComponent):
    """Maps the message before it crosses the network, in training and, if ``active_at_inference``,
    in deployment (validation, test, attacks). A randomised transform names its deterministic part
    (``noise_free``) and its noise (``noise_model``), which a white-box attacker is granted, and
    draws from its own generator. Transforms compose in the pipeline's order."""

    active_at_inference: ClassVar[bool] = False
    randomized: ClassVar[bool] = False  # a fresh draw per query (attacks then use a noise-aware attacker)

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def noise_free(self, message: torch.Tensor) -> torch.Tensor:
        """``transform`` without its random draw (e.g. the clipping before the noise): what a
        white-box attacker can differentiate through."""
        return self.transform(message)

    def noise_model(self) -> NoiseModel | None:
        """The distribution of the noise ``transform`` adds on top of ``noise_free``; None if none."""
        return None

    def wire_bytes_per_sample(self, tensor: torch.Tensor, backward: bool = False) -> float | None:
        """Bytes one sample of ``tensor`` (the message, or its gradient when ``backward``) takes on
        the wire when this transform is the last to shape it, e.g. a compression's serialised
        size; None: sent as dense floats."""
        return None
