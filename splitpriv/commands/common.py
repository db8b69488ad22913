"""Flags shared by commands that build a run config (train, sweep)."""
from __future__ import annotations

import argparse

from splitpriv.config import RunConfig, load_run_config

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


def cut_value(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


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
    training.add_argument("--epochs", type=int)
    training.add_argument("--batch-size", type=int)
    training.add_argument("--lr", type=float, help="learning rate of both client and server optimizers")
    training.add_argument("--client-lr", type=float)
    training.add_argument("--server-lr", type=float)
    training.add_argument("--seed", type=int)
    training.add_argument("--threads", type=int, help="CPU threads for torch")
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="folder for run folders (default: runs)")
    output.add_argument("--name", help="run folder name (default: dataset-model-cut-seed)")
    output.add_argument("--wandb-mode", choices=["online", "offline", "disabled"],
                        help="default: offline unless wandb is configured with an API key")
    output.add_argument("--wandb-project")
    output.add_argument("--wandb-group")


def run_overrides(args: argparse.Namespace) -> dict:
    overrides = {key: getattr(args, dest) for dest, key in RUN_FLAGS.items() if getattr(args, dest, None) is not None}
    if getattr(args, "lr", None) is not None:
        overrides.setdefault("training.client_optimizer.lr", args.lr)
        overrides.setdefault("training.server_optimizer.lr", args.lr)
    if getattr(args, "plugin", None):
        overrides["plugins"] = args.plugin
    return overrides


def config_from_args(args: argparse.Namespace, extra_overrides: dict | None = None) -> RunConfig:
    return load_run_config(args.config, {**run_overrides(args), **(extra_overrides or {})})
