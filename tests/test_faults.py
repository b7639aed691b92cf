"""Issue 14, parts 2-4: damaged checkpoints are moved aside and the run still ends equal to an
uninterrupted one; a run folder or checkpoint of another config is refused before any file is
written; a re-run over a finished checkpoint writes every output again; every run records its
code version and the files it read."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from pcn.study import config, store
from pcn.study.train import RefusedError, train

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = (ROOT / ".." / "shared" / "data" / "mnist").resolve()
TINY = dict(train_subset=256, test_subset=128, val_size=64, eval_train_size=64, layers=[784, 16, 8],
            epochs=2, batch_size=64, T=3)
OUTPUTS = ("config.json", "metrics.csv", "alignment.csv", "final.json", "model.pt")
METRICS = ("test_acc", "val_acc", "train_acc", "recon_mse", "gen_mse", "energy", "epochs_done", "diverged")


def _cfg(**kw) -> dict:
    return config.resolve(dict(TINY, data_dir=str(MNIST_DIR), **kw))


def _quiet(msgs: list | None = None):
    return (lambda s: msgs.append(s)) if msgs is not None else (lambda s: None)


def _same_model(a: Path, b: Path) -> bool:
    sa, sb = torch.load(a)["state"], torch.load(b)["state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _snapshot(*folders: Path) -> dict:
    """Every file under the folders: (sha256, mtime_ns)."""
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_cfg(), out, log=_quiet())
    return out


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """The same run killed right after its epoch-2 checkpoint, before its outputs (ckpt.pt = epoch 2,
    .prev = epoch 1)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    mp = pytest.MonkeyPatch()
    marker = out.parent / "marker"
    mp.setenv("PCN_FAIL_ONCE_AFTER_EPOCH", "2")
    mp.setenv("PCN_FAIL_ONCE_MARKER", str(marker))
    try:
        with pytest.raises(SystemExit):
            train(_cfg(), out, log=_quiet())
    finally:
        mp.undo()
    assert store.read_checkpoint(out / "ckpt.pt")["epoch"] == 2
    assert store.read_checkpoint(out / "ckpt.pt.prev")["epoch"] == 1
    return out


def _damage(path: Path, kind: str, ref_run: Path) -> None:
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "zeroed":
        path.write_bytes(bytes(len(raw)))
    elif kind == "flipped":  # one byte inside the tensor data: only the checksum sees it
        b = bytearray(raw)
        b[len(b) - 2000] ^= 0xFF
        path.write_bytes(bytes(b))
    elif kind == "foreign_model":  # a model.pt where the checkpoint should be
        path.write_bytes((ref_run / "model.pt").read_bytes())


def _assert_equal_to_ref(run: Path, ref_run: Path) -> None:
    got, want = json.loads((run / "final.json").read_text()), json.loads((ref_run / "final.json").read_text())
    for k in METRICS:
        assert got[k] == want[k], k
    assert _same_model(run / "model.pt", ref_run / "model.pt")
    assert list(pd.read_csv(run / "metrics.csv").epoch) == [1, 2]
    assert (run / "alignment.csv").read_text() == (ref_run / "alignment.csv").read_text()


@pytest.mark.parametrize("kind", ["truncated", "zeroed", "flipped", "foreign_model"])
def test_damaged_checkpoint_is_moved_aside_and_run_resumes_from_previous(kind, ref, stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    _damage(run / "ckpt.pt", kind, ref)
    before = (run / "ckpt.pt").read_bytes()
    msgs: list[str] = []
    train(_cfg(), run, log=_quiet(msgs))
    aside = [p for p in run.iterdir() if p.name.startswith("ckpt.pt.") and p.name != "ckpt.pt.prev"]
    assert len(aside) == 1 and aside[0].read_bytes() == before, [p.name for p in run.iterdir()]
    reason = aside[0].name.split(".")[-1]
    assert reason in ("truncated", "checksum", "unreadable", "foreign", "empty")
    assert any("WARNING" in m and "moved it aside" in m for m in msgs), msgs
    assert any("resuming from" in m and "after epoch 1" in m for m in msgs), msgs
    _assert_equal_to_ref(run, ref)


def test_both_checkpoints_damaged_starts_from_scratch(ref, stopped, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped, run)
    _damage(run / "ckpt.pt", "truncated", ref)
    _damage(run / "ckpt.pt.prev", "zeroed", ref)
    msgs: list[str] = []
    train(_cfg(), run, log=_quiet(msgs))
    assert not any("resuming" in m for m in msgs) and any("from scratch" in m for m in msgs), msgs
    names = {p.name for p in run.iterdir()}
    assert "ckpt.pt.checksum" in names and {"ckpt.pt.prev.unreadable", "ckpt.pt.prev.checksum"} & names, names
    _assert_equal_to_ref(run, ref)


def test_probe_loaders_refuse_damaged_files_by_name(ref, tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes((ref / "model.pt").read_bytes()[:500])
    with pytest.raises(store.DamagedFile, match="model.pt"):
        store.load_model(bad)
    model, cfg, epoch = store.load_weights(ref / "ckpt.pt")  # a checksummed checkpoint loads as weights
    assert epoch == 2 and cfg["layers"] == TINY["layers"]


def test_other_config_is_refused_before_anything_is_written(ref, tmp_path):
    run, ck = tmp_path / "run", tmp_path / "ck"
    shutil.copytree(ref, run)
    before = _snapshot(run)
    with pytest.raises(RefusedError) as e:
        train(_cfg(seed=1), run, log=_quiet())
    msg = str(e.value)
    assert "seed" in msg and "--restart-if-changed" in msg and "nothing was written" in msg
    assert _snapshot(run) == before
    # a checkpoint folder of another config, with a fresh --out
    shutil.copytree(ref, ck)
    before = _snapshot(ck)
    with pytest.raises(RefusedError, match="ce_weight"):
        train(_cfg(ce_weight=0.25), tmp_path / "fresh", ck, log=_quiet())
    assert _snapshot(ck) == before and not (tmp_path / "fresh").exists()


def test_restart_if_changed_keeps_the_old_checkpoint_and_starts_afresh(ref, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    old_ckpt = (run / "ckpt.pt").read_bytes()
    msgs: list[str] = []
    final = train(_cfg(epochs=1), run, log=_quiet(msgs), restart_if_changed=True)
    assert (run / "ckpt.pt.stale").read_bytes() == old_ckpt
    assert final["epochs"] == 1 and final["epochs_done"] == 1
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    assert list(pd.read_csv(run / "metrics.csv").epoch) == [1]
    assert not any("resuming" in m for m in msgs)


def test_rerun_over_finished_checkpoint_rewrites_every_output(ref, tmp_path):
    """What a forced Snakemake job does: outputs deleted, checkpoint kept (elsewhere)."""
    run, ck = tmp_path / "run", tmp_path / "ck"
    train(_cfg(), run, ck, log=_quiet())
    want = {f: (run / f).read_bytes() for f in OUTPUTS if f != "model.pt"}
    for f in OUTPUTS:
        (run / f).unlink()
    msgs: list[str] = []
    train(_cfg(), run, ck, log=_quiet(msgs))
    assert any("after epoch 2" in m for m in msgs)
    for f in OUTPUTS:
        assert (run / f).stat().st_size > 0, f
    for f, content in want.items():  # identical, wall times included: they come from the checkpoint
        assert (run / f).read_bytes() == content, f
    assert _same_model(run / "model.pt", ref / "model.pt")


def test_runs_record_code_version_and_data_files(ref):
    sums = dict(line.split()[::-1] for line in (MNIST_DIR / "SHA256SUMS").read_text().splitlines() if line.strip())
    for name in ("config.json", "final.json"):
        rec = json.loads((ref / name).read_text())
        assert len(rec["code_sha256"]) == 64
        assert "code_commit" in rec and "code_dirty" in rec
        assert rec["compute_device"] == ("cuda" if torch.cuda.is_available() else "cpu")
        assert rec["compute_name"] and rec["torch_version"] == torch.__version__
        files = rec["data_files"]
        assert set(files) == {"train_images", "train_labels", "test_images", "test_labels"}
        for v in files.values():
            assert v["sha256"] == sums[Path(v["path"]).name], v
    from pcn.outputs import aggregate

    row = aggregate.aggregate([ref]).iloc[0]
    assert json.loads(row["data_files"])["test_labels"]["sha256"] == sums["t10k-labels-idx1-ubyte.gz"]
    assert row["code_sha256"] == json.loads((ref / "final.json").read_text())["code_sha256"]
    assert row["compute_device"] in ("cpu", "cuda") and row["torch_version"] == torch.__version__
    factors = aggregate.factor_columns(aggregate.aggregate([ref, ref]))
    assert not {"data_files", "compute_device", "compute_name", "torch_version"} & set(factors)


def test_code_hash_follows_the_source(tmp_path):
    from pcn.study import provenance

    copy = tmp_path / "pcn"
    shutil.copytree(provenance.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert provenance.source_sha256(copy) == provenance.code_version()["code_sha256"]
    (copy / "study" / "train.py").write_text((copy / "study" / "train.py").read_text() + "\n# changed\n")
    assert provenance.source_sha256(copy) != provenance.code_version()["code_sha256"]
