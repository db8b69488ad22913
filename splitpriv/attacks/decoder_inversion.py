"""Learning-based model inversion (He et al., ACSAC 2019, black-box setting; ResSFL's MIA).

The server queries the deployed client with its proxy images, receives the messages exactly as
it would in deployment (noise and all), trains a decoder D from message to image with

    min_D  (1/N) Σ_i ||D(client(x_i)) - x_i||²      (x_i: proxy images in [0, 1])

to convergence (early stopping on a held-out slice of the proxy data, then ``refinements`` more
plateaus from the best weights at half the learning rate each), then decodes the
messages it observed for the private test set.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F

from splitpriv.attacks.base import (DEFAULT_REFINEMENTS, Attack, AttackTarget, EarlyStopping, check_refinements,
                                    fit_with_early_stopping, holdout_split, register_attack)
from splitpriv.decoders import CAPACITIES, build_decoder
from splitpriv.cut import is_number
from splitpriv.config import MAX_EPOCHS, is_int
from splitpriv.errors import ConfigError


@register_attack
class DecoderInversion(Attack):
    name = "decoder_inversion"
    grants = frozenset({"query", "proxy"})
    fresh_queries = False  # one query per proxy image, as a passive server would record them

    def __init__(self, capacity: str = "large", max_epochs: int = 500, patience: int = 10, batch_size: int | None = None,
                 lr: float = 2e-3, holdout_fraction: float = 0.1, min_delta: float = 1e-3, lr_patience: int | None = None,
                 refinements: int = DEFAULT_REFINEMENTS):
        if capacity not in CAPACITIES:
            raise ConfigError("capacity", capacity, f"one of {sorted(CAPACITIES)}")
        for key, value, none_means in (("max_epochs", max_epochs, None), ("patience", patience, None),
                                       ("batch_size", batch_size, "auto"), ("lr_patience", lr_patience, "a constant rate")):
            if not (is_int(value) and 1 <= value <= MAX_EPOCHS) and not (none_means and value is None):
                raise ConfigError(key, value, f"an integer in [1, {MAX_EPOCHS:,}]" + (f" or null ({none_means})" if none_means else ""))
        check_refinements(refinements)
        for key, value, ok, allowed in (("holdout_fraction", holdout_fraction, lambda v: 0 < v < 1, "a fraction in (0, 1)"),
                                        ("lr", lr, lambda v: v > 0, "a number > 0"),
                                        ("min_delta", min_delta, lambda v: v >= 0, "a number >= 0")):
            if not is_number(value) or not ok(value):
                raise ConfigError(key, value, allowed)
        self.capacity = capacity
        self.stopping = EarlyStopping(max_epochs, patience, min_delta, batch_size, lr, holdout_fraction, lr_patience, refinements)
        self.decoder = None
        self._summary: dict = {}

    @property
    def label(self) -> str:
        return f"{self.name}/{self.capacity}"

    def fit(self, target: AttackTarget) -> None:
        generator = torch.Generator().manual_seed(target.seed)
        torch.manual_seed(target.seed)
        self.decoder = build_decoder(target.message_shape, target.image_shape, self.capacity).to(target.device)
        proxy = target.proxy
        train_idx, holdout_idx = holdout_split(len(proxy.inputs), self.stopping.holdout_fraction, generator)
        train_inputs, holdout_inputs = proxy.inputs[train_idx], proxy.inputs[holdout_idx]
        messages = self._queries(target, train_inputs)
        self._summary = fit_with_early_stopping(
            self.decoder, F.mse_loss, messages, proxy.images[train_idx],
            target.query(holdout_inputs), proxy.images[holdout_idx], self.stopping, generator, self.progress)
        self._summary["proxy_images"] = len(train_idx)

    def _queries(self, target: AttackTarget, inputs: torch.Tensor):
        """The decoder's training messages: recorded once, or (noise-aware) fresh every epoch."""
        query = lambda: target.query(inputs)  # noqa: E731
        return query if self.fresh_queries else query()

    def matching_steps(self, images_set_for: int, images_given: int) -> "DecoderInversion":
        scaled = copy.copy(self)
        scaled.stopping = self.stopping.matching_steps(images_set_for, images_given)
        return scaled

    @torch.no_grad()
    def reconstruct(self, messages: torch.Tensor) -> torch.Tensor:
        return self.decoder(messages)

    def config(self) -> dict:
        return {"capacity": self.capacity, **dataclasses.asdict(self.stopping)}

    def summary(self) -> dict:
        return dict(self._summary)
