"""The files of the test cluster: its directory (munge key, state and spool folders, fake GPU
device files), slurm.conf and gres.conf, and the snakemake profile that works with it."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from slurm_harness.system import MARKER_FILE, SlurmHarnessError, _free_port, _read_meminfo_mb, _which


class ClusterFiles:
    """Mixin of SlurmCluster: writing the cluster's directory and configuration files."""

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
