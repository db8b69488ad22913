"""Flags shared by commands that build a run config (train, sweep)."""
from __future__ import annotations

import argparse
import inspect
import types
import typing
from dataclasses import dataclass

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


@dataclass(frozen=True)
class DefenseFlag:
    """A command-line flag for a parameter of the registered defenses, derived from their ``__init__``."""

    dest: str
    flag: str  # --PARAMETER, or --DEFENSE-PARAMETER where --PARAMETER is another option's
    parameter: str
    defenses: tuple[str, ...]  # the defenses that take it


def _value_parser(annotations: list) -> typing.Callable[[str], object]:
    """argparse ``type`` for a parameter annotated ``annotations`` (one per defense that takes it)."""
    kinds = []
    for annotation in annotations:
        options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
        kinds += [kind for kind in options if kind in (bool, int, float, str) and kind not in kinds]
    kinds.sort(key=[bool, int, float, str].index)

    def parse(text: str) -> object:
        if bool in kinds and text.lower() in ("true", "false", "yes", "no", "1", "0"):
            return text.lower() in ("true", "yes", "1")
        for kind in kinds:
            if kind is not bool:
                try:
                    return kind(text)
                except ValueError:
                    continue
        raise argparse.ArgumentTypeError(f"expected {' or '.join(k.__name__ for k in kinds) or 'a value'}, got {text!r}")

    return parse


def add_defense_arguments(parser: argparse.ArgumentParser) -> list[DefenseFlag]:
    """``--defense NAME`` and one flag per parameter of every registered defense (plugins imported by
    then included): a new defense's parameters are settable without editing the CLI."""
    from splitpriv.defenses import DEFENSES

    group = parser.add_argument_group("defense (one; several: a 'defenses:' list in --config)")
    group.add_argument("--defense", help=f"{', '.join(sorted(DEFENSES))} (replaces the config's list)")
    taken = set(parser._option_string_actions)
    by_parameter: dict[str, list[tuple[str, inspect.Parameter, object, str | None]]] = {}
    for name, cls in sorted(DEFENSES.items()):
        hints = typing.get_type_hints(cls.__init__)
        for parameter in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            by_parameter.setdefault(parameter.name, []).append(
                (name, parameter, hints.get(parameter.name, str), cls.parameter_help.get(parameter.name)))
    flags = []
    for parameter, takers in by_parameter.items():
        plain = "--" + parameter.replace("_", "-")
        groups = [takers] if plain not in taken else [[taker] for taker in takers]
        for share in groups:
            flag = plain if plain not in taken else f"--{share[0][0]}-{parameter}".replace("_", "-")
            dest = flag[2:].replace("-", "_")
            helps = {n: h or parameter.replace("_", " ") for n, _, _, h in share}
            text = f"{', '.join(helps)}: {next(iter(helps.values()))}" if len(set(helps.values())) == 1 else \
                "; ".join(f"{n}: {h}" for n, h in helps.items())
            defaults = {repr(p.default) for _, p, _, _ in share if p.default not in (p.empty, None)}
            default = f" (default {defaults.pop()})" if len(defaults) == 1 else ""
            group.add_argument(flag, dest=dest, type=_value_parser([a for _, _, a, _ in share]), help=text + default)
            flags.append(DefenseFlag(dest, flag, parameter, tuple(n for n, *_ in share)))
    return flags


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
    output = parser.add_argument_group("output")
    output.add_argument("--out", help="folder for run folders (default: runs)")
    output.add_argument("--name", help="run folder name (default: dataset-model-cut-seed)")
    output.add_argument("--wandb-mode", choices=["online", "offline", "disabled"],
                        help="default: offline unless wandb is configured with an API key")
    output.add_argument("--wandb-project", help="wandb project (default: splitpriv)")
    output.add_argument("--wandb-group", help="wandb group of the run(s)")
    flags = add_defense_arguments(parser)
    parser.set_defaults(defense_flags=flags, flag_keys=flag_keys(flags))


def flag_keys(defense_flags: list[DefenseFlag]) -> dict[str, tuple[str, ...]]:
    """Config key -> the flags that set it, so that an error names what the user typed."""
    keys = {key: ("--" + dest.replace("_", "-"),) for dest, key in RUN_FLAGS.items()}
    for flag in defense_flags:
        keys[f"defenses[0].{flag.parameter}"] = keys.get(f"defenses[0].{flag.parameter}", ()) + (flag.flag,)
    return keys | {"defenses[0].name": ("--defense",), "plugins": ("--plugin",),
                   "training.client_optimizer.lr": ("--client-lr", "--lr"), "training.server_optimizer.lr": ("--server-lr", "--lr")}


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
    given = [flag for flag in args.defense_flags if getattr(args, flag.dest, None) is not None]
    if getattr(args, "defense", None) is None:
        if given:
            raise SplitprivError(f"{given[0].flag} sets a defense parameter: name the defense with --defense "
                                 f"(e.g. --defense {given[0].defenses[0]} {given[0].flag} ...)")
        return None
    for flag in given:
        if flag.flag != "--" + flag.parameter.replace("_", "-") and args.defense not in flag.defenses:
            raise SplitprivError(f"{flag.flag} sets a parameter of {', '.join(flag.defenses)}, not of --defense {args.defense}")
    return [{"name": args.defense, **{flag.parameter: getattr(args, flag.dest) for flag in given}}]


def config_from_args(args: argparse.Namespace, extra_overrides: dict | None = None) -> RunConfig:
    overrides = run_overrides(args)
    defenses = defense_spec_from_args(args)
    if defenses is not None:
        overrides["defenses"] = defenses
    return load_run_config(args.config, {**overrides, **(extra_overrides or {})})
