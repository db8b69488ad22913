"""Nothing lost when a training dies: a checkpoint after every epoch, written atomically, and a
per-epoch log that a resumed run continues instead of replacing.

Lightning's ``ModelCheckpoint(save_last=True)`` writes nothing until fit ends and writes in
place (a full disk leaves a truncated file); its CSV logger deletes ``metrics.csv`` when a run
resumes. These two small classes keep Lightning's loop and fix exactly that.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class EpochCheckpoint(Checkpoint):
    """Save ``path`` at the end of every training epoch (after the module logged it): the loggers
    are flushed first, the checkpoint goes to a temporary file in the same folder and is renamed
    over the old one, so a kill at any moment leaves the previous epoch's checkpoint or this one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        for logger in trainer.loggers:
            logger.save()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            trainer.save_checkpoint(temporary, weights_only=False)  # the whole state: optimizers and loops too
            with open(temporary, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)


class _ContinuedWriter(ExperimentWriter):
    """Keeps the rows of epochs before ``first_epoch`` instead of deleting the file."""

    def __init__(self, log_dir: str, first_epoch: int):
        self.first_epoch = first_epoch
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            kept = [row for row in reader if _epoch(row) < self.first_epoch]
        with path.open("w", newline="") as handle:  # rewritten without rows the resumed epochs will log again
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        self.metrics_keys = fields


def _epoch(row: dict) -> float:
    try:
        return float(row.get("epoch") or 0)
    except ValueError:
        return 0.0


class ContinuedCSVLogger(CSVLogger):
    """Lightning's CSV logger that, for a run resumed at ``first_epoch``, keeps the earlier epochs' rows."""

    def __init__(self, save_dir: str, first_epoch: int = 0, **kwargs):
        super().__init__(save_dir, **kwargs)
        self.first_epoch = first_epoch

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self.first_epoch)
        return self._experiment
