"""Training runs are tracked in wandb offline and read back locally with `wandb leet inspect`."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from splitpriv import load_run_config, train
from splitpriv.config import WandbConfig
from splitpriv.tracking import wandb_mode


def test_offline_unless_configured(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setenv("HOME", "/nonexistent")
    assert wandb_mode(WandbConfig()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode(WandbConfig()) == "online"
    assert wandb_mode(WandbConfig(mode="disabled")) == "disabled"


def test_offline_run_is_readable_with_wandb_leet(tmp_path, monkeypatch):
    wandb_cli = Path(sys.executable).with_name("wandb")
    if not wandb_cli.exists():
        pytest.skip("wandb CLI not installed next to this python")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = train(load_run_config(None, {"out": str(tmp_path), "name": "w", "training.epochs": 1,
                                       "training.progress_bar": False, "wandb.group": "g", "wandb.tags": ["t"]}))
    offline_runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", str(offline_runs[0])],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    record = json.loads(out)
    assert record["config"]["cut_name"] == run.cut_name and record["config"]["dataset"] == "digits"
    summary = record.get("summary") or record.get("metrics")
    assert summary["test_accuracy"] == pytest.approx(run.metrics["test_accuracy"])
