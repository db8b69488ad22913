"""Where a sweep's cells compute: a local Ray gives the local executor's frontier, a killed Ray sweep
resumes with no cell lost or run twice, and a failing or dying cell costs that cell, not the sweep."""
from __future__ import annotations

import csv
import fcntl
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import wait_for
from splitpriv import sweep
from splitpriv.errors import SweepIncomplete
from splitpriv.workers import WORKERS_LOCK, lock_path

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="the Ray executor's tests need Ray: pip install -e '.[ray]'")

ENV = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "RAY_DISABLE_USAGE_STATS": "1"}
TIMES = {"train_time_s", "attack_time_s"}  # wall times: the only columns that may differ between executors
# deterministic CPU cells: one torch thread each (two local workers, or one CPU per Ray task), fixed noise
GRID = {
    "name": "grid", "cuts": [1, "pool"], "workers": 2,
    "defenses": [{"name": "none"}, {"name": "dp_noise", "parameter": "epsilon", "strengths": [32.0], "params": {"noise_seed": 0}}],
    "training": {"epochs": 1},
    "attack": {"attacks": [{"name": "decoder_inversion", "capacity": "small", "max_epochs": 2, "patience": 1},
                           {"name": "optimization_inversion", "max_steps": 10}],
               "samples": 8, "dcor_samples": 8, "classifier_max_epochs": 1},
    "wandb": {"mode": "disabled"},
}

# a defense that fails its cell: it raises, or (the first time only) kills its worker process
FAULTY_DEFENSE = '''
import os
from pathlib import Path
from splitpriv.cut import MessageTransform
from splitpriv.defenses import Defense, register_defense


@register_defense
class Faulty(Defense, MessageTransform):
    name = "faulty"

    def __init__(self, fault: str = "raise", marker: str = ""):
        super().__init__()
        self.fault, self.marker = fault, marker

    def setup(self, module, private_train):
        if self.fault == "raise":
            raise RuntimeError("the faulty defense failed on purpose")
        if not Path(self.marker).exists():  # the first attempt dies as a killed worker would
            Path(self.marker).touch()
            os._exit(1)

    def transform(self, message):
        return message
'''


def frontier(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMES} for row in csv.DictReader(handle)]


def result_keys(folder: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (folder / sweep.RESULTS_FILE).read_text().splitlines()]


def run_cli(config: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``splitpriv sweep`` in its own session; whatever it leaves running (Ray's agents) is killed after."""
    process = subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "sweep", "--config", str(config), *extra],
                               env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        _kill_session(process.pid)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _workers_gone(folder: Path) -> bool:
    """No task of the sweep in ``folder`` holds its workers' lock any more."""
    with open(lock_path(folder, WORKERS_LOCK), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def write_config(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


def sweep_key(row: dict) -> str:
    strength = "" if row["strength"] is None else f"-{row['strength']:g}"
    return f"cut{row['cut_layer']}-{row['defense']}{strength}-seed{row['seed']}"


@needs_ray
def test_a_ray_sweep_killed_mid_run_resumes_with_no_cell_lost_or_run_twice(tmp_path):
    config = write_config(tmp_path / "grid.yaml", {**GRID, "out": str(tmp_path)})
    folder = tmp_path / "grid"
    process = subprocess.Popen([sys.executable, "-m", "splitpriv.cli", "sweep", "--config", str(config), "--executor", "ray"],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (folder / sweep.RESULTS_FILE).exists() and (folder / sweep.RESULTS_FILE).read_text().strip(), timeout_s=600)
        os.kill(process.pid, signal.SIGKILL)  # the driver only: Ray ends the tasks it owned
        process.wait()
        finished_before = result_keys(folder)
        wait_for(lambda: _workers_gone(folder), timeout_s=60)
    finally:
        _kill_session(process.pid)
    assert 1 <= len(finished_before) < 4
    rerun = run_cli(config, "--executor", "ray")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    keys = result_keys(folder)
    assert keys[:len(finished_before)] == finished_before
    assert len(keys) == len(set(keys)) == 4


@pytest.fixture(scope="module")
def local_ray():
    """One local 2-CPU Ray for the in-process tests below (the sweep uses a Ray it finds running)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"WANDB_MODE": "disabled"}})
    yield
    ray.shutdown()


@needs_ray
def test_ray_and_local_executors_give_the_same_frontier(tmp_path, local_ray):
    local = sweep.run_sweep(sweep.load_sweep_config({**GRID, "out": str(tmp_path / "local")}), progress=lambda line: None)
    on_ray = sweep.run_sweep(sweep.load_sweep_config({**GRID, "out": str(tmp_path / "ray"), "executor": "ray"}),
                             progress=lambda line: None)
    assert len(local) == len(on_ray) == 4
    assert frontier(tmp_path / "ray" / "grid" / sweep.FRONTIER_CSV) == frontier(tmp_path / "local" / "grid" / sweep.FRONTIER_CSV)
    assert sorted(result_keys(tmp_path / "ray" / "grid")) == sorted(sweep_key(row) for row in local)
    assert not (tmp_path / "ray" / "grid" / sweep.FAILURES_FILE).exists()


@needs_ray
def test_a_dead_ray_worker_costs_a_retry_not_the_sweep(tmp_path, local_ray):
    plugin = tmp_path / "faulty.py"
    plugin.write_text(FAULTY_DEFENSE)
    marker = tmp_path / "died-once"
    values = {**GRID, "out": str(tmp_path), "cuts": ["pool"], "plugins": [str(plugin)],
              "defenses": [{"name": "none"}, {"name": "faulty", "params": {"fault": "die", "marker": str(marker)}}]}
    sweep.run_sweep(sweep.load_sweep_config({**values, "executor": "ray"}), progress=lambda line: None)
    assert marker.exists()  # the first attempt died
    assert sorted(result_keys(tmp_path / "grid")) == ["cut4-faulty-seed0", "cut4-none-seed0"]


def test_a_dead_local_worker_costs_a_new_process_not_the_sweep(tmp_path):
    """Python's process pool breaks when a worker dies: the cells it held run again in new processes."""
    plugin = tmp_path / "faulty.py"
    plugin.write_text(FAULTY_DEFENSE)
    marker = tmp_path / "died-once"
    values = {**GRID, "out": str(tmp_path), "cuts": ["pool"], "plugins": [str(plugin)],
              "defenses": [{"name": "none"}, {"name": "faulty", "params": {"fault": "die", "marker": str(marker)}}]}
    lines = []
    sweep.run_sweep(sweep.load_sweep_config(values), progress=lines.append)
    assert marker.exists() and any("worker process died" in line for line in lines)
    assert sorted(result_keys(tmp_path / "grid")) == ["cut4-faulty-seed0", "cut4-none-seed0"]
    assert not (tmp_path / "grid" / sweep.FAILURES_FILE).exists()


def test_a_failing_cell_is_reported_with_its_reason_and_the_other_cells_finish(tmp_path):
    plugin = tmp_path / "faulty.py"
    plugin.write_text(FAULTY_DEFENSE)
    values = {**GRID, "out": str(tmp_path), "cuts": ["pool"], "workers": 1, "plugins": [str(plugin)],
              "defenses": [{"name": "faulty"}, {"name": "none"}]}
    with pytest.raises(SweepIncomplete, match=r"1 of 2 cells failed \(cut4-faulty-seed0: RuntimeError: the faulty"):
        sweep.run_sweep(sweep.load_sweep_config(values), progress=lambda line: None)
    folder = tmp_path / "grid"
    assert result_keys(folder) == ["cut4-none-seed0"]
    assert [row["defense"] for row in frontier(folder / sweep.FRONTIER_CSV)] == ["none"]
    failure = json.loads((folder / sweep.FAILURES_FILE).read_text())
    assert failure["key"] == "cut4-faulty-seed0" and "failed on purpose" in failure["traceback"]


def _visible_devices_once_all_started(folder: str, workers: int) -> tuple[int, str]:
    """Blocks this worker until ``workers`` tasks run at once: each then ran in its own worker."""
    Path(folder, str(os.getpid())).touch()
    wait_for(lambda: len(list(Path(folder).iterdir())) >= workers, timeout_s=120)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES", "")


def test_local_workers_spread_over_the_gpus_several_per_gpu(tmp_path):
    """Three workers on two GPUs: each worker sees one GPU, two see different ones, the third shares."""
    from splitpriv.workers import worker_pool

    started = tmp_path / "started"
    started.mkdir()
    with worker_pool(3, tmp_path / "sweep", gpus=2) as pool:
        futures = [pool.submit(_visible_devices_once_all_started, str(started), 3) for _ in range(3)]
        seen = dict(future.result() for future in futures)
    assert sorted(seen.values()) == ["0", "0", "1"]
