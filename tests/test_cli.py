"""The command line: help, and every bad input gives one clear message and exit code 2."""
import pytest

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
