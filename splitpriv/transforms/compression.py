"""Compression of the message at the cut: ``quantize``, ``topk`` and a learned ``bottleneck``.

Each is a :class:`~splitpriv.cut.MessageTransform`, not a defense (listed under ``transforms:``, applied
after the defenses' transforms, in order), and a codec: ``encode`` serialises every sample's message as
it would be sent - values, scales, indices - into ``bytes``, ``decode`` rebuilds what the server
computes with. ``wire_bytes_per_sample`` is the length of that serialisation, so the bytes
splitpriv reports are bytes that really carry the message, not a formula.

* ``quantize`` (rate kappa of the survey, Sec. 3.1.4): fp16, or affine n-bit integers (2-8 bits,
  per-sample or per-sample-and-channel scale and offset), with a straight-through estimator in
  training so the model learns under the rounding.
* ``topk``: the ``k`` largest-magnitude entries per sample; sent as k fp32 values plus k indices
  (uint8/uint16/int32, the narrowest that addresses the message). The gradient flows back only
  through the kept entries, so backward sends k fp32 values too (the client knows the indices).
* ``bottleneck`` (rate gamma, Sec. 3.1.3): a learned linear encoder on the client reduces the
  channels (or features) to ``rate`` of them; a linear decoder on the server restores them.
  Both are trained end to end with the task. The code travels in fp32, forward and backward.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitpriv.cut import MessageTransform, TrainablePart
from splitpriv.errors import ConfigError, RunStateError, SplitprivError
from splitpriv.store import read_metrics, read_run_config
from splitpriv.transforms.base import register_transform

FP32_BYTES = 4


def straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """Forward ``rounded``, backward the identity (Bengio et al. 2013's straight-through estimator)."""
    return x + (rounded - x).detach()


def _per_sample(tensor: torch.Tensor) -> list[np.ndarray]:
    return [row.detach().cpu().numpy() for row in tensor]


@register_transform
class Quantize(MessageTransform):
    """Quantise the message: ``fp16`` or affine ``bits``-bit integers.

    Affine quantisation of each group G (one sample, or one channel of one sample)::

        s = (max(G) - min(G)) / (2^b - 1),   q = round((x - min(G)) / s),   x_hat = min(G) + s * q

    with b = ``bits``. Rounding to the nearest level bounds the round-trip error:
    |x - x_hat| <= s / 2. Sent per group: the codes packed at b bits each, plus s and min(G) as
    fp32 (8 bytes).
    """

    name = "quantize"
    active_at_inference = True
    parameter_help = {"bits": "bits per value of affine integer codes", "format": "int or fp16",
                      "per_channel": "one scale per channel instead of per sample"}

    def __init__(self, bits: int | None = None, format: str = "int", per_channel: bool = False):
        super().__init__()
        if format not in ("int", "fp16"):
            raise ConfigError("format", format, "'int' (affine, with bits) or 'fp16'")
        if format == "fp16" and bits is not None:
            raise ConfigError("bits", bits, "no bit width with format fp16 (16 bits); drop 'bits' or use format int")
        bits = 8 if bits is None else bits
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError("bits", bits, "an integer bit width from 2 to 8 (use format: fp16 for 16 bits)")
        if not isinstance(per_channel, bool):
            raise ConfigError("per_channel", per_channel, "true or false")
        self.bits, self.format, self.per_channel = bits, format, per_channel

    def _groups(self, message: torch.Tensor) -> torch.Tensor:
        """(B, G, N): the message split into quantisation groups sharing one scale and offset."""
        groups = message.shape[1] if self.per_channel and message.dim() > 2 else 1
        return message.reshape(message.shape[0], groups, -1)

    def quantize(self, message: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes, scale, offset) per group; codes are integers in [0, 2^bits - 1]."""
        grouped = self._groups(message)
        offset = grouped.amin(dim=2, keepdim=True)
        span = grouped.amax(dim=2, keepdim=True) - offset
        scale = torch.where(span > 0, span / (2**self.bits - 1), torch.ones_like(span))
        codes = torch.round((grouped - offset) / scale).clamp(0, 2**self.bits - 1)
        return codes, scale, offset

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        if self.format == "fp16":
            return straight_through(message, message.half().to(message.dtype))
        codes, scale, offset = self.quantize(message.detach())
        return straight_through(message, (offset + scale * codes).reshape(message.shape))

    # ------------------------------------------------------------------ the codec
    def encode(self, message: torch.Tensor) -> list[bytes]:
        if self.format == "fp16":
            return [row.astype(np.float16).tobytes() for row in _per_sample(message)]
        codes, scale, offset = (t.cpu() for t in self.quantize(message.detach()))
        payloads = []
        for sample_codes, sample_scale, sample_offset in zip(codes, scale, offset):
            bits = np.unpackbits(sample_codes.flatten().numpy().astype(np.uint8)[:, None], axis=1)[:, 8 - self.bits:]
            header = torch.stack([sample_scale.flatten(), sample_offset.flatten()], 1).numpy().astype(np.float32)
            payloads.append(header.tobytes() + np.packbits(bits.flatten()).tobytes())
        return payloads

    def decode(self, payloads: list[bytes], shape: tuple[int, ...]) -> torch.Tensor:
        """Per-sample ``shape`` -> the (B, *shape) message the server computes with."""
        if self.format == "fp16":
            return torch.stack([torch.from_numpy(np.frombuffer(p, np.float16).astype(np.float32)).reshape(shape) for p in payloads])
        groups = shape[0] if self.per_channel and len(shape) > 1 else 1
        per_group = math.prod(shape) // groups
        samples = []
        for payload in payloads:
            header = np.frombuffer(payload[: 8 * groups], np.float32).reshape(groups, 2)
            bits = np.unpackbits(np.frombuffer(payload[8 * groups:], np.uint8))[: groups * per_group * self.bits]
            padded = np.zeros((groups * per_group, 8), np.uint8)
            padded[:, 8 - self.bits:] = bits.reshape(-1, self.bits)
            codes = np.packbits(padded, axis=1).reshape(groups, per_group).astype(np.float32)
            samples.append(torch.from_numpy(header[:, 1:] + header[:, :1] * codes).reshape(shape))
        return torch.stack(samples)

    def wire_bytes_per_sample(self, tensor: torch.Tensor, backward: bool = False) -> float | None:
        if backward:  # the straight-through gradient comes back as dense fp32
            return None
        return float(np.mean([len(p) for p in self.encode(tensor)]))

    def config(self) -> dict:
        return {"bits": 16 if self.format == "fp16" else self.bits, "format": self.format, "per_channel": self.per_channel}


@register_transform
class TopK(MessageTransform):
    """Keep the ``k`` largest-magnitude entries of each sample's message, zero the rest."""

    name = "topk"
    active_at_inference = True
    parameter_help = {"k": "entries kept per sample"}

    def __init__(self, k: int = 64):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise ConfigError("k", k, "an integer >= 1 (entries kept per sample)")
        self.k = k

    def build(self, module, input_shape) -> None:
        elements = math.prod(_message_shape(module, input_shape))
        if self.k > elements:
            raise ConfigError("k", self.k, f"at most {elements}, the entries of one message at this cut")

    def _kept(self, message: torch.Tensor) -> torch.Tensor:
        """Per sample, the flat indices of the ``k`` largest magnitudes."""
        return message.flatten(1).abs().topk(min(self.k, message[0].numel()), dim=1).indices

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        flat = message.flatten(1)
        mask = torch.zeros_like(flat).scatter_(1, self._kept(message.detach()), 1.0)
        return (flat * mask).reshape(message.shape)

    @staticmethod
    def index_dtype(elements: int) -> type:
        return np.uint8 if elements <= 2**8 else np.uint16 if elements <= 2**16 else np.int32

    def encode(self, message: torch.Tensor) -> list[bytes]:
        flat = message.detach().cpu().flatten(1)
        indices = self._kept(flat)
        index_dtype = self.index_dtype(flat.shape[1])
        return [flat[i, idx].numpy().astype(np.float32).tobytes() + idx.numpy().astype(index_dtype).tobytes()
                for i, idx in enumerate(indices)]

    def decode(self, payloads: list[bytes], shape: tuple[int, ...]) -> torch.Tensor:
        elements = math.prod(shape)
        k = min(self.k, elements)
        samples = []
        for payload in payloads:
            values = torch.from_numpy(np.frombuffer(payload[: FP32_BYTES * k], np.float32).copy())
            indices = torch.from_numpy(np.frombuffer(payload[FP32_BYTES * k:], self.index_dtype(elements)).astype(np.int64))
            samples.append(torch.zeros(elements).index_put_((indices,), values).reshape(shape))
        return torch.stack(samples)

    def wire_bytes_per_sample(self, tensor: torch.Tensor, backward: bool = False) -> float | None:
        if backward:  # gradients only at the kept positions, whose indices the client already has
            return float(FP32_BYTES * min(self.k, tensor[0].numel()))
        return float(np.mean([len(p) for p in self.encode(tensor)]))

    def config(self) -> dict:
        return {"k": self.k}


@register_transform
class Bottleneck(MessageTransform, TrainablePart):
    """A learned bottleneck: encoder (client) to ``rate`` of the channels, decoder (server) back.

    4-D messages (C, H, W) are reduced by 1x1 convolutions to max(1, round(rate * C)) channels;
    flat messages (D,) by linear layers to max(1, round(rate * D)) features. So the code is
    ``rate`` of the message (up to rounding) and so are its bytes, forward and backward.
    The transform returns the decoder's output - what the server's layers compute with; what
    crosses the network is the code (``encode``).
    """

    name = "bottleneck"
    active_at_inference = True
    parameter_help = {"rate": "share of the channels (or features) the code keeps", "lr": "learning rate of the bottleneck"}

    def __init__(self, rate: float = 0.25, lr: float = 1e-3):
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ConfigError("rate", rate, "a number in (0, 1]: the share of channels (or features) kept")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            raise ConfigError("lr", lr, "a learning rate > 0")
        self.rate, self.lr = float(rate), float(lr)
        self.encoder: nn.Module | None = None
        self.decoder: nn.Module | None = None

    def code_width(self, width: int) -> int:
        return max(1, round(self.rate * width))

    def build(self, module, input_shape) -> None:
        """Shape the encoder and decoder from the message at this cut (in training and load_run)."""
        message_shape = _message_shape(module, input_shape)
        conv = len(message_shape) == 3
        width = message_shape[0] if conv else math.prod(message_shape)
        layer = (lambda i, o: nn.Conv2d(i, o, 1)) if conv else nn.Linear
        self.encoder, self.decoder = layer(width, self.code_width(width)), layer(self.code_width(width), width)

    def _code(self, message: torch.Tensor) -> torch.Tensor:
        if self.encoder is None:
            raise RuntimeError("bottleneck used before setup(): its layers are shaped from the message")
        return self.encoder(message if message.dim() in (2, 4) else message.flatten(1))

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        return self.decoder(self._code(message)).reshape(message.shape)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def update(self, context, optimizer) -> None:
        # the client's backward already filled the encoder's and decoder's gradients
        optimizer.step()
        optimizer.zero_grad()

    def encode(self, message: torch.Tensor) -> list[bytes]:
        """The code of each sample's (pre-bottleneck) activation, fp32."""
        with torch.no_grad():
            return [row.astype(np.float32).tobytes() for row in _per_sample(self._code(message))]

    def wire_bytes_per_sample(self, tensor: torch.Tensor, backward: bool = False) -> float | None:
        """Bytes of one sample's code: the decoder output has the message's shape, the code
        ``code_width`` of its channels (the gradient w.r.t. the code has the same size)."""
        width = tensor.shape[1] if tensor.dim() == 4 else tensor[0].numel()
        return float(FP32_BYTES * tensor[0].numel() // width * self.code_width(width))

    def config(self) -> dict:
        return {"rate": self.rate, "lr": self.lr}


def _message_shape(module, input_shape) -> tuple[int, ...]:
    """Per-sample shape of the client's output for inputs of per-sample ``input_shape``."""
    return tuple(module.model.cut_points(input_shape)[module.cut_layer].output_shape)


@dataclass(frozen=True)
class MeasuredMessage:
    """What a trained run measured of the message at its cut (the planner's kappa or gamma)."""

    label: str  # e.g. "quantize(bits=4)"; "fp32" without compression
    model: str
    dataset: str
    cut_layer: int
    bytes_per_sample: float  # serialised, forward
    test_accuracy: float
    learned_reduction: bool  # a bottleneck only: the survey's gamma rather than kappa
    gradient_bytes_per_sample: float  # serialised, backward in training (dense for a quantiser)


def measured_message(run_path: str | Path) -> MeasuredMessage:
    """Read a trained run's config and metrics (no model is loaded)."""
    folder = Path(run_path)
    if not (folder / "metrics.json").exists():
        raise SplitprivError(f"compression run {folder}: metrics.json is missing; train it first")
    config, _ = read_run_config(folder)
    metrics = read_metrics(folder)
    specs = [*config.defenses, *config.transforms]
    label = "+".join(s["name"] + "(" + ", ".join(f"{k}={v}" for k, v in s.items() if k != "name") + ")" for s in specs)
    try:
        return MeasuredMessage(label or "fp32", config.model.name, config.data.dataset, int(metrics["cut_layer"]),
                               float(metrics["activation_bytes_per_sample"]), float(metrics["test_accuracy"]),
                               bool(specs) and all(s.get("name") == Bottleneck.name for s in specs),
                               float(metrics["gradient_bytes_per_sample"]))
    except (KeyError, TypeError, ValueError) as error:
        raise RunStateError(f"{folder / 'metrics.json'} lacks a usable {error}; retrain the run") from None