"""Tests of the single-node SLURM test harness (tests/slurm_cluster.py).

Need root and the slurm/munge Debian packages (else skipped); ~35 s,
of which ~20 s is the snakemake run.
Every command runs under a subprocess timeout.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import slurm_cluster as sc  # noqa: E402
from slurm_fixtures import slurm_cluster, slurm_skip_reason  # noqa: E402,F401

HARNESS = Path(sc.__file__).resolve()


@pytest.fixture(scope="module")
def _needs_slurm():
    reason = slurm_skip_reason()
    if reason:
        pytest.skip(reason)


def _etc_snapshot():
    p = sc.ETC_SLURM_CONF
    if p.is_symlink():
        return ("link", os.readlink(p))
    if p.exists():
        return ("file", p.read_bytes())
    return None


def _gone(pids):
    return {p: sc._pid_alive(p) for p in pids if sc._pid_alive(p)} == {}


# ---------------------------------------------------------------------------
# own clusters (run first, before the session fixture may hold /etc/slurm)


def test_teardown_stops_exactly_its_daemons_and_restores_etc(_needs_slurm, tmp_path):
    # /etc/slurm/slurm.conf is linked only when no other live harness owns it
    link = sc._etc_link_owner() is None
    sentinel = None
    if link and not os.path.lexists(sc.ETC_SLURM_CONF) and sc.ETC_SLURM_DIR.is_dir():
        # exercise the backup/restore path with a pre-existing file
        sentinel = b"# sentinel written by test_slurm_cluster.py\n"
        sc.ETC_SLURM_CONF.write_bytes(sentinel)
    try:
        before = _etc_snapshot()
        cluster = sc.SlurmCluster(tmp_path / "c", link_etc_conf=link)
        with cluster:
            pids = dict(cluster.pids)
            assert set(pids) == {"munged", "slurmctld", "slurmd"}
            assert all(sc._pid_alive(p) for p in pids.values())
            if link:
                assert os.readlink(sc.ETC_SLURM_CONF) == str(cluster.conf_path)
            # a job still running at teardown must not survive it
            jobid = cluster.sbatch("-o", str(tmp_path / "sleep.out"), "--wrap", "sleep 300")
            deadline = time.monotonic() + 20
            while cluster.job_state(jobid) != "RUNNING":
                assert time.monotonic() < deadline, cluster.log_tails()
                time.sleep(0.2)
            stepd = sc._marked_processes(cluster.marker)
            assert any(sc._proc_comm(p) == "slurmstepd" for p in stepd), stepd
        assert _gone(pids.values()), pids
        assert sc._marked_processes(cluster.marker) == []
        assert _etc_snapshot() == before
        assert not os.path.lexists(sc.ETC_BACKUP) or before is None
        cluster.stop()  # idempotent
    finally:
        if sentinel is not None and sc.ETC_SLURM_CONF.exists() and (
            sc.ETC_SLURM_CONF.read_bytes() == sentinel
        ):
            sc.ETC_SLURM_CONF.unlink()


def test_cli_up_and_down(_needs_slurm, tmp_path):
    d = tmp_path / "cli"
    up = subprocess.Popen(
        [sys.executable, str(HARNESS), "up", "--dir", str(d), "--no-etc-link"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        exports = {}
        deadline = time.monotonic() + 40
        while "PATH" not in exports:
            assert time.monotonic() < deadline, "no exports from `up`"
            line = up.stdout.readline()
            if not line:
                pytest.fail(f"`up` exited {up.wait(5)}: {up.stderr.read()}")
            if line.startswith("export "):
                k, v = line[len("export "):].rstrip("\n").split("=", 1)
                exports[k] = v.strip("'")
        assert exports["SLURM_CONF"] == str(d / "etc" / "slurm.conf")
        env = {**os.environ, **exports}
        p = subprocess.run(["sinfo", "-h", "-o", "%P %t %G"], env=env,
                           capture_output=True, text=True, timeout=15)
        assert p.stdout.split() == ["debug*", "idle", "gpu:2"], p
        pids = json.loads((d / sc.STATE_FILE).read_text())["pids"]
        assert all(sc._pid_alive(x) for x in pids.values())
        p = subprocess.run([sys.executable, str(HARNESS), "down", "--dir", str(d)],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p
        assert up.wait(timeout=30) == 0
        assert _gone(pids.values()), pids
        assert sc._marked_processes(str(d)) == []
    finally:
        if up.poll() is None:
            up.terminate()
            try:
                up.wait(timeout=30)
            except subprocess.TimeoutExpired:
                up.kill()


# ---------------------------------------------------------------------------
# the shared session cluster


def test_cluster_is_up(slurm_cluster):
    c = slurm_cluster
    assert c.node_state() == "idle"
    p = c.run(["scontrol", "show", "node", c.nodename], timeout=15)
    assert f"Gres=gpu:{c.n_gpus}" in p.stdout, p.stdout
    assert f"CPUTot={c.cpus}" in p.stdout
    p = c.run(["sinfo", "-h", "-o", "%P"], timeout=15)
    assert p.stdout.split() == [f"{c.partition}*"]
    if c.link_etc_conf:
        assert os.readlink(sc.ETC_SLURM_CONF) == str(c.conf_path)


@pytest.mark.parametrize("gpu_opt", ["--gpus=1", "--gres=gpu:1"])
def test_gpu_job_sees_cuda_visible_devices(slurm_cluster, tmp_path, gpu_opt):
    c = slurm_cluster
    out = tmp_path / "job.out"
    # the inner srun runs without SLURM_CONF, as snakemake's jobstep plugin does
    script = (
        'echo "batch CVD=$CUDA_VISIBLE_DEVICES mem=$SLURM_MEM_PER_CPU"; '
        'env -u SLURM_CONF srun -n1 sh -c \'echo "step CVD=$CUDA_VISIBLE_DEVICES"\''
    )
    jobid = c.sbatch(gpu_opt, "-t", "2", "-o", str(out), "--wrap", script)
    state = c.wait_job(jobid, timeout=40)
    text = out.read_text() if out.exists() else "<no output>"
    assert state == "COMPLETED", f"{state}\n{text}\n{c.log_tails()}"
    lines = dict(ln.split(" ", 1) for ln in text.splitlines() if " " in ln)
    batch = dict(kv.split("=", 1) for kv in lines["batch"].split())
    assert batch["CVD"] in {str(i) for i in range(c.n_gpus)}, text
    # no --mem given -> DefMemPerCPU, not the whole node
    assert batch["mem"] == str(c.def_mem_per_cpu), text
    if c.link_etc_conf:
        assert lines["step"] == f"CVD={batch['CVD']}", text


def test_too_many_gpus_is_rejected(slurm_cluster):
    p = slurm_cluster.run(
        ["sbatch", "--gpus=3", "--wrap", "true"], timeout=15
    )
    assert p.returncode != 0
    assert "Requested node configuration is not available" in p.stderr, p.stderr


SNAKEFILE = """\
rule all:
    input: "out/gpu.txt", "out/gres.txt"

rule gpu:
    output: "out/gpu.txt"
    resources: gpu=1
    shell: "echo CVD=$CUDA_VISIBLE_DEVICES > {output}"

rule gres:
    output: "out/gres.txt"
    resources: gres="gpu:1"
    shell: "echo CVD=$CUDA_VISIBLE_DEVICES > {output}"
"""


def test_snakemake_slurm_executor_with_profile(slurm_cluster, tmp_path):
    """The profile from SlurmCluster.write_snakemake_profile works end to end
    (squeue status polling, gpu/gres resources, jobstep srun via /etc link)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    snakemake = shutil.which("snakemake", path=slurm_cluster.env["PATH"])
    if snakemake is None:
        pytest.skip("snakemake not on PATH")
    if not slurm_cluster.link_etc_conf:
        pytest.skip("the jobstep's srun needs /etc/slurm/slurm.conf")
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    profile = tmp_path / "profile"
    slurm_cluster.write_snakemake_profile(profile)
    p = slurm_cluster.run(
        [snakemake, "--profile", str(profile), "--directory", str(tmp_path)],
        cwd=tmp_path,
        timeout=150,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    seen = set()
    for name in ("gpu", "gres"):
        text = (tmp_path / "out" / f"{name}.txt").read_text().strip()
        assert text.startswith("CVD="), text
        seen.add(text[4:])
    # jobs=2: the two jobs run at once, so on different GPUs; subset check
    # keeps it robust if they happen to run one after the other
    assert seen <= {str(i) for i in range(slurm_cluster.n_gpus)}, seen
