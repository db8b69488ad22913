"""Faults while work runs: a training killed (SIGKILL) or interrupted (Ctrl-C) loses at most the epoch
in progress and resumes to the uninterrupted result; a sweep whose main process is killed takes its
workers with it; a second sweep on the same folder is refused; damaged results are quarantined, not
thrown away; results files are as readable as the checkpoints."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import splitpriv.sweep as sweep
from conftest import checkpoint_epoch, wait_for
from splitpriv.errors import SplitprivError

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
TRAIN = [sys.executable, "-m", "splitpriv.cli", "train", "--epochs", "12", "--no-progress", "--threads", "1"]



def _state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    subprocess.run([*TRAIN, "--out", str(out), "--name", "whole"], env=ENV, check=True, capture_output=True)
    return out / "whole"


def test_a_training_killed_mid_run_resumes_to_the_uninterrupted_result(uninterrupted, tmp_path):
    run = tmp_path / "killed"
    process = subprocess.Popen([*TRAIN, "--out", str(tmp_path), "--name", "killed"], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: checkpoint_epoch(run / "checkpoints" / "last.ckpt") >= 3 or process.poll() is not None)
    process.kill()
    process.wait()
    assert not (run / "metrics.json").exists(), "the run finished before it was killed: nothing was tested"
    finished_epochs = checkpoint_epoch(run / "checkpoints" / "last.ckpt") + 1
    assert 4 <= finished_epochs < 12  # every finished epoch is kept, at most the one in progress is lost
    resumed = subprocess.run([*TRAIN, "--out", str(tmp_path), "--name", "killed", "--resume"], env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole, again = _state(uninterrupted), _state(run)
    assert all(torch.equal(whole[key], again[key]) for key in whole)
    metrics = [json.loads((path / "metrics.json").read_text()) for path in (uninterrupted, run)]
    assert metrics[0]["test_accuracy"] == metrics[1]["test_accuracy"] and metrics[1]["epochs"] == 12
    epochs_logged = [line.split(",") for line in (run / "logs" / "metrics.csv").read_text().splitlines()[1:]]
    assert len(epochs_logged) == len((uninterrupted / "logs" / "metrics.csv").read_text().splitlines()[1:])


def test_ctrl_c_saves_the_finished_epochs_and_exits_130(tmp_path):
    run = tmp_path / "interrupted"
    # As at a terminal: a shell starts background jobs with SIGINT ignored, which the child would inherit.
    process = subprocess.Popen([*TRAIN, "--out", str(tmp_path), "--name", "interrupted"], env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: checkpoint_epoch(run / "checkpoints" / "last.ckpt") >= 1 or process.poll() is not None)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "--resume" in stderr and "Traceback" not in stderr
    assert checkpoint_epoch(run / "checkpoints" / "last.ckpt") >= 1 and not (run / "metrics.json").exists()
    resumed = subprocess.run([*TRAIN, "--out", str(tmp_path), "--name", "interrupted", "--resume"], env=ENV,
                             capture_output=True, text=True)
    assert resumed.returncode == 0 and json.loads((run / "metrics.json").read_text())["epochs"] == 12


def test_results_files_are_as_readable_as_checkpoints(uninterrupted):
    modes = {name: stat.S_IMODE((uninterrupted / name).stat().st_mode)
             for name in ("metrics.json", "config.yaml", "checkpoints/last.ckpt")}
    assert modes["metrics.json"] == modes["config.yaml"] == modes["checkpoints/last.ckpt"], modes


# ----------------------------------------------------------------------------- sweeps

SLOW_SWEEP = {"name": "long", "cuts": [1, 4], "workers": 2, "defenses": [{"name": "none"},
              {"name": "distance_correlation", "parameter": "weight", "strengths": [0.5]}],
              "training": {"epochs": 3}, "wandb": {"mode": "disabled"},
              "attack": {"attacks": [{"name": "decoder_inversion", "capacity": "small", "max_epochs": 3}], "samples": 16,
                         "dcor_samples": 16, "classifier_max_epochs": 1}}


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_killing_the_sweep_main_process_ends_its_workers_and_a_rerun_finishes_the_cells(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**SLOW_SWEEP, "out": str(tmp_path)}))
    command = [sys.executable, "-m", "splitpriv.cli", "sweep", "--config", str(config)]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(_children(process.pid)) >= 2 and (tmp_path / "long" / "train").exists())
    workers = _children(process.pid)
    with pytest.raises(SplitprivError, match="another sweep is running"):  # while it runs, no second sweep
        sweep.run_sweep(sweep.load_sweep_config({**SLOW_SWEEP, "out": str(tmp_path)}), progress=lambda line: None)
    process.kill()
    process.wait()
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout_s=10)
    rerun = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    keys = [json.loads(line)["key"] for line in (tmp_path / "long" / "results.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 4


def test_damaged_results_lines_are_quarantined_and_their_cells_rerun(tmp_path):
    values = {"name": "q", "out": str(tmp_path), "cuts": [1, 4], "workers": 1, "defenses": [{"name": "none"}],
              "training": {"epochs": 1}, "wandb": {"mode": "disabled"},
              "attack": {"attacks": [{"name": "optimization_inversion", "max_steps": 5}], "samples": 8, "dcor_samples": 8,
                         "classifier_max_epochs": 1}}
    sweep.run_sweep(sweep.load_sweep_config(values), progress=lambda line: None)
    results = tmp_path / "q" / "results.jsonl"
    intact, damaged = results.read_text().splitlines()
    results.write_text(intact + "\n" + damaged[: len(damaged) // 2] + "\n")  # a torn line, as a disk fault leaves
    messages = []
    rows = sweep.run_sweep(sweep.load_sweep_config(values), progress=messages.append)
    assert any("damaged line(s) [2]" in m for m in messages)
    assert (tmp_path / "q" / "results.damaged.jsonl").read_text() == damaged[: len(damaged) // 2] + "\n"
    assert len(rows) == 2 and results.read_text().splitlines()[0] == intact  # the intact cell was kept, not rerun


def test_a_damaged_provenance_record_is_set_aside_and_the_sweep_goes_on(tmp_path):
    values = {"name": "p", "out": str(tmp_path), "cuts": [1], "workers": 1, "defenses": [{"name": "none"}],
              "training": {"epochs": 1}, "wandb": {"mode": "disabled"},
              "attack": {"attacks": [{"name": "optimization_inversion", "max_steps": 5}], "samples": 8, "dcor_samples": 8,
                         "classifier_max_epochs": 1}}
    sweep.run_sweep(sweep.load_sweep_config(values), progress=lambda line: None)
    (tmp_path / "p" / "provenance.json").write_text("{torn")
    sweep.run_sweep(sweep.load_sweep_config(values), progress=lambda line: None)
    assert (tmp_path / "p" / "provenance.damaged.json").read_text() == "{torn"
    assert json.loads((tmp_path / "p" / "provenance.json").read_text())["resumed"][0]["commit"]
