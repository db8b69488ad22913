"""A run: a trained split model rebuilt from its folder (``runs/<name>/``: ``config.yaml``, complete and
resolved; ``metrics.json``; ``checkpoints/last.ckpt``; ``logs/metrics.csv``; ``wandb/``), ready for
attacks, profiling and notebooks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from splitpriv.config import RunConfig
from splitpriv.cut import CutComponent
from splitpriv.defenses import DEFENSES, build_defenses
from splitpriv.data import make_splits
from splitpriv.errors import ConfigError, RunStateError, SplitprivError
from splitpriv.exits import build_exits
from splitpriv.models import build_model
from splitpriv.store import CHECKPOINT, CONFIG_FILE, read_checkpoint, read_metrics, read_run_config, require_trusted_plugins
from splitpriv.training import SplitLearningModule, bytes_per_sample
from splitpriv.transforms import TRANSFORMS, build_transforms


def build_module(cfg: RunConfig, num_classes: int, in_channels: int, image_size: int) -> SplitLearningModule:
    """The split model, its cut and its cut pipeline, seeded so the same config gives the same weights."""
    cut_pipeline = build_cut_pipeline(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_model(cfg.model.name, num_classes, in_channels, image_size)
    cut = model.default_cut() if cfg.model.cut_layer is None else model.cut_index(cfg.model.cut_layer)
    exits = build_exits(model, cfg.exits, num_classes, (in_channels, image_size, image_size)) if cfg.exits.at else (None, None)
    module = SplitLearningModule(model, cut, num_classes, cfg.training.client_optimizer, cfg.training.server_optimizer, cut_pipeline, *exits)
    for component in module.cut_pipeline:
        component.build(module, (in_channels, image_size, image_size))
    return module


def build_cut_pipeline(cfg: RunConfig) -> list[CutComponent]:
    """The run's defenses, then its transforms; a component listed under the other key is refused
    with the key it belongs under."""
    for key, specs, other_key, other in (("defenses", cfg.defenses, "transforms", TRANSFORMS),
                                        ("transforms", cfg.transforms, "defenses", DEFENSES)):
        for i, spec in enumerate(specs):
            name = spec.get("name") if isinstance(spec, dict) else None
            if isinstance(name, str) and name in other:
                raise ConfigError(f"{key}[{i}].name", name, f"a name under '{key}'; {name} belongs under '{other_key}:' "
                                  f"(defenses protect privacy, transforms such as compressions shape the message)")
    return [*build_defenses(cfg.defenses), *build_transforms(cfg.transforms)]


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
    def defenses(self) -> list:
        """The run's privacy defenses (without its compressions)."""
        return self.module.defenses

    @property
    def cut_pipeline(self) -> list[CutComponent]:
        """The run's defenses, then its transforms."""
        return list(self.module.cut_pipeline)

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
        """The message the server receives for ``inputs``, as deployed (transforms active at inference)."""
        return self.module.send(inputs, training=training)[1]

    def recut(self, cut_layer: int | str) -> "Run":
        """The same trained network cut at ``cut_layer`` (sharing its weights).

        An undefended network computes the same function wherever it is cut, so one training
        serves every cut: accuracy is unchanged, the message (and its size) is the new cut's.
        A run with defenses or transforms cannot be recut: they were trained for, and act at, its own cut.
        """
        if self.cut_pipeline:
            raise SplitprivError(f"run {self.path} has defenses or transforms ({', '.join(c.name for c in self.cut_pipeline)}) "
                                 f"trained at cut {self.cut_layer}; only an undefended, uncompressed run can be recut")
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
    """Load ``runs/<name>`` written by ``splitpriv train``, executing nothing from the folder:
    plugins it names must have been imported by the caller (``--plugin``)."""
    path = Path(path)
    if not (path / CONFIG_FILE).is_file():
        raise SplitprivError(f"no run at {path}: {path / CONFIG_FILE} is missing. Train one with 'splitpriv train --name ...'.")
    if not (path / CHECKPOINT).is_file():
        raise SplitprivError(f"run {path} has no checkpoint ({path / CHECKPOINT}); did its training finish?")
    config, resolved = read_run_config(path)
    require_trusted_plugins(config.plugins, path / CONFIG_FILE)
    if resolved.get("server_partition") == "remote":
        raise SplitprivError(f"run {path} was trained with 'splitpriv client': its folder holds the client's partition "
                             f"only, the server's stayed with 'splitpriv serve'; it cannot be loaded as a whole model")
    info = resolved["dataset_info"]
    try:
        module = build_module(config, int(info["num_classes"]), int(info["in_channels"]), int(info["image_size"]))
    except (KeyError, TypeError, ValueError) as error:
        raise RunStateError(f"{path / CONFIG_FILE}: 'resolved.dataset_info' is damaged ({error}); retrain the run") from None
    try:
        module.load_state_dict(read_checkpoint(path / CHECKPOINT)["state_dict"])
    except RuntimeError as error:
        raise RunStateError(f"checkpoint {path / CHECKPOINT} does not fit the run's config.yaml "
                            f"({' '.join(str(error).split())[:300]}); were they copied from different runs?") from None
    module.eval()
    return Run(path, config, resolved, read_metrics(path), module)
