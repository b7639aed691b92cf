"""Training runs: outputs, determinism, kill-and-resume, divergence, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pcn.study import config, data
from pcn.study.evaluate import evaluate
from pcn.study.store import load_model
from pcn.study.train import train

TINY = dict(train_subset=600, test_subset=300, val_size=200, eval_train_size=200, layers=[784, 32, 16],
            epochs=2, batch_size=100, T=5)


def _cfg(mnist_dir, **kw):
    return config.resolve(dict(TINY, data_dir=str(mnist_dir), **kw))


def test_outputs_and_model_reload(tmp_path, mnist_dir):
    final = train(_cfg(mnist_dir), tmp_path / "run")
    run = tmp_path / "run"
    for f in ("config.json", "metrics.csv", "final.json", "model.pt", "ckpt.pt"):
        assert (run / f).stat().st_size > 0, f
    m = pd.read_csv(run / "metrics.csv")
    assert list(m.epoch) == [1, 2] and m.notna().all().all()
    assert 0 <= final["test_acc"] <= 1 and final["recon_mse"] > 0 and not final["diverged"]
    al = pd.read_csv(run / "alignment.csv")
    assert sorted(al.epoch.unique()) == [0, 1, 2]
    cos = al[al.metric == "cos_W"]
    assert len(cos) == 3 * 2 and cos.value.between(-1, 1).all()
    on_disk = json.loads((run / "final.json").read_text())
    assert on_disk["test_acc"] == final["test_acc"] and on_disk["rule"] == "pc"
    model, cfg = load_model(run / "model.pt")
    ds = data.load(cfg)
    again = evaluate(model, ds.test.x, ds.test.y, cfg, torch.device("cpu"))
    assert again["acc"] == final["test_acc"] and again["recon_mse"] == pytest.approx(final["recon_mse"], rel=1e-6)


@pytest.mark.parametrize("kw", [dict(rule="pc"), dict(rule="bp", init="zeros"), dict(model="ae")])
def test_same_seed_same_result(tmp_path, mnist_dir, kw):
    a = train(_cfg(mnist_dir, epochs=1, **kw), tmp_path / "a")
    b = train(_cfg(mnist_dir, epochs=1, **kw), tmp_path / "b")
    c = train(_cfg(mnist_dir, epochs=1, seed=1, **kw), tmp_path / "c")
    keys = ("test_acc", "recon_mse", "gen_mse", "train_acc")
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert [a[k] for k in keys] != [c[k] for k in keys]


def test_kill_and_resume_equals_uninterrupted(tmp_path, mnist_dir):
    cfg = _cfg(mnist_dir, epochs=6, train_subset=5000, T=20)
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    run, ck = tmp_path / "run", tmp_path / "ck"
    cmd = [sys.executable, "-m", "pcn", "train", "--config", str(cfg_file), "--out", str(run),
           "--ckpt-dir", str(ck), "--threads", "1"]
    ref_cmd = cmd[:cmd.index("--out")] + ["--out", str(tmp_path / "ref"), "--threads", "1"]
    assert subprocess.run(ref_cmd, capture_output=True, timeout=300).returncode == 0
    ref = json.loads((tmp_path / "ref" / "final.json").read_text())
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (ck / "ckpt.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (run / "final.json").exists(), "the run finished before it could be killed"
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stderr
    got = json.loads((run / "final.json").read_text())
    for k in ("test_acc", "val_acc", "train_acc", "recon_mse", "gen_mse", "energy", "epochs_done"):
        assert got[k] == ref[k], k
    a = torch.load(run / "model.pt")["state"]
    b = torch.load(tmp_path / "ref" / "model.pt")["state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list(pd.read_csv(run / "metrics.csv").epoch) == [1, 2, 3, 4, 5, 6]
    assert (run / "alignment.csv").read_text() == (tmp_path / "ref" / "alignment.csv").read_text()


def test_divergence_is_recorded_not_raised(tmp_path, mnist_dir):
    final = train(_cfg(mnist_dir, eta=5.0, T=30, init="zeros", activation="linear", epochs=3), tmp_path / "d")
    assert final["diverged"] is True
    assert final["diverged_epoch"] == 1 and final["diverged_batch"] is not None
    on_disk = json.loads((tmp_path / "d" / "final.json").read_text())
    assert on_disk["diverged"] is True
    m = pd.read_csv(tmp_path / "d" / "metrics.csv")
    assert bool(m.diverged.iloc[-1])


@pytest.mark.parametrize("override, needle", [
    (["nonsense=1"], "nonsense"),
    (["ce_weight=1.5"], "ce_weight"),
    (["ce_weight=-0.1"], "ce_weight"),
    (["rule=hebb"], "rule"),
    (["dataset=imagenet"], "dataset"),
    (["epochs=two"], "epochs"),
    (["layers=[784]"], "layers"),
    (["eta"], "key=value"),
])
def test_bad_config_rejected_with_key(override, needle, tmp_path):
    with pytest.raises(config.ConfigError, match=needle):
        config.load(None, override)
    res = subprocess.run([sys.executable, "-m", "pcn", "train", "--out", str(tmp_path / "x")]
                         + [a for o in override for a in ("--set", o)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and needle in res.stderr
    assert not (tmp_path / "x").exists()


def test_missing_and_corrupt_files_are_named(tmp_path, mnist_dir):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in os.listdir(mnist_dir):
        if name.endswith(".gz") and not name.startswith("t10k-labels"):
            (folder / name).symlink_to(mnist_dir / name)
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte"):
        data.load({"dataset": "mnist", "data_dir": str(folder)})
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(data.DataError, match="t10k-labels-idx1-ubyte.gz"):
        data.load({"dataset": "mnist", "data_dir": str(folder)})
    with pytest.raises(data.DataError, match="not a folder"):
        data.load({"dataset": "mnist", "data_dir": str(tmp_path / "nowhere")})


def test_config_file_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("rule: bp\nce_weight: 0.25\nlayers: [784, 64, 8]\n")
    cfg = config.load(f, ["lr=1e-3", "T=7"])
    assert cfg["rule"] == "bp" and cfg["ce_weight"] == 0.25 and cfg["lr"] == 0.001 and cfg["T"] == 7
    assert config.load(None, ["model=ae"])["rule"] == "bp"


def test_training_set_goes_to_the_device_only_when_it_fits():
    from pcn.study.train import fits_on_device, place_training_set

    assert fits_on_device(400, 1000) and not fits_on_device(600, 1000)
    x, y = torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)
    logs = []
    gx, gy = place_training_set(x, y, torch.device("cpu"), logs.append)
    assert gx.device.type == "cpu" and torch.equal(gx, x) and not logs
