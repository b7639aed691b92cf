"""Models on disk: build a model from its config, save files atomically, load model.pt files
and training checkpoints back.  (Imported by training, probing and alignment alike, so that
none of them imports another for these helpers.)"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from pcn.core.ae import AE
from pcn.core.cre import CRE
from pcn.core.model import PCN


def build_model(cfg: dict) -> torch.nn.Module:
    """The model a config describes, initialised from its seed."""
    if cfg["model"] == "ae":
        return AE(cfg["layers"], cfg["ae_hidden_activation"], seed=cfg["seed"])
    if cfg["model"] == "cre":
        return CRE(cfg["cre_size"], cfg["latent"], seed=cfg["seed"])
    return PCN(cfg["layers"], cfg["activation"], prior=cfg["prior"],
               amortised=cfg["init"] == "amortised", seed=cfg["seed"])


def load_model(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Load a model.pt written by ``train``: (model, config)."""
    blob = torch.load(path, map_location=device, weights_only=False)
    model = build_model(blob["config"])
    model.load_state_dict(blob["state"])
    return model.to(device), blob["config"]


def load_weights(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict, int | None]:
    """A model from a saved model.pt (keys config, state) or a training checkpoint ckpt.pt
    (keys config, model, epoch): (model, config, epoch or None)."""
    blob = torch.load(path, map_location=device, weights_only=False)
    model = build_model(blob["config"])
    model.load_state_dict(blob["state"] if "state" in blob else blob["model"])
    return model.to(device), blob["config"], blob.get("epoch")


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename over ``path`` (never a half-written file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
