"""Privacy defenses at the cut. Adding one: a new module with a ``Defense`` subclass and one
line in ``DEFENSES`` below."""
from __future__ import annotations

import inspect

from defenses.base import CutContext, Defense
from splitpriv.errors import ConfigError

DEFENSES: dict[str, type[Defense]] = {}


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Register a defense class under its ``name`` (also usable from a ``--plugin`` file)."""
    DEFENSES[cls.name] = cls
    return cls


def build_defense(spec: dict, key: str = "defenses[0]") -> Defense:
    """``{name: ..., **params}`` -> a Defense; unknown names or parameters -> ConfigError."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(key, spec, "a mapping with a 'name' key, e.g. {name: dp_noise, epsilon: 8}")
    params = {k: v for k, v in spec.items() if k != "name"}
    cls = DEFENSES.get(spec["name"])
    if cls is None:
        raise ConfigError(f"{key}.name", spec["name"], f"one of {sorted(DEFENSES)}")
    accepted = inspect.signature(cls.__init__).parameters
    for param in params:
        if param not in accepted:
            raise ConfigError(f"{key}.{param}", params[param], f"parameters of {cls.name}: {sorted(p for p in accepted if p != 'self')}")
    try:
        return cls(**params)
    except ConfigError as error:
        raise ConfigError(f"{key}.{error.key}", error.value, error.allowed) from None


def build_defenses(specs: list[dict]) -> list[Defense]:
    return [build_defense(spec, f"defenses[{i}]") for i, spec in enumerate(specs)]


from defenses.decoder_reconstruction import DecoderReconstruction  # noqa: E402  (the registry lines)
from defenses.distance_correlation import DistanceCorrelation, distance_correlation  # noqa: E402
from defenses.dp_noise import DPNoise  # noqa: E402
from defenses.dp_sgd import DPSGD  # noqa: E402

for _defense in (DistanceCorrelation, DecoderReconstruction, DPNoise, DPSGD):
    register_defense(_defense)


# compressions of the message share the Defense interface, so they compose in the same list
from splitpriv.compression import Bottleneck, Quantize, TopK  # noqa: E402

register_defense(Quantize)
register_defense(TopK)
register_defense(Bottleneck)


__all__ = ["CutContext", "Defense", "DEFENSES", "register_defense", "build_defense", "build_defenses",
           "DistanceCorrelation", "DecoderReconstruction", "DPNoise", "DPSGD", "distance_correlation"]
