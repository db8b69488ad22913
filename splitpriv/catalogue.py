"""Devices, links and prices as data: the YAML catalogue shipped in ``splitpriv/catalogue/``.

Three kinds of entries, each number citing its source in the YAML:

* **devices** (``devices.yaml``) - edge devices, cloud GPUs and CPU VMs with an effective
  throughput ``flops_per_s`` (the latency model's mu) and an on-demand ``price_per_hour``;
* **faas** (``faas.yaml``) - serverless functions (memory size, vCPU share, price per GB-second
  and per request, cold start);
* **links** (``links.yaml``) - uplink bandwidth and round-trip time.

A user extends or overrides entries with their own YAML of the same layout
(``--catalogue FILE``): entries with a new name are added, entries with a known name replace it.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from splitpriv.config import load_yaml
from splitpriv.errors import ConfigError

PACKAGED_FILES = ("devices.yaml", "faas.yaml", "links.yaml")
SECTIONS = ("cpu_scaling", "devices", "faas", "links")


def amdahl_speedup(vcpus: float, parallel_fraction: float) -> float:
    """Amdahl's law: speed-up(n) = 1 / ((1 - p) + p / n), n = ``vcpus``, p = ``parallel_fraction``."""
    return 1.0 / ((1.0 - parallel_fraction) + parallel_fraction / vcpus)


@dataclass(frozen=True)
class Device:
    """A place a partition runs: ``flops_per_s`` is mu, ``price_per_hour`` None for owned devices."""

    name: str
    kind: str
    flops_per_s: float
    price_per_hour: float | None = None


@dataclass(frozen=True)
class Faas:
    """A serverless function size (AWS Lambda-like billing)."""

    name: str
    memory_mb: float
    flops_per_s: float
    price_per_gb_s: float
    price_per_request: float
    cold_start_s: float

    def as_device(self) -> Device:
        return Device(self.name, "faas", self.flops_per_s, None)


@dataclass(frozen=True)
class Link:
    name: str
    bandwidth_bytes_per_s: float
    rtt_s: float


@dataclass
class Catalogue:
    devices: dict[str, Device]
    faas: dict[str, Faas]
    links: dict[str, Link]

    def device(self, name: str, key: str = "device") -> Device:
        """A device or a FaaS size by name; unknown -> ConfigError listing what exists."""
        if name in self.devices:
            return self.devices[name]
        if name in self.faas:
            return self.faas[name].as_device()
        raise ConfigError(key, name, f"a catalogue device: {sorted(self.devices) + sorted(self.faas)} "
                                     "(add your own with --catalogue FILE)")

    def function(self, name: str, key: str = "faas") -> Faas:
        if name not in self.faas:
            raise ConfigError(key, name, f"a catalogue FaaS size: {sorted(self.faas)} (add your own with --catalogue FILE)")
        return self.faas[name]

    def link(self, name: str, key: str = "link") -> Link:
        if name not in self.links:
            raise ConfigError(key, name, f"a catalogue link: {sorted(self.links)} (add your own with --catalogue FILE)")
        return self.links[name]


def load_catalogue(extra_files: list[str] | None = None) -> Catalogue:
    """The packaged catalogue, then each of ``extra_files`` merged over it (same YAML layout)."""
    raw: dict[str, dict] = {section: {} for section in SECTIONS}
    folder = resources.files("splitpriv") / "catalogue"
    sources = [(str(folder / name), load_yaml(Path(str(folder / name)))) for name in PACKAGED_FILES]
    sources += [(path, load_yaml(path)) for path in extra_files or []]
    for path, values in sources:
        unknown = sorted(set(values) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"{path}: {unknown[0]}", values[unknown[0]], f"catalogue sections {list(SECTIONS)}")
        for section in SECTIONS:
            entries = values.get(section) or {}
            if not isinstance(entries, dict):
                raise ConfigError(f"{path}: {section}", entries, "a mapping of names to entries")
            raw[section].update(entries)
    parallel_fraction = float(raw["cpu_scaling"].get("parallel_fraction", 1.0))
    if not 0 <= parallel_fraction <= 1:
        raise ConfigError("cpu_scaling.parallel_fraction", parallel_fraction, "a fraction in [0, 1]")
    return Catalogue(
        devices={name: _device(name, entry, parallel_fraction) for name, entry in raw["devices"].items()},
        faas={name: _faas(name, entry, parallel_fraction) for name, entry in raw["faas"].items()},
        links={name: _link(name, entry) for name, entry in raw["links"].items()},
    )


def _number(entry: dict, section: str, name: str, field: str, minimum: float = 0.0, strict: bool = False,
            default: float | None = None) -> float:
    """A numeric catalogue field, checked: > minimum when ``strict``, else >= minimum."""
    key = f"{section}.{name}.{field}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{section}.{name}", entry, "a mapping of fields to values")
    value = entry.get(field, default)
    if value is None:
        raise ConfigError(key, value, "a number (every catalogue entry needs it)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, value, "a number (YAML reads 1e9 as text: write 1.0e+9)")
    if not math.isfinite(value):
        raise ConfigError(key, value, "a finite number (no NaN or infinity)")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(key, value, f"a number {'>' if strict else '>='} {minimum:g}")
    return float(value)


def _cpu_flops(section: str, name: str, entry: dict, parallel_fraction: float) -> float:
    vcpus = _number(entry, section, name, "vcpus", strict=True)
    per_vcpu = _number(entry, section, name, "flops_per_vcpu", strict=True)
    return per_vcpu * amdahl_speedup(vcpus, parallel_fraction)


def _device(name: str, entry: dict, parallel_fraction: float) -> Device:
    if isinstance(entry, dict) and "vcpus" in entry:
        flops = _cpu_flops("devices", name, entry, parallel_fraction)
    elif isinstance(entry, dict) and "flops_per_s" in entry:
        flops = _number(entry, "devices", name, "flops_per_s", strict=True)
    else:
        peak = _number(entry, "devices", name, "peak_flops_per_s", strict=True)
        utilisation = _number(entry, "devices", name, "utilisation", strict=True)
        if utilisation > 1:
            raise ConfigError(f"devices.{name}.utilisation", utilisation, "a fraction in (0, 1]")
        flops = peak * utilisation
    price = entry.get("price_per_hour")
    if price is not None:
        price = _number(entry, "devices", name, "price_per_hour")
    return Device(name, str(entry.get("kind", "device")), flops, price)


def _faas(name: str, entry: dict, parallel_fraction: float) -> Faas:
    return Faas(
        name=name,
        memory_mb=_number(entry, "faas", name, "memory_mb", strict=True),
        flops_per_s=_cpu_flops("faas", name, entry, parallel_fraction),
        price_per_gb_s=_number(entry, "faas", name, "price_per_gb_s"),
        price_per_request=_number(entry, "faas", name, "price_per_request"),
        cold_start_s=_number(entry, "faas", name, "cold_start_s"),
    )


def _link(name: str, entry: dict) -> Link:
    bandwidth_mbps = _number(entry, "links", name, "bandwidth_mbps", strict=True)
    rtt_ms = _number(entry, "links", name, "rtt_ms")
    return Link(name, bandwidth_mbps * 1e6 / 8, rtt_ms / 1e3)

