"""Issue 24, part 3: one ``pcn train`` per run folder.  A second train on a folder whose lock is
held (here by a helper process, or by a train in progress) is refused in one line, exit 2,
before it writes anything; the lock dies with its holder, ``kill -9`` included."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pcn.cli import main
from pcn.study import runlock
from pcn.study.train import train

TINY = dict(train_subset=128, test_subset=64, val_size=50, eval_train_size=32, layers=[784, 8, 4], epochs=1,
            batch_size=64, T=2)
HOLDER = ("import sys, time; from pathlib import Path; from pcn.study import runlock\n"
          "with runlock.hold({'--out': Path(sys.argv[1])}):\n"
          "    print('held', flush=True); time.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """A process holding the lock of tmp_path/run (killed -9 at the end if still alive)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_second_train_is_refused_before_writing_and_the_lock_dies_with_kill_9(holder, mnist_dir, capsys):
    out, proc = holder
    before = _files(out)
    assert list(before) == [runlock.LOCK_NAME] and f"pid {proc.pid} ".encode() in before[runlock.LOCK_NAME]
    sets = [a for k, v in {**TINY, "data_dir": mnist_dir}.items()
            for a in ("--set", f"{k}={v}".replace(" ", ""))]
    code = main(["train", "--out", str(out), *sets])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"--out {out}: another pcn train is running in this folder (pid {proc.pid} " in err
    assert "nothing was written" in err
    assert _files(out) == before  # not a byte written, not even the device line's train start

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with runlock.hold({"--out": out}):   # free again: no stale lock after kill -9
        assert f"pid {os.getpid()} ".encode() in (out / runlock.LOCK_NAME).read_bytes()


def test_train_holds_the_lock_while_it_runs_and_releases_it(tmp_path, mnist_dir):
    out, seen = tmp_path / "run", []

    def log(line: str) -> None:  # called by train while it runs: the folder must be held
        if not seen:
            with pytest.raises(runlock.RunLocked, match="another pcn train"):
                with runlock.hold({"--out": out}):
                    pass
            seen.append(line)

    train(dict(TINY, data_dir=str(mnist_dir)), out, log=log)
    assert seen and (out / "final.json").exists()
    with runlock.hold({"--out": out}):  # released on return
        pass


def test_separate_checkpoint_folder_is_locked_too(tmp_path):
    ck = tmp_path / "ck"
    with runlock.hold({"--out": tmp_path / "run", "--ckpt-dir": ck}):
        with pytest.raises(runlock.RunLocked, match=f"--ckpt-dir {ck}: another pcn train"):
            with runlock.hold({"--out": tmp_path / "other", "--ckpt-dir": ck}):
                pass
    with runlock.hold({"--out": tmp_path / "run", "--ckpt-dir": tmp_path / "run"}):  # one folder: locked once
        pass


def test_refused_config_writes_no_lock(tmp_path, mnist_dir, capsys):
    out = tmp_path / "never"
    code = main(["train", "--out", str(out), "--set", f"data_dir={tmp_path / 'no_data'}"])
    assert code == 1 and not out.exists(), capsys.readouterr().err
