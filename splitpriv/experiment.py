"""``splitpriv.train``: one split-learning run from a validated config to a run folder."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import signal
import time
import warnings
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from torch.utils.data import DataLoader

from splitpriv.accelerators import resolve_accelerator
from splitpriv.checkpointing import ContinuedCSVLogger, EpochCheckpoint
from splitpriv.config import RunConfig
from splitpriv.data import SplitData, make_splits
from splitpriv.errors import ConfigError, RunStateError, SplitprivError, TrainingInterrupted
from splitpriv.provenance import provenance
from splitpriv.runs import Run, build_cut_pipeline, build_module
from splitpriv.store import CHECKPOINT, CONFIG_FILE, METRICS_FILE, RUN_MARKER, atomic_write_json, atomic_write_text, atomic_write_yaml, import_plugins, read_checkpoint
from splitpriv.tracking import make_wandb_logger
from splitpriv.training import SplitLearningModule
from splitpriv.transport import RemoteServer

log = logging.getLogger("splitpriv")


def quiet_lightning() -> None:
    """Silence Lightning's hints that do not apply to in-memory CPU data."""
    for pattern in (".*does not have many workers.*", ".*GPU available but not used.*", ".*TPU available.*",
                    ".*LeafSpec.*", ".*is deprecated.*", ".*Full backward hook is firing.*"):
        warnings.filterwarnings("ignore", pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


class EpochSeededSampler(torch.utils.data.Sampler):
    """A shuffle drawn from (seed, epoch): a resumed run sees the same order as an uninterrupted one.
    Lightning calls ``set_epoch`` at the start of every epoch."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


def loaders(data: SplitData, batch_size: int, seed: int) -> tuple[DataLoader, DataLoader, DataLoader]:
    private_train = data.dataset("private_train")
    return (
        DataLoader(private_train, batch_size=batch_size, sampler=EpochSeededSampler(len(private_train), seed)),
        DataLoader(data.dataset("val"), batch_size=max(batch_size, 256)),
        DataLoader(data.dataset("private_test"), batch_size=max(batch_size, 256)),
    )


def _occupied(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds work to keep: a finished run, a checkpoint, or files splitpriv did not
    make (a run folder that stopped before its first checkpoint holds nothing to lose)."""
    if not run_dir.exists():
        return False
    if (run_dir / METRICS_FILE).exists() or (run_dir / CHECKPOINT).exists():
        return True
    return not (run_dir / RUN_MARKER).is_file() and any(run_dir.iterdir())


def _run_dir(cfg: RunConfig, resume: bool, force: bool) -> Path:
    """The run folder to write; nothing is deleted unless ``force`` and splitpriv made the folder as a run."""
    base = Path(cfg.out)
    run_dir = base / cfg.run_name()
    if base.exists() and not base.is_dir():
        raise SplitprivError(f"--out {base} is a file, not a folder; choose a folder for the run folders")
    if resume:
        return run_dir
    if not _occupied(run_dir):
        return run_dir
    if force:
        if not (run_dir / RUN_MARKER).is_file():
            raise SplitprivError(f"--force would delete {run_dir}, which splitpriv did not create as a run folder "
                                 f"(it has no {RUN_MARKER}); move or delete it yourself, or choose another --name")
        shutil.rmtree(run_dir)
        return run_dir
    if cfg.name is None:  # an automatic name: take the next free one rather than overwrite
        suffix = 1
        while _occupied(base / f"{cfg.run_name()}-{suffix}"):
            suffix += 1
        return base / f"{cfg.run_name()}-{suffix}"
    state = "a finished run" if (run_dir / METRICS_FILE).exists() else \
        "an unfinished run" if (run_dir / CHECKPOINT).exists() else "files that are not a splitpriv run"
    raise SplitprivError(f"run folder {run_dir} already holds {state}; pass --resume to continue it, --force to "
                         f"start afresh (only a splitpriv run folder is ever deleted), or choose another --name.")


def _resumable(module: SplitLearningModule, checkpoint: Path) -> int:
    """The first epoch a resume of ``checkpoint`` trains, once the checkpoint is known to be safe to
    read and to fit ``module``; nothing in the run folder has changed yet."""
    if not checkpoint.is_file():
        raise SplitprivError(f"cannot resume: no checkpoint at {checkpoint}")
    state = read_checkpoint(checkpoint)
    try:
        module.load_state_dict(state["state_dict"])
    except RuntimeError as error:
        raise RunStateError(f"cannot resume from {checkpoint}: it does not fit this config "
                            f"({' '.join(str(error).split())[:300]}); resume with the config the run was trained with") from None
    return int(state.get("epoch", -1)) + 1


def _create_run_folder(run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / RUN_MARKER, "made by splitpriv train: splitpriv train --force may delete this folder\n")


def _resolved(module: SplitLearningModule, data: SplitData) -> dict:
    return {
        "cut_layer": module.cut_layer,
        "cut_name": module.cut_name,
        "dataset_info": dataclasses.asdict(data.info),
        "data_splits": data.description,
        **module.pipeline_record(),
        "server_partition": "remote" if module.remote else "local",  # remote: held by 'splitpriv serve', not here
        "provenance": {**provenance(), "lightning": str(L.__version__)},
    }


def train(cfg: RunConfig | None = None, *, resume: bool = False, force: bool = False, data: SplitData | None = None,
          tracking: dict | None = None, remote_server: Callable[[SplitLearningModule, SplitData], RemoteServer] | None = None) -> Run:
    """Train one split model and write ``<out>/<name>/``. Returns the loaded :class:`Run`.

    ``resume=True`` continues from ``checkpoints/last.ckpt`` of the same run folder.
    ``tracking`` adds fields to the wandb run's config (e.g. a sweep cell's defense strength).
    ``remote_server(module, data)`` connects to a server process that takes the server partition's
    place (``splitpriv client``); the run folder then holds the client's state only.
    """
    cfg = cfg or RunConfig()
    quiet_lightning()
    accelerator = resolve_accelerator(cfg.training.accelerator)
    import_plugins(cfg.plugins)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    build_cut_pipeline(cfg)  # invalid defense or transform parameters fail before any data is loaded
    data = data or make_splits(cfg.data, cfg.seed)
    module = build_module(cfg, data.info.num_classes, data.info.in_channels, data.info.image_size)
    _check_precision(cfg.training.precision, module)
    if remote_server is not None:
        module.server = remote_server(module, data)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, cut_layer=module.cut_layer))
    run_dir = _run_dir(cfg, resume, force)
    checkpoint = run_dir / CHECKPOINT
    first_epoch = _resumable(module, checkpoint) if resume else 0
    module.resuming_interrupted_run = resume and not (run_dir / METRICS_FILE).exists()
    for component in module.cut_pipeline:
        component.setup(module, data.dataset("private_train"))

    config_record = {**cfg.to_dict(), "name": run_dir.name, "resolved": _resolved(module, data)}
    if not resume:  # a resumed run's folder changes only once its new state is known good
        _create_run_folder(run_dir)
        atomic_write_yaml(run_dir / CONFIG_FILE, config_record)
    train_loader, val_loader, test_loader = loaders(data, cfg.training.batch_size, cfg.seed)
    for component in module.cut_pipeline:
        train_loader = component.train_loader(train_loader)
    loggers = [ContinuedCSVLogger(str(run_dir), first_epoch=first_epoch, name="logs", version="")]
    wandb_logger = make_wandb_logger(cfg.wandb, run_dir, run_dir.name, job_type="train",
                                      config={**_wandb_config(cfg, module), **(tracking or {})})
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    trainer = L.Trainer(
        max_epochs=cfg.training.epochs,
        accelerator=accelerator,
        devices=1,
        precision=cfg.training.precision,
        # exact on CPU; on GPUs some kernels (e.g. bilinear upsampling's backward) have no
        # deterministic version, and the flag stays set for later work in the same process
        deterministic=True if accelerator == "cpu" else "warn",
        logger=loggers,
        callbacks=[EpochCheckpoint(checkpoint)],
        enable_progress_bar=cfg.training.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        # no sanity-check validation: with a randomised defense every message is a release of a
        # private sample, and the accounting counts one validation pass per epoch
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
    )
    started = time.perf_counter()
    with _interruptible(trainer, checkpoint):
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(checkpoint) if resume else None, weights_only=True)
    train_time_s = time.perf_counter() - started
    with _interruptible(trainer, checkpoint):
        tested = trainer.test(module, test_loader, verbose=False)[0]
    if module.remote:
        wire = module.server.wire_in_all.take()
        module.server.finish()

    metrics = {
        "test_accuracy": float(tested["test_acc"]),
        "test_loss": float(tested["test_loss"]),
        "activation_bytes_per_sample": module.activation_bytes_per_sample,
        "gradient_bytes_per_sample": module.gradient_bytes_per_sample,
        "train_time_s": train_time_s,
        "epochs": trainer.current_epoch,
        "cut_layer": module.cut_layer,
        "cut_name": module.cut_name,
    }
    metrics.update(module.component_metrics())
    metrics.update({k: float(v) for k, v in tested.items() if k.startswith("test_exit_")})  # internal classifiers
    if module.remote:
        metrics.update(wire)
    # the resolved defense settings (e.g. a calibrated clip) are known only after training starts
    config_record["resolved"] = _resolved(module, data)
    atomic_write_yaml(run_dir / CONFIG_FILE, config_record)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    if wandb_logger is not None:
        wandb_logger.experiment.summary.update(metrics)
        wandb_logger.experiment.finish()
    module.eval()
    return Run(run_dir, cfg, config_record["resolved"], metrics, module, data)


def _check_precision(precision: str, module: SplitLearningModule) -> None:
    for component in module.cut_pipeline:
        if component.precisions is not None and precision not in component.precisions:
            raise ConfigError("training.precision", precision, f"{' or '.join(component.precisions)} with "
                              f"{component.name} (it does not work under {precision})")


@contextlib.contextmanager
def _interruptible(trainer: L.Trainer, checkpoint: Path):
    """Ctrl-C: Lightning shuts down and calls ``sys.exit(1)`` with SIGINT ignored; turn that into
    :class:`TrainingInterrupted` (exit 130 with a message), the finished epochs being saved."""
    try:
        yield
    except SystemExit:
        if not trainer.interrupted:
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
        saved = f"{trainer.current_epoch} finished epoch(s) are saved in {checkpoint}" if checkpoint.exists() else \
            "no epoch had finished, so nothing was saved"
        raise TrainingInterrupted(f"{saved}; run the same command with --resume to continue") from None


def _wandb_config(cfg: RunConfig, module: SplitLearningModule) -> dict:
    first = cfg.defenses[0] if cfg.defenses else {}
    return {
        "dataset": cfg.data.dataset, "model": cfg.model.name, "cut_layer": module.cut_layer,
        "cut_name": module.cut_name, "defense": first.get("name", "none"), "seed": cfg.seed,
        "config": cfg.to_dict(),
    }
