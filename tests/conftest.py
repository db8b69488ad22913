import os
import statistics
import time
from pathlib import Path

import pytest
import torch

# tests never touch the network: wandb writes offline runs (or nothing) locally
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# tiny tensors: a second thread only adds synchronisation, and on a busy machine its spin-waits
# cost 10-20x (measured); scripts and benchmarks keep torch's default
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def real_data_root() -> Path | None:
    """The data root holding real data sets: $SPLITPRIV_DATA, else ../shared/data beside the checkout."""
    root = Path(os.environ.get("SPLITPRIV_DATA") or SHARED_DATA)
    return root if (root / "MNIST" / "raw").exists() else None


@pytest.fixture
def mnist_root():
    root = real_data_root()
    if root is None:
        pytest.skip("real MNIST not found: set SPLITPRIV_DATA to a folder holding MNIST/raw")
    return root


def assert_higher(higher: list[float], lower: list[float], what: str, paired: bool = False) -> None:
    """mean(higher) > mean(lower) beyond the spread over seeds: Welch's t above its one-sided 95 % quantile,
    or, ``paired`` (the same runs measured two ways, e.g. by two attackers), Student's t of the per-run
    differences.

    The comparison for claims that a defense changes leakage (never a strict > on one seed)."""
    from scipy import stats

    difference = statistics.mean(higher) - statistics.mean(lower)
    t, p = (stats.ttest_rel(higher, lower, alternative="greater") if paired else
            stats.ttest_ind(higher, lower, equal_var=False, alternative="greater"))
    assert difference > 0 and p < 0.05, f"{what}: {higher} vs {lower} (t {t:.2f}, p {p:.3f})"


def wait_for(predicate, timeout_s: float = 120.0) -> None:
    """Poll ``predicate`` until it holds; a TimeoutError after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not come true in time")
        time.sleep(0.05)


def checkpoint_epoch(path: Path) -> int:
    """The epoch a training checkpoint holds, -1 while it is not there yet or being replaced."""
    try:
        return int(torch.load(path, weights_only=True)["epoch"])
    except Exception:
        return -1
