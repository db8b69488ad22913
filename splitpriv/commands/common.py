"""Flags shared by commands that build a run config (train, sweep)."""
from __future__ import annotations

import argparse

from splitpriv.config import RunConfig, load_run_config
from splitpriv.errors import SplitprivError

# flag destination -> dotted config key
RUN_FLAGS = {
    "dataset": "data.dataset", "data_root": "data.root", "data_path": "data.path", "download": "data.download",
    "proxy_dataset": "data.proxy_dataset", "proxy_fraction": "data.proxy_fraction", "proxy_size": "data.proxy_size",
    "train_size": "data.train_size", "test_size": "data.test_size",
    "model": "model.name", "cut_layer": "model.cut_layer",
    "epochs": "training.epochs", "batch_size": "training.batch_size", "threads": "training.num_threads",
    "client_lr": "training.client_optimizer.lr", "server_lr": "training.server_optimizer.lr",
    "seed": "seed", "out": "out", "name": "name",
    "wandb_mode": "wandb.mode", "wandb_project": "wandb.project", "wandb_group": "wandb.group",
}


# flag destination -> parameter of the one defense named by --defense
DEFENSE_FLAGS = ("weight", "capacity", "penalty", "ssim_threshold", "max_task_loss", "decoder_lr", "attacker_steps",
                 "mechanism", "epsilon", "delta", "clip", "output_bound",
                 "noise_multiplier", "target_epsilon", "max_grad_norm", "accountant")


# config key -> the flag that sets it, so that an error names what the user typed
FLAG_KEYS = {**{key: ("--" + dest.replace("_", "-"),) for dest, key in RUN_FLAGS.items()},
             **{f"defenses[0].{name}": ("--" + name.replace("_", "-"),) for name in DEFENSE_FLAGS},
             "defenses[0].name": ("--defense",), "plugins": ("--plugin",),
             "training.client_optimizer.lr": ("--client-lr", "--lr"), "training.server_optimizer.lr": ("--server-lr", "--lr")}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def cut_value(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def clip_value(text: str) -> float | str:
    return text if text == "median" else float(text)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML run config (see experiments/); flags override its values")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", help="digits (embedded default), mnist, fashion_mnist, kmnist, cifar10, cifar100, npz")
    data.add_argument("--data-root", help="folder holding the data sets (default: $SPLITPRIV_DATA, else ./data)")
    data.add_argument("--data-path", help="the .npz file for --dataset npz")
    data.add_argument("--download", action="store_const", const=True, help="download torchvision data sets if missing")
    data.add_argument("--proxy-dataset", help="the attacker's proxy data set (default: a held-out slice of --dataset)")
    data.add_argument("--proxy-fraction", type=float, help="share of the training split held out as proxy data")
    data.add_argument("--proxy-size", type=int, help="at most this many proxy images")
    data.add_argument("--train-size", type=int, help="at most this many private training images")
    data.add_argument("--test-size", type=int, help="at most this many private test images")
    model = parser.add_argument_group("model")
    model.add_argument("--model", help="small_cnn, mlp, vgg11, vgg16, resnet18 or a --plugin's model")
    model.add_argument("--cut-layer", type=cut_value, help="cut index or block name (default: a middle cut)")
    model.add_argument("--plugin", action="append", help="python file registering models/defenses/attacks (repeatable)")
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int, help="training epochs (>= 1; default 15)")
    training.add_argument("--batch-size", type=int, help="samples per step (>= 1; default 64)")
    training.add_argument("--lr", type=float, help="learning rate of both client and server optimizers")
    training.add_argument("--client-lr", type=float, help="learning rate of the client optimizer only")
    training.add_argument("--server-lr", type=float, help="learning rate of the server optimizer only")
    training.add_argument("--seed", type=int, help="seed of data splits, weights and shuffles (default 0)")
    training.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    defense = parser.add_argument_group("defense (one; several: a 'defenses:' list in --config)")
    defense.add_argument("--defense", help="distance_correlation, decoder_reconstruction, dp_noise, dp_sgd (replaces the config's list)")
    defense.add_argument("--weight", type=float, help="distance_correlation / decoder_reconstruction: privacy term weight >= 0")
    defense.add_argument("--capacity", help="decoder_reconstruction: simulated attacker size small, medium, large")
    defense.add_argument("--penalty", help="decoder_reconstruction: mse (survey) or ssim (ResSFL)")
    defense.add_argument("--ssim-threshold", type=float, help="decoder_reconstruction --penalty ssim: penalise SSIM above it")
    defense.add_argument("--max-task-loss", type=float, help="decoder_reconstruction: skip the privacy term when CE exceeds it")
    defense.add_argument("--decoder-lr", type=float, help="decoder_reconstruction: the simulated attacker's learning rate")
    defense.add_argument("--attacker-steps", type=int, help="decoder_reconstruction: simulated attacker updates per client step")
    defense.add_argument("--mechanism", help="dp_noise: laplace or gaussian")
    defense.add_argument("--epsilon", type=float, help="dp_noise: privacy budget per query, > 0")
    defense.add_argument("--delta", type=float, help="dp_noise (gaussian) / dp_sgd: delta in (0, 1)")
    defense.add_argument("--clip", type=clip_value, help="dp_noise: clipping norm C > 0 or 'median' (calibrated on the private data)")
    defense.add_argument("--output-bound", type=float, help="dp_noise: clamp the noisy message to [-bound, bound]")
    defense.add_argument("--noise-multiplier", type=float, help="dp_sgd: noise std / max grad norm, > 0")
    defense.add_argument("--target-epsilon", type=float, help="dp_sgd: spend at most this epsilon (instead of --noise-multiplier)")
    defense.add_argument("--max-grad-norm", type=float, help="dp_sgd: per-sample gradient clipping norm")
    defense.add_argument("--accountant", help="dp_sgd: rdp (default), prv or gdp")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="folder for run folders (default: runs)")
    output.add_argument("--name", help="run folder name (default: dataset-model-cut-seed)")
    output.add_argument("--wandb-mode", choices=["online", "offline", "disabled"],
                        help="default: offline unless wandb is configured with an API key")
    output.add_argument("--wandb-project", help="wandb project (default: splitpriv)")
    output.add_argument("--wandb-group", help="wandb group of the run(s)")


def run_overrides(args: argparse.Namespace) -> dict:
    overrides = {key: getattr(args, dest) for dest, key in RUN_FLAGS.items() if getattr(args, dest, None) is not None}
    if getattr(args, "lr", None) is not None:
        overrides.setdefault("training.client_optimizer.lr", args.lr)
        overrides.setdefault("training.server_optimizer.lr", args.lr)
    if getattr(args, "plugin", None):
        overrides["plugins"] = args.plugin
    return overrides


def defense_spec_from_args(args: argparse.Namespace) -> list[dict] | None:
    """``--defense NAME --epsilon 8 ...`` -> ``[{name: NAME, epsilon: 8, ...}]``; None without --defense.

    Parameters the named defense does not take are refused when the defense is built."""
    given = {flag: getattr(args, flag) for flag in DEFENSE_FLAGS if getattr(args, flag, None) is not None}
    if getattr(args, "defense", None) is None:
        if given:
            flag = "--" + next(iter(given)).replace("_", "-")
            raise SplitprivError(f"{flag} sets a defense parameter: name the defense with --defense "
                                 f"(e.g. --defense dp_noise {flag} ...)")
        return None
    return [{"name": args.defense, **given}]


def config_from_args(args: argparse.Namespace, extra_overrides: dict | None = None) -> RunConfig:
    overrides = run_overrides(args)
    defenses = defense_spec_from_args(args)
    if defenses is not None:
        overrides["defenses"] = defenses
    return load_run_config(args.config, {**overrides, **(extra_overrides or {})})
