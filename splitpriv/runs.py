"""The run folder: what a finished run leaves behind, written so that a kill never corrupts it.

``runs/<name>/``: ``config.yaml`` (complete and resolved), ``metrics.json`` (final numbers),
``checkpoints/last.ckpt``, ``logs/metrics.csv`` (per-epoch CSV log), ``wandb/`` (offline run).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from splitpriv.errors import SplitprivError

CONFIG_FILE, METRICS_FILE, CHECKPOINT = "config.yaml", "metrics.json", "checkpoints/last.ckpt"


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def atomic_write_yaml(path: str | Path, data: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


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


def import_plugins(paths: list[str]) -> None:
    """Import user files that register models, data sets, defenses or attacks."""
    import importlib.util

    for plugin in paths:
        file = Path(plugin)
        if not file.exists():
            raise SplitprivError(f"plugin file not found: {file}")
        spec = importlib.util.spec_from_file_location(f"splitpriv_plugin_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


@dataclass
class Run:
    """A finished (or checkpointed) run, ready for attacks, profiling and notebooks."""

    path: Path
    config: Any  # RunConfig
    resolved: dict
    metrics: dict
    module: Any  # SplitLearningModule, in eval mode
    _data: Any = field(default=None, repr=False)

    @property
    def model(self):
        return self.module.model

    @property
    def client(self):
        return self.module.client

    @property
    def server(self):
        return self.module.server

    @property
    def defenses(self):
        return list(self.module.defenses)

    @property
    def cut_layer(self) -> int:
        return self.module.cut_layer

    @property
    def cut_name(self) -> str:
        return self.module.cut_name

    @cached_property
    def data(self):
        """The run's data splits (private train, val, private test, proxy), rebuilt from the seed."""
        if self._data is not None:
            return self._data
        from splitpriv.data import make_splits

        data = make_splits(self.config.data, self.config.seed)
        recorded = self.resolved.get("data_splits", {}).get("fingerprint")
        if recorded and recorded != data.description["fingerprint"]:
            raise SplitprivError(
                f"the data splits of {self.path} cannot be rebuilt exactly (fingerprint {recorded} "
                f"recorded, {data.description['fingerprint']} now): has the data set changed?"
            )
        return data

    @torch.no_grad()
    def send(self, inputs: torch.Tensor, training: bool = False) -> torch.Tensor:
        """The message the server receives for ``inputs``, as deployed (defenses active at inference)."""
        return self.module.send(inputs, training=training)[1]

    def recut(self, cut_layer: int | str) -> "Run":
        """The same trained network cut at ``cut_layer`` (sharing its weights).

        An undefended network computes the same function wherever it is cut, so one training
        serves every cut: accuracy is unchanged, the message (and its size) is the new cut's.
        A defended run cannot be recut: its defenses were trained for, and act at, its own cut.
        """
        if self.defenses:
            raise SplitprivError(f"run {self.path} has defenses ({', '.join(d.name for d in self.defenses)}) trained "
                                 f"at cut {self.cut_layer}; only an undefended run can be recut")
        from splitpriv.training import SplitLearningModule, bytes_per_sample

        old = self.module
        module = SplitLearningModule(self.model, cut_layer, self.data.info.num_classes, old.client_optimizer_cfg,
                                     old.server_optimizer_cfg, exit_heads=nn.ModuleDict({**old.client_exits, **old.server_exits}),
                                     exit_weights=old.exit_weights).eval()
        message_bytes = bytes_per_sample(module.send(torch.zeros(1, *self.data.info.input_shape), training=False)[1])
        module.activation_bytes_per_sample = module.gradient_bytes_per_sample = message_bytes
        metrics = {**self.metrics, "cut_layer": module.cut_layer, "cut_name": module.cut_name,
                   "activation_bytes_per_sample": message_bytes, "gradient_bytes_per_sample": message_bytes}
        resolved = {**self.resolved, "cut_layer": module.cut_layer, "cut_name": module.cut_name}
        return Run(self.path, self.config, resolved, metrics, module, self.data)


def load_run(path: str | Path) -> Run:
    """Load ``runs/<name>`` written by ``splitpriv train``."""
    from splitpriv.config import from_dict, RunConfig
    from splitpriv.experiment import build_module

    path = Path(path)
    if not (path / CONFIG_FILE).exists():
        raise SplitprivError(f"no run at {path}: {path / CONFIG_FILE} is missing. Train one with 'splitpriv train --name ...'.")
    if not (path / CHECKPOINT).exists():
        raise SplitprivError(f"run {path} has no checkpoint ({path / CHECKPOINT}); did its training finish?")
    stored = yaml.safe_load((path / CONFIG_FILE).read_text())
    resolved = stored.pop("resolved", {})
    config = from_dict(RunConfig, stored)
    import_plugins(config.plugins)
    info = resolved["dataset_info"]
    module = build_module(config, info["num_classes"], info["in_channels"], info["image_size"])
    state = torch.load(path / CHECKPOINT, map_location="cpu", weights_only=False)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    metrics = json.loads((path / METRICS_FILE).read_text()) if (path / METRICS_FILE).exists() else {}
    return Run(path, config, resolved, metrics, module)
