"""Split models: every cut of every built-in model computes exactly the whole model."""
import pytest
import torch
from torch import nn

from splitpriv.errors import ConfigError
from splitpriv.models import MODELS, SplitModel, build_model, register_model

# (model, in_channels, image_size): every built-in model on the input it is meant for
BUILT_IN = [
    ("small_cnn", 1, 8), ("small_cnn", 1, 28), ("small_cnn", 3, 32), ("mlp", 1, 8), ("mlp", 3, 32),
    ("vgg11", 3, 32), ("vgg11_bn", 3, 32), ("vgg16", 3, 32), ("resnet18", 3, 32),
]


def test_every_built_in_model_is_covered():
    built_in = {name for name, builder in MODELS.items() if builder.__module__ == "splitpriv.models"}
    assert {name for name, _, _ in BUILT_IN} == built_in


@pytest.mark.parametrize("name,channels,size", BUILT_IN)
def test_split_is_bit_exact_at_every_cut(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, 10, channels, size).eval()
    x = torch.randn(3, channels, size, size)
    with torch.no_grad():
        expected = model(x)
        cuts = model.cut_points((channels, size, size))
        assert len(cuts) == model.num_cuts >= 2
        for cut in cuts:
            client, server = model.split(cut.index)
            message = client(x)
            assert tuple(message.shape[1:]) == cut.output_shape
            assert torch.equal(server(message), expected), f"{name} cut {cut.index} ({cut.name})"


@pytest.mark.parametrize("name,channels,size", [case for case in BUILT_IN if case[2] == 32])
def test_the_server_back_propagates_to_the_message_it_receives_at_every_cut(name, channels, size):
    """The split step hands the server the message as a leaf that requires its gradient; an in-place
    first layer (VGG's ReLU(inplace=True) after a conv cut) must not break that."""
    torch.manual_seed(0)
    model = build_model(name, 10, channels, size)
    x = torch.randn(2, channels, size, size)
    for cut in model.cut_points((channels, size, size)):
        client, server = model.split(cut.index)
        sent = client(x).detach().requires_grad_(True)
        server(sent).sum().backward()
        assert sent.grad is not None and sent.grad.abs().sum() > 0, f"{name} cut {cut.index} ({cut.name})"


@pytest.mark.parametrize("name,channels,size", BUILT_IN[:3])
def test_split_parts_share_parameters_with_the_model(name, channels, size):
    model = build_model(name, 10, channels, size)
    client, server = model.split(model.default_cut())
    model_params = {id(p) for p in model.parameters()}
    part_params = {id(p) for p in client.parameters()} | {id(p) for p in server.parameters()}
    assert part_params == model_params


def test_small_cnn_on_28x28_is_the_classic_mnist_network():
    model = build_model("small_cnn", 10, 1, 28)
    layers = [type(b).__name__ for b in model.blocks]
    assert layers == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear"]
    assert (model.blocks.conv1.out_channels, model.blocks.conv2.out_channels, model.blocks.fc1.out_features) == (32, 64, 128)
    assert model.blocks.fc1.in_features == 64 * 12 * 12
    assert sum(p.numel() for p in model.parameters()) == 1_199_882  # the PyTorch MNIST example's count


def test_vgg16_cuts_are_every_feature_layer():
    model = build_model("vgg16", 10, 3, 32)
    cuts = model.cut_points((3, 32, 32))
    assert len(cuts) == 31  # 13 conv + 13 ReLU + 5 max-pool
    assert [c.name.split("_")[-1] for c in cuts].count("pool") == 5
    assert cuts[0].output_shape == (64, 32, 32) and cuts[-1].output_shape == (512, 1, 1)


def test_resnet18_cuts_are_residual_block_boundaries():
    model = build_model("resnet18", 10, 3, 32)
    names = [c.name for c in model.cut_points((3, 32, 32))]
    assert names == ["stem"] + [f"layer{l}_{i}" for l in range(1, 5) for i in range(2)]


@pytest.mark.parametrize("bad_cut", [-1, 8, 99, "conv9"])
def test_invalid_cut_lists_the_valid_cuts(bad_cut):
    model = build_model("small_cnn", 10, 1, 8)
    with pytest.raises(ValueError) as error:
        model.split(bad_cut)
    assert "0=conv1" in str(error.value) and "7=relu3" in str(error.value)


def test_cut_by_name_equals_cut_by_index():
    model = build_model("small_cnn", 10, 1, 8)
    assert model.cut_index("pool") == 4 and model.cut_name(4) == "pool"


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="model.name"):
        build_model("vgg99", 10, 3, 32)


def test_registered_sequential_becomes_a_split_model():
    @register_model("tiny_plugin_mlp")
    def tiny(num_classes, in_channels, image_size):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 16), nn.ReLU(), nn.Linear(16, num_classes))

    model = build_model("tiny_plugin_mlp", 10, 1, 8)
    assert isinstance(model, SplitModel) and [c.name for c in model.cut_points((1, 8, 8))] == ["0", "1", "2"]


@pytest.mark.parametrize("name", ["vgg11", "vgg16"])
def test_vgg_keeps_the_signal_through_its_convolutions(name):
    """torchvision's VGG init: with PyTorch's default init the feature scale fell ~10x lower (0.006
    of the input's) and training on CIFAR-10 sat at chance; with it, 2 epochs reach 0.196 (README)."""
    torch.manual_seed(0)
    model = build_model(name, 10, 3, 32).eval()
    client, _ = model.split(len(model.cut_points((3, 32, 32))) - 1)  # all of features
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert float(client(x).std() / x.std()) > 0.02
