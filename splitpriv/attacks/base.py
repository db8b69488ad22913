"""The one interface every attack implements, and the capabilities (grants) that bound it.

An attacker at the server sees the messages the client sends. What else it may use is explicit: a
threat model (:mod:`attacks.threat_models`) grants some of

* ``query``        - query access to the client as deployed (defenses included, fresh noise per call),
* ``weights``      - the client's weights and its defenses' mechanisms: the deployed client's
  deterministic part, differentiable (a randomised defense without its draw, e.g. the clipping
  before the noise), and the distribution of the noise it adds (:class:`splitpriv.cut.NoiseModel`),
* ``architecture`` - the client's architecture: fresh, untrained clients of the same shape,
* ``server``       - the trained server partition, which the split-learning server trains itself,
* ``proxy``        - the attacker's own proxy data (images and labels), disjoint from the private data.

An :class:`Attack` declares its ``grants``; :func:`evaluate` hands it an :class:`AttackTarget`
holding exactly those (the rest is ``None``) and the messages the server observed, fits it, and
scores its reconstructions of the **private test set** from the messages the server observed for it.

Adding an attack is one file with an ``Attack`` subclass decorated with ``@register_attack``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import nn

from splitpriv.attacks.metrics import reconstruction_metrics
from splitpriv.config import is_int
from splitpriv.cut import NoiseModel
from splitpriv.errors import ConfigError
from splitpriv.registry import Registry

GRANTS = ("query", "weights", "architecture", "server", "proxy")


ATTACKS = Registry("attack")  # name -> Attack subclass
register_attack = ATTACKS.register


@dataclass
class ProxyData:
    """The attacker's own data: model inputs (normalised), the same images in [0, 1], labels."""

    inputs: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor
    description: str
    labels_are_private_classes: bool = True  # False for another data set's labels

    def to(self, device: torch.device) -> "ProxyData":
        return dataclasses.replace(self, inputs=self.inputs.to(device), images=self.images.to(device),
                                   labels=self.labels.to(device))


@dataclass
class AttackTarget:
    """Everything a threat model could grant about one deployed client.

    ``normalize`` ([0, 1] images -> model inputs), the shapes, the number of classes and the messages
    the server observed in training (``observed``, as the client sends them) are known to every
    attacker at the server, so every attack gets them. ``device`` is where the attack computes: the
    queries return messages there, and an attack builds its models there.
    """

    image_shape: tuple[int, int, int]
    message_shape: tuple[int, ...]
    normalize: Callable[[torch.Tensor], torch.Tensor]
    randomized: bool  # whether the deployed client draws fresh noise per query
    seed: int = 0
    query: Callable[[torch.Tensor], torch.Tensor] | None = None  # inputs -> messages, no gradient
    client: Callable[[torch.Tensor], torch.Tensor] | None = None  # inputs -> noise-free messages, differentiable
    noise: NoiseModel | None = None  # the noise on top of ``client``'s output; None: deterministic
    proxy: ProxyData | None = None
    architecture: Callable[[], nn.Module] | None = None  # a fresh, untrained client of the same architecture
    server: nn.Module | None = None  # the trained server partition (frozen): messages -> logits
    observed: torch.Tensor | None = None  # messages of private training samples the server saw
    num_classes: int = 0
    device: torch.device = torch.device("cpu")

    def granted(self, grants: frozenset[str]) -> "AttackTarget":
        """A copy holding only ``grants``; whatever the threat model withholds is ``None``."""
        unknown = set(grants) - set(GRANTS)
        if unknown:
            raise ValueError(f"unknown grants {sorted(unknown)}; known: {list(GRANTS)}")
        fields = {"query": ("query",), "weights": ("client", "noise"), "proxy": ("proxy",),
                  "architecture": ("architecture",), "server": ("server",)}
        return dataclasses.replace(self, **{name: getattr(self, name) if grant in grants else None
                                            for grant, names in fields.items() for name in names})


class Attack:
    """Base class: ``fit`` with the granted target, then ``reconstruct`` images in [0, 1]."""

    name: ClassVar[str] = "attack"
    grants: ClassVar[frozenset[str]] = frozenset()
    progress: Callable[[str], None] | None = None  # set by the suite: where long fits report

    @property
    def label(self) -> str:
        """How results name this attack (e.g. ``decoder_inversion/large``)."""
        return self.name

    def fit(self, target: AttackTarget) -> None:
        """Learn whatever the attack needs from its grants."""

    def reconstruct(self, messages: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], one per observed message."""
        raise NotImplementedError

    def matching_steps(self, images_set_for: int, images_given: int) -> "Attack":
        """The same attacker on ``images_given`` proxy images where its budgets were set for
        ``images_set_for``: a budget counted in epochs over the proxy is rescaled to take as many
        optimizer steps (an epoch of fewer images has fewer). Budgets counted otherwise stay."""
        return self

    def config(self) -> dict[str, Any]:
        """The attack's settings, recorded in attack.json."""
        return {}

    def summary(self) -> dict[str, Any]:
        """What fitting found out (e.g. epochs until early stopping), recorded in attack.json."""
        return {}


@dataclass
class AttackResult:
    label: str
    reconstructions: torch.Tensor  # [0, 1], one per private test image
    metrics: dict[str, float]  # mse, psnr, ssim (+ classifier_accuracy once scored)
    fit_time_s: float
    record: dict[str, Any]  # name, grants, config, summary


def evaluate(attack: Attack, target: AttackTarget, messages: torch.Tensor, originals: torch.Tensor) -> AttackResult:
    """Fit ``attack`` with exactly its grants and score its reconstructions of ``originals``
    (private test images in [0, 1], on the CPU) from ``messages`` (what the server observed for them,
    on the target's device). Scores are computed on the CPU, wherever the attack ran."""
    started = time.perf_counter()
    attack.fit(target.granted(attack.grants))
    reconstructions = attack.reconstruct(messages).detach().clamp(0, 1).cpu()
    fit_time_s = time.perf_counter() - started
    record = {"name": attack.name, "grants": sorted(attack.grants), "config": attack.config(), "summary": attack.summary()}
    return AttackResult(attack.label, reconstructions, reconstruction_metrics(reconstructions, originals), fit_time_s, record)


# ----------------------------------------------------------------------------- fitting helper


@dataclass
class EarlyStopping:
    """Train until the held-out loss stops improving: ``patience`` epochs without a relative
    improvement of ``min_delta``, at most ``max_epochs``; the best weights are restored.

    ``batch_size`` None: ``auto_batch_size`` of the training set. ``lr_patience``: halve the learning
    rate after that many epochs without improvement (None: a constant rate). A constant rate leaves a
    large decoder creeping down for hundreds of epochs; halving it on plateaus converges it in far fewer.

    ``refinements``: at a plateau (``patience`` epochs without improvement), go back to the best
    weights, halve the learning rate and wait ``patience`` epochs again, this many times before
    stopping. The held-out loss can only go down (the best weights are kept), and the noise of a
    constant rate no longer ends the fit above the loss a smaller step reaches (CHANGELOG: by how much)."""

    max_epochs: int = 500
    patience: int = 10
    min_delta: float = 1e-3
    batch_size: int | None = None
    lr: float = 1e-3
    holdout_fraction: float = 0.1
    lr_patience: int | None = None
    refinements: int = 0

    def steps_per_epoch(self, images: int) -> int:
        """Optimizer steps in one epoch of :func:`fit_with_early_stopping` on ``images`` samples."""
        train = images - holdout_count(images, self.holdout_fraction)
        return math.ceil(train / (self.batch_size or auto_batch_size(train)))

    def epochs_scaled(self, factor: float) -> "EarlyStopping":
        """Every budget counted in epochs (``max_epochs``, ``patience``, ``lr_patience``) times ``factor``."""
        scale = lambda epochs: None if epochs is None else max(1, round(epochs * factor))  # noqa: E731
        return dataclasses.replace(self, max_epochs=scale(self.max_epochs), patience=scale(self.patience),
                                   lr_patience=scale(self.lr_patience))

    def matching_steps(self, images_set_for: int, images_given: int) -> "EarlyStopping":
        """These budgets on ``images_given`` samples, taking the steps they take on ``images_set_for``."""
        return self.epochs_scaled(self.steps_per_epoch(images_set_for) / self.steps_per_epoch(images_given))


DEFAULT_REFINEMENTS = 2  # the learned decoders' (EarlyStopping.refinements)
MAX_REFINEMENTS = 20  # each halves the rate: 2^-20 of it no longer moves a decoder


def check_refinements(refinements) -> None:
    if not is_int(refinements) or not 0 <= refinements <= MAX_REFINEMENTS:
        raise ConfigError("refinements", refinements, f"an integer in [0, {MAX_REFINEMENTS}]")


def auto_batch_size(n: int, steps_per_epoch: int = 8, smallest: int = 16, largest: int = 64) -> int:
    """A batch size giving at least ``steps_per_epoch`` optimizer steps per epoch, in [smallest, largest].

    Patience counts epochs, so on a small proxy a fixed batch of 64 starves the fit of steps: on the
    digits proxy (259 images, 4 steps per epoch) early stopping ended decoders under-fitted. With
    batch 32 the default sweep's worst-case MSE fell by up to 21 % (undefended fc1: 0.0213 -> 0.0168),
    with a large decoder of a twentieth of the old one's FLOPs (README, "Measured").
    """
    return max(smallest, min(largest, n // steps_per_epoch))


def holdout_count(n: int, fraction: float) -> int:
    """How many of ``n`` samples are held out: ``fraction`` of them, at least one on each side."""
    return min(max(1, round(fraction * n)), n - 1)


def holdout_split(n: int, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices) of ``n`` samples; at least one sample on each side."""
    order = torch.randperm(n, generator=generator)
    n_holdout = holdout_count(n, fraction)
    return order[n_holdout:], order[:n_holdout]


def fit_with_early_stopping(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    train_inputs: torch.Tensor | Callable[[], torch.Tensor],
    train_targets: torch.Tensor,
    holdout_inputs: torch.Tensor,
    holdout_targets: torch.Tensor,
    settings: EarlyStopping,
    generator: torch.Generator,
    progress: Callable[[str], None] | None = None,
    report_every_s: float = 15.0,
) -> dict[str, float]:
    """Adam on mini-batches until the held-out loss stalls. ``train_inputs`` may be a callable
    returning fresh inputs each epoch (e.g. new noisy queries). Returns epochs and best loss.
    ``progress`` hears about the held-out loss every ``report_every_s`` seconds.

    A plain loop rather than a Lightning Trainer: an attack fits hundreds of tiny epochs per
    cell, where the Trainer's per-fit and per-epoch overhead would cost more than the fitting.
    """
    # fused: one kernel for all parameters; these small models spend most of a step in overhead
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, fused=True)
    schedule = None if settings.lr_patience is None else torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=settings.lr_patience, threshold=settings.min_delta)
    batch_size = settings.batch_size or auto_batch_size(len(train_targets))
    best_loss, best_state, best_epoch, epoch = float("inf"), copy.deepcopy(model.state_dict()), 0, 0
    refined_at, refinements = 0, 0  # patience counts from the later of the best epoch and the last refinement
    last_report = time.perf_counter()
    for epoch in range(1, settings.max_epochs + 1):
        inputs = train_inputs() if callable(train_inputs) else train_inputs
        model.train()
        for batch in torch.randperm(len(train_targets), generator=generator).split(batch_size):
            if len(batch) < 2 and len(train_targets) > 1:  # BatchNorm needs two samples
                continue
            loss = loss_fn(model(inputs[batch]), train_targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            holdout_loss = float(loss_fn(model(holdout_inputs), holdout_targets))
        if schedule is not None:
            schedule.step(holdout_loss)
        if holdout_loss < best_loss * (1 - settings.min_delta):
            best_loss, best_state, best_epoch = holdout_loss, copy.deepcopy(model.state_dict()), epoch
        elif epoch - max(best_epoch, refined_at) >= settings.patience:
            if refinements == settings.refinements:
                break
            model.load_state_dict(best_state)
            for group in optimizer.param_groups:
                group["lr"] /= 2
            refined_at, refinements = epoch, refinements + 1
        if progress and time.perf_counter() - last_report > report_every_s:
            progress(f"    epoch {epoch}: held-out loss {holdout_loss:.5f} (best {best_loss:.5f} at epoch {best_epoch})")
            last_report = time.perf_counter()
    model.load_state_dict(best_state)
    model.eval()
    # 'patience': the held-out loss stopped improving (converged); 'max_epochs': the cap stopped it first
    stopped = "patience" if epoch - max(best_epoch, refined_at) >= settings.patience else "max_epochs"
    return {"epochs": epoch, "best_epoch": best_epoch, "holdout_loss": best_loss, "batch_size": batch_size, "stopped": stopped,
            "refinements": refinements, "final_lr": optimizer.param_groups[0]["lr"]}
