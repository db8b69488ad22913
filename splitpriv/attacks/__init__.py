"""Attacks on the message that crosses the cut. Adding one: a module with an ``Attack`` subclass
decorated with ``@register_attack``, imported below (or given as a ``--plugin`` file)."""
from __future__ import annotations

from splitpriv.attacks.base import ATTACKS, Attack, AttackResult, AttackTarget, ProxyData, evaluate, register_attack
from splitpriv.attacks.decoder_inversion import DecoderInversion
from splitpriv.attacks.noise_aware import NoiseAwareInversion
from splitpriv.attacks.optimization_inversion import OptimizationInversion
from splitpriv.attacks.surrogate_client import SurrogateClientInversion
from splitpriv.attacks.threat_models import THREAT_MODELS
from splitpriv.config import build_registered
from splitpriv.errors import ConfigError


def default_attack_specs(randomized: bool, decoder_capacities: tuple[str, ...] = ("small", "large")) -> list[dict]:
    """The default attack set, at least one per threat model: the passive surrogate-client attack,
    black-box decoders of each capacity (small and large), the noise-aware decoder (largest capacity)
    when the deployed defense draws fresh noise per query, and white-box optimisation."""
    specs = [{"name": "surrogate_client", "capacity": decoder_capacities[-1]}]
    specs += [{"name": "decoder_inversion", "capacity": capacity} for capacity in decoder_capacities]
    if randomized:
        specs.append({"name": "noise_aware", "capacity": decoder_capacities[-1]})
    return specs + [{"name": "optimization_inversion"}]


def build_attack(spec: dict, key: str = "attacks[0]") -> Attack:
    """``{name: ..., **params}`` -> an Attack; unknown names or parameters -> ConfigError."""
    return build_registered(ATTACKS, spec, key, "{name: decoder_inversion, capacity: large}")


def build_attacks(specs: list[dict]) -> list[Attack]:
    if not specs:
        raise ConfigError("attacks", specs, f"a non-empty list of attacks, e.g. [{{name: decoder_inversion}}]; known: {sorted(ATTACKS)}")
    attacks = [build_attack(spec, f"attacks[{i}]") for i, spec in enumerate(specs)]
    labels = [attack.label for attack in attacks]
    for i, label in enumerate(labels):
        if label in labels[:i]:  # results are kept by label: the later would silently replace the earlier
            raise ConfigError(f"attacks[{i}]", specs[i], f"an attack labelled other than attacks[{labels.index(label)}] "
                              f"('{label}'): results are kept by label; run differently configured {label} "
                              f"attacks in separate `splitpriv attack` calls")
    return attacks


__all__ = ["ATTACKS", "Attack", "AttackResult", "AttackTarget", "ProxyData", "THREAT_MODELS", "build_attack",
           "build_attacks", "default_attack_specs", "evaluate", "register_attack", "DecoderInversion",
           "NoiseAwareInversion", "OptimizationInversion", "SurrogateClientInversion"]
