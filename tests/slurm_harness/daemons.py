"""The daemons of the test cluster: munged, slurmctld and slurmd, started in the foreground as
child processes with the cluster's marker in their environment, and waited for."""
from __future__ import annotations

import os
import subprocess
import time

from slurm_harness.system import MARKER_ENV, SlurmHarnessError, _set_pdeathsig, _which


class Daemons:
    """Mixin of SlurmCluster: starting its daemons and waiting until the node is idle."""

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
