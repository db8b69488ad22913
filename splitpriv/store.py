"""The run store: the files a run or sweep leaves behind, written so that a kill never corrupts them,
and read back without running code from them.

``runs/<name>/``: ``config.yaml`` (complete and resolved), ``metrics.json`` (final numbers),
``checkpoints/last.ckpt``, ``logs/metrics.csv`` (per-epoch CSV log), ``wandb/`` (offline run).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch
import yaml

from splitpriv.config import RunConfig, from_dict, load_yaml
from splitpriv.errors import ConfigError, RunStateError, SplitprivError

CONFIG_FILE, METRICS_FILE, CHECKPOINT = "config.yaml", "metrics.json", "checkpoints/last.ckpt"
RUN_MARKER = ".splitpriv-run"  # written into every run folder splitpriv creates: --force deletes only those


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers see old or new, never half.
    The file gets the permissions of any file the user creates (0644 under the usual umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: results are shared like checkpoints
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_or_none(data: Any) -> Any:
    """``data`` with NaN and infinities replaced by None (JSON's null): JSON has no NaN."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite_or_none(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_or_none(v) for v in data]
    return data


def json_text(data: Any, **kwargs) -> str:
    """Standard JSON (NaN and infinities as null; numpy and torch scalars as numbers)."""
    return json.dumps(finite_or_none(json.loads(json.dumps(data, default=float))), allow_nan=False, **kwargs)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json_text(data, indent=2, sort_keys=True) + "\n")


def atomic_write_yaml(path: str | Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def csv_value(text: str | None):
    """A CSV field as what it holds: None when empty, else an int, a float or the text."""
    if text in ("", None):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def atomic_write_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """``rows`` as CSV with a header (``columns``, or the first row's keys), written atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns or list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend: plots are written on servers and in workers
    that have no display. Imported on first use, since matplotlib is slow to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def atomic_save_figure(figure, path: str | Path, dpi: int = 120) -> None:
    """Save a matplotlib figure through a temporary file and a rename, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        figure.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)


def atomic_append_line(path: str | Path, line: str) -> None:
    """Append one complete line (e.g. a JSONL record): the whole file is rewritten atomically."""
    path = Path(path)
    existing = path.read_text() if path.exists() else ""
    atomic_write_text(path, existing + line.rstrip("\n") + "\n")


_IMPORTED_PLUGINS: set[Path] = set()


def import_plugins(paths: list[str]) -> None:
    """Import user files that register models, data sets, defenses or attacks (each once per process)."""
    import importlib.util

    for plugin in paths:
        file = Path(plugin).expanduser().resolve()
        if file in _IMPORTED_PLUGINS:
            continue
        if not file.is_file():
            raise SplitprivError(f"plugin file not found: {plugin} (give the path of a .py file that registers models, "
                                 f"data sets, defenses or attacks)")
        spec = importlib.util.spec_from_file_location(f"splitpriv_plugin_{file.stem}", file)
        if spec is None or spec.loader is None:
            raise SplitprivError(f"plugin {plugin} is not a Python file that can be imported (it should end in .py)")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # the plugin's own code failed: say where, in its file
            lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__) if Path(frame.filename) == file]
            where = f" (line {lines[-1]})" if lines else ""
            raise SplitprivError(f"plugin {plugin} failed to import{where}: {type(error).__name__}: {error}") from None
        _IMPORTED_PLUGINS.add(file)


def require_trusted_plugins(paths: list[str], source: Path) -> None:
    """Refuse to run code named by a file in someone's run folder: its plugins must have been
    imported by the user first (``--plugin FILE``), who thereby says they trust them."""
    missing = [p for p in paths if Path(p).expanduser().resolve() not in _IMPORTED_PLUGINS]
    if missing:
        raise SplitprivError(f"{source} was made with plugin(s) {missing}; opening it would run their code. If you "
                             f"trust them, pass " + " ".join(f"--plugin {p}" for p in missing))


def read_tensors(path: Path, what: str = "checkpoint") -> Any:
    """A torch file read without running any of its code: tensors and plain data only
    (``torch.load(weights_only=True)``); a file that needs more is refused, not loaded."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0][:300]
        raise RunStateError(f"{what} {path} holds more than tensors and plain data ({reason}); it was not written "
                            f"by splitpriv or was altered, and is not loaded because loading it could run code") from None
    except Exception as error:  # any failure to parse an untrusted file means it is unreadable, whatever torch raises
        raise RunStateError(f"{what} {path} cannot be read ({type(error).__name__}: {str(error)[:200]}): it is "
                            f"truncated or corrupt; write it again, or restore an intact copy") from None


def read_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint read with :func:`read_tensors`."""
    checkpoint = read_tensors(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise RunStateError(f"checkpoint {path} is not a splitpriv training checkpoint (no state_dict)")
    return checkpoint


def read_run_config(path: Path):
    """(RunConfig, resolved) from a run folder's config.yaml, every problem naming the file."""
    file = path / CONFIG_FILE
    stored = load_yaml(file, "run config")
    resolved = stored.pop("resolved", None)
    try:
        config = from_dict(RunConfig, stored)
    except ConfigError as error:
        raise RunStateError(f"{file} is not a valid run config: {error}") from None
    if not isinstance(resolved, dict) or not isinstance(resolved.get("dataset_info"), dict):
        raise RunStateError(f"{file} lacks its 'resolved.dataset_info' section: it was not written by 'splitpriv train' "
                            f"or was edited; retrain the run")
    return config, resolved


def read_metrics(path: Path) -> dict:
    """metrics.json of a run folder ({} before training finished)."""
    file = path / METRICS_FILE
    if not file.exists():
        return {}
    try:
        metrics = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunStateError(f"{file} is corrupt ({error}); retrain the run or restore the file") from None
    if not isinstance(metrics, dict):
        raise RunStateError(f"{file} is not a mapping of metrics; retrain the run or restore the file")
    return metrics
