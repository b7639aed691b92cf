"""The study on a real SLURM cluster: ``snakemake --profile slurm`` through real sbatch/srun.

Uses the session fixture ``slurm_cluster`` (tests/slurm_fixtures.py): slurmctld, slurmd and
munged on this host, one node with two fake GPUs (gres), no slurmdbd.  Needs root and the
Debian packages slurmctld/slurmd/slurm-client/munge (the fixture installs them when root with
apt, else the test is skipped).  About 1.5 minutes on 2 idle cores (2.5 on a busy machine).

The main test runs a tiny variant of config/test.yaml (2 runs: pcn/pc and the ae baseline, 2 epochs)
twice, in two temporary copies of the repository:

* locally, ``snakemake --cores 2``, and at the same time
* on the cluster, ``snakemake --profile slurm`` with the repository's own profile copied
  untouched.  Only what a cluster without accounting database needs, and timing, is given on
  the command line (``--slurm-status-command squeue``, the first status poll after 2 s, a
  5 s latency wait); the profile's partition is created in the test cluster when it lacks it.
  One train job is made to fail once after its first epoch's checkpoint
  (PCN_FAIL_ONCE_AFTER_EPOCH / PCN_FAIL_ONCE_MARKER, see pcn/study/train.py), so the profile's
  ``retries`` must resubmit it and the run must resume from its checkpoint.

It asserts the outputs of the local end-to-end run (tables, figures, logs), metrics, curves,
inference traces and model weights identical to the local run, one sbatch per train/probe job
with ``--gpus=1`` on the profile's partition (``scontrol show job``), CUDA_VISIBLE_DEVICES set
inside every train job while torch falls back to the CPU, and the failed job's retry with
doubled memory and time that resumes after epoch 1.

A second, quick test checks the fault injection itself without SLURM (runs everywhere).

Every snakemake call runs under ``timeout -s KILL`` so a hung executor fails the test.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from slurm_fixtures import slurm_cluster  # noqa: F401  (the session fixture)

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = (ROOT / ".." / "shared" / "data" / "mnist").resolve()
DATA_TEMPLATE = str(MNIST_DIR.parent / "{dataset}")

LOCAL_TIMEOUT = 420  # s, the local snakemake run (about 1 minute on 2 idle cores)
SLURM_TIMEOUT = 480  # s, the snakemake --profile slurm run (about 1.5 minutes)
FAIL_AFTER_EPOCH = 1
# Command-line additions to the shipped profile: status polling without slurmdbd, and timing.
SLURM_TEST_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
                    "--latency-wait", "5"]
DEVICE_LINE = re.compile(r"^pcn train: device (\w+) \(cuda available: (\w+), CUDA_VISIBLE_DEVICES=(\S*)\)$", re.M)


def study_config(device: str) -> dict:
    """config/test.yaml, made smaller (2 runs) and 2 epochs long, so one run can resume."""
    cfg = yaml.safe_load((ROOT / "config" / "test.yaml").read_text())
    cfg["data_dir"] = DATA_TEMPLATE
    cfg["device"] = device
    cfg["train"].update(epochs=2, train_subset=256, test_subset=128, eval_train_size=64, val_size=64)
    cfg["grid"].update(model=["pcn", "ae"], rule=["pc"], ce_weight=[0.5], seed=[0])
    cfg.pop("extra_grids", None)  # test.yaml's conv run: covered by the local end-to-end test
    cfg["probe"]["n_test"] = 128
    assert cfg["resources"]["train"]["threads"] == cfg["resources"]["probe"]["threads"] == 1
    return cfg


def make_copy(dest: Path, cfg: dict) -> Path:
    """A working copy of the repository (workflow/, config/, slurm/, pcn/) plus the study config.

    Jobs run the copy's own `pcn` (python -m pcn with the copy first on PYTHONPATH)."""
    dest.mkdir(parents=True)
    for d in ("workflow", "config", "slurm", "pcn"):
        shutil.copytree(ROOT / d, dest / d, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "config" / "e2e.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def snakemake_cmd(timeout: int, *args: str) -> list[str]:
    exe = shutil.which("snakemake") or "snakemake"
    return ["timeout", "-s", "KILL", str(timeout), exe, "--configfile", "config/e2e.yaml", *args]


def start(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    fh = open(log, "w")
    try:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        fh.close()


def finish(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for proc; kill its whole process group if it outlives `timeout` (belt and braces)."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=30)


def scontrol_jobs(cluster, workdir: Path) -> list[dict]:
    """`scontrol show job` records (as dicts) of every job submitted from `workdir`."""
    p = cluster.run(["scontrol", "show", "job", "-o"], timeout=30)
    assert p.returncode == 0, p.stderr
    jobs = []
    for line in p.stdout.splitlines():
        rec = dict(m.groups() for m in re.finditer(r"(\S+?)=(\S*)", line))
        if rec.get("WorkDir") == str(workdir):
            jobs.append(rec)
    return jobs


def mem_mb(text: str) -> int:
    """scontrol's memory ("1000M", "2G") in MB."""
    num, unit = re.fullmatch(r"([\d.]+)([KMGT]?)", text).groups()
    return round(float(num) * {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024**2}[unit])


def minutes_of(text: str) -> int:
    """scontrol's time limit ("[D-]HH:MM:SS") in minutes."""
    days, _, hms = text.rpartition("-")
    h, m, sec = (int(x) for x in hms.split(":"))
    return int(days or 0) * 1440 + h * 60 + m + (sec > 0)


TIMING_KEYS = ("wall_s", "seconds")  # wall-clock times: the only numbers allowed to differ


def same_content(a: Path, b: Path) -> None:
    """Assert two result files hold the same numbers (bitwise), ignoring wall-clock times."""
    if a.suffix == ".csv":
        x, y = pd.read_csv(a), pd.read_csv(b)
        drop = [k for k in TIMING_KEYS if k in x.columns]
        pd.testing.assert_frame_equal(x.drop(columns=drop), y.drop(columns=drop), check_exact=True, obj=str(a))
    elif a.suffix == ".json":
        x, y = json.loads(a.read_text()), json.loads(b.read_text())
        if isinstance(x, dict) and isinstance(y, dict):
            x, y = ({k: v for k, v in d.items() if k not in TIMING_KEYS} for d in (x, y))
        assert x == y, a
    elif a.suffix in (".npz", ".npy"):
        x, y = np.load(a), np.load(b)
        if a.suffix == ".npz":
            assert sorted(x.files) == sorted(y.files), a
            assert all(np.array_equal(x[k], y[k], equal_nan=x[k].dtype.kind == "f") for k in x.files), a
        else:
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), a
    elif a.suffix == ".pt":
        same_tensors(torch.load(a, weights_only=False), torch.load(b, weights_only=False), str(a))
    else:  # images drawn from the arrays above: present on both sides
        assert b.stat().st_size > 0, b


def same_tensors(x, y, where: str) -> None:
    if isinstance(x, dict):
        assert isinstance(y, dict) and x.keys() == y.keys(), where
        for k in x:
            same_tensors(x[k], y[k], f"{where}[{k!r}]")
    elif isinstance(x, (list, tuple)):
        assert type(x) is type(y) and len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            same_tensors(u, v, f"{where}[{i}]")
    elif isinstance(x, torch.Tensor):
        assert isinstance(y, torch.Tensor) and torch.equal(x, y), where
    elif isinstance(x, float) and math.isnan(x):
        assert isinstance(y, float) and math.isnan(y), where
    else:
        assert x == y, where


def test_fail_once_injection_resumes_identically(tmp_path, monkeypatch, capsys, mnist_dir):
    """The test-only fault injection of pcn/study/train.py, without SLURM: exit 3 right after the
    checkpoint of epoch 1, once; started again, the run resumes and ends bitwise equal."""
    from pcn.cli import main

    args = ["train", "--set", f"data_dir={mnist_dir}", "--set", "train_subset=128", "--set", "test_subset=64",
            "--set", "val_size=32", "--set", "eval_train_size=32", "--set", "epochs=2",
            "--set", "layers=[784,16,8]", "--set", "T=3", "--device", "cpu"]
    plain, hurt, marker = tmp_path / "plain", tmp_path / "hurt", tmp_path / "marker"
    monkeypatch.delenv("PCN_FAIL_ONCE_AFTER_EPOCH", raising=False)
    assert main(args + ["--out", str(plain)]) == 0
    monkeypatch.setenv("PCN_FAIL_ONCE_AFTER_EPOCH", "1")
    monkeypatch.setenv("PCN_FAIL_ONCE_MARKER", str(marker))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(args + ["--out", str(hurt)])
    assert exc.value.code == 3
    assert "injected failure after the checkpoint of epoch 1" in capsys.readouterr().err
    assert marker.read_text().strip() == str(hurt)
    assert (hurt / "ckpt.pt").exists() and not (hurt / "final.json").exists()
    assert main(args + ["--out", str(hurt)]) == 0  # the marker exists: no second failure
    err = capsys.readouterr().err
    assert f"resuming from {hurt / 'ckpt.pt'} after epoch 1" in err and "epoch 2/2" in err, err
    for f in ("final.json", "metrics.csv", "config.json", "model.pt"):
        same_content(plain / f, hurt / f)


@pytest.mark.slow
def test_study_on_slurm_matches_local_run(slurm_cluster, tmp_path, mnist_dir):  # noqa: F811
    pytest.importorskip("snakemake_executor_plugin_slurm")
    pytest.importorskip("snakemake_executor_plugin_slurm_jobstep")
    c = slurm_cluster
    if not c.link_etc_conf:
        pytest.skip("the jobstep's srun needs /etc/slurm/slurm.conf (the harness links it)")
    t0 = time.monotonic()

    # torch falls back to the CPU where CUDA is absent ("auto"); with a real GPU, pin the CPU so
    # both runs compute the same numbers.
    cuda_here = torch.cuda.is_available()
    cfg = study_config("cpu" if cuda_here else "auto")
    local, remote = make_copy(tmp_path / "local", cfg), make_copy(tmp_path / "slurm", cfg)
    assert (remote / "slurm" / "config.yaml").read_bytes() == (ROOT / "slurm" / "config.yaml").read_bytes()

    profile = yaml.safe_load((remote / "slurm" / "config.yaml").read_text())
    partition = profile["default-resources"]["slurm_partition"]
    retries = profile["retries"]
    assert retries >= 1 and profile["set-resources"]["train"]["gpu"] == 1

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PCN_FAIL_ONCE")}
    marker = tmp_path / "fail-once.marker"
    # sbatch --export=ALL (the plugin's default) hands these to the jobs
    slurm_env = {**c.env, "PCN_FAIL_ONCE_AFTER_EPOCH": str(FAIL_AFTER_EPOCH), "PCN_FAIL_ONCE_MARKER": str(marker)}

    # The profile's partition (the one place users edit) exists in the test cluster.
    parts = c.run(["sinfo", "-h", "-o", "%R"], timeout=15).stdout.split()
    created = partition not in parts
    if created:
        p = c.run(["scontrol", "create", f"PartitionName={partition}", f"Nodes={c.nodename}",
                   "State=UP", "MaxTime=INFINITE"], timeout=15)
        assert p.returncode == 0, p.stderr

    local_proc = start(snakemake_cmd(LOCAL_TIMEOUT, "--cores", "2"), local, base_env, tmp_path / "local.out")
    slurm_proc = None
    try:
        slurm_proc = start(snakemake_cmd(SLURM_TIMEOUT, "--profile", "slurm", *SLURM_TEST_FLAGS),
                           remote, slurm_env, tmp_path / "slurm.out")
        slurm_rc = finish(slurm_proc, SLURM_TIMEOUT + 30)
        local_rc = finish(local_proc, LOCAL_TIMEOUT + 30)
        jobs = scontrol_jobs(c, remote)
    finally:
        for proc in (local_proc, slurm_proc):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        if created:
            c.run(["scancel", "-p", partition], timeout=15)
            c.run(["scontrol", "delete", f"PartitionName={partition}"], timeout=15)
    wall = time.monotonic() - t0
    slurm_out = (tmp_path / "slurm.out").read_text(errors="replace")
    local_out = (tmp_path / "local.out").read_text(errors="replace")
    assert local_rc == 0, f"local run exited {local_rc}:\n{local_out[-4000:]}"
    assert slurm_rc == 0, f"slurm run exited {slurm_rc} after {wall:.0f} s:\n{slurm_out[-6000:]}\n{c.log_tails()}"
    # the slurm profile, with the workflow profile (workflow/profiles/default) on top
    assert "Using profiles slurm and workflow specific profile" in slurm_out

    # ---- the same outputs as the local end-to-end run
    L, S = local / "results", remote / "results"
    summary = pd.read_csv(S / "summary.csv")
    assert len(summary) == 2 and set(zip(summary.model, summary.rule)) == {("pcn", "pc"), ("ae", "bp")}
    assert set(summary.epochs_done) == {2} and not summary.diverged.astype(bool).any()
    assert summary.test_acc.between(0, 1).all() and summary.recon_mse.map(math.isfinite).all()
    runs = list(summary.run)
    pcn_runs = list(summary.run[summary.model == "pcn"])
    assert pd.read_csv(S / "traces.csv").run.nunique() == len(pcn_runs) == 1
    figs = {f.name for f in (L / "figures").iterdir()}
    assert figs == {f.name for f in (S / "figures").iterdir()}
    assert {f"{n}.{e}" for n in ("tradeoff", "ce_weight", "inference", "curves") for e in ("png", "pdf")} <= figs
    for res in (L, S):
        for f in (res / "figures").iterdir():
            assert f.stat().st_size > (10_000 if f.suffix == ".png" else 1_000), f
        for log in ("aggregate.log", "aggregate_traces.log", "data/mnist.log"):
            assert (res / "logs" / log).exists(), log
        for r in runs:
            for f in ("config.json", "metrics.csv", "final.json", "model.pt"):
                assert (res.parent / r / f).exists(), (res, r, f)

    # ---- identical numbers: the same seeds and threads give the same bits on CPU.  Every
    # table, run file and array of the two runs is compared (only wall-clock times differ).
    tables = sorted(f.name for f in L.glob("*.csv"))
    assert {"summary.csv", "curves.csv", "traces.csv"} <= set(tables)
    assert tables == sorted(f.name for f in S.glob("*.csv"))
    run_files = sorted(str(f.relative_to(local)) for f in (L / "runs").rglob("*") if f.is_file())
    assert run_files == sorted(str(f.relative_to(remote)) for f in (S / "runs").rglob("*") if f.is_file())
    for rel in [f"results/{t}" for t in tables] + run_files + [str(f.relative_to(local)) for f in L.glob("*.npz")]:
        same_content(local / rel, remote / rel)

    # ---- jobs: train and the probes went through sbatch with --gpus=1 on the profile's
    # partition (TresPerJob=gres:gpu:1 is what `sbatch --gpus=1` records, --gres would give
    # TresPerNode); the light rules stayed on the submitting node.
    by_rule: dict[str, list[dict]] = {}
    for j in jobs:
        rule = re.fullmatch(r"rule_(.+?)(_wildcards_.*)?", j.get("Comment", ""))
        assert rule, j
        by_rule.setdefault(rule.group(1), []).append(j)
    gpu_rules = {r for r, res in profile["set-resources"].items() if res.get("gpu") == 1}
    assert {"train", "probe"} <= set(by_rule) <= gpu_rules, {r: len(v) for r, v in by_rule.items()}
    assert len(by_rule["probe"]) == len(pcn_runs)
    assert len(by_rule["train"]) == len(runs) + 1  # one train job was retried once
    for j in jobs:
        assert j["Partition"] == partition and j["TresPerJob"] == "gres:gpu:1", j
        assert j["NumCPUs"] == "1", j
    states = sorted(j["JobState"] for j in by_rule["train"])
    assert states == ["COMPLETED"] * len(runs) + ["FAILED"], states
    assert all(j["JobState"] == "COMPLETED" for r, js in by_rule.items() if r != "train" for j in js)

    # ---- the retry: marker names the run that failed; its job was resubmitted with more
    # memory and time (attempt 2) and resumed from the checkpoint of epoch 1
    assert marker.exists(), slurm_out[-4000:]
    failed_run = marker.read_text().strip()
    assert failed_run in runs, failed_run
    failed_rel = failed_run.split("results/runs/", 1)[1]
    comment = "rule_train_wildcards_" + failed_rel.replace("/", "_")  # the plugin's --comment
    attempts = sorted((j for j in by_rule["train"] if j["Comment"] == comment), key=lambda j: int(j["JobId"]))
    assert [j["JobState"] for j in attempts] == ["FAILED", "COMPLETED"], attempts
    mem = cfg["resources"]["train"]["mem_mb"]
    minutes = cfg["resources"]["train"]["runtime"]
    assert [mem_mb(j["MinMemoryNode"]) for j in attempts] == [mem, 2 * mem], attempts
    assert [minutes_of(j["TimeLimit"]) for j in attempts] == [minutes, 2 * minutes], attempts
    assert "injected failure after the checkpoint of epoch 1" in slurm_out  # show-failed-logs
    assert re.search(r"Trying to restart job \d+", slurm_out), slurm_out[-4000:]
    ckpt = f"results/checkpoints/{failed_rel}/ckpt.pt"

    for r in runs:
        rel = r.split("results/runs/", 1)[1]
        s_log = (S / "logs" / "train" / f"{rel}.log").read_text()
        l_log = (L / "logs" / "train" / f"{rel}.log").read_text()
        resumed = f"resuming from {ckpt} after epoch {FAIL_AFTER_EPOCH}"
        if r == failed_run:
            assert resumed in s_log and "epoch 2/2" in s_log and "epoch 1/2" not in s_log, s_log
        else:
            assert "resuming" not in s_log and "epoch 1/2" in s_log, s_log
        assert "resuming" not in l_log and "epoch 1/2" in l_log and "epoch 2/2" in l_log, l_log
        assert len(pd.read_csv(remote / r / "metrics.csv")) == 2

        # ---- a GPU was allocated to every train job (CUDA_VISIBLE_DEVICES from slurm's gres),
        # while torch, without CUDA here, trained on the CPU
        (dev, avail, cvd), = DEVICE_LINE.findall(s_log)
        assert dev == "cpu" and cvd in {str(i) for i in range(c.n_gpus)}, s_log
        assert avail == str(cuda_here)
        (dev, _, cvd), = DEVICE_LINE.findall(l_log)
        assert dev == "cpu" and cvd == os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), l_log

    # ---- complete: a second call has nothing to do
    p = subprocess.run(snakemake_cmd(120, "-n", "--profile", "slurm", *SLURM_TEST_FLAGS), cwd=remote,
                       env=c.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert p.returncode == 0 and "Nothing to be done" in p.stdout, p.stdout[-3000:]
    print(f"slurm e2e: {wall:.0f} s for both runs; failed once and resumed: {failed_run}")
