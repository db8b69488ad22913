"""Flags shared by commands that build a run config (train, sweep)."""
from __future__ import annotations

import argparse
import inspect
import types
import typing
from dataclasses import dataclass

from splitpriv.config import ConfigFlag, RunConfig, config_flags, load_run_config
from splitpriv.defenses import DEFENSES
from splitpriv.errors import SplitprivError
from splitpriv.transforms import TRANSFORMS

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


@dataclass(frozen=True)
class ComponentFlag:
    """A command-line flag for a parameter of registered components (defenses or transforms), derived
    from their ``__init__``."""

    dest: str
    flag: str  # --PARAMETER, or --COMPONENT-PARAMETER where --PARAMETER is another option's
    parameter: str
    components: tuple[str, ...]  # the components that take it


@dataclass(frozen=True)
class ComponentOption:
    """``--defense NAME`` or ``--transform NAME``: one component of a registry, and its parameters' flags."""

    option: str  # "defense" or "transform"
    config_key: str  # "defenses" or "transforms"
    flags: tuple[ComponentFlag, ...]


def _value_parser(annotations: list) -> typing.Callable[[str], object]:
    """argparse ``type`` for a parameter annotated ``annotations`` (one per component that takes it)."""
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


def add_component_arguments(parser: argparse.ArgumentParser, registry: dict[str, type], option: str,
                            config_key: str, title: str) -> ComponentOption:
    """``--OPTION NAME`` and one flag per parameter of every class in ``registry`` (plugins imported by
    then included): a new defense's or transform's parameters are settable without editing the CLI.
    A parameter whose plain flag another option has is ``--COMPONENT-PARAMETER``."""
    group = parser.add_argument_group(title)
    group.add_argument(f"--{option}", help=f"{', '.join(sorted(registry))} (replaces the config's '{config_key}:' list)")
    taken = set(parser._option_string_actions)
    by_parameter: dict[str, list[tuple[str, inspect.Parameter, object, str | None]]] = {}
    for name, cls in sorted(registry.items()):
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
            flags.append(ComponentFlag(dest, flag, parameter, tuple(n for n, *_ in share)))
    return ComponentOption(option, config_key, tuple(flags))


SECTIONS = {"data": "data", "model": "model", "training": "training", "seed": "training", "plugins": "model"}


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config``, one flag per config field that declares one (:func:`splitpriv.config.config_flags`:
    help, type, choices, default and what is allowed all come from the config classes), ``--lr`` for both
    optimizers, and ``--defense``/``--transform`` with their parameters."""
    parser.add_argument("--config", help="YAML run config (see experiments/); flags override its values")
    groups = {title: parser.add_argument_group(title) for title in ("data", "model", "training", "output")}
    flags = config_flags(RunConfig)
    for item in flags:
        group = groups[SECTIONS.get(item.key.split(".")[0], "output")]
        group.add_argument(item.flag, dest=item.dest, help=flag_help(item), **flag_kind(item))
    groups["training"].add_argument("--lr", type=float, help="learning rate of both client and server optimizers")
    options = (add_component_arguments(parser, DEFENSES, "defense", "defenses",
                                       "defense (one; several: a 'defenses:' list in --config)"),
               add_component_arguments(parser, TRANSFORMS, "transform", "transforms",
                                       "transform: a compression of the message, after the defense (one; several: "
                                       "a 'transforms:' list in --config)"))
    parser.set_defaults(component_options=options, run_flags=flags, flag_keys=flag_keys(flags, options))


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """What every command that trains a run takes: the run's flags, ``--force`` and ``--no-progress``."""
    add_run_arguments(parser)
    parser.add_argument("--force", action="store_true", help="overwrite a finished run folder of the same --name")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def flag_help(item: ConfigFlag) -> str:
    shown = [item.allowed] if item.allowed and not item.choices else []
    if item.default is not None and item.default is not False and item.default != []:
        shown.append(f"default {item.default}")
    return item.help + (f" ({'; '.join(shown)})" if shown else "")


def flag_kind(item: ConfigFlag) -> dict:
    """argparse's ``type``/``action``/``choices`` for a config field's flag, from its annotation."""
    if item.annotation is bool and item.default is False:
        return {"action": "store_const", "const": True}
    if typing.get_origin(item.annotation) is list:
        return {"action": "append", "type": _value_parser(list(typing.get_args(item.annotation)))}
    return {"type": _value_parser([item.annotation]), **({"choices": item.choices} if item.choices else {})}


def flag_keys(flags: list[ConfigFlag], options: tuple[ComponentOption, ...]) -> dict[str, tuple[str, ...]]:
    """Config key -> the flags that set it, so that an error names what the user typed."""
    keys = {item.key: (item.flag,) for item in flags}
    for option in options:
        keys[f"{option.config_key}[0].name"] = (f"--{option.option}",)
        for flag in option.flags:
            key = f"{option.config_key}[0].{flag.parameter}"
            keys[key] = keys.get(key, ()) + (flag.flag,)
    return keys | {"training.client_optimizer.lr": ("--client-lr", "--lr"), "training.server_optimizer.lr": ("--server-lr", "--lr")}


def run_overrides(args: argparse.Namespace) -> dict:
    overrides = {item.key: getattr(args, item.dest) for item in args.run_flags if getattr(args, item.dest, None) is not None}
    if getattr(args, "lr", None) is not None:
        overrides.setdefault("training.client_optimizer.lr", args.lr)
        overrides.setdefault("training.server_optimizer.lr", args.lr)
    return overrides


def component_spec_from_args(args: argparse.Namespace, option: ComponentOption) -> list[dict] | None:
    """``--defense NAME --epsilon 8 ...`` -> ``[{name: NAME, epsilon: 8, ...}]`` (likewise ``--transform``);
    None without the option.

    Parameters the named component does not take are refused when it is built."""
    given = [flag for flag in option.flags if getattr(args, flag.dest, None) is not None]
    name = getattr(args, option.option, None)
    if name is None:
        if given:
            raise SplitprivError(f"{given[0].flag} sets a {option.option} parameter: name the {option.option} with "
                                 f"--{option.option} (e.g. --{option.option} {given[0].components[0]} {given[0].flag} ...)")
        return None
    for flag in given:
        if flag.flag != "--" + flag.parameter.replace("_", "-") and name not in flag.components:
            raise SplitprivError(f"{flag.flag} sets a parameter of {', '.join(flag.components)}, not of --{option.option} {name}")
    return [{"name": name, **{flag.parameter: getattr(args, flag.dest) for flag in given}}]


def config_from_args(args: argparse.Namespace, extra_overrides: dict | None = None) -> RunConfig:
    overrides = run_overrides(args)
    for option in args.component_options:
        specs = component_spec_from_args(args, option)
        if specs is not None:
            overrides[option.config_key] = specs
    return load_run_config(args.config, {**overrides, **(extra_overrides or {})})
