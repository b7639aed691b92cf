"""One ``pcn train`` per run folder: an OS file lock on ``FOLDER/.pcn-train.lock``.

``hold({"--out": folder, ...})`` takes an exclusive ``fcntl.flock`` on the lock file of each
folder (created, with the folder, if missing) without waiting, and keeps it until the ``with``
block ends.  A second process asking for a folder that is held is refused at once with
:class:`RunLocked` (a one-line usage error, exit 2, naming the folder and the holder), before
it writes anything.  The operating system releases the lock when the holder's process ends in
any way, ``kill -9`` included, so no stale lock is ever left behind: the file itself stays
(deleting a lock file races with its next user) and only records who held it last.  On Linux,
flock on NFS is carried by the server's byte-range locks, so it also holds across the nodes of
a cluster sharing the folder.  Where ``fcntl`` does not exist (Windows) runs are not locked.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from pcn.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

#: Name of the lock file in a run folder (and in a separate checkpoint folder).
LOCK_NAME = ".pcn-train.lock"


class RunLocked(UsageError):
    """Another process holds the run folder (exit 2)."""


def _holder(fd: int) -> str:
    """Who holds the lock, as the holder recorded it ("pid N on HOST since T"), else "unknown"."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown"


@contextlib.contextmanager
def _hold_one(option: str, folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{option} {folder}: another pcn train is running in this folder ({_holder(fd)}); "
                            f"nothing was written. Wait for it to end or stop it: its lock {path} is released "
                            "as soon as that process ends (also when it is killed)") from None
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode())
        yield
    finally:
        os.close(fd)   # closing the descriptor releases the lock


@contextlib.contextmanager
def hold(folders: dict[str, Path]) -> Iterator[None]:
    """Hold the lock of every folder in ``folders`` ({option naming it: folder}; the same folder
    given twice is locked once) for the ``with`` block; RunLocked if another process holds one."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with contextlib.ExitStack() as stack:
        seen: set[Path] = set()
        for option, folder in folders.items():
            key = Path(folder).resolve()
            if key not in seen:
                seen.add(key)
                stack.enter_context(_hold_one(option, Path(folder)))
        yield
