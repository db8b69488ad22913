"""Split learning as a LightningModule: what is computed at the cut, not how it is looped.

One step, with the network boundary explicit:

1. client: ``activation = client(x)``; the message transforms of the cut pipeline map it, in order,
   into the ``message``;
2. the message crosses the network: the server receives a detached copy that requires grad;
3. server: ``loss = CE(server(message), y)``, backward, server step;
4. the server's gradient w.r.t. the message crosses back; the client back-propagates it (plus the
   client loss terms) through its own graph and steps its own optimizer (a training privatizer's,
   e.g. DP-SGD's, if one wraps it);
5. trainable parts at the cut (a simulated attacker, a bottleneck's codec) take their own step.

In one process and without a client loss term, training privatizer or trainable part at the cut,
steps 2-4 run as one backward pass through client and server: the gradient that reaches the message
is then g = dL/d(message), the very gradient step 4 would send back, and what the client does with g
is nothing but back-propagate it, so both parties' updates are the same (tested against the two
passes, weight for weight, over whole trainings); the second pass and its bookkeeping are saved.

Client and server are different parties, so each has its own optimizer settings. In the one-pass
step both parties' parameters are stepped by one optimizer, a parameter group per party, when their
settings name the same optimizer (Adam, AdamW and SGD update each parameter from its own gradient and
state alone, so these are the updates of one optimizer per party, tested likewise); otherwise, and
in the two-pass step, each party steps its own. The cut pipeline is the
run's defenses, then its transforms (compressions); each component is asked only for the roles it
plays (:mod:`splitpriv.cut`). With a :class:`~splitpriv.transport.RemoteServer` in place of the server
partition, steps 2-4 happen in another process (``splitpriv client`` / ``splitpriv serve``): the
message and labels go there, the loss, logits and gradient come back.

"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from splitpriv.cut import ClientLossTerm, CutComponent, CutContext, MessageTransform, TrainablePart, TrainingPrivatizer
from splitpriv.config import OptimizerConfig
from splitpriv.defenses.base import Defense
from splitpriv.errors import TrainingDiverged
from splitpriv.exits import ExitWeights, run_blocks
from splitpriv.models import SplitModel
from splitpriv.transport import RemoteServer

REMOTE_STEP = "remote_server_step"  # in a client's checkpoint: its last training step served remotely


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def make_optimizer(params, cfg: OptimizerConfig, *more_groups: tuple) -> torch.optim.Optimizer:
    """One optimizer over ``params`` with ``cfg``'s settings; each further ``(params, cfg)`` pair is
    a parameter group with its own settings, under the same optimizer name (why one optimizer may
    step both parties: the module docstring)."""
    groups = [(params, cfg), *more_groups]
    if len({group_cfg.name for _, group_cfg in groups}) > 1:
        raise ValueError("the parameter groups of one optimizer must name the same optimizer")
    return OPTIMIZERS[cfg.name]([_param_group(group_params, group_cfg) for group_params, group_cfg in groups])


def _param_group(params, cfg: OptimizerConfig) -> dict:
    group = {"params": [p for p in params if p.requires_grad], "lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.name == "sgd":
        group["momentum"] = cfg.momentum
    return group


def joined_optimizer_state(client_state: dict, server_state: dict) -> dict:
    """The state of one optimizer with the client's parameter group, then the server's, from the
    states of one optimizer per party: the server's parameter indices follow the client's."""
    (client_group,), (server_group,) = client_state["param_groups"], server_state["param_groups"]
    offset = len(client_group["params"])
    return {"state": {**client_state["state"], **{offset + i: s for i, s in server_state["state"].items()}},
            "param_groups": [client_group, {**server_group, "params": [offset + i for i in server_group["params"]]}]}


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
        cut_pipeline: list[CutComponent] | tuple[CutComponent, ...] = (),
        exit_heads: nn.ModuleDict | None = None,
        exit_weights: ExitWeights | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        self.cut_layer = model.cut_index(cut_layer)
        self.cut_name = model.cut_name(cut_layer)
        # client and server share their parameters with ``model``; only they are registered so
        # that each parameter appears once in the state dict, under the party that owns it.
        self.client, self.server = model.split(self.cut_layer)
        object.__setattr__(self, "model", model)
        self.cut_pipeline = nn.ModuleList(cut_pipeline)  # defenses, then transforms: the order messages pass them
        # internal classifiers (early exits): those before the cut run on, and belong to, the client
        heads = dict(exit_heads or {})
        self.client_exits = nn.ModuleDict({n: h for n, h in heads.items() if n in self.client._modules})
        self.server_exits = nn.ModuleDict({n: h for n, h in heads.items() if n in self.server._modules})
        self.exit_weights = exit_weights or ExitWeights()
        self.client_optimizer_cfg = client_optimizer or OptimizerConfig()
        self.server_optimizer_cfg = server_optimizer or OptimizerConfig()
        self.accuracy = nn.ModuleDict({f"{s}_acc": MulticlassAccuracy(num_classes, average="micro") for s in ("val", "test")})
        self.activation_bytes_per_sample = 0
        self.gradient_bytes_per_sample = 0
        self.resuming_interrupted_run = False  # resuming a checkpoint whose training did not finish
        self._epoch_sums = self._zero_sums()

    # ------------------------------------------------------------------ what crosses the cut
    def send(self, x: torch.Tensor, training: bool, noisy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(activation, message): the client's output and what the server receives; ``noisy=False``
        leaves out the random draws of randomised transforms (their deterministic part only)."""
        activation, message, _ = self.client_forward(x, training, noisy)
        return activation, message

    def client_forward(self, x: torch.Tensor, training: bool, noisy: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(activation, message, logits of the client's internal classifiers)."""
        activation, exit_logits = run_blocks(self.client, self.client_exits, x)
        return activation, self.defend(activation, training, noisy), exit_logits

    @property
    def defenses(self) -> list[Defense]:
        """The privacy defenses of the cut pipeline (without its compressions)."""
        return self.playing(Defense)

    def playing(self, role: type) -> list:
        """The components of the cut pipeline that play ``role``, in pipeline order."""
        return [component for component in self.cut_pipeline if isinstance(component, role)]

    def pipeline_record(self) -> dict[str, list[dict]]:
        """The resolved settings of the cut pipeline, as config.yaml and attack.json record them."""
        described = [(isinstance(c, Defense), {"name": c.name, **c.config()}) for c in self.cut_pipeline]
        return {"defenses": [d for is_defense, d in described if is_defense],
                "transforms": [d for is_defense, d in described if not is_defense]}

    def component_metrics(self) -> dict[str, float]:
        """Every component's own metrics, prefixed with its name (e.g. ``dp_noise/epsilon_per_sample``)."""
        return {f"{c.name}/{k}": float(v) for c in self.cut_pipeline for k, v in c.metrics().items()}

    def active_transforms(self, training: bool) -> list[MessageTransform]:
        """The message transforms that run in training, or (``training=False``) as deployed."""
        return [t for t in self.playing(MessageTransform) if training or t.active_at_inference]

    def defend(self, activation: torch.Tensor, training: bool, noisy: bool = True) -> torch.Tensor:
        """The message transforms at the cut, in order: activation -> message."""
        message = activation
        for transform in self.active_transforms(training):
            message = transform.transform(message) if noisy else transform.noise_free(message)
        return message

    def wire_bytes(self, tensor: torch.Tensor, backward: bool = False, training: bool = True) -> float:
        """Bytes per sample of the message (or, ``backward``, its gradient) on the wire: serialised
        by the last compression that shaped it, else dense. A transform after a compression
        (e.g. noise added to quantised values) makes the message dense again."""
        transforms = self.active_transforms(training)
        size = transforms[-1].wire_bytes_per_sample(tensor, backward) if transforms else None
        return bytes_per_sample(tensor) if size is None else size

    @torch.no_grad()
    def all_exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Inference as deployed, every exit evaluated: internal classifiers in order, then final."""
        _, message, client_logits = self.client_forward(x, training=False)
        logits, server_logits = run_blocks(self.server, self.server_exits, message)
        return client_logits + server_logits + [logits]

    def exit_loss(self, heads: nn.ModuleDict, exit_logits: list[torch.Tensor], y: torch.Tensor):
        """sum_i tau_i * CE(f_i(x), y) over the internal classifiers of one party."""
        epochs = self.trainer.max_epochs if self._trainer is not None else 1
        return sum(self.exit_weights(name, self.current_epoch, epochs) * F.cross_entropy(logits, y)
                   for name, logits in zip(heads, exit_logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference as deployed: client, transforms active at inference, server."""
        return self.server(self.send(x, training=False)[1])

    # ------------------------------------------------------------------ training
    def configure_optimizers(self):
        client_parameters = [*self.client.parameters(), *self.client_exits.parameters()]
        server_parameters = [*self.server.parameters(), *self.server_exits.parameters()]
        if self.steps_both_parties_at_once:
            # one optimizer, a parameter group per party: the same updates as one optimizer each, and
            # one optimizer step's fixed cost instead of two (the split's overhead on small models)
            return [make_optimizer(client_parameters, self.client_optimizer_cfg,
                                   (server_parameters, self.server_optimizer_cfg))]
        client_optimizer = make_optimizer(client_parameters, self.client_optimizer_cfg)
        for privatizer in self.playing(TrainingPrivatizer):  # e.g. DP-SGD: per-sample clipping and noise
            client_optimizer = privatizer.configure_client(self, client_optimizer)
        # a remote server steps its own optimizer in its own process
        server_optimizers = [] if self.remote else [make_optimizer(server_parameters, self.server_optimizer_cfg)]
        # the trainable parts' optimizers follow client and server, in pipeline order
        return [client_optimizer, *server_optimizers, *(part.configure_optimizer() for part in self.playing(TrainablePart))]

    @property
    def steps_both_parties_at_once(self) -> bool:
        """Whether one optimizer steps client and server (one backward pass, both with the same
        optimizer), rather than one optimizer per party."""
        return self.one_backward_pass and self.client_optimizer_cfg.name == self.server_optimizer_cfg.name

    @property
    def remote(self) -> bool:
        """Whether the server partition runs in another process."""
        return isinstance(self.server, RemoteServer)

    def training_step(self, batch, batch_idx):
        x, y = batch
        # Lightning's wrapped optimizers and manual_backward: its precision plugin (e.g. bf16-mixed)
        # and strategy see every update
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        client_opt, part_optimizers = optimizers[0], optimizers[1 if self.remote else 2:]
        activation, message, client_exit_logits = self.client_forward(x, training=True)
        if self.one_backward_pass:
            loss, logits = self._step_in_one_pass(message, client_exit_logits, y, optimizers)
            self._account_step(message, loss, logits, y)
            return

        if self.remote:
            loss, logits, returned_gradient = self.server.train_step(message.detach(), y)
        else:
            sent = message.detach().requires_grad_(True)  # the network boundary, forward
            logits, server_exit_logits = run_blocks(self.server, self.server_exits, sent)
            loss = F.cross_entropy(logits, y)
            server_opt = optimizers[1]
            server_opt.zero_grad()
            self.manual_backward(loss + self.exit_loss(self.server_exits, server_exit_logits, y) if server_exit_logits else loss)
            server_opt.step()
            returned_gradient = sent.grad  # the network boundary, backward

        context = CutContext(x, y, activation, message, loss.detach())
        # d/d(message) of <message, g> is g: the client back-propagates exactly what it received.
        client_objective = (message * returned_gradient).sum()
        if client_exit_logits:
            client_objective = client_objective + self.exit_loss(self.client_exits, client_exit_logits, y)
        for term in self.playing(ClientLossTerm):
            extra = term.client_loss(context)
            if extra is not None:
                client_objective = client_objective + extra
        client_opt.zero_grad()
        parts = list(zip(self.playing(TrainablePart), part_optimizers))
        for _, part_optimizer in parts:
            # a part may read what the client's backward leaves on it (the decoder defense does),
            # so nothing of the previous step may remain there
            part_optimizer.zero_grad()
        self.manual_backward(client_objective)
        client_opt.step()

        for part, part_optimizer in parts:
            part.update(context, part_optimizer)
        self._account_step(message, loss, logits, y)

    @property
    def one_backward_pass(self) -> bool:
        """Whether a training step back-propagates client and server in one pass (module docstring)."""
        return not self.remote and not any(isinstance(c, (ClientLossTerm, TrainingPrivatizer, TrainablePart))
                                           for c in self.cut_pipeline)

    def _step_in_one_pass(self, message, client_exit_logits, y, optimizers):
        """Steps 2-4 without the boundary's detach: ∂(L + Σ_i τ_i L_i)/∂θ for both parties in one
        backward pass, L the server's loss and L_i the internal classifiers' (each party's own)."""
        logits, server_exit_logits = run_blocks(self.server, self.server_exits, message)
        loss = F.cross_entropy(logits, y)
        objective = loss
        if server_exit_logits:
            objective = objective + self.exit_loss(self.server_exits, server_exit_logits, y)
        if client_exit_logits:
            objective = objective + self.exit_loss(self.client_exits, client_exit_logits, y)
        for optimizer in optimizers:
            optimizer.zero_grad()
        self.manual_backward(objective)
        for optimizer in optimizers:
            optimizer.step()
        return loss, logits

    def _account_step(self, message, loss, logits, y) -> None:
        if not self.activation_bytes_per_sample:  # the gradient has the message's shape and dtype
            self.activation_bytes_per_sample = self.wire_bytes(message)
            self.gradient_bytes_per_sample = self.wire_bytes(message, backward=True)
        # summed, logged once per epoch: per-step logging, or a metric's update, costs more than the split
        sums = self._epoch_sums
        sums["loss"] = sums["loss"] + loss.detach() * len(y)
        sums["correct"] = sums["correct"] + (logits.detach().argmax(1) == y).sum()
        sums["count"] += len(y)

    @staticmethod
    def _zero_sums() -> dict:
        return {"loss": torch.zeros(()), "correct": torch.zeros((), dtype=torch.long), "count": 0}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.remote:  # where the server must resume when this client rejoins from the checkpoint
            checkpoint[REMOTE_STEP] = self.server.step

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        states = checkpoint.get("optimizer_states", [])
        if self.steps_both_parties_at_once and len(states) == 2:  # saved with one optimizer per party
            checkpoint["optimizer_states"] = [joined_optimizer_state(*states)]

    def on_train_epoch_start(self) -> None:
        if self.remote:  # sequential split learning: this client's turn, from the previous client's partition
            self.server.epoch_start(self.client)

    def on_train_start(self) -> None:
        if self.resuming_interrupted_run:  # set by splitpriv.train; the checkpoint's state is restored by now
            for component in self.cut_pipeline:
                component.resumed()
            self.resuming_interrupted_run = False

    def on_fit_end(self) -> None:
        for privatizer in self.playing(TrainingPrivatizer):
            privatizer.teardown(self)

    def on_train_epoch_end(self):
        sums, self._epoch_sums = self._epoch_sums, self._zero_sums()
        train_loss = sums["loss"] / max(sums["count"], 1)
        if not torch.isfinite(train_loss):  # raised before the epoch's checkpoint: the last good one stays
            raise TrainingDiverged(f"training diverged in epoch {self.current_epoch + 1}: the mean training loss is "
                                   f"{float(train_loss)}; lower the learning rate (training.client_optimizer.lr, "
                                   f"training.server_optimizer.lr) or the defense's strength")
        values = {
            "train_loss": train_loss,
            "train_acc": sums["correct"] / max(sums["count"], 1),
            "activation_bytes_per_sample": float(self.activation_bytes_per_sample),
            "gradient_bytes_per_sample": float(self.gradient_bytes_per_sample),
        }
        values.update(self.component_metrics())
        if self.remote:
            values.update(self.server.wire.take())
            self.server.epoch_end(self.client)
        self.log_dict(values, prog_bar=False)

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, batch, stage: str):
        x, y = batch
        if self.client_exits or self.server_exits:
            *exit_logits, logits = self.all_exit_logits(x)
            for name, head_logits in zip([*self.client_exits, *self.server_exits], exit_logits):
                self.log(f"{stage}_exit_{name}_acc", (head_logits.argmax(1) == y).float().mean(), on_epoch=True, on_step=False)
        else:
            logits = self(x)
        self.accuracy[f"{stage}_acc"].update(logits, y)
        self.log(f"{stage}_loss", F.cross_entropy(logits, y), on_epoch=True, on_step=False, prog_bar=True)
        self.log(f"{stage}_acc", self.accuracy[f"{stage}_acc"], on_epoch=True, on_step=False, prog_bar=True)

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")
