"""Test-mode metrics of a trained model: inference sees x only (no label) for eval_T steps.

acc        readout accuracy on the final top latent
recon_mse  per-pixel mean of (x - mu_0)^2 after inference (the model's own prediction of x)
gen_mse    per-pixel mean of (x - x_hat)^2, x_hat the pure top-down pass from z_L alone
energy     mean E(z^T; x) per sample (pcn only)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pcn.core.ae import AE
from pcn.core.energy import energy
from pcn.core.stepsize import inference_eta
from pcn.core.inference import init_latents
from pcn.fast.dispatch import infer
from pcn.core.model import PCN


def eval_T(cfg: dict) -> int:
    return cfg["T"] if cfg.get("eval_T") is None else cfg["eval_T"]


@torch.no_grad()
def pcn_batch(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Sums over the batch of correct predictions, squared errors per pixel, energies."""
    z0 = init_latents(model, x, cfg["init"])
    z, eps = infer(model, x, z0, eval_T(cfg), inference_eta(model, cfg), momentum=cfg["momentum"])
    d = x.shape[1]
    logits = model.readout(z[-1])
    right = (logits.argmax(1) == y) & torch.isfinite(logits).all(1)  # a non-finite prediction is wrong
    return {
        "acc": right.sum(),
        "recon_mse": (eps[0] * eps[0]).sum() / d,
        "gen_mse": ((model.generate(z[-1]) - x) ** 2).sum() / d,
        "energy": energy(model, x, z).sum(),
    }


@torch.no_grad()
def ae_batch(model: AE, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    z, x_hat, logits = model(x)
    se = F.mse_loss(x_hat, x, reduction="sum") / x.shape[1]
    return {"acc": (logits.argmax(1) == y).sum(), "recon_mse": se, "gen_mse": se,
            "energy": torch.tensor(float("nan"))}


def evaluate(model, x: torch.Tensor, y: torch.Tensor, cfg: dict, device: torch.device,
             batch: int = 1000) -> dict[str, float]:
    """Mean metrics over (x, y), in batches; non-finite values come back as nan."""
    fn = ae_batch if isinstance(model, AE) else pcn_batch
    sums: dict[str, float] = {}
    for i in range(0, len(y), batch):
        out = fn(model, x[i:i + batch].to(device), y[i:i + batch].to(device), cfg)
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    n = max(len(y), 1)
    return {k: (v / n if math.isfinite(v) else float("nan")) for k, v in sums.items()}
