"""Datasets: torchvision's MNIST / FashionMNIST raw IDX files, read by our own parser.

Pixels are mapped to [-1, 1] (x = 2 p / 255 - 1) and flattened, so every MSE reported is
per pixel on the [-1, 1] scale (spec 7).  The validation split is the same for every run:
a permutation of the training set drawn with seed 12345; its last ``val_size`` images.

Where the files come from, in order: ``data_dir`` (config), the environment variable
PCN_DATA_DIR, else a torchvision download into ``data_root``.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pcn.errors import PcnError

VAL_SEED = 12345
TORCHVISION_CLASS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST"}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
N_IMAGES = {"train": 60000, "test": 10000}
IMAGE_SHAPE = (28, 28)
#: Images per class (0..9) of each split: these differ between MNIST and FashionMNIST, so a
#: folder of one dataset is never read as the other.
LABEL_COUNTS = {
    "mnist": {"train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
              "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)},
    "fashionmnist": {"train": (6000,) * 10, "test": (1000,) * 10},
}
#: Names of the four files in the data identity a run records (config.json, final.json).
FILE_KEYS = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}


class DataError(PcnError, RuntimeError):
    """A dataset file is missing or corrupt."""


@dataclass
class Split:
    x: torch.Tensor  # (n, 784) float32 in [-1, 1]
    y: torch.Tensor  # (n,) int64
    files: dict = field(default_factory=dict)  # {train_images: {path, sha256}, ...} of the files read

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split
    files: dict = field(default_factory=dict)  # the four files read: {train_images: {path, sha256}, ...}


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        p = folder / name
        if p.exists():
            return p
    return None


def raw_dir_of(folder: Path, dataset: str) -> Path:
    """The folder inside ``folder`` that holds the raw files (it may be torchvision's
    ``<Class>/raw`` layout or the files themselves)."""
    for cand in (folder, folder / TORCHVISION_CLASS[dataset] / "raw", folder / "raw"):
        if _find(cand, FILES["train"][0]) is not None:
            return cand
    return folder


def read_idx(path: Path, expect_ndim: int, expect_n: int, digest: dict | None = None) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic 0x0000 08 <ndim>, big-endian sizes, uint8 data.
    With ``digest`` (a dict), store the file's path and SHA-256 in it."""
    try:
        blob = path.read_bytes()
        raw = gzip.decompress(blob) if path.suffix == ".gz" else blob
    except (OSError, EOFError, zlib.error) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise DataError(f"cannot read {path}: {why}. Replace the file with an intact copy "
                        f"(torchvision's raw IDX file, gzipped or not).") from None
    if digest is not None:
        digest.update(path=str(path.resolve()), sha256=hashlib.sha256(blob).hexdigest())
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expect_ndim:
        raise DataError(f"{path} is not a uint8 IDX file with {expect_ndim} dimension(s) "
                        f"(bad header). Replace it with torchvision's raw file.")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expect_ndim)]
    offset = 4 + 4 * expect_ndim
    if dims[0] != expect_n or len(raw) - offset != int(np.prod(dims)):
        raise DataError(f"{path} is truncated or has the wrong size: header says {dims}, "
                        f"{len(raw) - offset} data bytes, expected {expect_n} items. "
                        f"Replace it with an intact copy.")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def _download(dataset: str, root: Path) -> Path:
    import torchvision  # imported lazily: only the download path needs it

    cls = getattr(torchvision.datasets, TORCHVISION_CLASS[dataset])
    try:
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise DataError(f"downloading {dataset} into {root} failed ({e}). Offline, set the config "
                        f"key data_dir (or PCN_DATA_DIR) to a folder with the four raw IDX files.") from e
    return root / TORCHVISION_CLASS[dataset] / "raw"


def locate(dataset: str, data_dir: str | None, data_root: str = "data") -> Path:
    """Folder with the raw files: data_dir, else $PCN_DATA_DIR, else download into data_root."""
    chosen = data_dir or os.environ.get("PCN_DATA_DIR")
    if chosen:
        folder = Path(chosen)
        if not folder.is_dir():
            src = "config key data_dir" if data_dir else "PCN_DATA_DIR"
            raise DataError(f"{src} = {chosen!r} is not a folder")
        return raw_dir_of(folder, dataset)
    local = raw_dir_of(Path(data_root), dataset)
    if all(_find(local, s) for pair in FILES.values() for s in pair):
        return local
    return _download(dataset, Path(data_root))


def _which(counts: tuple, split: str) -> str:
    names = [d for d, c in LABEL_COUNTS.items() if c[split] == counts]
    return f"they are those of {names[0]}" if names else "they match no known dataset"


def read_split(folder: Path, split: str, dataset: str | None = None) -> Split:
    """Read one split's images and labels; errors name the missing or corrupt file.  With
    ``dataset``, the image size and the images per class must be that dataset's."""
    img_stem, lab_stem = FILES[split]
    paths = []
    for stem in (img_stem, lab_stem):
        p = _find(folder, stem)
        if p is None:
            raise DataError(f"missing file {folder / (stem + '.gz')} (or without .gz). Put torchvision's "
                            f"raw IDX files there, or point data_dir / PCN_DATA_DIR at a folder that has them.")
        paths.append(p)
    digests = ({}, {})
    images = read_idx(paths[0], 3, N_IMAGES[split], digests[0])
    labels = read_idx(paths[1], 1, N_IMAGES[split], digests[1])
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"{paths[0]} holds images of {images.shape[1]}x{images.shape[2]} pixels, "
                        f"not {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}")
    if labels.max() > 9:
        raise DataError(f"{paths[1]} holds labels outside 0..9")
    if dataset is not None:
        counts = tuple(int(c) for c in np.bincount(labels, minlength=10))
        if counts != LABEL_COUNTS[dataset][split]:
            raise DataError(f"{paths[1]} is not {dataset}'s {split} labels: the images per class are "
                            f"{list(counts)}, {_which(counts, split)}, not {list(LABEL_COUNTS[dataset][split])}. "
                            f"Point data_dir at the {dataset} files (one folder per dataset, e.g. "
                            f"data_dir: .../{{dataset}}).")
    x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32)) * (2.0 / 255.0) - 1.0
    return Split(x, torch.from_numpy(labels.astype(np.int64)), dict(zip(FILE_KEYS[split], digests)))


def load(cfg: dict) -> Dataset:
    """Train/val/test splits for a run config (dataset, data_dir, data_root, val_size, subsets)."""
    dataset = cfg.get("dataset", "mnist")
    folder = locate(dataset, cfg.get("data_dir"), cfg.get("data_root", "data"))
    full, test = read_split(folder, "train", dataset), read_split(folder, "test", dataset)
    files = {**full.files, **test.files}
    n_val = cfg.get("val_size", 5000)
    if n_val >= len(full):
        raise DataError(f"config key 'val_size': {n_val} leaves no training images (of {len(full)})")
    perm = torch.randperm(len(full), generator=torch.Generator().manual_seed(VAL_SEED))
    tr, va = perm[: len(full) - n_val], perm[len(full) - n_val:]
    if cfg.get("train_subset"):
        tr = tr[: cfg["train_subset"]]
    if cfg.get("test_subset"):
        test = Split(test.x[: cfg["test_subset"]], test.y[: cfg["test_subset"]])
    return Dataset(Split(full.x[tr], full.y[tr]), Split(full.x[va], full.y[va]), test, files)
