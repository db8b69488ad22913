"""Privacy defenses at the cut. Adding one: a new module with a ``Defense`` subclass and one
line in ``DEFENSES`` below."""
from __future__ import annotations

from splitpriv.defenses.base import CutContext, Defense
from splitpriv.config import build_registered

DEFENSES: dict[str, type[Defense]] = {}


def register_defense(cls: type[Defense]) -> type[Defense]:
    """Register a defense class under its ``name`` (also usable from a ``--plugin`` file)."""
    DEFENSES[cls.name] = cls
    return cls


def build_defense(spec: dict, key: str = "defenses[0]") -> Defense:
    """``{name: ..., **params}`` -> a Defense; unknown names or parameters -> ConfigError."""
    return build_registered(DEFENSES, spec, key, "{name: dp_noise, epsilon: 8}")


def build_defenses(specs: list[dict]) -> list[Defense]:
    return [build_defense(spec, f"defenses[{i}]") for i, spec in enumerate(specs)]


from splitpriv.defenses.decoder_reconstruction import DecoderReconstruction  # noqa: E402  (the registry lines)
from splitpriv.defenses.distance_correlation import DistanceCorrelation, distance_correlation  # noqa: E402
from splitpriv.defenses.dp_noise import DPNoise  # noqa: E402
from splitpriv.defenses.dp_sgd import DPSGD  # noqa: E402

for _defense in (DistanceCorrelation, DecoderReconstruction, DPNoise, DPSGD):
    register_defense(_defense)


# compressions of the message share the Defense interface, so they compose in the same list
from splitpriv.defenses.compression import Bottleneck, Quantize, TopK  # noqa: E402

register_defense(Quantize)
register_defense(TopK)
register_defense(Bottleneck)


__all__ = ["CutContext", "Defense", "DEFENSES", "register_defense", "build_defense", "build_defenses",
           "DistanceCorrelation", "DecoderReconstruction", "DPNoise", "DPSGD", "distance_correlation"]
