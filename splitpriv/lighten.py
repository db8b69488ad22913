"""Lighter client partitions: distillation into a smaller student, magnitude pruning, int8.

Each variant replaces the trained client of a run (the server and the defenses at the cut stay
as trained) and is measured against the original: parameters (non-zero ones, so pruning shows),
serialised size, FLOPs per sample (``torch.utils.flop_counter``), measured CPU latency of the client
(median over repeated single-sample forwards on this machine) and private-test accuracy of the
deployed split model.

* ``distill`` - knowledge distillation (Hinton et al. 2015) into a student with the teacher's
  layout and ``width`` of its channels/features (its last layer keeps the message shape, so the
  server is unchanged). Objective, with z = message, T = ``temperature``, w = ``message_weight``::

      L = w * MSE(z_student, z_teacher) + (1 - w) * T^2 * KL(softmax(s(z_teacher)/T) || softmax(s(z_student)/T))

  where s is the (frozen) server.
* ``prune`` - global L1-magnitude unstructured pruning (``torch.nn.utils.prune``) of ``amount`` of
  the client's conv/linear weights, no fine-tuning. Dense FLOPs and latency do not drop: the
  zeros are stored and multiplied unless a sparse kernel is used; the non-zero count does.
* ``int8`` - post-training static int8 quantisation of the client (``torch.ao.quantization`` FX
  mode, calibrated on private training batches); FLOPs are the same count, run as int8.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
import io
import statistics
import time
from dataclasses import asdict, dataclass

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from splitpriv.errors import ConfigError, SplitprivError
from splitpriv.experiment import quiet_lightning

METHODS = ("distill", "prune", "int8")


@dataclass
class PartitionMeasure:
    method: str
    parameters: int  # non-zero parameters
    size_bytes: int  # the serialised state dict
    flops: int  # per sample, forward
    latency_ms: float  # median single-sample forward on this CPU
    accuracy: float  # private test set, deployed split model
    accuracy_drop: float = 0.0  # original accuracy - this one


# ----------------------------------------------------------------------------- measuring


def serialised_bytes(module: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def nonzero_parameters(module: nn.Module) -> int:
    return sum(int((p != 0).sum()) for p in module.state_dict().values() if isinstance(p, torch.Tensor) and p.is_floating_point())


def flops_per_sample(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(torch.zeros(1, *input_shape))
    return counter.get_total_flops()


def latency_ms(module: nn.Module, input_shape: tuple[int, ...], repeats: int = 50, warmup: int = 5) -> float:
    x = torch.randn(1, *input_shape)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            started = time.perf_counter()
            module(x)
            if i >= warmup:
                times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times)


@torch.no_grad()
def split_accuracy(client: nn.Module, split_module, dataset) -> float:
    """Accuracy of ``client`` -> defenses at inference -> the run's server."""
    correct = total = 0
    for x, y in DataLoader(dataset, batch_size=512):
        logits = split_module.server(split_module.defend(client(x), training=False))
        correct += int((logits.argmax(1) == y).sum())
        total += len(y)
    return correct / total


def measure(method: str, client: nn.Module, run, float_client: nn.Module | None = None) -> PartitionMeasure:
    """``float_client``: the float model whose FLOPs ``client`` runs (for int8 clients)."""
    shape = run.data.info.input_shape
    parameters = nonzero_parameters(float_client if float_client is not None else client)
    return PartitionMeasure(method, parameters, serialised_bytes(client), flops_per_sample(float_client or client, shape),
                            latency_ms(client, shape), split_accuracy(client, run.module, run.data.dataset("private_test")))


# ----------------------------------------------------------------------------- distillation


def student_of(client: nn.Sequential, input_shape: tuple[int, ...], width: float) -> nn.Sequential:
    """The client's layout with ``width`` of every hidden conv/linear width; same output shape."""
    layers = list(client.named_children())
    shrinkable = [i for i, (_, m) in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]
    student = []
    for i, (name, layer) in enumerate(layers):
        keep = i == shrinkable[-1] if shrinkable else True
        if isinstance(layer, nn.Conv2d) and layer.groups == 1:
            out = layer.out_channels if keep else max(1, round(width * layer.out_channels))
            layer = nn.LazyConv2d(out, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=layer.bias is not None)
        elif isinstance(layer, nn.Linear):
            layer = nn.LazyLinear(layer.out_features if keep else max(1, round(width * layer.out_features)), bias=layer.bias is not None)
        elif isinstance(layer, nn.BatchNorm2d):
            layer = nn.LazyBatchNorm2d()
        elif any(True for _ in layer.parameters()):
            raise SplitprivError(f"distillation builds students of clients made of Conv2d, Linear, BatchNorm2d and "
                                 f"parameter-free layers; block '{name}' is a {type(layer).__name__}")
        else:
            layer = copy.deepcopy(layer)
        student.append((name, layer))
    student = nn.Sequential(OrderedDict(student))
    with torch.no_grad():
        student(torch.zeros(2, *input_shape))  # materialise the lazy layers
    return student


class Distillation(L.LightningModule):
    """The student learns the teacher client's messages and, through the frozen server, its logits."""

    def __init__(self, student: nn.Module, teacher: nn.Module, server: nn.Module, temperature: float,
                 message_weight: float, lr: float):
        super().__init__()
        self.student = student
        # teacher and server are frozen and not registered: only the student is trained and saved
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "server", server)
        self.temperature, self.message_weight, self.lr = temperature, message_weight, lr

    def training_step(self, batch, batch_idx):
        x, _ = batch
        with torch.no_grad():
            teacher_message = self.teacher(x)
            teacher_logits = self.server(teacher_message)
        message = self.student(x)
        t = self.temperature
        kl = F.kl_div(F.log_softmax(self.server(message) / t, 1), F.log_softmax(teacher_logits / t, 1),
                      log_target=True, reduction="batchmean")
        loss = self.message_weight * F.mse_loss(message, teacher_message) + (1 - self.message_weight) * t * t * kl
        self.log("distill_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.student.parameters(), lr=self.lr)


def distill(run, width: float = 0.5, epochs: int = 10, temperature: float = 4.0, message_weight: float = 0.5,
            lr: float = 1e-3, batch_size: int = 64) -> nn.Sequential:
    """A student client distilled from ``run``'s client (see the module docstring)."""
    check_fraction("width", width, "a number in (0, 1): the share of hidden channels/features the student keeps")
    check_fraction("message_weight", message_weight, "a number in [0, 1]", low_open=False, high_open=False)
    if temperature <= 0:
        raise ConfigError("temperature", temperature, "a number > 0")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError("epochs", epochs, "an integer >= 1")
    torch.manual_seed(run.config.seed)
    teacher = run.client.eval()
    server = run.module.server.eval()
    for p in [*teacher.parameters(), *server.parameters()]:
        p.requires_grad_(False)
    student = student_of(teacher, run.data.info.input_shape, width)
    loader = DataLoader(run.data.dataset("private_train"), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(run.config.seed))
    quiet_lightning()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Distillation(student.train(), teacher, server, temperature, message_weight, lr), loader)
    return student.eval()


# ----------------------------------------------------------------------------- pruning and int8


def prune_magnitude(client: nn.Module, amount: float = 0.5) -> nn.Module:
    """A copy of ``client`` with ``amount`` of its conv/linear weights (smallest |w|, globally) zeroed."""
    from torch.nn.utils import prune

    check_fraction("amount", amount, "a number in (0, 1): the share of weights set to zero")
    pruned = copy.deepcopy(client)
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    if not targets:
        raise SplitprivError("the client has no Conv2d or Linear weights to prune")
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)  # make the zeros permanent
    return pruned


def quantize_int8(client: nn.Module, calibration: DataLoader, batches: int = 8) -> nn.Module:
    """Post-training static int8 quantisation (FX graph mode), calibrated on ``batches`` batches."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    example = next(iter(calibration))[0][:1]
    prepared = prepare_fx(copy.deepcopy(client).eval(), get_default_qconfig_mapping(), (example,))
    with torch.no_grad():
        for i, (x, _) in enumerate(calibration):
            if i >= batches:
                break
            prepared(x)
    return convert_fx(prepared)


def check_fraction(key: str, value, allowed: str, low_open: bool = True, high_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        raise ConfigError(key, value, allowed)


# ----------------------------------------------------------------------------- front door


def lighten(run, methods=METHODS, width: float = 0.5, amount: float = 0.5, epochs: int = 10) -> list[dict]:
    """Measure the original client and each lighter variant of ``run``'s client."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError("methods", unknown[0], f"any of {list(METHODS)}")
    check_fraction("width", width, "a number in (0, 1)")
    check_fraction("amount", amount, "a number in (0, 1)")
    original = measure("original", run.client.eval(), run)
    measures = [original]
    for method in methods:
        if method == "distill":
            measures.append(measure(method, distill(run, width, epochs), run))
        elif method == "prune":
            measures.append(measure(method, prune_magnitude(run.client, amount), run))
        else:
            loader = DataLoader(run.data.dataset("private_train"), batch_size=64)
            measures.append(measure(method, quantize_int8(run.client, loader), run, float_client=run.client))
    for m in measures:
        m.accuracy_drop = original.accuracy - m.accuracy
    return [asdict(m) for m in measures]


def format_table(rows: list[dict]) -> str:
    header = f"{'method':<10}{'params':>10}{'size KiB':>10}{'FLOPs':>12}{'latency ms':>12}{'accuracy':>10}{'drop':>8}"
    lines = [header] + [f"{r['method']:<10}{r['parameters']:>10}{r['size_bytes'] / 1024:>10.1f}{r['flops']:>12}"
                        f"{r['latency_ms']:>12.3f}{r['accuracy']:>10.4f}{r['accuracy_drop']:>8.4f}" for r in rows]
    return "\n".join(lines)
