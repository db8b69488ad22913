"""The command line: help, and every bad input gives one clear message and exit code 2."""
import pytest
import torch

from splitpriv.cli import COMMANDS, main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: splitpriv " + command)
    options = [line.split()[0] for line in out.splitlines() if line.startswith("  -")]
    undocumented = [line for line in out.splitlines() if line.startswith("  --") and len(line.split()) <= 2
                    and not _continued(out, line)]
    assert options and not undocumented, f"options without help: {undocumented}"


def _continued(out: str, line: str) -> bool:
    """argparse puts the help of a long option on the next line."""
    lines = out.splitlines()
    following = lines[lines.index(line) + 1] if lines.index(line) + 1 < len(lines) else ""
    return following.startswith(" " * 10) and not following.strip().startswith("-")


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "attack", "sweep", "profile", "plan"):
        assert command in out


@pytest.mark.parametrize(
    "yaml_text,expected",
    [
        ("epochs: 3\n", "'epochs'"),  # unknown top-level key (belongs under training)
        ("training:\n  epochs: three\n", "'training.epochs': 'three'; allowed: int"),
        ("training:\n  epochs: 0\n", "'training.epochs': 0; allowed: an integer in [1, 100,000]"),
        ("training:\n  client_optimizer:\n    name: rmsprop\n", "'training.client_optimizer.name'"),
        ("data:\n  proxy_fraction: 1.5\n", "'data.proxy_fraction': 1.5"),
        ("data:\n  dataset: imagenet\n", "'data.dataset': 'imagenet'"),
        ("model:\n  name: vgg99\n", "'model.name': 'vgg99'"),
        ("model:\n  cut_layer: 42\n", "0=conv1"),
        ("- a\n- b\n", "must hold a mapping"),
    ],
)
def test_bad_config_values_fail_before_work_with_exit_2(tmp_path, capsys, yaml_text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    code, output = run_cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "runs"))
    assert code == 2
    assert expected in output and "Traceback" not in output
    assert not (tmp_path / "runs").exists()  # nothing was trained or written


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--cut-layer", "-1"], "--cut-layer (config key 'model.cut_layer'): -1"),  # the flag the user typed
        (["--cut-layer", "fc9"], "--cut-layer (config key 'model.cut_layer'): 'fc9'"),
        (["--epochs", "-2"], "--epochs (config key 'training.epochs'): -2"),
        (["--lr", "0"], "--lr (config key 'training.client_optimizer.lr'): 0.0"),
        (["--dataset", "mnist", "--data-root", "/nonexistent"], "--download"),
        (["--config", "/nonexistent.yaml"], "config file not found"),
        (["--plugin", "/nonexistent.py"], "plugin file not found"),
    ],
)
def test_bad_flags_fail_with_exit_2(tmp_path, capsys, flags, expected):
    code, output = run_cli(capsys, "train", "--out", str(tmp_path), *flags)
    assert code == 2 and expected in output and "Traceback" not in output


def test_wrong_flag_type_is_argparse_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epochs", "many"])
    assert exit_info.value.code == 2


def test_train_with_a_plugin_model(tmp_path, capsys):
    plugin = tmp_path / "my_model.py"
    plugin.write_text(
        "from torch import nn\n"
        "from splitpriv.models import register_model\n\n"
        "@register_model('my_mlp')\n"
        "def my_mlp(num_classes, in_channels, image_size):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, 32), nn.ReLU(),\n"
        "                         nn.Linear(32, num_classes))\n"
    )
    code, output = run_cli(capsys, "train", "--plugin", str(plugin), "--model", "my_mlp", "--cut-layer", "1",
                           "--epochs", "2", "--out", str(tmp_path / "runs"), "--name", "p", "--no-progress")
    assert code == 0, output
    from splitpriv import load_run

    run = load_run(tmp_path / "runs" / "p")
    assert run.cut_name == "1" and run.metrics["activation_bytes_per_sample"] == 32 * 4


PLUGIN_DEFENSE = '''
import torch
from splitpriv.cut import MessageTransform
from splitpriv.defenses import Defense, register_defense
from splitpriv.errors import ConfigError


@register_defense
class ScaledMessage(Defense, MessageTransform):
    """Multiplies the message by ``scale``; ``epochs`` only shows a name another flag already has."""

    name = "scaled_message"
    active_at_inference = True
    parameter_help = {"scale": "factor applied to the message"}

    def __init__(self, scale: float = 1.0, mode: str = "plain", epochs: int = 1, signed: bool = False):
        super().__init__()
        if not 0 < scale < 100:
            raise ConfigError("scale", scale, "a number in (0, 100)")
        self.scale, self.mode, self.epochs, self.signed = scale, mode, epochs, signed

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        return message * self.scale

    def config(self) -> dict:
        return {"scale": self.scale, "mode": self.mode, "epochs": self.epochs, "signed": self.signed}
'''


def test_a_plugin_defense_gets_flags_for_its_parameters(tmp_path, capsys):
    """No CLI edit: the plugin's __init__ parameters become flags, typed by their annotations; a name
    another option already has is prefixed with the defense's."""
    plugin = tmp_path / "scaled.py"
    plugin.write_text(PLUGIN_DEFENSE)
    with pytest.raises(SystemExit):
        main(["train", "--plugin", str(plugin), "--help"])
    help_text = capsys.readouterr().out
    assert "--scale SCALE" in help_text and "scaled_message: factor applied to the message" in help_text
    assert "--scaled-message-epochs" in help_text

    code, output = run_cli(capsys, "train", "--plugin", str(plugin), "--defense", "scaled_message", "--scale", "0.5",
                           "--mode", "loud", "--scaled-message-epochs", "3", "--signed", "true", "--epochs", "1",
                           "--train-size", "200", "--out", str(tmp_path / "runs"), "--name", "s", "--no-progress")
    assert code == 0, output
    from splitpriv.runs import load_run
    from splitpriv.store import import_plugins

    import_plugins([str(plugin)])
    run = load_run(tmp_path / "runs" / "s")
    assert run.config.defenses == [{"name": "scaled_message", "scale": 0.5, "mode": "loud", "epochs": 3, "signed": True}]
    assert run.defenses[0].scale == 0.5

    code, output = run_cli(capsys, "train", "--plugin", str(plugin), "--defense", "scaled_message", "--scale", "500",
                           "--out", str(tmp_path / "runs"), "--name", "bad", "--no-progress")
    assert code == 2 and "--scale" in output and "(0, 100)" in output and "Traceback" not in output
    code, output = run_cli(capsys, "train", "--plugin", str(plugin), "--defense", "dp_noise", "--scaled-message-epochs",
                           "3", "--out", str(tmp_path / "runs"), "--name", "bad", "--no-progress")
    assert code == 2 and "scaled_message" in output


PLUGIN_TRANSFORM = '''
import torch
from splitpriv.cut import MessageTransform
from splitpriv.transforms import register_transform


@register_transform
class RoundMessage(MessageTransform):
    """Rounds the message to ``decimals`` decimals (straight through in training); sent as fp16 when ``half``."""

    name = "round_message"
    active_at_inference = True

    def __init__(self, decimals: int = 1, half: bool = False):
        super().__init__()
        self.decimals, self.half = decimals, half

    def transform(self, message: torch.Tensor) -> torch.Tensor:
        return message + (torch.round(message, decimals=self.decimals) - message).detach()

    def wire_bytes_per_sample(self, tensor, backward=False):
        return None if backward or not self.half else 2.0 * tensor[0].numel()

    def config(self) -> dict:
        return {"decimals": self.decimals, "half": self.half}
'''


def test_a_plugin_transform_runs_after_the_defense_with_its_parameters_from_the_command_line(tmp_path, capsys):
    plugin = tmp_path / "round_message.py"
    plugin.write_text(PLUGIN_TRANSFORM)
    code, output = run_cli(capsys, "train", "--plugin", str(plugin), "--defense", "dp_noise", "--epsilon", "50",
                           "--transform", "round_message", "--decimals", "0", "--half", "true", "--epochs", "1",
                           "--train-size", "200", "--out", str(tmp_path / "runs"), "--name", "t", "--no-progress")
    assert code == 0, output
    from splitpriv.runs import load_run

    run = load_run(tmp_path / "runs" / "t")
    assert run.config.transforms == [{"name": "round_message", "decimals": 0, "half": True}]
    assert [c.name for c in run.cut_pipeline] == ["dp_noise", "round_message"]  # defenses first, then transforms
    x = run.data.dataset("private_test").tensors[0][:4]
    message = run.send(x)
    assert torch.equal(message, torch.round(message))  # the rounding is the last to shape the message
    assert run.metrics["activation_bytes_per_sample"] == 2 * message[0].numel()

    code, output = run_cli(capsys, "train", "--plugin", str(plugin), "--decimals", "2", "--out", str(tmp_path / "runs"),
                           "--name", "bad", "--no-progress")
    assert code == 2 and "--transform round_message" in output


PLUGIN_ATTACK = '''
import torch
from splitpriv.attacks import Attack, register_attack


@register_attack
class ProxyMean(Attack):
    """Answers every message with the mean proxy image, brightened by ``gain``: a floor for real attacks."""

    name = "proxy_mean"
    grants = frozenset({"proxy"})

    def __init__(self, gain: float = 1.0):
        self.gain = gain

    def fit(self, target):
        self.mean = target.proxy.images.mean(0)

    def reconstruct(self, messages):
        return (self.gain * self.mean).expand(len(messages), *self.mean.shape)

    def config(self):
        return {"gain": self.gain}
'''


def test_a_plugin_attack_runs_with_its_parameters_from_the_command_line(tmp_path, capsys):
    plugin = tmp_path / "proxy_mean.py"
    plugin.write_text(PLUGIN_ATTACK)
    code, output = run_cli(capsys, "train", "--epochs", "1", "--train-size", "200", "--out", str(tmp_path / "runs"),
                           "--name", "r", "--no-progress")
    assert code == 0, output
    code, output = run_cli(capsys, "attack", "--plugin", str(plugin), "--run", str(tmp_path / "runs" / "r"),
                           "--attacks", "proxy_mean:gain=0.5", "--samples", "32", "--classifier-max-epochs", "1")
    assert code == 0, output
    import json

    record = json.loads((tmp_path / "runs" / "r" / "attack.json").read_text())
    assert record["attacks"]["proxy_mean"]["config"] == {"gain": 0.5}
    assert record["worst_case"]["passive"]["mse_attack"] == "proxy_mean"


def test_every_flagged_config_field_is_a_train_flag_that_sets_its_config_key():
    """The config classes are the flags' single source: each field that declares a flag is parsed into
    its dotted key with its type, and its help names its default."""
    from splitpriv.cli import build_parser
    from splitpriv.commands.common import run_overrides
    from splitpriv.config import RunConfig, config_flags

    flags = config_flags(RunConfig)
    assert {"data.root", "training.client_optimizer.lr", "training.num_threads", "wandb.mode", "plugins"} <= {f.key for f in flags}
    parser = build_parser()
    for item in flags:
        if item.annotation is bool:
            argv, expected = [item.flag], True
        elif item.choices:
            argv, expected = [item.flag, item.choices[-1]], item.choices[-1]
        elif "list" in str(item.annotation):
            argv, expected = [item.flag, "a.py", item.flag, "b.py"], ["a.py", "b.py"]
        elif "int" in str(item.annotation):
            argv, expected = [item.flag, "3"], 3
        elif "float" in str(item.annotation):
            argv, expected = [item.flag, "0.25"], 0.25
        else:
            argv, expected = [item.flag, "some_value"], "some_value"
        assert run_overrides(parser.parse_args(["train", *argv])) == {item.key: expected}, item
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])


def test_a_flagged_field_added_to_a_config_class_becomes_a_flag():
    from dataclasses import dataclass, field

    from splitpriv.config import config_flags
    from splitpriv.fields import POSITIVE_INT, flag, flag_prefix

    @dataclass
    class Inner:
        rounds: int = field(default=4, metadata={**POSITIVE_INT, **flag("rounds per epoch")})
        hidden: int = 3  # no flag

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner, metadata=flag_prefix("inner-"))

    (item,) = config_flags(Outer)
    assert (item.key, item.flag, item.default, item.allowed) == ("inner.rounds", "--inner-rounds", 4, "an integer >= 1")
