"""Where a result came from: the command, the source commit and the versions that produced it.

Sweeps write it to ``provenance.json`` and runs to ``config.yaml`` (``resolved.provenance``), so
that every table generated from a result folder (``splitpriv compare --markdown``) names the
command and commit behind its numbers.
"""
from __future__ import annotations

import datetime
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


def provenance() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        splitpriv_version = version("splitpriv")
    except PackageNotFoundError:
        splitpriv_version = "unknown"
    return {"command": command_line(), "commit": source_commit(), "splitpriv": splitpriv_version,
            "python": platform.python_version(), "torch": str(torch.__version__),
            "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
