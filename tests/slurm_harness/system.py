"""What the test cluster needs (packages, binaries, root) and the process helpers it uses:
free ports, log tails, which processes are alive or carry its marker, killing them."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
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

INSTALL_SCRIPT = Path(__file__).resolve().parent.parent / "install_slurm.sh"
#: the harness's command line (``python CLI_SCRIPT up|down|status``)
CLI_SCRIPT = Path(__file__).resolve().parent.parent / "slurm_cluster.py"


class SlurmHarnessError(RuntimeError):
    """The test cluster could not be brought up (message has log tails)."""



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


def _shquote(s: str) -> str:
    import shlex
    return shlex.quote(s)
