"""Where a result came from: the command, the source commit and the versions that produced it.

Sweeps write it to ``provenance.json`` and runs to ``config.yaml`` (``resolved.provenance``), so
that every table generated from a result folder (``splitpriv compare --markdown``) names the
command and commit behind its numbers.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

SOURCE_ROOT = Path(__file__).resolve().parents[1]


def command_line() -> str:
    """The command as the user typed it (``splitpriv sweep --config ...``), or the script's."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return shlex.join([program, *sys.argv[1:]])


SOURCE_PATHS = ("splitpriv", "benchmarks", "experiments", "pyproject.toml")


def source_commit() -> str:
    """The git commit of splitpriv's source, ``+dirty`` when its code, configs or benchmarks differ from
    it (documentation does not count); ``unknown`` outside a git checkout (e.g. an installed wheel)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


# settings that cap which CPU kernels torch (ATen) and oneDNN dispatch to: between instruction sets the
# learned attacks' fits land measurably apart (docs/sweeps.md)
KERNEL_SETTINGS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")


def cpu_kernels() -> str:
    """The instruction set of torch's CPU kernels on this machine (e.g. ``AVX512``), with any setting
    that capped it (e.g. ``AVX512 (ONEDNN_MAX_CPU_ISA=AVX2)``)."""
    capped = ", ".join(f"{key}={os.environ[key]}" for key in KERNEL_SETTINGS if os.environ.get(key))
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{capability} ({capped})" if capped else capability


def provenance() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        splitpriv_version = version("splitpriv")
    except PackageNotFoundError:
        splitpriv_version = "unknown"
    return {"command": command_line(), "commit": source_commit(), "splitpriv": splitpriv_version,
            "python": platform.python_version(), "torch": str(torch.__version__), "cpu_kernels": cpu_kernels(),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
