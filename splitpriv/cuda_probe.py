"""Keep CPU-only machines from probing for a GPU driver on every optimizer step.

Lightning sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` when imported, so that looking for a GPU does
not initialise CUDA before DataLoader workers fork. Where the NVIDIA driver is missing, torch then
tries, and fails, to load NVML on every ``torch.cuda.is_available()`` call, and Adam makes that
call on every step (its graph-capture check): about 0.25 ms per step, several per cent of the
default sweep, whose models take 2-7 ms per step. Without a driver the runtime check initialises
nothing, so fork stays safe without the variable; with a driver (NVML loads) it is kept.
"""
from __future__ import annotations

import ctypes
import os
import sys

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def nvml_loads() -> bool:
    """Whether the NVIDIA management library torch.cuda's NVML check uses can be loaded."""
    try:
        ctypes.CDLL("nvml.dll" if sys.platform == "win32" else "libnvidia-ml.so.1")
    except OSError:
        return False
    return True


def drop_failing_nvml_check() -> None:
    """Unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` where NVML cannot load (call after importing Lightning)."""
    if os.environ.get(NVML_CHECK) == "1" and not nvml_loads():
        del os.environ[NVML_CHECK]
