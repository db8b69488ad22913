"""A sweep's worker processes die with the sweep that started them, and one sweep folder serves one
sweep at a time.

Killing only a sweep's main process (SIGKILL, a lost terminal) used to leave its workers training
and writing into the sweep folder, where a prompt rerun raced them. Each worker now asks the kernel
to kill it when its parent dies (Linux ``PR_SET_PDEATHSIG``) and, everywhere, watches its parent
once a second. A rerun refuses to start while another sweep holds the folder, or while workers of a
dead one are still finishing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from splitpriv.errors import SplitprivError

SWEEP_LOCK, WORKERS_LOCK = "sweep.lock", "workers.lock"
_held_by_worker: list = []  # the worker's shared lock on WORKERS_LOCK, held for its whole life


def _lock(path: Path, mode: int):
    """An open file holding a non-blocking flock of ``mode`` on ``path``, or None if another holds it."""
    handle = open(path, "a")
    try:
        fcntl.flock(handle, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


@contextlib.contextmanager
def hold_lock(path: Path, mode: int):
    """Hold a flock of ``mode`` on ``path`` while the block runs, where it can be taken (a folder this
    machine does not see, or a lock another holds, leaves the block unlocked)."""
    handle = _lock(path, mode) if path.parent.is_dir() else None
    try:
        yield
    finally:
        if handle is not None:
            handle.close()


def lock_path(folder: Path, kind: str) -> Path:
    """The lock files live beside the sweep folder (``.<name>.sweep.lock``): taking them changes nothing
    inside it, and ``--force`` emptying it leaves them alone."""
    return folder.parent / f".{folder.name}.{kind}"


@contextlib.contextmanager
def exclusive_sweep_folder(folder: Path):
    """Hold ``folder`` for this sweep; refuse while another sweep, or a dead sweep's workers, use it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep = _lock(lock_path(folder, SWEEP_LOCK), fcntl.LOCK_EX)
    if sweep is None:
        raise SplitprivError(f"another sweep is running in {folder}; wait for it to finish (or stop it) before "
                             f"running this one, or choose another --name/--out")
    try:
        workers = _lock(lock_path(folder, WORKERS_LOCK), fcntl.LOCK_EX)
        if workers is None:
            raise SplitprivError(f"worker processes of an earlier sweep in {folder} are still running (its main "
                                 f"process was stopped); they stop within seconds: rerun then")
        workers.close()  # released: this sweep's own workers take it shared
        yield
    finally:
        sweep.close()


def _die_with_parent(parent_pid: int, workers_lock: str) -> None:
    """Worker initializer: hold the workers' lock, and end when the sweep's main process ends."""
    handle = _lock(Path(workers_lock), fcntl.LOCK_SH)
    if handle is not None:
        _held_by_worker.append(handle)
    libc = ctypes.util.find_library("c")
    if libc and hasattr(signal, "SIGKILL"):
        with contextlib.suppress(AttributeError, OSError):
            ctypes.CDLL(libc, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="splitpriv-parent-watch", daemon=True).start()


def _start_worker(parent_pid: int, workers_lock: str, started, gpus: int) -> None:
    """Worker initializer: with ``gpus`` GPUs, the k-th worker started sees only GPU k mod ``gpus``
    (set before anything initialises CUDA), so the cells spread over the GPUs, several per GPU when
    there are more workers than GPUs."""
    if gpus:
        with started.get_lock():
            index, started.value = started.value, started.value + 1
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index % gpus)
    _die_with_parent(parent_pid, workers_lock)


def worker_pool(workers: int, folder: Path, gpus: int = 0) -> ProcessPoolExecutor:
    """``workers`` spawned processes for the sweep in ``folder`` that die with this process, spread
    over ``gpus`` GPUs."""
    context = get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(os.getpid(), str(lock_path(folder, WORKERS_LOCK)), context.Value("i", 0), gpus))
