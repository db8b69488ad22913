"""Split learning as a LightningModule: what is computed at the cut, not how it is looped.

One step, with the network boundary explicit:

1. client: ``activation = client(x)``; each defense transforms it into the ``message``;
2. the message crosses the network: the server receives a detached copy that requires grad;
3. server: ``loss = CE(server(message), y)``, backward, server step;
4. the server's gradient w.r.t. the message crosses back; the client back-propagates it (plus any
   defense loss terms) through its own graph and steps its own optimizer;
5. defenses with their own trainable parts (e.g. a simulated attacker) take their step.

Client and server are different parties, so each has its own optimizer.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from defenses.base import CutContext, Defense
from splitpriv.config import OptimizerConfig
from splitpriv.models import SplitModel


def make_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    optimizer = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optimizer(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def bytes_per_sample(tensor: torch.Tensor) -> int:
    """Bytes one sample of ``tensor`` occupies when sent uncompressed."""
    return tensor[0].numel() * tensor.element_size()


class SplitLearningModule(L.LightningModule):
    def __init__(
        self,
        model: SplitModel,
        cut_layer: int | str,
        num_classes: int,
        client_optimizer: OptimizerConfig | None = None,
        server_optimizer: OptimizerConfig | None = None,
        defenses: list[Defense] | tuple[Defense, ...] = (),
    ):
        super().__init__()
        self.automatic_optimization = False
        self.cut_layer = model.cut_index(cut_layer)
        self.cut_name = model.cut_name(cut_layer)
        # client and server share their parameters with ``model``; only they are registered so
        # that each parameter appears once in the state dict, under the party that owns it.
        self.client, self.server = model.split(self.cut_layer)
        object.__setattr__(self, "model", model)
        self.defenses = nn.ModuleList(defenses)
        self.client_optimizer_cfg = client_optimizer or OptimizerConfig()
        self.server_optimizer_cfg = server_optimizer or OptimizerConfig()
        self.accuracy = nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in ("train", "val", "test")})
        self.activation_bytes_per_sample = 0
        self.gradient_bytes_per_sample = 0
        self._train_loss_sum = torch.zeros(())
        self._train_count = 0

    # ------------------------------------------------------------------ what crosses the cut
    def send(self, x: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(activation, message): the client's output and what the server receives."""
        activation = self.client(x)
        message = activation
        for defense in self.defenses:
            if training or defense.active_at_inference:
                message = defense.transform(message)
        return activation, message

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference as deployed: client, defenses active at inference, server."""
        return self.server(self.send(x, training=False)[1])

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        optimizers = [
            make_optimizer(self.client.parameters(), self.client_optimizer_cfg),
            make_optimizer(self.server.parameters(), self.server_optimizer_cfg),
        ]
        self._defense_optimizer_index = {}
        for i, defense in enumerate(self.defenses):
            optimizer = defense.configure_optimizer()
            if optimizer is not None:
                self._defense_optimizer_index[i] = len(optimizers)
                optimizers.append(optimizer)
        return optimizers

    def training_step(self, batch, batch_idx):
        x, y = batch
        optimizers = self.optimizers()
        client_opt, server_opt = optimizers[0], optimizers[1]
        activation, message = self.send(x, training=True)

        sent = message.detach().requires_grad_(True)  # the network boundary, forward
        logits = self.server(sent)
        loss = F.cross_entropy(logits, y)
        server_opt.zero_grad()
        self.manual_backward(loss)
        server_opt.step()
        returned_gradient = sent.grad  # the network boundary, backward

        context = CutContext(x, y, activation, message, loss.detach())
        # d/d(message) of <message, g> is g: the client back-propagates exactly what it received.
        client_objective = (message * returned_gradient).sum()
        for defense in self.defenses:
            extra = defense.client_loss(context)
            if extra is not None:
                client_objective = client_objective + extra
        client_opt.zero_grad()
        self.manual_backward(client_objective)
        client_opt.step()

        for i, defense in enumerate(self.defenses):
            index = self._defense_optimizer_index.get(i)
            defense.update(context, optimizers[index] if index is not None else None)

        if not self.activation_bytes_per_sample:
            self.activation_bytes_per_sample = bytes_per_sample(message)
            self.gradient_bytes_per_sample = bytes_per_sample(returned_gradient)
        # accumulated, logged once per epoch: per-step logging would cost more than the split
        self._train_loss_sum = self._train_loss_sum + loss.detach() * len(y)
        self._train_count += len(y)
        self.accuracy["train_acc"].update(logits.detach(), y)

    def on_train_epoch_end(self):
        values = {
            "train_loss": self._train_loss_sum / max(self._train_count, 1),
            "train_acc": self.accuracy["train_acc"].compute(),
            "activation_bytes_per_sample": float(self.activation_bytes_per_sample),
            "gradient_bytes_per_sample": float(self.gradient_bytes_per_sample),
        }
        for defense in self.defenses:
            values.update({f"{defense.name}/{k}": float(v) for k, v in defense.metrics().items()})
        self.log_dict(values, prog_bar=False)
        self.accuracy["train_acc"].reset()
        self._train_loss_sum = torch.zeros(())
        self._train_count = 0

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch, stage: str):
        x, y = batch
        logits = self(x)
        self.accuracy[f"{stage}_acc"].update(logits, y)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y), on_epoch=True, on_step=False, prog_bar=True)
        self.log(f"{stage}_acc", self.accuracy[f"{stage}_acc"], on_epoch=True, on_step=False, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")
