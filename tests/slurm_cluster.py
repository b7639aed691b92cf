#!/usr/bin/env python3
"""A throw-away single-node SLURM cluster for tests (Debian slurm-wlm 22.05).

Usable from pytest (see ``tests/slurm_fixtures.py``) or by hand::

    python tests/slurm_cluster.py up --dir /tmp/slurm-test   # prints exports, stays up
    python tests/slurm_cluster.py status --dir /tmp/slurm-test
    python tests/slurm_cluster.py down --dir /tmp/slurm-test # (or Ctrl-C the `up`)

or from Python::

    with SlurmCluster() as cluster:
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env, timeout=30)

What it does (needs root and the Debian packages slurmctld, slurmd,
slurm-client and munge; ``tests/install_slurm.sh`` installs them):

* Everything lives under one directory (a fresh temp dir by default): a munge
  key made with ``mungekey -c -k``, the munge socket dir (mode 0711),
  ``slurm.conf``, ``gres.conf`` (no cgroup.conf: no cgroup plugin is used),
  an empty ``plugstack.conf``, state/spool dirs, log files
  and PID files, plus ``dev/gpu0``, ``dev/gpu1``: the *fake GPU device files*
  named in ``gres.conf``.  They must be character (or block) devices: with
  plain files slurm 22.05 logs "is not a valid character or block device",
  still schedules ``--gpus`` jobs, but leaves CUDA_VISIBLE_DEVICES empty.  So
  they are made with ``mknod`` (c 1 3, the numbers of /dev/null), or, where
  mknod is not permitted, as symlinks to /dev/null (also accepted).  Nothing
  ever opens them; no device cgroup is used (task/none).
* The node (this host's short name, address 127.0.0.1) has the real CPU count
  and RealMemory somewhat below the real memory, and advertises ``Gres=gpu:2``;
  jobs asking ``--gpus=1`` / ``--gres=gpu:1`` are scheduled and see
  ``CUDA_VISIBLE_DEVICES``.  There is no slurmdbd: ``sacct`` prints "Slurm
  accounting storage is disabled", exits 0 and lists no jobs (snakemake's
  slurm plugin then waits forever unless told ``slurm-status-command:
  squeue``); ``MinJobAge`` is high (default 3600 s) so finished jobs stay
  visible to ``squeue --states=all``/``scontrol show job``.  Ready-made
  snakemake profile settings: :meth:`SlurmCluster.snakemake_profile`.
* munged, slurmctld and slurmd run in the foreground (``-F``/``-D``) as our
  own child processes, as root, without systemd, each with a marker variable
  in its environment; ports are picked free at start.
* **Outside the directory** it changes exactly one thing: while the cluster is
  up, ``/etc/slurm/slurm.conf`` is a symlink to our ``slurm.conf``.  This is
  needed because snakemake's slurm-jobstep plugin strips every ``SLURM_*``
  variable (SLURM_CONF included) before it calls ``srun`` inside a job, and
  ``srun`` then reads the compiled-in default ``/etc/slurm/slurm.conf``.  A
  pre-existing file/symlink there is renamed to
  ``/etc/slurm/slurm.conf.slurm-harness-backup`` and put back on teardown; if
  ``/etc/slurm`` had to be created it is removed again (when empty).  Pass
  ``link_etc_conf=False`` (``--no-etc-link``) to leave /etc alone (then only
  clients that see SLURM_CONF work).
* Teardown (``stop()``, the context manager, an atexit hook and SIGTERM in
  the CLI) cancels remaining jobs, stops exactly the daemons it started (by
  PID, SIGTERM then SIGKILL), kills leftover ``slurmstepd`` processes that
  carry this cluster's marker, and restores ``/etc/slurm/slurm.conf``.  If the
  harness process itself is killed (SIGKILL), the daemons get SIGTERM from
  the kernel (PR_SET_PDEATHSIG) and the next start removes the stale
  /etc/slurm/slurm.conf link (and restores the backup).

Every subprocess call has a timeout.

The code: this file holds :class:`SlurmCluster` (start, jobs, teardown, state file) and the
command line; its parts live in ``tests/slurm_harness/``: ``system`` (packages, binaries,
process helpers), ``files`` (directory, slurm.conf, gres.conf, fake GPUs, snakemake profile),
``daemons`` (munged, slurmctld, slurmd) and ``etc_link`` (/etc/slurm/slurm.conf).
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slurm_harness.daemons import Daemons  # noqa: E402
from slurm_harness.etc_link import (  # noqa: E402,F401  (re-exported: tests/test_slurm_cluster.py)
    EtcLink, _cleanup_stale_etc_link, _etc_link_owner, _restore_etc,
)
from slurm_harness.files import ClusterFiles  # noqa: E402
from slurm_harness.system import (  # noqa: E402,F401  (re-exported for the tests and fixtures)
    ETC_BACKUP, ETC_SLURM_CONF, ETC_SLURM_DIR, INSTALL_SCRIPT, MARKER_ENV, MARKER_FILE, REQUIRED_BINARIES,
    REQUIRED_PACKAGES, SBIN_DIRS, STATE_FILE, SlurmHarnessError, _free_port, _kill_pids, _marked_processes,
    _pid_alive, _proc_comm, _proc_marker, _read_meminfo_mb, _set_pdeathsig, _shquote, _tail, _which,
    missing_binaries, missing_packages, try_install,
)


# --------------------------------------------------------------------------
# the cluster


class SlurmCluster(ClusterFiles, Daemons, EtcLink):
    """A single-node slurm cluster under ``base_dir`` (see module doc)."""

    def __init__(
        self,
        base_dir: str | os.PathLike | None = None,
        *,
        n_gpus: int = 2,
        partition: str = "debug",
        cluster_name: str = "pcntest",
        def_mem_per_cpu: int = 1024,
        min_job_age: int = 3600,
        link_etc_conf: bool = True,
        start_timeout: float = 30.0,
        keep_dir: bool | None = None,
        gpu_device_kind: str = "auto",
    ):
        self._own_dir = base_dir is None
        if base_dir is None:
            base_dir = tempfile.mkdtemp(prefix="slurm-harness-")
        self.dir = Path(base_dir).resolve()
        self.n_gpus = n_gpus
        self.partition = partition
        self.cluster_name = cluster_name
        self.def_mem_per_cpu = def_mem_per_cpu
        self.min_job_age = min_job_age
        self.link_etc_conf = link_etc_conf
        self.start_timeout = start_timeout
        # a temp dir we made is removed on stop unless keep_dir / env says so
        if keep_dir is None:
            keep_dir = bool(os.environ.get("SLURM_HARNESS_KEEP"))
        self.keep_dir = keep_dir or not self._own_dir

        self.conf_dir = self.dir / "etc"
        self.conf_path = self.conf_dir / "slurm.conf"
        self.log_dir = self.dir / "log"
        self.run_dir = self.dir / "run"
        self.munge_dir = self.dir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket.2"
        self.munge_key = self.dir / "munge.key"
        self.gpu_dev_dir = self.dir / "dev"
        self.nodename = socket.gethostname().split(".")[0]

        self.procs: dict[str, subprocess.Popen] = {}
        self.pids: dict[str, int] = {}
        if gpu_device_kind not in ("auto", "chardev", "symlink", "file"):
            raise ValueError(f"gpu_device_kind {gpu_device_kind!r}")
        self.gpu_device_kind = gpu_device_kind  # resolved in _make_gpu_devices
        self.env: dict[str, str] = {}
        self.etc_state: dict | None = None  # what we did to /etc/slurm
        self._started = False
        self._stopped = False
        self._atexit_registered = False

    # -- public API --------------------------------------------------------

    @property
    def marker(self) -> str:
        return str(self.dir)

    def start(self) -> "SlurmCluster":
        if self._started:
            return self
        problem = None
        if os.geteuid() != 0:
            problem = "the slurm test cluster must run as root (SlurmUser=root)"
        elif missing_binaries():
            problem = (
                f"missing binaries {missing_binaries()}; install packages "
                f"{' '.join(REQUIRED_PACKAGES)} (bash {INSTALL_SCRIPT})"
            )
        if problem:
            if self._own_dir and not self.keep_dir:
                shutil.rmtree(self.dir, ignore_errors=True)
            raise SlurmHarnessError(problem)
        self._started = True
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        try:
            self._prepare_dirs()
            self._write_configs()
            self._install_etc_link()
            self._write_state()
            self._start_munged()
            self._start_slurmctld()
            self._start_slurmd()
            self._wait_node_idle()
            self._write_state()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def run(self, args, timeout: float = 30, check: bool = False, **kw):
        """subprocess.run with the cluster env, captured text output, a timeout."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        env = dict(self.env)
        env.update(kw.pop("env", {}) or {})
        return subprocess.run(args, env=env, timeout=timeout, check=check, **kw)

    def sbatch(self, *args: str, timeout: float = 30) -> str:
        """Submit with ``sbatch --parsable ARGS``; returns the job id."""
        p = self.run(["sbatch", "--parsable", *args], timeout=timeout)
        if p.returncode != 0:
            raise SlurmHarnessError(
                f"sbatch {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}"
            )
        return p.stdout.strip().split(";")[0]

    def job_state(self, jobid: str) -> str | None:
        """Job state via squeue (works without slurmdbd while < MinJobAge)."""
        p = self.run(
            ["squeue", "-h", "--states=all", "-j", str(jobid), "-o", "%T"], timeout=15
        )
        out = p.stdout.strip()
        return out.splitlines()[0] if p.returncode == 0 and out else None

    def wait_job(self, jobid: str, timeout: float = 60) -> str:
        """Wait until the job leaves PENDING/RUNNING/...; returns final state."""
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(jobid)
            if state and state not in (
                "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED",
                "REQUEUED", "RESIZING", "SIGNALING", "STAGE_OUT",
            ):
                return state
            time.sleep(0.25)
        raise SlurmHarnessError(
            f"job {jobid} not finished after {timeout} s (state {state})\n"
            + self.log_tails()
        )

    def log_tails(self, n: int = 30) -> str:
        parts = []
        for name in ("munged", "slurmctld", "slurmd"):
            for suffix in (".log", ".out"):
                f = self.log_dir / f"{name}{suffix}"
                if f.exists():
                    parts.append(f"--- {f} (last {n} lines):\n{_tail(f, n)}")
        return "\n".join(parts)

    def exports(self) -> str:
        """Shell lines that point a shell at this cluster."""
        return "\n".join(
            f"export {k}={_shquote(self.env[k])}" for k in ("SLURM_CONF", "PATH")
        )

    # -- teardown ----------------------------------------------------------

    def stop(self) -> None:
        """Stop everything we started, restore /etc/slurm. Idempotent."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        errors = []
        try:
            self._cancel_all_jobs()
        except Exception as e:  # noqa: BLE001 - teardown must go on
            errors.append(f"cancel jobs: {e}")
        # daemons: slurmd, slurmctld, then munged (they need munge to exit cleanly)
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.get(name)
            if pid is None:
                continue
            left = _kill_pids([pid], grace=10)
            proc = self.procs.get(name)
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            if left:
                errors.append(f"{name} (pid {pid}) survived SIGKILL")
        # anything else carrying our marker (slurmstepd of unfinished jobs ...)
        try:
            leftovers = _marked_processes(self.marker)
            if leftovers:
                left = _kill_pids(leftovers, grace=3)
                if left:
                    errors.append(f"marked processes survived: {left}")
        except Exception as e:  # noqa: BLE001
            errors.append(f"leftover scan: {e}")
        try:
            self._restore_etc_link()
        except Exception as e:  # noqa: BLE001
            errors.append(f"restore {ETC_SLURM_CONF}: {e}")
        try:
            self._write_state(stopped=True)
        except Exception:  # noqa: BLE001
            pass
        if not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self._atexit_registered:
            try:
                atexit.unregister(self.stop)
            except Exception:  # noqa: BLE001
                pass
            self._atexit_registered = False
        if errors:
            print("slurm harness teardown problems: " + "; ".join(errors),
                  file=sys.stderr)

    def _cancel_all_jobs(self) -> None:
        if ("slurmctld" not in self.pids or not _pid_alive(self.pids["slurmctld"])
                or not self.conf_path.exists()):
            return
        p = self.run(["squeue", "-h", "-o", "%i"], timeout=10)
        if p.returncode != 0 or not p.stdout.strip():
            return
        self.run(["scancel", "--full", *p.stdout.split()], timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            p = self.run(["squeue", "-h", "-o", "%i"], timeout=10)
            if p.returncode != 0 or not p.stdout.strip():
                return
            time.sleep(0.2)

    # -- state file (lets `down` from another process clean up) -------------

    def _write_state(self, stopped: bool = False) -> None:
        if not self.dir.exists():
            return
        data = {
            "harness_pid": os.getpid(),
            "pids": self.pids,
            "etc_state": self.etc_state,
            "conf": str(self.conf_path),
            "env": {k: self.env[k] for k in ("SLURM_CONF", "PATH") if k in self.env},
            "stopped": stopped,
        }
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.dir / STATE_FILE)



# --------------------------------------------------------------------------
# CLI


def _down_from_state(d: Path, timeout: float = 30) -> int:
    state_path = d / STATE_FILE
    if not state_path.exists():
        print(f"no {STATE_FILE} in {d}", file=sys.stderr)
        return 1
    data = json.loads(state_path.read_text())
    hpid = data.get("harness_pid")
    if hpid and hpid != os.getpid() and _pid_alive(hpid) and not data.get("stopped"):
        # ask the `up` process to tear down itself (restores /etc too)
        os.kill(hpid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _pid_alive(hpid):
            time.sleep(0.2)
        if not _pid_alive(hpid):
            print(f"stopped harness process {hpid}")
            return 0
        print(f"harness process {hpid} did not exit; killing daemons directly",
              file=sys.stderr)
    pids = [p for p in (data.get("pids") or {}).values()
            if _pid_alive(p) and _proc_marker(p) == str(d)]
    left = _kill_pids(pids)
    left += _kill_pids(_marked_processes(str(d)), grace=3)
    if data.get("etc_state"):
        _restore_etc(data["etc_state"], Path(data["conf"]))
    data["stopped"] = True
    state_path.write_text(json.dumps(data, indent=1))
    if left:
        print(f"could not kill {left}", file=sys.stderr)
        return 1
    print(f"stopped daemons {pids}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a cluster and stay up until Ctrl-C/down")
    up.add_argument("--dir", help="cluster directory (default: a new temp dir)")
    up.add_argument("--gpus", type=int, default=2)
    up.add_argument("--partition", default="debug")
    up.add_argument("--no-etc-link", action="store_true",
                    help=f"do not symlink {ETC_SLURM_CONF}")
    up.add_argument("--profile-dir",
                    help="also write a snakemake profile config.yaml there")
    down = sub.add_parser("down", help="stop the cluster in DIR")
    down.add_argument("--dir", required=True)
    st = sub.add_parser("status", help="show daemons of the cluster in DIR")
    st.add_argument("--dir", required=True)
    sub.add_parser("check", help="exit 0 if the slurm/munge binaries are installed")
    args = ap.parse_args(argv)

    if args.cmd == "check":
        miss = missing_binaries()
        print("ok" if not miss else f"missing: {' '.join(miss)}")
        return 0 if not miss else 1
    if args.cmd == "down":
        return _down_from_state(Path(args.dir).resolve())
    if args.cmd == "status":
        d = Path(args.dir).resolve()
        if not (d / STATE_FILE).exists():
            print(f"no {STATE_FILE} in {d}", file=sys.stderr)
            return 1
        data = json.loads((d / STATE_FILE).read_text())
        print(f"harness  pid {data.get('harness_pid'):7d} "
              f"{'stopped' if data.get('stopped') else 'running'}")
        for name, pid in (data.get("pids") or {}).items():
            print(f"{name:10s} pid {pid:7d} {'alive' if _pid_alive(pid) else 'gone'}")
        return 0

    cluster = SlurmCluster(args.dir, n_gpus=args.gpus, partition=args.partition,
                           link_etc_conf=not args.no_etc_link, keep_dir=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell's background job starts with SIGINT ignored
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        cluster.start()
        if args.profile_dir:
            cluster.write_snakemake_profile(args.profile_dir)
        print(cluster.exports())
        print(f"# cluster dir {cluster.dir}; daemons {cluster.pids}", file=sys.stderr)
        print(f"# stop with Ctrl-C or: python {__file__} down --dir {cluster.dir}",
              file=sys.stderr)
        sys.stdout.flush()
        while all(p.poll() is None for p in cluster.procs.values()):
            time.sleep(1)
        dead = [n for n, p in cluster.procs.items() if p.poll() is not None]
        print(f"# daemon(s) exited: {dead}\n{cluster.log_tails()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except SlurmHarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
