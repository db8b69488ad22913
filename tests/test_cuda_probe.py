"""The GPU-driver probe Lightning turns on is turned off only where it cannot succeed."""
import os

import splitpriv  # noqa: F401  (imports Lightning, which sets the variable)
from splitpriv import cuda_probe
from splitpriv.cuda_probe import NVML_CHECK, drop_failing_nvml_check


def test_nvml_check_is_dropped_only_where_nvml_cannot_load(monkeypatch):
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(cuda_probe, "nvml_loads", lambda: True)
    drop_failing_nvml_check()
    assert os.environ[NVML_CHECK] == "1"  # a machine with a driver keeps Lightning's fork-safe check
    monkeypatch.setattr(cuda_probe, "nvml_loads", lambda: False)
    drop_failing_nvml_check()
    assert NVML_CHECK not in os.environ


def test_importing_splitpriv_applies_it():
    assert os.environ.get(NVML_CHECK) == ("1" if cuda_probe.nvml_loads() else None)
