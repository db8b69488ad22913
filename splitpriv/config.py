"""Run configuration: plain YAML, validated against typed dataclasses before any work starts.

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key
(dotted path), the value and what is allowed. Every field has a default that runs.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from splitpriv.data import DataConfig
from splitpriv.errors import ConfigError, SplitprivError
from splitpriv.fields import NON_NEGATIVE, POSITIVE, POSITIVE_INT, check, flag, flag_prefix, one_of

__all__ = ["RunConfig", "OptimizerConfig", "ModelConfig", "TrainingConfig", "WandbConfig", "ExitsConfig", "ConfigFlag",
           "config_flags", "from_dict", "load_run_config", "load_yaml", "build_registered", "check", "one_of",
           "POSITIVE", "POSITIVE_INT", "NON_NEGATIVE", "SAFE_NAME", "MAX_EPOCHS", "is_int", "is_safe_name"]

MAX_EPOCHS = 100_000  # beyond this a run is a typo, not an experiment
EPOCHS = check(lambda v: 1 <= v <= MAX_EPOCHS, f"an integer in [1, {MAX_EPOCHS:,}]")
NAME_PATTERN = re.compile(r"[\w+-][\w.+-]{0,199}")


def is_int(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_safe_name(value: str | None) -> bool:
    """A folder name that stays inside its parent: one path component of letters, digits, '_', '-',
    '+' and '.', not starting with '.' (so neither '..' nor a hidden name), at most 200 characters."""
    return value is None or bool(NAME_PATTERN.fullmatch(value))


SAFE_NAME = check(is_safe_name, "a folder name of letters, digits, '_', '-', '+' and '.', not starting with '.' "
                                "(no '/', no '..': a name stays inside its output folder)")


@dataclass
class OptimizerConfig:
    name: str = field(default="adam", metadata=one_of("adam", "adamw", "sgd"))
    lr: float = field(default=1e-3, metadata={**check(lambda v: 0 < v <= 1e3, "a number in (0, 1000]"),
                                              **flag("learning rate")})
    weight_decay: float = field(default=0.0, metadata=NON_NEGATIVE)
    momentum: float = field(default=0.9, metadata=check(lambda v: 0 <= v < 1, "a number in [0, 1)"))


@dataclass
class ModelConfig:
    name: str = field(default="small_cnn", metadata=flag(
        "a registered model: small_cnn, mlp, vgg11, vgg11_bn, vgg16, resnet18, or a --plugin's", "model"))
    cut_layer: int | str | None = field(default=None, metadata=flag("cut index or block name; none: a middle cut"))


@dataclass
class TrainingConfig:
    epochs: int = field(default=15, metadata={**EPOCHS, **flag("training epochs")})
    batch_size: int = field(default=64, metadata={**POSITIVE_INT, **flag("samples per step")})
    client_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig, metadata=flag_prefix("client-"))
    server_optimizer: OptimizerConfig = field(default_factory=OptimizerConfig, metadata=flag_prefix("server-"))
    accelerator: str = field(default="auto", metadata={**one_of("auto", "cpu", "gpu"), **flag(
        "where training computes; auto: a GPU when torch sees one, else the CPU")})
    # bf16-mixed: autocast to bfloat16 in forward passes (GPUs with bf16, and CPUs); 16-mixed would
    # need the returned gradient unscaled at the cut, so it is not offered
    precision: str = field(default="32-true", metadata={**one_of("32-true", "bf16-mixed"), **flag(
        "numeric precision of training (Lightning's precision plugin)")})
    num_threads: int | None = field(default=None, metadata={**POSITIVE_INT, **flag("CPU threads for torch", "threads")})
    progress_bar: bool = True


@dataclass
class WandbConfig:
    mode: str | None = field(default=None, metadata={**one_of("online", "offline", "disabled"), **flag(
        "wandb mode; none: offline unless wandb is configured with an API key")})
    project: str = field(default="splitpriv", metadata=flag("wandb project"))
    group: str | None = field(default=None, metadata=flag("wandb group of the run(s)"))
    tags: list[str] = field(default_factory=list)
    save_requirements: bool = True  # the installed pip packages, in each run (a sweep: in its summary run only)


@dataclass
class ExitsConfig:
    """Internal classifiers (early exits), see ``splitpriv.exits``; none by default."""

    at: list[int | str] = field(default_factory=list)  # cut indices or names
    pool_size: int = field(default=2, metadata=POSITIVE_INT)  # adaptive average pool to pool_size x pool_size
    hidden: int = field(default=0, metadata=NON_NEGATIVE)  # hidden units of the classifier (0: linear)
    weight: float = field(default=1.0, metadata=NON_NEGATIVE)  # each exit's loss weight (schedule constant)
    schedule: str = field(default="constant", metadata=one_of("constant", "sdn"))


@dataclass
class RunConfig:
    name: str | None = field(default=None, metadata={**SAFE_NAME, **flag("run folder name; none: dataset-model-cut-seed")})
    out: str = field(default="runs", metadata=flag("folder for run folders"))
    seed: int = field(default=0, metadata={**check(lambda v: v >= 0, "an integer >= 0"),
                                           **flag("seed of data splits, weights and shuffles")})
    plugins: list[str] = field(default_factory=list, metadata=flag(
        "python file registering models, data sets, defenses, transforms or attacks (repeatable)", "plugin"))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    defenses: list[dict] = field(default_factory=list)  # privacy defenses, in order
    transforms: list[dict] = field(default_factory=list)  # compressions of the message, after the defenses
    exits: ExitsConfig = field(default_factory=ExitsConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig, metadata=flag_prefix("wandb-"))

    def run_name(self) -> str:
        return self.name or f"{self.data.dataset}-{self.model.name}-cut{self.model.cut_layer}-seed{self.seed}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- parsing


def non_finite_path(value: Any, key: str) -> str | None:
    """The dotted key of the first NaN or infinity inside ``value`` (lists and mappings searched), or None.

    No splitpriv setting takes NaN or an infinity: NaN passes every '> 0' check, infinity most."""
    if isinstance(value, float) and not math.isfinite(value):
        return key
    if isinstance(value, dict):
        return next(filter(None, (non_finite_path(v, f"{key}.{k}") for k, v in value.items())), None)
    if isinstance(value, (list, tuple)):
        return next(filter(None, (non_finite_path(v, f"{key}[{i}]") for i, v in enumerate(value))), None)
    return None


def check_finite(value: Any, key: str) -> None:
    path = non_finite_path(value, key)
    if path is not None:
        raise ConfigError(path, _value_at(value, path[len(key):]), "a finite number (no NaN or infinity)")


def _value_at(value: Any, suffix: str) -> Any:
    for part in re.findall(r"\.([^.[\]]+)|\[(\d+)\]", suffix):
        value = value[part[0]] if part[0] else value[int(part[1])]
    return value


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, annotation)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def from_dict(cls: type, values: dict | None, prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, refusing unknown keys and wrong types."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(prefix.rstrip(".") or "<config>", values, "a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(prefix + unknown[0], values[unknown[0]],
                          f"the keys of '{prefix.rstrip('.') or 'the config'}': {sorted(fields)}", problem="unknown key")
    kwargs = {}
    for name, value in values.items():
        key, annotation = prefix + name, hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = from_dict(annotation, value, key + ".")
            continue
        check_finite(value, key)
        if not _type_ok(value, annotation):
            raise ConfigError(key, value, _type_name(annotation))
        if annotation is float or annotation == (float | None):
            value = float(value) if value is not None else None
        rule = fields[name].metadata.get("check")
        if rule and value is not None and not rule[0](value):
            raise ConfigError(key, value, rule[1])
        kwargs[name] = value
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """A command-line flag of a config field (see :func:`splitpriv.fields.flag`)."""

    key: str  # dotted config key, e.g. training.client_optimizer.lr
    flag: str  # e.g. --client-lr
    annotation: Any
    default: Any
    help: str
    allowed: str | None  # what the field's check accepts
    choices: tuple | None

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def config_flags(cls: type, prefix: str = "", flag_prefix: str = "") -> list[ConfigFlag]:
    """The flags of config class ``cls`` and its nested config classes, in field order: those fields
    whose metadata names a flag (:func:`splitpriv.fields.flag`)."""
    hints = typing.get_type_hints(cls)
    flags = []
    for item in dataclasses.fields(cls):
        annotation = hints[item.name]
        if dataclasses.is_dataclass(annotation):
            flags += config_flags(annotation, f"{prefix}{item.name}.", flag_prefix + item.metadata.get("flag_prefix", ""))
        elif "help" in item.metadata:
            name = item.metadata.get("flag") or flag_prefix + item.name.replace("_", "-")
            default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
            rule = item.metadata.get("check")
            flags.append(ConfigFlag(prefix + item.name, "--" + name, annotation, default, item.metadata["help"],
                                    rule[1] if rule else None, item.metadata.get("choices")))
    return flags


def load_yaml(path: str | Path, what: str = "config file") -> dict:
    """A YAML mapping from ``path``; every problem with the file is one message naming it."""
    file = Path(path)
    if not file.exists():
        raise SplitprivError(f"{what} not found: {file}")
    if not file.is_file():
        raise SplitprivError(f"{what} {file} is not a file (a folder?); give the path of a .yaml file")
    try:
        loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise SplitprivError(f"{what} {file} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as error:
        raise SplitprivError(f"{what} {file} is not valid YAML: {error}") from None
    except OSError as error:
        raise SplitprivError(f"{what} {file} cannot be read: {error.strerror}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise SplitprivError(f"{what} {file} must hold a mapping of keys to values, not a {type(loaded).__name__}")
    return loaded or {}


def set_dotted(values: dict, dotted_key: str, value: Any) -> None:
    """``set_dotted(d, "training.epochs", 3)`` -> ``d["training"]["epochs"] = 3``."""
    *parents, leaf = dotted_key.split(".")
    for parent in parents:
        values = values.setdefault(parent, {})
    values[leaf] = value


def deep_merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_run_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Defaults <- YAML file <- overrides (dotted keys), validated."""
    values = load_yaml(path) if path else {}
    for dotted_key, value in (overrides or {}).items():
        set_dotted(values, dotted_key, value)
    return from_dict(RunConfig, values)


def build_registered(registry: dict[str, type], spec: Any, key: str, example: str):
    """``{name: ..., **params}`` -> ``registry[name](**params)``, for defenses, transforms and attacks alike.

    Unknown names and parameters, and a class's own ConfigErrors, come back named after ``key``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(key, spec, f"a mapping with a 'name' key, e.g. {example}")
    cls = registry.get(spec["name"])
    if cls is None:
        raise ConfigError(f"{key}.name", spec["name"], f"one of {sorted(registry)}")
    params = {k: v for k, v in spec.items() if k != "name"}
    check_finite(params, key)
    accepted = sorted(p for p in inspect.signature(cls.__init__).parameters if p != "self")
    for param in params:
        if param not in accepted:
            raise ConfigError(f"{key}.{param}", params[param], f"parameters of {spec['name']}: {accepted}")
    try:
        return cls(**params)
    except ConfigError as error:
        raise ConfigError(f"{key}.{error.key}", error.value, error.allowed) from None
