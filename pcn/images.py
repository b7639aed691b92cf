"""How a flat image vector of d values is laid out (no torch: the figures use it too; numpy
only inside the functions: ``pcn.cli`` imports DATASETS and starts without it).

Every dataset stores an image as one row-major, channel-first vector: MNIST and FashionMNIST
784 = 1 x 28 x 28 grey values, CIFAR-10 3072 = 3 x 32 x 32 (the red plane, then green, then
blue, as in its python batches).  Sizes no dataset has (synthetic models in tests) are drawn
as a square grey image where d is a square, else as one row of d values.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

#: The datasets (pcn/train_schema.yaml's dataset enum, kept here without torch or yaml for the
#: --dataset choices of pcn data and pcn judge; tests/test_cifar10.py checks that they agree).
DATASETS = ("mnist", "fashionmnist", "cifar10")
#: (channels, height, width) of the flat image sizes of the datasets.
DATASET_SHAPES: dict[int, tuple[int, int, int]] = {784: (1, 28, 28), 3072: (3, 32, 32)}


def image_shape(d: int) -> tuple[int, int, int]:
    """(channels, height, width) of a flat image of ``d`` values (see the module doc)."""
    if d in DATASET_SHAPES:
        return DATASET_SHAPES[d]
    side = math.isqrt(d)
    return (1, side, side) if side * side == d else (1, 1, d)


def to_display(flat: np.ndarray) -> np.ndarray:
    """Images (n, d) as arrays to draw: (n, h, w) grey or (n, h, w, 3) colour, values unchanged."""
    n, d = flat.shape
    c, h, w = image_shape(d)
    imgs = flat.reshape(n, c, h, w)
    return imgs[:, 0] if c == 1 else imgs.transpose(0, 2, 3, 1)


def rgb(imgs: np.ndarray) -> np.ndarray:
    """Colour images (..., 3) on the [-1, 1] scale as RGB in [0, 1] for imshow; a pixel with a
    non-finite channel is drawn pure red (as the grey figures draw it)."""
    import numpy as np

    bad = ~np.isfinite(imgs).all(-1)
    out = (np.clip(np.nan_to_num(imgs), -1, 1) + 1) / 2
    out[bad] = (1.0, 0.0, 0.0)
    return out


def half_planes(d: int) -> tuple[int, int]:
    """(channels, values per channel) of the split into a top and a bottom half: the top half is
    the first (values per channel) // 2 values of every channel plane (rows 0-13 of 28 x 28,
    rows 0-15 of each colour plane of 32 x 32 x 3)."""
    c = image_shape(d)[0]
    return c, d // c
