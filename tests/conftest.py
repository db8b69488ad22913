import os
from pathlib import Path

import pytest
import torch

# tests never touch the network: wandb writes offline runs (or nothing) locally
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(min(2, torch.get_num_threads()))

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
