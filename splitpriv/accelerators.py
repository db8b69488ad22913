"""Where a run computes: one setting, ``accelerator: auto | cpu | gpu``, resolved once."""
from __future__ import annotations

import torch

from splitpriv.errors import ConfigError


def resolve_accelerator(accelerator: str, key: str = "training.accelerator") -> str:
    """'cpu' or 'gpu': ``auto`` is a GPU when torch sees one; 'gpu' on a machine without one is an input error."""
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError(key, "gpu", "'cpu' or 'auto': this machine has no GPU that torch can use")
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def torch_device(accelerator: str, key: str = "training.accelerator") -> torch.device:
    """The torch device of a resolved or unresolved accelerator setting (``key`` names it in errors)."""
    return torch.device("cuda" if resolve_accelerator(accelerator, key) == "gpu" else "cpu")
