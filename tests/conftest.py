import os
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
