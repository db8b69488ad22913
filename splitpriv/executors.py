"""Where a sweep's cells compute: local worker processes, or Ray tasks on a local Ray or a cluster.

An executor only computes: ``submit(function, *args)`` returns a :class:`concurrent.futures.Future`
of the function's result. The sweep's driver (the ``splitpriv sweep`` process) alone appends the
results to ``results.jsonl``, so resume, ``--force`` and the frontier are the same whichever
executor ran the cells.

Ray tasks write their run and attack folders into the sweep folder, as local workers do: on a
cluster of several machines the sweep folder must be on a file system every node mounts at the
same path (the tasks start in the driver's working directory, so relative paths resolve alike).
A task whose worker process dies (a killed process, a lost node) is retried by Ray up to
:data:`RAY_RETRIES` times; after that its cell is reported failed, not the sweep.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch

from splitpriv.errors import SplitprivError
from splitpriv.workers import WORKERS_LOCK, hold_lock, lock_path, worker_pool

RAY_RETRIES = 2  # re-executions of a task whose worker process died
RAY_INSTALL = "pip install -e '.[ray]', or pip install 'ray>=2.40'"


class CellExecutor(Protocol):
    def submit(self, function: Callable[..., Any], /, *args: Any) -> Future: ...


@contextlib.contextmanager
def cell_executor(kind: str, workers: int, folder: Path, *, address: str | None = None, cpus: float = 1.0,
                  gpus: float = 0.0) -> Iterator[CellExecutor]:
    """``local``: ``workers`` processes that die with this one, spread over this machine's GPUs;
    ``ray``: a task per submission with
    ``cpus`` CPUs and ``gpus`` GPUs (fractions share a GPU), on the Ray at ``address`` (none: a
    local Ray started here and stopped afterwards)."""
    if kind == "local":
        with worker_pool(workers, folder, _visible_gpus()) as pool:
            yield pool
        return
    with _ray(address) as ray:
        yield RayExecutor(ray, folder, cpus, gpus)


@contextlib.contextmanager
def inline_executor() -> Iterator[CellExecutor]:
    """Runs each submission in this process when its outcome is first asked for (one worker)."""
    yield _Inline()


class _Inline:
    def submit(self, function: Callable[..., Any], /, *args: Any) -> Future:
        return _Deferred(function, args)


class _Deferred(Future):
    """A future whose function runs here when ``result`` or ``exception`` is first called."""

    def __init__(self, function: Callable[..., Any], args: tuple):
        super().__init__()
        self._call: tuple | None = (function, args)

    def _run(self) -> None:
        if self._call is not None:
            (function, args), self._call = self._call, None
            try:
                self.set_result(function(*args))
            except Exception as error:
                self.set_exception(error)

    def result(self, timeout: float | None = None) -> Any:
        self._run()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._run()
        return super().exception(timeout)


def submit(executor: CellExecutor, function: Callable[..., Any], /, *args: Any) -> Future:
    """``executor.submit``; a local pool that a dead worker broke answers with a failed future, not
    an exception, so the cells still to submit are counted lost like those it was running."""
    try:
        return executor.submit(function, *args)
    except BrokenProcessPool as error:
        future: Future = Future()
        future.set_exception(error)
        return future


def _visible_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def import_ray():
    try:
        import ray
    except ImportError:
        raise SplitprivError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    return ray


@contextlib.contextmanager
def _ray(address: str | None):
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            # the tasks see this process's splitpriv and wandb settings (e.g. SPLITPRIV_DATA, WANDB_MODE)
            ray.init(address=address, include_dashboard=False, configure_logging=False,
                     runtime_env={"env_vars": _forwarded_environment()})
        except ConnectionError as error:
            raise SplitprivError(f"cannot connect to the Ray cluster at --address {address} ({error}); start it "
                                 f"(ray start --head) or give its address, e.g. ray://HOST:10001 or auto") from None
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


def _forwarded_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key.startswith(("SPLITPRIV_", "WANDB_"))}


class RayExecutor:
    """Each submission a Ray task holding ``cpus`` CPUs and ``gpus`` GPUs."""

    def __init__(self, ray, folder: Path, cpus: float, gpus: float):
        available = ray.cluster_resources()
        for flag, wanted, resource in (("--cell-cpus", cpus, "CPU"), ("--cell-gpus", gpus, "GPU")):
            if wanted > available.get(resource, 0):  # Ray would wait forever for a machine that can run the task
                raise SplitprivError(f"{flag} {wanted:g}, but the Ray cluster has {available.get(resource, 0):g} "
                                     f"{resource}(s) in all; lower {flag} (cell_{resource.lower()}s in the sweep config)")
        self.folder, self.working_directory = folder, os.getcwd()
        self.remote = ray.remote(_in_ray_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=RAY_RETRIES)

    def submit(self, function: Callable[..., Any], /, *args: Any) -> Future:
        lock = str(lock_path(self.folder.resolve(), WORKERS_LOCK))
        return self.remote.remote(self.working_directory, lock, function, *args).future()


def _in_ray_task(working_directory: str, workers_lock: str, function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function`` in the driver's working directory, holding the sweep's workers' lock (shared)
    where this node sees the sweep folder: a rerun refuses to start while a task still writes into it."""
    os.chdir(working_directory)
    with hold_lock(Path(workers_lock), fcntl.LOCK_SH):
        return function(*args)
