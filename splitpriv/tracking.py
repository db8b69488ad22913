"""Weights & Biases tracking: offline unless the user has configured wandb.

Mode, first that applies: the config's ``wandb.mode``; the ``WANDB_MODE`` environment variable;
``online`` when an API key is configured (``WANDB_API_KEY`` or a netrc entry for api.wandb.ai);
else ``offline`` (upload later with ``wandb sync <run>/wandb/offline-run-*``).
"""
from __future__ import annotations

import contextlib
import netrc
import os
from pathlib import Path

from splitpriv.config import WandbConfig
from splitpriv.errors import SplitprivError


def wandb_mode(cfg: WandbConfig) -> str:
    if cfg.mode:
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if _has_api_key() else "offline"


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def init_kwargs(cfg: WandbConfig, save_dir: Path, name: str, job_type: str, config: dict, group: str | None = None) -> dict:
    """Arguments of ``wandb.init`` shared by training runs (via Lightning) and attack/summary runs."""
    save_dir.mkdir(parents=True, exist_ok=True)
    return {
        "project": cfg.project, "group": group or cfg.group, "tags": list(cfg.tags), "dir": str(save_dir),
        "name": name, "job_type": job_type, "config": config, "mode": wandb_mode(cfg), "reinit": "create_new",
        "settings": {"silent": True, "console": "off", "x_disable_stats": True, "x_save_requirements": cfg.save_requirements},
    }


def make_wandb_logger(cfg: WandbConfig, save_dir: Path, name: str, job_type: str, config: dict, group: str | None = None):
    """Lightning's WandbLogger, or None when tracking is disabled."""
    if wandb_mode(cfg) == "disabled":
        return None
    from lightning.pytorch.loggers import WandbLogger
    import wandb

    kwargs = init_kwargs(cfg, save_dir, name, job_type, config, group)
    kwargs["save_dir"] = kwargs.pop("dir")
    kwargs["settings"] = wandb.Settings(**kwargs["settings"])
    kwargs.pop("reinit")
    logger = WandbLogger(**kwargs, log_model=False)
    # Lightning always passes wandb's deprecated ``anonymous`` setting, which makes every process
    # print a warning about a setting nobody set
    logger._wandb_init.pop("anonymous", None)
    with _starting(cfg):
        logger.experiment  # noqa: B018  (started now, so that a wandb problem stops the run before training)
    return logger


@contextlib.contextmanager
def _starting(cfg: WandbConfig):
    """A wandb run that cannot start (no API key, no network, a bad setting) is the user's to fix."""
    try:
        yield
    except Exception as error:  # wandb raises many kinds here (usage, communication, validation)
        reason = " ".join(str(error).split())[:300]
        raise SplitprivError(f"wandb could not start a run in {wandb_mode(cfg)} mode ({type(error).__name__}: {reason}); "
                             f"log in with 'wandb login', or pass --wandb-mode offline (or disabled)") from None


def log_run(cfg: WandbConfig, save_dir: Path, name: str, job_type: str, config: dict, summary: dict,
            group: str | None = None, images: dict[str, Path] | None = None, tables: dict[str, list[dict]] | None = None) -> None:
    """One finished wandb run (e.g. an attack or a sweep summary): config, summary metrics,
    images (files) and tables (lists of rows). Nothing when tracking is disabled."""
    if wandb_mode(cfg) == "disabled":
        return
    import wandb

    with _starting(cfg):
        run = wandb.init(**init_kwargs(cfg, save_dir, name, job_type, config, group))
    for key, path in (images or {}).items():
        run.log({key: wandb.Image(str(path))})
    for key, rows in (tables or {}).items():
        columns = list(rows[0]) if rows else []
        run.log({key: wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])})
    run.summary.update(summary)
    run.finish()
