"""CIFAR-10 (``dataset: cifar10``), offline: small synthetic files in torchvision's python-pickle
layout (cifar-10-batches-py/: data_batch_1..5, test_batch, batches.meta) written per test."""
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pcn.images import DATASETS, image_shape, rgb, to_display
from pcn.study import config, data

PER_BATCH = 20  # images per synthetic batch: 100 training, 20 test images
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _write(path: Path, obj) -> None:
    path.write_bytes(pickle.dumps(obj))


def _batch(rng: np.random.Generator, n: int = PER_BATCH) -> dict:
    """One batch as torchvision's files hold it: uint8 (n, 3072), labels a list of ints."""
    return {b"batch_label": b"synthetic", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.permutation(np.arange(n) % 10)]}


@pytest.fixture
def cifar(tmp_path) -> tuple[Path, dict]:
    """(folder holding cifar-10-batches-py, {file name: the dict pickled in it})."""
    inner = tmp_path / "cifar10" / data.CIFAR_FOLDER
    inner.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {name: _batch(rng) for name in BATCHES}
    written["batches.meta"] = {b"label_names": [f"class{i}".encode() for i in range(10)],
                               b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072}
    for name, obj in written.items():
        _write(inner / name, obj)
    return inner.parent, written


def _x(batches: list[dict]) -> torch.Tensor:
    raw = np.concatenate([b[b"data"] for b in batches]).astype(np.float64)
    return torch.from_numpy(raw * 2 / 255 - 1).float()


def test_schema_lists_cifar10_with_3072_values():
    prop = config.schema()["properties"]["dataset"]
    assert prop["enum"] == list(DATASETS) and "cifar10" in DATASETS
    assert prop["input_size"] == {"mnist": 784, "fashionmnist": 784, "cifar10": 3072}
    assert image_shape(3072) == (3, 32, 32) and image_shape(784) == (1, 28, 28)


def test_loader_returns_what_the_files_hold(cifar):
    parent, written = cifar
    for folder in (parent, parent / data.CIFAR_FOLDER):  # the folder holding it, or the folder itself
        train = data.read_split(data.locate("cifar10", str(folder)), "train", "cifar10")
        test = data.read_split(data.locate("cifar10", str(folder)), "test", "cifar10")
        assert train.x.shape == (100, 3072) and test.x.shape == (20, 3072) and train.x.dtype == torch.float32
        torch.testing.assert_close(train.x, _x([written[n] for n in BATCHES[:5]]), rtol=0, atol=1e-6)
        torch.testing.assert_close(test.x, _x([written["test_batch"]]), rtol=0, atol=1e-6)
        assert train.y.tolist() == [v for n in BATCHES[:5] for v in written[n][b"labels"]]
        assert test.y.tolist() == written["test_batch"][b"labels"] and test.y.dtype == torch.int64
        assert float(train.x.min()) == -1.0 and float(train.x.max()) == 1.0  # 0 and 255 occur
    ds = data.load({"dataset": "cifar10", "data_dir": str(parent), "val_size": 10})
    assert (len(ds.train), len(ds.val), len(ds.test)) == (90, 10, 20)
    # provenance: every file read, by absolute path and SHA-256 of its bytes
    assert set(ds.files) == set(BATCHES) | {"batches.meta"}
    for name, rec in ds.files.items():
        path = parent / data.CIFAR_FOLDER / name
        assert rec == {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _missing(d: Path) -> None:
    (d / "data_batch_3").unlink()


def _garbage(d: Path) -> None:
    (d / "test_batch").write_bytes(b"not a pickle at all")


def _truncated(d: Path) -> None:
    (d / "data_batch_2").write_bytes((d / "data_batch_2").read_bytes()[:5000])


def _short(d: Path) -> None:  # intact pickle, fewer images than batches.meta says
    _write(d / "data_batch_4", _batch(np.random.default_rng(1), PER_BATCH - 1))


def _dtype(d: Path) -> None:
    b = _batch(np.random.default_rng(1))
    _write(d / "data_batch_5", {**b, b"data": b[b"data"].astype(np.float32)})


def _labels(d: Path) -> None:
    b = _batch(np.random.default_rng(1))
    _write(d / "data_batch_1", {**b, b"labels": [10] * PER_BATCH})


def _meta(d: Path) -> None:
    _write(d / "batches.meta", {b"label_names": [b"a"] * 10, b"num_cases_per_batch": PER_BATCH, b"num_vis": 784})


class _Payload:
    """A pickle that would create a file when loaded by a plain unpickler."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("damage, name, why", [
    (_missing, "data_batch_3", "missing file"),
    (_garbage, "test_batch", "not a CIFAR-10 python batch"),
    (_truncated, "data_batch_2", "not a CIFAR-10 python batch"),
    (_short, "data_batch_4", "holds 19 images, but batches.meta says 20"),
    (_dtype, "data_batch_5", "must be a uint8 array of shape (n, 3072), got float32"),
    (_labels, "data_batch_1", "integers in 0..9"),
    (_meta, "batches.meta", "784 values per image"),
])
def test_damaged_files_are_named_in_one_line(cifar, damage, name, why):
    parent, _ = cifar
    damage(parent / data.CIFAR_FOLDER)
    with pytest.raises(data.DataError) as err:
        data.load({"dataset": "cifar10", "data_dir": str(parent), "val_size": 10})
    msg = str(err.value)
    assert name in msg and why in msg and "\n" not in msg, msg


def test_a_pickle_that_runs_code_is_refused(cifar, tmp_path):
    parent, _ = cifar
    target = tmp_path / "pwned"
    _write(parent / data.CIFAR_FOLDER / "test_batch", _Payload(target))
    with pytest.raises(data.DataError, match="test_batch .*names pathlib"):
        data.read_split(parent / data.CIFAR_FOLDER, "test", "cifar10")
    assert not target.exists()


def _py2_pickle(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle wrote the real files (protocol 2, str keys, the array from
    numpy.core.multiarray, its bytes a BINSTRING), assembled opcode by opcode."""
    def text(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + len(b).to_bytes(4, "little") + b

    n, d = images.shape
    shape = b"J" + n.to_bytes(4, "little") + b"J" + d.to_bytes(4, "little") + b"\x86"
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + text(b"b") + b"\x87R"
             + b"(K\x01" + shape + b"cnumpy\ndtype\n" + text(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + text(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
             + text(images.tobytes()) + b"tb")
    labs = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + text(b"data") + array + text(b"labels") + labs + b"u."


def test_a_batch_pickled_by_python2_loads(cifar):
    """The real files were written by Python 2: str keys, numpy.core paths, bytes as str."""
    parent, written = cifar
    b = written["test_batch"]
    (parent / data.CIFAR_FOLDER / "test_batch").write_bytes(_py2_pickle(b[b"data"], b[b"labels"]))
    test = data.read_split(parent / data.CIFAR_FOLDER, "test", "cifar10")
    torch.testing.assert_close(test.x, _x([b]), rtol=0, atol=1e-6)
    assert test.y.tolist() == b[b"labels"]


def test_real_size_batches_must_hold_cifar10_class_counts(tmp_path):
    """Batches of 10,000 (the real set's size) must hold 1,000 test images per class."""
    inner = tmp_path / data.CIFAR_FOLDER
    inner.mkdir()
    _write(inner / "batches.meta", {b"label_names": [b"c"] * 10, b"num_cases_per_batch": 10000})
    _write(inner / "test_batch", {b"data": np.zeros((10000, 3072), np.uint8), b"labels": [0] * 10000})
    with pytest.raises(data.DataError, match="not CIFAR-10's: the images per class are"):
        data.read_split(inner, "test", "cifar10")
    _write(inner / "test_batch", {b"data": np.zeros((10000, 3072), np.uint8), b"labels": [i % 10 for i in range(10000)]})
    assert len(data.read_split(inner, "test", "cifar10")) == 10000


def test_layers_must_start_with_3072():
    with pytest.raises(config.ConfigError, match=r"first size 784 must equal the input size of dataset cifar10 "
                                                 r"\(3072 values: 32 x 32 pixels x 3 colour channels\)"):
        config.resolve({"dataset": "cifar10", "layers": [784, 32, 10]}, for_run=True)
    assert config.resolve({"dataset": "cifar10", "layers": [3072, 32, 10]}, for_run=True)["layers"][0] == 3072


def test_mse_is_per_pixel_and_channel():
    """gen_mse and recon_mse are means over all 3072 values of an image (and over the images)."""
    from pcn.core.inference import init_latents
    from pcn.fast.dispatch import infer
    from pcn.core.stepsize import inference_eta
    from pcn.study.evaluate import eval_T, evaluate
    from pcn.study.store import build_model

    cfg = config.resolve({"dataset": "cifar10", "layers": [3072, 16, 10], "T": 3}, for_run=True)
    model = build_model(cfg)
    x, y = torch.rand(6, 3072) * 2 - 1, torch.arange(6) % 10
    got = evaluate(model, x, y, cfg, torch.device("cpu"))
    with torch.no_grad():
        z, eps = infer(model, x, init_latents(model, x, cfg["init"]), eval_T(cfg), inference_eta(model, cfg),
                       momentum=cfg["momentum"])
        gen = model.generate(z[-1])
    assert got["gen_mse"] == pytest.approx(float(((gen - x) ** 2).mean()), rel=1e-5)
    assert got["recon_mse"] == pytest.approx(float((eps[0] ** 2).mean()), rel=1e-5)


def test_pcn_train_one_epoch_on_cifar10(cifar, tmp_path, capsys, one_thread):
    from pcn.cli import main

    parent, _ = cifar
    out = tmp_path / "run"
    sets = [f"data_dir={parent}", "dataset=cifar10", "layers=[3072, 32, 10]", "epochs=1", "val_size=20",
            "batch_size=20", "T=5", "eval_train_size=20", "ce_weight=0.5"]
    assert main(["train", "--out", str(out), "--device", "cpu"] + [a for s in sets for a in ("--set", s)]) == 0
    assert "done: test_acc" in capsys.readouterr().out
    final = json.loads((out / "final.json").read_text())
    assert final["dataset"] == "cifar10" and final["layers"] == [3072, 32, 10] and not final["diverged"]
    assert 0 <= final["test_acc"] <= 1 and 0 < final["gen_mse"] < 4 and 0 < final["recon_mse"] < 4
    assert set(final["data_files"]) == set(BATCHES) | {"batches.meta"}


def test_cre_model_takes_the_cifar10_input_size():
    from pcn.study.store import build_model

    cfg = config.resolve({"dataset": "cifar10", "model": "cre", "cre_size": "small", "latent": 8,
                          "layers": [3072, 8]}, for_run=True)
    z, x_hat, logits = build_model(cfg)(torch.zeros(2, 3072))
    assert x_hat.shape == (2, 3072) and logits.shape == (2, 10)


def test_half_masks_split_every_colour_plane_by_rows():
    from pcn.study.clamp import top_half_mask
    from pcn.study.robustness import bottom_half_mask

    top = top_half_mask(3072).reshape(3, 32, 32)
    assert top[:, :16].all() and not top[:, 16:].any()
    assert torch.equal(bottom_half_mask(3072), ~top_half_mask(3072))
    assert torch.equal(top_half_mask(784), torch.arange(784) < 392)  # grey: unchanged, the first d // 2


def test_colour_images_draw_as_32x32x3(tmp_path):
    """A red-plane image comes out red; a nan value marks its pixel red; the figure draws."""
    from pcn.outputs import figures
    from pcn.outputs.figures.image_grids import _mosaic
    from pcn.study.clamp import save_grid

    img = -np.ones((2, 3, 32, 32))
    img[0, 0] = 1.0  # image 0: red plane full, green and blue off -> red
    img[1, 2, 5, 7] = np.nan
    flat = img.reshape(2, 3072)
    assert to_display(flat).shape == (2, 32, 32, 3)
    m = _mosaic(flat, 2)
    assert m.shape == (32, 65, 3)
    np.testing.assert_array_equal(m[3, 4], [1, 0, 0])
    np.testing.assert_array_equal(m[5, 33 + 7], [1, 0, 0])
    np.testing.assert_array_equal(m[5, 33 + 8], [0, 0, 0])
    np.testing.assert_array_equal(rgb(np.zeros((1, 3))), [[0.5, 0.5, 0.5]])
    run = "dataset~cifar10/model~pcn/rule~pc/w~0.5/seed~0"
    table = {"run": np.array([run] * 4), "kind": np.array(["x", "x", "recon", "recon"]), "pos": np.array([0, 1, 0, 1]),
             "label": np.array([3, 5, 3, 5]), "pixels": np.concatenate([flat, flat])}
    png, _ = figures.draw("images", {"images": table}, tmp_path / "i.png")
    assert png.stat().st_size > 5_000
    save_grid([flat], tmp_path / "g.png", ["row"], ["a", "b"])
    assert (tmp_path / "g.png").stat().st_size > 1_000
