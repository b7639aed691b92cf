"""Issue 14, part 1: a user's mistake gives one line naming the file or key, exit 2 (usage) or
1 (failure), and no traceback.  The table walks bad inputs through ``pcn.cli.main`` (the real
argument parsing and error handling, in-process so it stays fast); a few go through
``python -m pcn`` to check the process itself, and ``--debug``."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pcn.cli import main
from pcn.study.train import train

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = (ROOT / ".." / "shared" / "data" / "mnist").resolve()
TINY = ["--set", "train_subset=128", "--set", "test_subset=64", "--set", "val_size=50",
        "--set", "eval_train_size=32", "--set", "layers=[784,8,4]", "--set", "epochs=1",
        "--set", "batch_size=64", "--set", "T=2"]


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run ``pcn argv`` in-process: (exit status, stderr).  An exception escaping main() (a
    traceback in real life) fails the test by itself."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse and a few plugin checks exit this way
        code = e.code if isinstance(e.code, int) else (1 if e.code else 0)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    err = capsys.readouterr().err
    return code, err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad files of every kind, and one tiny finished run."""
    d = tmp_path_factory.mktemp("bad")
    f = {}
    f["yaml_error"] = d / "broken.yaml"
    f["yaml_error"].write_text("epochs: 3\nlayers: [784, 32\nT: 5\n")
    f["binary"] = d / "garbage.yaml"
    f["binary"].write_bytes(bytes(range(256)) * 4)
    f["list"] = d / "list.yaml"
    f["list"].write_text("- 1\n- 2\n")
    f["folder"] = d / "a_folder"
    f["folder"].mkdir()
    f["regular"] = d / "regular_file"
    f["regular"].write_text("I am a file\n")
    # MNIST with the training images' gzip body damaged mid-stream (a zlib error when read)
    dmg = d / "damaged_mnist"
    dmg.mkdir()
    for name in os.listdir(MNIST_DIR):
        if name.endswith(".gz") and not name.startswith("train-images"):
            (dmg / name).symlink_to(MNIST_DIR / name)
    blob = bytearray((MNIST_DIR / "train-images-idx3-ubyte.gz").read_bytes())
    mid = len(blob) // 2
    blob[mid:mid + 4096] = bytes(4096)
    (dmg / "train-images-idx3-ubyte.gz").write_bytes(bytes(blob))
    f["damaged_data"] = dmg
    # a finished tiny run, then copies of it with damaged model.pt / final.json
    run = d / "run"
    train({"data_dir": str(MNIST_DIR), "train_subset": 128, "test_subset": 64, "val_size": 50,
           "eval_train_size": 32, "layers": [784, 8, 4], "epochs": 1, "batch_size": 64, "T": 2},
          run, log=lambda s: None)
    f["run"] = run
    bad_model = d / "bad_model_run"
    bad_model.mkdir()
    for name in ("config.json", "final.json"):
        (bad_model / name).write_bytes((run / name).read_bytes())
    (bad_model / "model.pt").write_bytes((run / "model.pt").read_bytes()[:300])
    f["bad_model_run"] = bad_model
    bad_final = d / "bad_final_run"
    bad_final.mkdir()
    (bad_final / "final.json").write_text('{"test_acc": 0.5, ')
    f["bad_final_run"] = bad_final
    bad_metrics = d / "bad_metrics_run"
    bad_metrics.mkdir()
    (bad_metrics / "final.json").write_bytes((run / "final.json").read_bytes())
    (bad_metrics / "metrics.csv").write_text("")
    f["bad_metrics_run"] = bad_metrics
    f["empty_csv"] = d / "empty.csv"
    f["empty_csv"].write_text("")
    return f


# Each case: (argv with {placeholders}, expected exit status, text the one line must contain).
CASES = [
    # config text
    (["train", "--out", "{tmp}/o", "--set", "layers=[784,32"], 2, "layers"),
    (["train", "--out", "{tmp}/o", "--set", "ce_weight=.nan"], 2, "ce_weight"),
    (["train", "--out", "{tmp}/o", "--set", "lr=inf"], 2, "lr"),
    (["train", "--out", "{tmp}/o", "--set", "layers=[100,32]"], 2, "layers"),
    (["train", "--out", "{tmp}/o", "--set", "epochz=3"], 2, "epochz"),
    (["train", "--out", "{tmp}/o", "--set", "epochs=2.5"], 2, "epochs"),
    (["train", "--out", "{tmp}/o", "--set", "=3"], 2, "key=value"),
    (["train", "--out", "{tmp}/o", "--config", "{yaml_error}"], 2, "broken.yaml"),
    (["train", "--out", "{tmp}/o", "--config", "{binary}"], 2, "garbage.yaml"),
    (["train", "--out", "{tmp}/o", "--config", "{list}"], 2, "list.yaml"),
    (["train", "--out", "{tmp}/o", "--config", "{folder}"], 2, "a_folder"),
    (["train", "--out", "{tmp}/o", "--config", "{tmp}/nowhere.yaml"], 2, "nowhere.yaml"),
    (["config", "--show", "--config", "{yaml_error}"], 2, "broken.yaml"),
    (["config", "--show", "--set", "dataset=cifar100"], 2, "dataset"),
    # command line
    (["train", "--out", ""], 2, "--out"),
    (["train", "--out", "{tmp}/o", "--threads", "-1"], 2, "--threads"),
    (["train", "--out", "{tmp}/o", "--threads", "two"], 2, "--threads"),
    (["train", "--out", "{tmp}/o", "--device", "tpu"], 2, "--device"),
    (["train"], 2, "--out"),
    (["nonsense"], 2, "nonsense"),
    # files and folders of the wrong kind
    (["train", "--out", "{regular}"], 2, "regular_file"),
    (["train", "--out", "{regular}/run"], 2, "regular_file"),
    (["train", "--out", "{tmp}/o", "--ckpt-dir", "{regular}/ck"], 2, "regular_file"),
    (["train", "--out", "{tmp}/o", "--set", "data_dir={tmp}/no_data"], 1, "no_data"),
    (["train", "--out", "{tmp}/o", "--set", "data_dir={damaged_data}"], 1, "train-images-idx3-ubyte.gz"),
    (["train", "--out", "{tmp}/o", "--set", "data_dir={mnist}", "--set", "dataset=fashionmnist"], 1,
     "train-labels-idx1-ubyte.gz"),
    (["data", "--dataset", "fashionmnist", "--data-dir", "{mnist}"], 1, "mnist"),
    (["data", "--dataset", "mnist", "--data-dir", "{mnist}", "--out", "/dev/full"], 1, "/dev/full"),
    (["probe", "--run", "{bad_model_run}", "--out", "{tmp}/trace.csv"], 1, "model.pt"),
    (["probe", "--run", "{tmp}/no_run", "--out", "{tmp}/trace.csv"], 1, "no_run"),
    (["aggregate", "--runs", "{tmp}/no_run", "--out", "{tmp}/s.csv"], 1, "no_run"),
    (["aggregate", "--runs", "{bad_final_run}", "--out", "{tmp}/s.csv"], 1, "final.json"),
    (["figure", "tradeoff", "--summary", "{tmp}/no_table.csv", "--out", "{tmp}/f.png"], 1, "no_table.csv"),
    (["figure", "tradeoff", "--summary", "{empty_csv}", "--out", "{tmp}/f.png"], 1, "empty.csv"),
    (["aggregate", "--runs", "{bad_metrics_run}", "--curves-out", "{tmp}/c.csv"], 1, "metrics.csv"),
    (["figure", "images", "--images", "{regular}", "--out", "{tmp}/f.png"], 1, "regular_file"),
]


@pytest.mark.parametrize("argv, status, needle", CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in CASES])
def test_cli_error_table(argv, status, needle, files, tmp_path, capsys):
    fill = {k: str(v) for k, v in files.items()} | {"tmp": str(tmp_path), "mnist": str(MNIST_DIR)}
    args = [a.format(**fill) for a in argv]
    if args and args[0] == "train" and not any(a.startswith("data_dir=") for a in args):
        args += ["--set", f"data_dir={MNIST_DIR}"]
    if args and args[0] == "train":
        args = args[:1] + TINY + args[1:]  # the case's own --set come last and win
    code, err = cli(args, capsys)
    lines = err.strip().splitlines()
    assert code == status, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert needle.format(**fill) in lines[0], err
    assert not (tmp_path / "o").exists(), "a refused run must not write anything"


def test_read_only_output_folder(files, capsys):
    ro = Path("/proc/sys")
    if os.access(ro, os.W_OK):
        pytest.skip("no read-only folder here")
    code, err = cli(["train", "--out", str(ro / "pcn_run"), "--set", f"data_dir={files['run']}"] + TINY, capsys)
    assert code == 1 and "not writable" in err and "Traceback" not in err


def test_mps_unavailable_is_one_line(capsys):
    import torch

    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    code, err = cli(["train", "--out", "x_never", "--device", "mps"], capsys)
    assert code == 1 and "mps" in err and "Traceback" not in err
    assert not Path("x_never").exists()


def test_integral_floats_and_text_numbers_are_accepted(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 3.0\nbatch_size: 64.0\nlayers: [784, 32.0, 8]\nlr: 1e-3\neta: 2E-2\n")
    code = main(["config", "--show", "--config", str(cfg)])
    out = capsys.readouterr().out
    import yaml

    shown = yaml.safe_load(out)
    assert code == 0
    assert shown["epochs"] == 3 and isinstance(shown["epochs"], int)
    assert shown["batch_size"] == 64 and shown["layers"] == [784, 32, 8]
    assert shown["lr"] == 0.001 and shown["eta"] == 0.02
    assert set(shown) == set(__import__("pcn.study.config", fromlist=["defaults"]).defaults())


def test_help_and_version(capsys):
    for argv in (["--help"], ["train", "--help"], ["probe", "--help"], ["aggregate", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert "``" not in out and ":func:" not in out, argv
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "mps" in out and "Apple silicon" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    out = capsys.readouterr().out
    assert out.startswith("pcn ") and "sha256" in out


def test_real_process_one_line_and_debug(tmp_path, files):
    """Through ``python -m pcn``: no traceback, one line; --debug and PCN_DEBUG=1 show it."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PCN_DEBUG", None)
    base = [sys.executable, "-m", "pcn"]
    bad = ["aggregate", "--runs", str(files["bad_final_run"]), "--out", str(tmp_path / "s.csv")]
    res = subprocess.run(base + bad, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and "final.json" in res.stderr
    res = subprocess.run(base + ["--debug"] + bad, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr
    res = subprocess.run(base + ["config", "--set", "layers=[784,32"], capture_output=True, text=True,
                         env=dict(env, PCN_DEBUG="1"), timeout=120)
    assert "Traceback" in res.stderr
    res = subprocess.run(base + ["config", "--set", "layers=[784,32"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "layers" in res.stderr
