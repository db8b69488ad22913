"""Attacker-aware training: a simulated inversion decoder the client learns to defeat.

A decoder D (``splitpriv.decoders.build_decoder``) is trained alternately with the client, on
its own optimizer, to reconstruct the input from the message: ``min_D MSE(D(z), x)``. The client
then plays against it. Two objectives:

* ``penalty: mse`` - the survey's formulation (Sec. 2.2.2)::

      min_client  w_CE * CE(y_hat, y) - w_p * MSE(D(z), x)

* ``penalty: ssim`` - ResSFL (Li et al., CVPR 2022): penalise reconstructions only while they
  are better than a target similarity::

      min_client  w_CE * CE(y_hat, y) + w_p * max(0, SSIM(D(z), x) - ssim_threshold)

``weight`` is w_p / w_CE (the cross-entropy enters through the server's gradient with weight 1).
Accuracy guard (``max_task_loss``): when the batch's cross-entropy exceeds it, the privacy term
is skipped for that step; ``skip_rate`` reports the share of skipped steps. ``attacker_steps``: the
simulated attacker's updates per client step (ResSFL's inner attacker schedule, its ``step`` option).

``x`` is the input min-max scaled per channel to [0, 1] over the private training data (for
images spanning 0..255 exactly the [0, 1] image the attacks score), the range the decoder's
sigmoid output covers. The defense changes training only: the deployed client sends plain
activations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from splitpriv.cut import ClientLossTerm, CutContext, StepMean, TrainablePart, is_number
from splitpriv.defenses.base import Defense, register_defense
from splitpriv.decoders import CAPACITIES, build_decoder
from splitpriv.errors import ConfigError
from splitpriv.measures import ssim

PENALTIES = ("mse", "ssim")


@register_defense
class DecoderReconstruction(Defense, ClientLossTerm, TrainablePart):
    """Alternating game against a simulated attacker decoder (its optimizer: Adam, ``decoder_lr``)."""

    name = "decoder_reconstruction"
    parameter_units = {"weight": "w_p / w_CE"}
    parameter_help = {"weight": "privacy term weight w_p / w_CE, >= 0",
                      "capacity": "simulated attacker size: small, medium, large, xlarge",
                      "penalty": "mse (survey) or ssim (ResSFL)", "ssim_threshold": "penalty ssim: penalise SSIM above it",
                      "max_task_loss": "skip the privacy term when the cross-entropy exceeds it",
                      "decoder_lr": "the simulated attacker's learning rate",
                      "attacker_steps": "simulated attacker updates per client step"}

    def __init__(self, weight: float = 1.0, capacity: str = "medium", penalty: str = "mse", ssim_threshold: float = 0.5,
                 max_task_loss: float | None = None, decoder_lr: float = 1e-3, attacker_steps: int = 1):
        super().__init__()
        if not is_number(weight) or weight < 0:
            raise ConfigError("weight", weight, "a number >= 0 (w_p relative to the cross-entropy)")
        if capacity not in CAPACITIES:
            raise ConfigError("capacity", capacity, f"one of {sorted(CAPACITIES)}")
        if penalty not in PENALTIES:
            raise ConfigError("penalty", penalty, f"one of {list(PENALTIES)}")
        if not is_number(ssim_threshold) or not -1 <= ssim_threshold <= 1:
            raise ConfigError("ssim_threshold", ssim_threshold, "a number in [-1, 1] (SSIM's range)")
        if max_task_loss is not None and (not is_number(max_task_loss) or max_task_loss <= 0):
            raise ConfigError("max_task_loss", max_task_loss, "a cross-entropy > 0, or null for no accuracy guard")
        if not is_number(decoder_lr) or decoder_lr <= 0:
            raise ConfigError("decoder_lr", decoder_lr, "a learning rate > 0")
        if isinstance(attacker_steps, bool) or not isinstance(attacker_steps, int) or not 1 <= attacker_steps <= 100:
            raise ConfigError("attacker_steps", attacker_steps, "an integer in [1, 100]: decoder updates per client step")
        self.weight, self.capacity, self.penalty = float(weight), capacity, penalty
        self.ssim_threshold, self.max_task_loss, self.decoder_lr = float(ssim_threshold), max_task_loss, float(decoder_lr)
        self.attacker_steps = attacker_steps
        self.decoder: torch.nn.Module | None = None
        # per-channel range of the private inputs, mapping them to the decoder's [0, 1] output
        self.register_buffer("input_low", torch.zeros(()))
        self.register_buffer("input_high", torch.ones(()))
        self._reconstruction_mse, self._skipped = StepMean(), StepMean()
        self._client_mse: torch.Tensor | None = None  # this step's MSE(D(z), x), when the client's loss computed it

    def build(self, module, input_shape) -> None:
        was_training = module.client.training
        with torch.no_grad():
            message_shape = module.client.eval()(torch.zeros(1, *input_shape)).shape[1:]
        module.client.train(was_training)
        self.decoder = build_decoder(message_shape, input_shape, self.capacity)
        channels = (1, input_shape[0], 1, 1)
        self.input_low, self.input_high = torch.zeros(channels), torch.ones(channels)

    @torch.no_grad()
    def setup(self, module, private_train) -> None:
        inputs = private_train.tensors[0] if hasattr(private_train, "tensors") else torch.stack([x for x, _ in private_train])
        self.input_low.copy_(inputs.amin(dim=(0, 2, 3)).view_as(self.input_low))
        self.input_high.copy_(inputs.amax(dim=(0, 2, 3)).view_as(self.input_high))

    def unit_range(self, inputs: torch.Tensor) -> torch.Tensor:
        return ((inputs - self.input_low) / (self.input_high - self.input_low).clamp_min(1e-12)).clamp(0, 1)

    # ------------------------------------------------------------------ the client's side
    def client_loss(self, context: CutContext) -> torch.Tensor | None:
        guarded = self.max_task_loss is not None and float(context.task_loss) > self.max_task_loss
        self._skipped.add(guarded)
        if guarded or self.weight == 0:
            return None
        reconstruction, target = self.decoder(context.message), self.unit_range(context.inputs)
        if self.penalty == "mse":
            reconstruction_mse = F.mse_loss(reconstruction, target)
            self._client_mse = reconstruction_mse.detach()
            return -self.weight * reconstruction_mse
        return self.weight * (ssim(reconstruction, target) - self.ssim_threshold).clamp_min(0)

    # ------------------------------------------------------------------ the attacker's side
    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.decoder.parameters(), lr=self.decoder_lr)

    def update(self, context: CutContext, optimizer: torch.optim.Optimizer) -> None:
        if self._client_mse is not None:
            # The client's backward of -w * MSE(D(z), x) left -w * dMSE/dθ_D on the decoder (whose
            # gradients the training step zeroed before it): the same decoder on the same message, so
            # rescaled it is the decoder's own gradient, without a second decoder pass. Tested against
            # that pass over 30 steps of the training loop.
            for parameter in self.decoder.parameters():
                if parameter.grad is not None:
                    parameter.grad.mul_(-1 / self.weight)
            loss, self._client_mse = self._client_mse, None
        else:  # the client's term was skipped (guard, weight 0) or is SSIM's: the decoder's own pass
            loss = self._own_pass(context, optimizer)
        optimizer.step()
        for _ in range(self.attacker_steps - 1):
            loss = self._own_pass(context, optimizer)
            optimizer.step()
        self._reconstruction_mse.add(loss)

    def _own_pass(self, context: CutContext, optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """The decoder's gradient of MSE(D(z), x) on this step's message, from a pass of its own."""
        optimizer.zero_grad()  # also drops what the client's loss left on the decoder
        loss = F.mse_loss(self.decoder(context.message.detach()), self.unit_range(context.inputs))
        loss.backward()
        return loss.detach()

    def metrics(self) -> dict[str, float]:
        return {"reconstruction_mse": self._reconstruction_mse.read(), "skip_rate": self._skipped.read()}

    def config(self) -> dict:
        return {"weight": self.weight, "capacity": self.capacity, "penalty": self.penalty,
                "ssim_threshold": self.ssim_threshold, "max_task_loss": self.max_task_loss, "decoder_lr": self.decoder_lr,
                "attacker_steps": self.attacker_steps}
