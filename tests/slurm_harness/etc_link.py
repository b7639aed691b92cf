"""The one change the test cluster makes outside its directory: while it is up,
/etc/slurm/slurm.conf is a symlink to its slurm.conf (a file there is kept as a backup and put
back; a link left by a harness that died is cleaned up at the next start)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from slurm_harness.system import (
    CLI_SCRIPT, ETC_BACKUP, ETC_SLURM_CONF, ETC_SLURM_DIR, MARKER_FILE, SlurmHarnessError, _pid_alive,
)


class EtcLink:
    """Mixin of SlurmCluster: linking /etc/slurm/slurm.conf to the cluster's and undoing it."""

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
                    f"{owner}; stop it first (python {CLI_SCRIPT} down --dir {owner})"
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
