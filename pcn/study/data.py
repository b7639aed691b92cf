"""Datasets: torchvision's MNIST / FashionMNIST raw IDX files and CIFAR-10's python batches,
read by our own parsers.

Pixels are mapped to [-1, 1] (x = 2 p / 255 - 1) and flattened, so every MSE reported is
per pixel (per pixel and channel for CIFAR-10) on the [-1, 1] scale (spec 7).  A CIFAR-10
image stays in its files' order: 3072 = 3 x 32 x 32, the red plane, then green, then blue,
each row-major (pcn.images).  The validation split is the same for every run: a permutation
of the training set drawn with seed 12345; its last ``val_size`` images.

Where the files come from, in order: ``data_dir`` (config), the environment variable
PCN_DATA_DIR, else a torchvision download into ``data_root``.  For CIFAR-10 either folder may
be the ``cifar-10-batches-py`` folder itself or the folder holding it.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pcn.errors import PcnError
from pcn.images import DATASETS  # noqa: F401  (re-exported for callers of this module)

VAL_SEED = 12345
TORCHVISION_CLASS = {"mnist": "MNIST", "fashionmnist": "FashionMNIST", "cifar10": "CIFAR10"}
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


#: CIFAR-10's python version (torchvision.datasets.CIFAR10's download): this folder, its five
#: training batches, the test batch and the meta file, each a pickled dict.
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR_META = "batches.meta"
CIFAR_PIXELS = 3 * 32 * 32
#: Images per batch of the real set (batches.meta's num_cases_per_batch); only a set of this
#: size must hold CIFAR-10's images per class (5,000 each in training, 1,000 each in the test).
CIFAR_BATCH = 10000
CIFAR_LABEL_COUNTS = {"train": (5000,) * 10, "test": (1000,) * 10}
#: The only globals a CIFAR-10 pickle may name (numpy arrays and scalars; bytes written by
#: protocol 2): unpickling a data file must never run other code.
_PICKLE_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
                   for n in ("_reconstruct", "scalar")} | {("numpy", "ndarray"), ("numpy", "dtype"),
                                                          ("_codecs", "encode")}


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
    if dataset == "cifar10":
        inner = folder / CIFAR_FOLDER
        return folder if (folder / CIFAR_FILES["train"][0]).exists() or not inner.is_dir() else inner
    for cand in (folder, folder / TORCHVISION_CLASS[dataset] / "raw", folder / "raw"):
        if _find(cand, FILES["train"][0]) is not None:
            return cand
    return folder


def _all_present(folder: Path, dataset: str) -> bool:
    """Whether ``folder`` holds every raw file of ``dataset``."""
    if dataset == "cifar10":
        return all((folder / n).exists() for n in (*CIFAR_FILES["train"], *CIFAR_FILES["test"], CIFAR_META))
    return all(_find(folder, s) for pair in FILES.values() for s in pair)


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
        what = f"the {CIFAR_FOLDER} folder" if dataset == "cifar10" else "the four raw IDX files"
        raise DataError(f"downloading {dataset} into {root} failed ({e}). Offline, set the config "
                        f"key data_dir (or PCN_DATA_DIR) to a folder with {what}.") from e
    return root / CIFAR_FOLDER if dataset == "cifar10" else root / TORCHVISION_CLASS[dataset] / "raw"


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
    if _all_present(local, dataset):
        return local
    return _download(dataset, Path(data_root))


def _which(counts: tuple, split: str) -> str:
    names = [d for d, c in LABEL_COUNTS.items() if c[split] == counts]
    return f"they are those of {names[0]}" if names else "they match no known dataset"


def read_split(folder: Path, split: str, dataset: str | None = None) -> Split:
    """Read one split's images and labels; errors name the missing or corrupt file.  With
    ``dataset``, the image size and the images per class must be that dataset's."""
    if dataset == "cifar10":
        return read_cifar_split(folder, split)
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


# ----------------------------------------------------------------------------- CIFAR-10

class _DataUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays and scalars (``_PICKLE_GLOBALS``)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch has no need of")
        return super().find_class(module, name)


def _get(d: dict, key: str):
    """``d[key]`` for a pickle written by Python 2 (str keys) or 3 (bytes keys); None if absent."""
    return d[key] if key in d else d.get(key.encode())


def read_pickle(path: Path, digest: dict) -> dict:
    """The dict pickled in one CIFAR-10 file; its path and SHA-256 go into ``digest``."""
    if not path.exists():
        raise DataError(f"missing file {path}. Put CIFAR-10's python batches ({CIFAR_FOLDER}) there, or point "
                        f"data_dir / PCN_DATA_DIR at the folder that holds them.")
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}. Replace the file with an intact copy.") from None
    digest.update(path=str(path.resolve()), sha256=hashlib.sha256(blob).hexdigest())
    try:
        obj = _DataUnpickler(io.BytesIO(blob), encoding="latin1").load()
    except Exception as e:  # a damaged pickle fails in many ways (EOFError, UnpicklingError, ValueError ...)
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path} is not a CIFAR-10 python batch ({why}). Replace it with an intact "
                        f"copy from CIFAR-10's python version ({CIFAR_FOLDER}).") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a CIFAR-10 python batch (it holds a {type(obj).__name__}, not a dict)")
    return obj


def read_cifar_meta(folder: Path, digest: dict) -> int:
    """Check batches.meta (10 label names, 3072 values per image); return its images per batch."""
    path = folder / CIFAR_META
    meta = read_pickle(path, digest)
    names, per_batch, n_vis = (_get(meta, k) for k in ("label_names", "num_cases_per_batch", "num_vis"))
    if not isinstance(names, list) or len(names) != 10:
        raise DataError(f"{path} is not CIFAR-10's meta file: label_names must list 10 classes")
    if n_vis is not None and n_vis != CIFAR_PIXELS:
        raise DataError(f"{path} says {n_vis} values per image (num_vis), not CIFAR-10's {CIFAR_PIXELS}")
    if not isinstance(per_batch, int) or isinstance(per_batch, bool) or per_batch < 1:
        raise DataError(f"{path} has no valid num_cases_per_batch (images per batch): {per_batch!r}")
    return per_batch


def read_cifar_batch(path: Path, per_batch: int, digest: dict) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 3072) uint8 and labels (n,) of one batch file; n must be ``per_batch``."""
    batch = read_pickle(path, digest)
    images, labels = _get(batch, "data"), _get(batch, "labels")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != CIFAR_PIXELS:
        got = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (n, {CIFAR_PIXELS}), got {got}")
    if len(images) != per_batch:
        raise DataError(f"{path} holds {len(images)} images, but {CIFAR_META} says {per_batch} per batch: "
                        f"the file is truncated or from another set. Replace it with an intact copy.")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.empty(0)
    if labels.shape != (per_batch,) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: 'labels' must be {per_batch} integers in 0..9 (one per image)")
    return images, labels


def read_cifar_split(folder: Path, split: str) -> Split:
    """One CIFAR-10 split from ``folder`` (see read_cifar_batch; the real set of 10,000-image
    batches must also hold CIFAR-10's images per class)."""
    files = {CIFAR_META: {}}
    per_batch = read_cifar_meta(folder, files[CIFAR_META])
    parts = []
    for name in CIFAR_FILES[split]:
        files[name] = {}
        parts.append(read_cifar_batch(folder / name, per_batch, files[name]))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    counts = tuple(int(c) for c in np.bincount(labels, minlength=10))
    if per_batch == CIFAR_BATCH and counts != CIFAR_LABEL_COUNTS[split]:
        raise DataError(f"{folder}: the {split} batches are not CIFAR-10's: the images per class are "
                        f"{list(counts)}, not {list(CIFAR_LABEL_COUNTS[split])}. Replace them with intact copies.")
    x = torch.from_numpy(images.astype(np.float32)).mul_(2.0 / 255.0).sub_(1.0)  # in place: 600 MB for 50,000
    return Split(x, torch.from_numpy(labels), files)
