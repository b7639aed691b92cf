import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = (ROOT / ".." / "shared" / "data" / "mnist").resolve()

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST raw files expected in {MNIST_DIR} (the project's shared data folder)")
    return MNIST_DIR


@pytest.fixture
def one_thread():
    """For tests of hundreds of small-batch training steps: one torch thread is several times
    faster than two on a busy 2-core machine (no barrier spinning); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
