"""Split models: a network as an ordered sequence of named blocks, cut after any cut point.

The client (user device / edge) runs the blocks up to and including the cut layer; the server
(cloud) runs the rest. Only the client's output - the message - crosses the network.

Adding a model is one decorated function in one file::

    from torch import nn
    from splitpriv.models import register_model

    @register_model("tiny_mlp")
    def tiny_mlp(num_classes, in_channels, image_size):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 32),
                             nn.ReLU(), nn.Linear(32, num_classes))

A builder returns a :class:`SplitModel` or an ``nn.Sequential`` (its children become the blocks,
and every block but the last is a cut point). Pass the file to the CLI with ``--plugin FILE``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torchvision
from torch import nn

from splitpriv.errors import ConfigError
from splitpriv.registry import Registry

MODELS = Registry("model")  # name -> builder(num_classes, in_channels, image_size)
register_model = MODELS.register


def available_models() -> list[str]:
    return MODELS.names()


def build_model(name: str, num_classes: int, in_channels: int, image_size: int) -> "SplitModel":
    """Build a registered model for images of shape (in_channels, image_size, image_size)."""
    if name not in MODELS:
        raise ConfigError("model.name", name, f"one of {available_models()} (or register your own)")
    built = MODELS[name](num_classes, in_channels, image_size)
    model = built if isinstance(built, SplitModel) else SplitModel.from_sequential(built)
    model.name = name
    return model


def largest_activation_bytes(name: str, num_classes: int, input_shape: Sequence[int], batch_size: int = 1) -> int:
    """Bytes (fp32) of the input or the largest block output of ``batch_size`` samples, computed on
    the meta device, so that an absurd input shape is refused before anything is allocated."""
    with torch.device("meta"):
        model = build_model(name, num_classes, input_shape[0], input_shape[-1])
    elements = max([math.prod(input_shape), *(math.prod(shape) for shape in model._block_output_shapes(input_shape))])
    return 4 * batch_size * elements


@dataclass(frozen=True)
class CutPoint:
    """A place where the network can be cut: after block ``index`` named ``name``."""

    index: int
    name: str
    output_shape: tuple[int, ...]  # per sample, without the batch dimension

    @property
    def output_elements(self) -> int:
        return int(torch.Size(self.output_shape).numel())

    def activation_bytes(self, batch_size: int = 1, bytes_per_element: int = 4) -> int:
        """Bytes of the message for ``batch_size`` samples (fp32 by default)."""
        return batch_size * self.output_elements * bytes_per_element


class SplitModel(nn.Module):
    """An ordered sequence of named blocks; ``split(cut_layer)`` gives (client, server).

    ``cut_names`` restricts where the network may be cut (e.g. only residual-block boundaries);
    by default every block but the last is a cut point.
    """

    def __init__(self, blocks: Iterable[tuple[str, nn.Module]], cut_names: Sequence[str] | None = None):
        super().__init__()
        self.blocks = nn.Sequential(OrderedDict(blocks))
        names = list(self.blocks._modules)
        if len(names) < 2:
            raise ValueError("a SplitModel needs at least two blocks so that it can be cut")
        allowed = list(cut_names) if cut_names is not None else names[:-1]
        unknown = [n for n in allowed if n not in names[:-1]]
        if unknown:
            raise ValueError(f"cut names {unknown} are not blocks before the last one: {names[:-1]}")
        self._cut_block_indices = [names.index(n) for n in allowed]
        self.name = type(self).__name__

    @classmethod
    def from_sequential(cls, sequential: nn.Sequential) -> "SplitModel":
        return cls(sequential.named_children())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    @property
    def block_names(self) -> list[str]:
        return list(self.blocks._modules)

    @property
    def num_cuts(self) -> int:
        return len(self._cut_block_indices)

    def cut_points(self, input_shape: Sequence[int]) -> list[CutPoint]:
        """Every valid cut for inputs of per-sample shape ``input_shape`` (C, H, W)."""
        shapes = self._block_output_shapes(input_shape)
        names = self.block_names
        return [CutPoint(i, names[b], shapes[b]) for i, b in enumerate(self._cut_block_indices)]

    def cut_index(self, cut_layer: int | str) -> int:
        """Normalise a cut given as index or block name to its index; clear error when invalid."""
        names = [self.block_names[b] for b in self._cut_block_indices]
        if isinstance(cut_layer, bool) or not isinstance(cut_layer, (int, str)):
            listing = ", ".join(f"{i}={n}" for i, n in enumerate(names))
            raise ConfigError("model.cut_layer", cut_layer, f"a cut index or name of {self.name}: {listing}")
        if isinstance(cut_layer, str) and not cut_layer.lstrip("-").isdigit():
            if cut_layer in names:
                return names.index(cut_layer)
        else:
            index = int(cut_layer)
            if 0 <= index < len(names):
                return index
        listing = ", ".join(f"{i}={n}" for i, n in enumerate(names))
        raise ConfigError("model.cut_layer", cut_layer, f"a cut index or name of {self.name}: {listing}")

    def split(self, cut_layer: int | str) -> tuple[nn.Sequential, nn.Sequential]:
        """(client, server) sharing parameters with this model: ``server(client(x)) == self(x)``."""
        last_client_block = self._cut_block_indices[self.cut_index(cut_layer)]
        items = list(self.blocks.named_children())
        client = nn.Sequential(OrderedDict(items[: last_client_block + 1]))
        server = nn.Sequential(OrderedDict(items[last_client_block + 1 :]))
        # the server receives the message as a leaf that requires its gradient (the network boundary):
        # an in-place operation on it, such as VGG's ReLU(inplace=True) after a conv cut, would fail
        for module in server[:1].modules():
            if getattr(module, "inplace", False):
                module.inplace = False
        return client, server

    def cut_name(self, cut_layer: int | str) -> str:
        return self.block_names[self._cut_block_indices[self.cut_index(cut_layer)]]

    def default_cut(self) -> int:
        """A middle cut: the default when the user names none."""
        return self.num_cuts // 2

    def _block_output_shapes(self, input_shape: Sequence[int]) -> list[tuple[int, ...]]:
        was_training = self.training
        self.eval()
        shapes = []
        try:
            with torch.no_grad():
                h = torch.zeros(1, *input_shape, device=next(self.parameters(), torch.zeros(())).device)
                for name, block in self.blocks.named_children():
                    h = block(h)
                    shapes.append(tuple(h.shape[1:]))
        except RuntimeError as error:  # e.g. an image too small for a kernel or a pool
            raise ConfigError("model.name", f"{self.name} on inputs {tuple(input_shape)}",
                              f"an input this model can take: block {name!r} fails ({str(error).splitlines()[0][:160]})") from None
        finally:
            self.train(was_training)
        return shapes


# --------------------------------------------------------------------------- built-in models


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int, image_size: int) -> SplitModel:
    """The classic PyTorch MNIST network (conv32-conv64-pool-fc128); on tiny images (< 16 px,
    e.g. 8x8 digits) the same shape with padding 1 and half the widths."""
    tiny = image_size < 16
    c1, c2, hidden = (16, 32, 64) if tiny else (32, 64, 128)
    pad = 1 if tiny else 0
    side = (image_size - 2 * (1 - pad) * 2) // 2
    return SplitModel(
        [
            ("conv1", nn.Conv2d(in_channels, c1, 3, padding=pad)),
            ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c1, c2, 3, padding=pad)),
            ("relu2", nn.ReLU()),
            ("pool", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(c2 * side * side, hidden)),
            ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]
    )


@register_model("mlp")
def mlp(num_classes: int, in_channels: int, image_size: int) -> SplitModel:
    return SplitModel(
        [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(in_channels * image_size * image_size, 256)),
            ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(256, 128)),
            ("relu2", nn.ReLU()),
            ("fc3", nn.Linear(128, num_classes)),
        ]
    )


def _vgg(config: str, num_classes: int, in_channels: int, image_size: int, batch_norm: bool = False) -> SplitModel:
    """torchvision's VGG topology for 32x32 inputs: no 7x7 adaptive pool, a classifier on the
    512-d feature. Every layer of ``features`` (conv, BatchNorm, ReLU, pool) is a cut point."""
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs[config], batch_norm=batch_norm)
    if in_channels != 3:
        features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    side = image_size // 32  # five 2x2 pools
    if side < 1:
        raise ConfigError("model.name", f"vgg on {image_size}x{image_size}", "images of at least 32x32")
    kinds = {nn.Conv2d: "conv", nn.BatchNorm2d: "bn", nn.ReLU: "relu", nn.MaxPool2d: "pool"}
    feature_blocks = [(f"features_{i}_{kinds[type(m)]}", m) for i, m in enumerate(features)]
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(512 * side * side, 512),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(512, 512),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(512, num_classes),
    )
    # torchvision's VGG initialisation: without BatchNorm, PyTorch's default init shrinks the signal
    # through 8-13 convolutions and training sat at chance (CIFAR-10, loss ln 10 after 2 epochs)
    for module in [*features, *classifier]:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
    return SplitModel(feature_blocks + [("classifier", classifier)])


@register_model("vgg11")
def vgg11(num_classes: int, in_channels: int, image_size: int) -> SplitModel:
    return _vgg("A", num_classes, in_channels, image_size)


@register_model("vgg11_bn")
def vgg11_bn(num_classes: int, in_channels: int, image_size: int) -> SplitModel:
    """VGG-11 with BatchNorm after every convolution, the variant ResSFL (Li et al. 2022) splits."""
    return _vgg("A", num_classes, in_channels, image_size, batch_norm=True)


@register_model("vgg16")
def vgg16(num_classes: int, in_channels: int, image_size: int) -> SplitModel:
    return _vgg("D", num_classes, in_channels, image_size)


class _OutOfPlaceBasicBlock(torchvision.models.resnet.BasicBlock):
    """torchvision's BasicBlock with the residual added out of place: its in-place ``out += identity``
    modifies a layer's output, which per-sample-gradient hooks (Opacus, DP-SGD) forbid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int, image_size: int) -> SplitModel:
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool); cut points at residual-block boundaries."""
    net = torchvision.models.ResNet(_OutOfPlaceBasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    blocks: list[tuple[str, nn.Module]] = [("stem", stem)]
    for layer_name in ("layer1", "layer2", "layer3", "layer4"):
        for i, block in enumerate(getattr(net, layer_name)):
            blocks.append((f"{layer_name}_{i}", block))
    blocks.append(("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.fc)))
    return SplitModel(blocks)
