"""FashionMNIST, offline: the shared copy of its raw files trains a model for real."""
from pathlib import Path

import pytest
import torch

from pcn.study import config, data
from pcn.study.train import train

FASHION_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "fashionmnist").resolve()


@pytest.fixture
def fashion_dir() -> Path:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(f"FashionMNIST raw files expected in {FASHION_DIR} (the project's shared data folder)")
    return FASHION_DIR


def test_short_fashionmnist_training(tmp_path, fashion_dir, one_thread):
    """One epoch of an ae on 3,000 real FashionMNIST images: 0.75 test accuracy measured (chance
    0.1; a wrong label file gives about chance), and the images are FashionMNIST's, not MNIST's."""
    cfg = config.resolve(dict(dataset="fashionmnist", data_dir=str(fashion_dir), model="ae", layers=[784, 128, 32],
                              ce_weight=0.5, train_subset=3000, test_subset=1000, val_size=500, eval_train_size=200,
                              epochs=1, batch_size=32, lr_schedule="constant"))
    ds = data.load(cfg)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3000, 500, 1000)
    assert sorted(torch.unique(ds.test.y).tolist()) == list(range(10))
    # mean pixel on the [-1, 1] scale: FashionMNIST -0.43 (mean intensity 0.286), MNIST -0.74 (0.131)
    assert -0.5 < float(ds.train.x.mean()) < -0.35
    final = train(cfg, tmp_path / "run", device="cpu", log=lambda s: None)
    assert final["dataset"] == "fashionmnist" and not final["diverged"]
    assert final["test_acc"] > 0.6 and final["val_acc"] > 0.6, (final["test_acc"], final["val_acc"])
