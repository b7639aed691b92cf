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
"""
from __future__ import annotations

import argparse
import atexit
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REQUIRED_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
# binary -> Debian package that ships it
REQUIRED_BINARIES = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "slurmstepd": "slurmd",
    "sinfo": "slurm-client",
    "squeue": "slurm-client",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "scontrol": "slurm-client",
    "scancel": "slurm-client",
    "munged": "munge",
    "mungekey": "munge",
}
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")

ETC_SLURM_DIR = Path("/etc/slurm")
ETC_SLURM_CONF = ETC_SLURM_DIR / "slurm.conf"
ETC_BACKUP = ETC_SLURM_DIR / "slurm.conf.slurm-harness-backup"
MARKER_ENV = "SLURM_TEST_HARNESS_DIR"  # set in every daemon's environment
MARKER_FILE = ".slurm-harness"  # in the cluster dir
STATE_FILE = "harness-state.json"  # in the cluster dir

INSTALL_SCRIPT = Path(__file__).resolve().parent / "install_slurm.sh"


class SlurmHarnessError(RuntimeError):
    """The test cluster could not be brought up (message has log tails)."""


# --------------------------------------------------------------------------
# helpers


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", os.defpath)
    extra = [d for d in SBIN_DIRS if d not in path.split(os.pathsep)]
    return shutil.which(name, path=os.pathsep.join([path, *extra]))


def missing_binaries() -> list[str]:
    """Names of required slurm/munge binaries that are not installed."""
    return [b for b in REQUIRED_BINARIES if _which(b) is None]


def missing_packages() -> list[str]:
    """Debian packages to install to get the missing binaries."""
    pkgs: list[str] = []
    for b in missing_binaries():
        if REQUIRED_BINARIES[b] not in pkgs:
            pkgs.append(REQUIRED_BINARIES[b])
    return pkgs


def try_install(timeout: float = 600) -> tuple[bool, str]:
    """Run tests/install_slurm.sh (needs root/sudo + apt). -> (ok, message)."""
    if not missing_binaries():
        return True, "already installed"
    if shutil.which("apt-get") is None:
        return False, "apt-get not available"
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        return False, "not root and no sudo"
    try:
        p = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"{INSTALL_SCRIPT.name} timed out after {timeout} s"
    if p.returncode != 0 or missing_binaries():
        return False, (
            f"{INSTALL_SCRIPT.name} exited {p.returncode}: "
            f"{(p.stderr or p.stdout).strip()[-800:]}"
        )
    return True, "installed"


def _free_port(exclude: set[int] = frozenset()) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise SlurmHarnessError("could not find a free TCP port")


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"    <cannot read {path}: {e}>"
    return "\n".join("    " + ln for ln in lines[-n:]) or "    <empty>"


def _pid_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_marker(pid: int) -> str | None:
    """Value of MARKER_ENV in /proc/PID/environ, or None."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    prefix = MARKER_ENV.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix):].decode(errors="replace")
    return None


def _proc_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _marked_processes(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries our marker value."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid():
            continue
        if _proc_marker(pid) == marker and _pid_alive(pid):
            pids.append(pid)
    return pids


def _set_pdeathsig() -> None:
    """preexec_fn: SIGTERM this child when the harness (thread) dies, so the
    daemons do not outlive a harness killed by SIGKILL.  Linux only."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001 - best effort
        pass


def _read_meminfo_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmHarnessError("no MemTotal in /proc/meminfo")


def _kill_pids(pids: list[int], grace: float = 10.0) -> list[int]:
    """SIGTERM, wait up to `grace` s, then SIGKILL. Returns pids still alive."""
    pids = [p for p in pids if p and p != os.getpid() and _pid_alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if _pid_alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_pid_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _pid_alive(p)]


# --------------------------------------------------------------------------
# the cluster


class SlurmCluster:
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

    def snakemake_profile(self) -> dict:
        """Profile settings (``config.yaml`` keys) verified to work with this
        cluster and snakemake 9.27 + snakemake-executor-plugin-slurm 2.8:

        * ``slurm-status-command: squeue`` -- required.  Without slurmdbd
          ``sacct`` exits 0 listing no jobs ("Slurm accounting storage is
          disabled"), and the plugin's default (sacct, chosen because the
          binary exists) then polls forever.  The plugin also quietly uses
          sacct instead of squeue when MinJobAge < 3 *
          ``slurm-init-seconds-before-status-checks``; MinJobAge is 3600 here.
        * ``slurm-init-seconds-before-status-checks: 2`` -- first poll after
          2 s instead of 40 (later polls back off by +10 s up to 180 s).
        * ``slurm-no-account: true`` -- declared but unused by plugin 2.8.0;
          it still tries ``sacct`` to guess an account, warns and goes on
          without one.  Harmless; kept for other plugin versions.
        * default resources: the partition and a small mem_mb/runtime.
        GPU rules use ``resources: gpu=1`` (-> ``--gpus=1``) or
        ``gres="gpu:1"`` (-> ``--gres=gpu:1``); both get CUDA_VISIBLE_DEVICES.
        """
        return {
            "executor": "slurm",
            "jobs": 2,
            "default-resources": [f"slurm_partition={self.partition}",
                                  "mem_mb=500", "runtime=10"],
            "slurm-status-command": "squeue",
            "slurm-init-seconds-before-status-checks": 2,
            "slurm-no-account": True,
            "slurm-keep-successful-logs": True,
            "latency-wait": 5,
        }

    def write_snakemake_profile(self, profile_dir: str | os.PathLike) -> Path:
        """Write ``config.yaml`` with :meth:`snakemake_profile` into profile_dir
        (use with ``snakemake --profile DIR`` and ``env=cluster.env``)."""
        d = Path(profile_dir)
        d.mkdir(parents=True, exist_ok=True)

        def fmt(v):
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, str):
                return json.dumps(v)  # a JSON string is a valid YAML scalar
            return str(v)

        lines = []
        for k, v in self.snakemake_profile().items():
            if isinstance(v, list):
                lines.append(f"{k}:")
                lines += [f"  - {fmt(x)}" for x in v]
            else:
                lines.append(f"{k}: {fmt(v)}")
        (d / "config.yaml").write_text("\n".join(lines) + "\n")
        return d / "config.yaml"

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

    # -- setup steps -------------------------------------------------------

    def _prepare_dirs(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # munged insists that none of the parent dirs is writable by others
        # without the sticky bit; /tmp is 1777, mkdtemp gives 0700.
        os.chmod(self.dir, 0o755)
        (self.dir / MARKER_FILE).write_text(f"{os.getpid()}\n")
        for d in (self.conf_dir, self.log_dir, self.run_dir,
                  self.dir / "state", self.dir / "spool", self.dir / "munge-lib",
                  self.gpu_dev_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.munge_dir, 0o711)
        os.chmod(self.dir / "munge-lib", 0o700)
        if not self.munge_key.exists():
            p = subprocess.run(
                [_which("mungekey"), "-c", "-k", str(self.munge_key)],
                capture_output=True, text=True, timeout=30,
            )
            if p.returncode != 0:
                raise SlurmHarnessError(f"mungekey failed: {p.stderr.strip()}")
        os.chmod(self.munge_key, 0o400)
        self._make_gpu_devices()

    def _make_gpu_devices(self) -> None:
        """dev/gpu0..N-1, the files gres.conf names.

        slurm 22.05 stat()s each File= and only sets CUDA_VISIBLE_DEVICES for
        jobs when it is a character/block device; with plain files it logs
        "is not a valid character or block device", still schedules gpu jobs,
        but CUDA_VISIBLE_DEVICES stays empty.  Kinds: "chardev" = mknod 1,3
        (same numbers as /dev/null, never opened by anyone); "symlink" =
        symlinks to /dev/null (for when mknod is not permitted); "file" =
        plain files (documented above: no CUDA_VISIBLE_DEVICES); "auto" =
        chardev, else symlink."""
        want = self.gpu_device_kind
        kind = {"auto": "chardev"}.get(want, want)
        for i in range(self.n_gpus):
            path = self.gpu_dev_dir / f"gpu{i}"
            if os.path.lexists(path):
                path.unlink()
            if kind == "chardev":
                try:
                    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
                    continue
                except OSError as e:
                    if want == "chardev":
                        raise SlurmHarnessError(f"mknod {path}: {e}") from e
                    kind = "symlink"
            if kind == "symlink":
                os.symlink("/dev/null", path)
            else:
                path.touch(mode=0o666)
        self.gpu_device_kind = kind

    def _node_hw(self) -> dict:
        """CPU topology from `slurmd -C`, fallback os.cpu_count()."""
        hw = {}
        try:
            p = subprocess.run([_which("slurmd"), "-C"], capture_output=True,
                               text=True, timeout=15)
            first = p.stdout.splitlines()[0] if p.stdout else ""
            for tok in first.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    hw[k] = v
        except (subprocess.TimeoutExpired, OSError, IndexError):
            pass
        if "CPUs" not in hw:
            hw = {"CPUs": str(os.cpu_count() or 1)}
        return hw

    def _write_configs(self) -> None:
        hw = self._node_hw()
        mem_total = int(hw.get("RealMemory") or _read_meminfo_mb())
        # a bit under the real value, or slurmd drains the node ("Low RealMemory")
        real_memory = max(256, min(int(mem_total * 0.9), mem_total - 512))
        topo = " ".join(
            f"{k}={hw[k]}"
            for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                      "ThreadsPerCore")
            if k in hw
        )
        self.cpus = int(hw["CPUs"])
        self.real_memory = real_memory
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port({self.ctld_port})
        d = self.dir
        gres = f" Gres=gpu:{self.n_gpus}" if self.n_gpus else ""
        conf = f"""\
# generated by tests/slurm_cluster.py -- single-node test cluster
ClusterName={self.cluster_name}
SlurmctldHost={self.nodename}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={self.run_dir / 'slurmctld.pid'}
SlurmdPidFile={self.run_dir / 'slurmd.pid'}
SlurmctldLogFile={self.log_dir / 'slurmctld.log'}
SlurmdLogFile={self.log_dir / 'slurmd.log'}
SlurmctldDebug=info
SlurmdDebug=info
# no systemd/cgroups needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
PlugStackConfig={self.conf_dir / 'plugstack.conf'}
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
DefMemPerCPU={self.def_mem_per_cpu}
GresTypes=gpu
# keep finished jobs visible to squeue/scontrol (no slurmdbd => no sacct)
MinJobAge={self.min_job_age}
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=300
InactiveLimit=0
KillWait=5
Waittime=0
MessageTimeout=10
NodeName={self.nodename} NodeAddr=127.0.0.1 NodeHostname={self.nodename} {topo} RealMemory={real_memory}{gres} State=UNKNOWN
PartitionName={self.partition} Nodes={self.nodename} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf_path.write_text(conf)
        lines = ["AutoDetect=off"]
        if self.n_gpus:
            last = self.n_gpus - 1
            files = (f"{self.gpu_dev_dir}/gpu[0-{last}]" if last
                     else f"{self.gpu_dev_dir}/gpu0")
            lines.append(f"NodeName={self.nodename} Name=gpu File={files}")
        (self.conf_dir / "gres.conf").write_text("\n".join(lines) + "\n")
        # no cgroup.conf: with proctrack/linuxproc + task/none + jobacct_gather/none
        # slurm 22.05 loads no cgroup plugin and never reads it
        # an empty plugstack so the host's /etc/slurm/plugstack.conf.d is not used
        (self.conf_dir / "plugstack.conf").write_text("")
        path = os.environ.get("PATH", os.defpath)
        parts = path.split(os.pathsep)
        for extra in ("/usr/bin", "/usr/sbin"):
            if extra not in parts:
                parts.append(extra)
        self.env = {
            **os.environ,
            "SLURM_CONF": str(self.conf_path),
            "PATH": os.pathsep.join(parts),
        }
        # do not leak allocation variables of an outer job into our clients
        for k in list(self.env):
            if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF":
                del self.env[k]

    def _daemon_env(self) -> dict[str, str]:
        return {
            "PATH": self.env["PATH"],
            "SLURM_CONF": str(self.conf_path),
            "LANG": "C.UTF-8",
            "HOME": os.environ.get("HOME", "/root"),
            MARKER_ENV: self.marker,
        }

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        out = open(self.log_dir / f"{name}.out", "ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._daemon_env(),
                cwd=str(self.dir),
                start_new_session=True,  # Ctrl-C in a terminal does not hit it
                # NB: fires when the *thread* that started the cluster exits;
                # start it from the main thread (pytest and the CLI do).
                preexec_fn=_set_pdeathsig,
            )
        finally:
            out.close()
        self.procs[name] = proc
        self.pids[name] = proc.pid
        self._write_state()
        return proc

    def _wait(self, name: str, what: str, cond, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs[name]
        while time.monotonic() < deadline:
            if cond():
                return
            if proc.poll() is not None:
                raise SlurmHarnessError(
                    f"{name} exited with {proc.returncode} before {what}\n"
                    + self.log_tails()
                )
            time.sleep(0.1)
        raise SlurmHarnessError(
            f"{name}: no {what} after {timeout} s\n" + self.log_tails()
        )

    def _start_munged(self) -> None:
        argv = [
            _which("munged"), "--foreground", "--force",
            f"--socket={self.munge_socket}",
            f"--key-file={self.munge_key}",
            f"--pid-file={self.run_dir / 'munged.pid'}",
            f"--log-file={self.log_dir / 'munged.log'}",
            f"--seed-file={self.dir / 'munge-lib' / 'munged.seed'}",
        ]
        self._spawn("munged", argv)
        self._wait("munged", "socket", self.munge_socket.exists, 15)

    def _start_slurmctld(self) -> None:
        # -i: ignore state files (always a fresh dir anyway); -D foreground
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i",
                                  "-f", str(self.conf_path)])

        def up() -> bool:
            try:
                p = self.run(["scontrol", "ping"], timeout=10)
            except subprocess.TimeoutExpired:
                return False
            return p.returncode == 0 and "UP" in p.stdout

        self._wait("slurmctld", "answer to `scontrol ping`", up, self.start_timeout)

    def _start_slurmd(self) -> None:
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.nodename,
                               "-f", str(self.conf_path)])

    def node_state(self) -> str:
        p = self.run(["sinfo", "-h", "-N", "-n", self.nodename, "-o", "%t"],
                     timeout=10)
        return p.stdout.strip() if p.returncode == 0 else f"<sinfo rc {p.returncode}>"

    def _wait_node_idle(self) -> None:
        state = {"last": ""}

        def idle() -> bool:
            try:
                state["last"] = self.node_state()
            except subprocess.TimeoutExpired:
                return False
            return state["last"] == "idle"

        try:
            self._wait("slurmd", "idle node in sinfo", idle, self.start_timeout)
        except SlurmHarnessError as e:
            reason = self.run(["scontrol", "show", "node", self.nodename], timeout=10)
            raise SlurmHarnessError(
                f"{e}\nlast sinfo state: {state['last']!r}\n{reason.stdout}"
            ) from None

    # -- /etc/slurm/slurm.conf --------------------------------------------

    def _install_etc_link(self) -> None:
        if not self.link_etc_conf:
            return
        st = {"created_dir": False, "backed_up": False, "linked": False}
        _cleanup_stale_etc_link()
        if not ETC_SLURM_DIR.exists():
            ETC_SLURM_DIR.mkdir(parents=True)
            st["created_dir"] = True
        if os.path.lexists(ETC_SLURM_CONF):
            owner = _etc_link_owner()
            if owner is not None:
                raise SlurmHarnessError(
                    f"{ETC_SLURM_CONF} already links to the live test cluster in "
                    f"{owner}; stop it first (python {__file__} down --dir {owner})"
                )
            if os.path.lexists(ETC_BACKUP):
                raise SlurmHarnessError(
                    f"both {ETC_SLURM_CONF} and {ETC_BACKUP} exist; "
                    "resolve by hand"
                )
            os.rename(ETC_SLURM_CONF, ETC_BACKUP)
            st["backed_up"] = True
        self.etc_state = st
        self._write_state()
        os.symlink(self.conf_path, ETC_SLURM_CONF)
        st["linked"] = True

    def _restore_etc_link(self) -> None:
        st = self.etc_state
        if not st:
            return
        _restore_etc(st, self.conf_path)
        self.etc_state = None

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


def _shquote(s: str) -> str:
    import shlex
    return shlex.quote(s)


def _etc_link_owner() -> str | None:
    """Dir of the live harness that /etc/slurm/slurm.conf links to, if any."""
    if not ETC_SLURM_CONF.is_symlink():
        return None
    target = Path(os.readlink(ETC_SLURM_CONF))
    hdir = target.parent.parent
    marker = hdir / MARKER_FILE
    if not marker.exists():
        return None
    try:
        pid = int(marker.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return str(hdir) if _pid_alive(pid) else None


def _cleanup_stale_etc_link() -> None:
    """Undo the /etc change of a harness that died without teardown."""
    if not ETC_SLURM_CONF.is_symlink():
        return
    target = Path(os.readlink(ETC_SLURM_CONF))
    hdir = target.parent.parent
    looks_ours = (
        target.name == "slurm.conf"
        and target.parent.name == "etc"
        and ((hdir / MARKER_FILE).exists() or not target.exists())
    )
    if not looks_ours or _etc_link_owner() is not None:
        return
    ETC_SLURM_CONF.unlink()
    if os.path.lexists(ETC_BACKUP):
        os.rename(ETC_BACKUP, ETC_SLURM_CONF)


def _restore_etc(st: dict, conf_path: Path) -> None:
    if st.get("linked") or ETC_SLURM_CONF.is_symlink():
        if ETC_SLURM_CONF.is_symlink() and Path(os.readlink(ETC_SLURM_CONF)) == conf_path:
            ETC_SLURM_CONF.unlink()
    if st.get("backed_up") and os.path.lexists(ETC_BACKUP) and not os.path.lexists(
        ETC_SLURM_CONF
    ):
        os.rename(ETC_BACKUP, ETC_SLURM_CONF)
    if st.get("created_dir"):
        try:
            ETC_SLURM_DIR.rmdir()
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.ENOENT, errno.EEXIST):
                raise


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
