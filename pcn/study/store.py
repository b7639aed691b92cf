"""Models on disk: build a model from its config, save files atomically, load model.pt files
and training checkpoints back.  (Imported by training, probing and alignment alike, so that
none of them imports another for these helpers.)"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import torch

from pcn.core.ae import AE
from pcn.core.cre import CRE
from pcn.core.model import PCN
from pcn.errors import PcnError
from pcn.study.config import conv_spec, input_size

#: A training checkpoint is this line, the SHA-256 (hex) of the payload and a newline, then the
#: payload (a torch.save stream): a truncated or overwritten file fails the check on load.
CKPT_MAGIC = b"PCN-CKPT-SHA256 "
CKPT_KEYS = frozenset({"epoch", "model", "opt", "sched", "rows", "align", "config", "elapsed"})


class DamagedFile(PcnError):
    """A model or checkpoint file that cannot be used; ``reason`` is one short word
    (empty, truncated, checksum, unreadable, foreign)."""

    def __init__(self, path: Path, reason: str, detail: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is damaged or not a pcn file ({reason}: {detail})")


def _torch_load(blob: bytes, path: Path, device: str = "cpu"):
    try:
        return torch.load(io.BytesIO(blob), map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged pickle/zip raises many types
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DamagedFile(path, "unreadable", f"torch.load: {type(e).__name__}: {detail[:200]}") from None


def read_blob(path: str | Path, device: str = "cpu") -> dict:
    """The dict stored in a model.pt or a checkpoint (checksum verified when it has one).
    Raises DamagedFile naming the file; a missing file raises FileNotFoundError."""
    path = Path(path)
    if path.is_dir():
        raise DamagedFile(path, "foreign", "a folder, not a file")
    raw = path.read_bytes()
    if not raw:
        raise DamagedFile(path, "empty", "the file has 0 bytes")
    if raw.startswith(CKPT_MAGIC):
        head = len(CKPT_MAGIC)
        digest, payload = raw[head:head + 64], raw[head + 65:]
        if len(raw) < head + 65 or hashlib.sha256(payload).hexdigest().encode() != digest:
            raise DamagedFile(path, "checksum", f"the SHA-256 of its {len(payload)} bytes does not match the "
                                                f"one written with it (truncated or overwritten)")
        raw = payload
    blob = _torch_load(raw, path, device)
    if not isinstance(blob, dict) or "config" not in blob or not isinstance(blob["config"], dict):
        raise DamagedFile(path, "foreign", "not a file written by pcn train (no config)")
    return blob


def read_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, verified: checksum, and every key a resume needs."""
    blob = read_blob(path)
    missing = sorted(CKPT_KEYS - set(blob))
    if missing:
        raise DamagedFile(path, "foreign", f"not a training checkpoint (keys {missing} missing)")
    return blob


def save_checkpoint(obj: dict, path: Path, keep_previous: bool = True) -> None:
    """Write a checksummed checkpoint atomically; the one it replaces becomes ``<name>.prev``
    (so a damaged newest checkpoint still leaves the one before it)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    with naming(path):
        with open(tmp, "wb") as fh:
            fh.write(CKPT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            fh.flush()
            os.fsync(fh.fileno())
        if keep_previous and path.exists():
            os.replace(path, previous_of(path))
        os.replace(tmp, path)


def previous_of(path: Path) -> Path:
    """Where ``save_checkpoint`` keeps the checkpoint before the newest one."""
    return path.with_name(path.name + ".prev")


def move_aside(path: Path, reason: str) -> Path:
    """Rename ``path`` to ``<name>.<reason>`` (``.<reason>.1``, ... if taken); return the new name."""
    target = path.with_name(f"{path.name}.{reason}")
    i = 0
    while target.exists():
        i += 1
        target = path.with_name(f"{path.name}.{reason}.{i}")
    os.replace(path, target)
    return target


BOTTOM_UP_RULES = ("bpc", "bpc-ep")
"""Rules whose energy has the bottom-up term (weight ``bu_weight``)."""


def build_model(cfg: dict) -> torch.nn.Module:
    """The model a config describes, initialised from its seed."""
    if cfg["model"] == "ae":
        return AE(cfg["layers"], cfg["ae_hidden_activation"], seed=cfg["seed"])
    if cfg["model"] == "cre":
        return CRE(cfg["cre_size"], cfg["latent"], seed=cfg["seed"], n_pixels=input_size(cfg.get("dataset", "mnist")))
    bpc = cfg.get("rule") in BOTTOM_UP_RULES      # their bottom-up weights are part of the energy
    return PCN(cfg["layers"], cfg["activation"], prior=cfg["prior"],
               amortised=cfg["init"] == "amortised" or bpc, seed=cfg["seed"],
               bottom_up=float(cfg.get("bu_weight", 1.0)) if bpc else 0.0, conv=conv_spec(cfg))


def _model_from(blob: dict, key: str, path: Path) -> torch.nn.Module:
    if key not in blob:
        raise DamagedFile(path, "foreign", f"no {key!r} entry: not a model.pt or ckpt.pt of pcn train")
    try:
        model = build_model(blob["config"])
        model.load_state_dict(blob[key])
    except Exception as e:  # noqa: BLE001 - a config or state that does not fit
        raise DamagedFile(path, "foreign", f"its weights do not fit its config ({type(e).__name__})") from None
    return model


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model.pt written by ``train``: (model, config)."""
    blob = read_blob(path, device)
    return _model_from(blob, "state", Path(path)).to(device), blob["config"]


def load_weights(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict, int | None]:
    """A model from a saved model.pt (keys config, state) or a training checkpoint ckpt.pt
    (keys config, model, epoch): (model, config, epoch or None)."""
    blob = read_blob(path, device)
    model = _model_from(blob, "state" if "state" in blob else "model", Path(path))
    return model.to(device), blob["config"], blob.get("epoch")


@contextlib.contextmanager
def naming(path: Path):
    """OSErrors raised inside (a full disk reports no file name) name ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename over ``path`` (never a half-written file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with naming(path):
        torch.save(obj, tmp)
        os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a character device such as /dev/null directly)."""
    with naming(path):
        if path.exists() and not path.is_file() and not path.is_dir():
            path.write_text(text)
            return
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
