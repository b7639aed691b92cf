"""What a run was computed with: the code version and the hardware (recorded in config.json and
final.json).

``code_version()`` gives ``code_commit`` and ``code_dirty`` (the git commit of the checkout the
``pcn`` package lives in, and whether its tracked files differ from that commit; both null when
the package is not in a git checkout or git is missing) and, always, ``code_sha256``: a SHA-256
over the package's own source files (every ``*.py`` and ``*.yaml`` under ``pcn/``, by relative
path and content), which identifies the code even without git.

``compute(device)`` gives ``compute_device`` (the device type the run trained on: cpu, cuda or
mps), ``compute_name`` (the GPU's name, or the CPU's processor string) and ``torch_version``:
runs of one table may come from different machines (a seed trained on a GPU beside one trained
on a CPU), and float rounding differs between them.
"""
from __future__ import annotations

import hashlib
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

import pcn

PACKAGE_DIR = Path(pcn.__file__).resolve().parent
#: Keys added to config.json / final.json that say what the run was computed with, not what it
#: computes: a resumed run may differ in them.
CODE_KEYS = ("code_commit", "code_dirty", "code_sha256")
#: Keys added likewise that say which device and torch computed the run.
COMPUTE_KEYS = ("compute_device", "compute_name", "torch_version")


def source_sha256(root: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the package's ``*.py`` and ``*.yaml`` files (relative path and bytes)."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file()
                   and "__pycache__" not in p.parts)
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


@lru_cache(maxsize=1)
def code_version() -> dict:
    """{code_commit, code_dirty, code_sha256} of the running ``pcn`` package (see the module doc)."""
    # Only a checkout that tracks this package counts (not, say, a project whose venv holds it).
    tracked = _git("ls-files", "--error-unmatch", "__init__.py") is not None
    commit = _git("rev-parse", "HEAD") if tracked else None
    dirty = None
    if commit is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = None if status is None else bool(status.strip())
    return {"code_commit": commit.strip() if commit else None, "code_dirty": dirty,
            "code_sha256": source_sha256()}


def compute(device: torch.device) -> dict:
    """{compute_device, compute_name, torch_version} of a run on ``device`` (see the module doc)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
    return {"compute_device": device.type, "compute_name": name, "torch_version": torch.__version__}


def describe() -> str:
    """One line: ``<commit>[-dirty] sha256 <12 hex>`` (or just the hash outside git)."""
    v = code_version()
    head = f"commit {v['code_commit'][:12]}{'-dirty' if v['code_dirty'] else ''}, " if v["code_commit"] else ""
    return f"{head}source sha256 {v['code_sha256'][:12]}"
