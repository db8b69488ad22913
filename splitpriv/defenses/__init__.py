"""Privacy defenses at the cut. Adding one: a module with a ``Defense`` subclass (and its roles from
``splitpriv.cut``) decorated with ``@register_defense``, imported below (or given as a ``--plugin`` file)."""
from __future__ import annotations

from splitpriv.config import build_registered
from splitpriv.defenses.base import DEFENSES, Defense, register_defense
from splitpriv.defenses.decoder_reconstruction import DecoderReconstruction
from splitpriv.defenses.distance_correlation import DistanceCorrelation
from splitpriv.defenses.dp_noise import DPNoise
from splitpriv.defenses.dp_sgd import DPSGD


def build_defense(spec: dict, key: str = "defenses[0]") -> Defense:
    """``{name: ..., **params}`` -> a Defense; unknown names or parameters -> ConfigError."""
    return build_registered(DEFENSES, spec, key, "{name: dp_noise, epsilon: 8}")


def build_defenses(specs: list[dict]) -> list[Defense]:
    return [build_defense(spec, f"defenses[{i}]") for i, spec in enumerate(specs)]


__all__ = ["Defense", "DEFENSES", "register_defense", "build_defense", "build_defenses", "DistanceCorrelation",
           "DecoderReconstruction", "DPNoise", "DPSGD"]
