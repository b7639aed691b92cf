"""Baseline ``ae``: the Rathjens & Wiskott classification-reconstruction encoder (spec 3).

encoder  x -> h ... -> z (linear latent),  layers = cfg["layers"] (e.g. 784-256-256-32)
decoder  z -> ... -> x_hat (mirrored, tanh output: pixels live in [-1, 1])
classifier  logits = C z + c (linear, like the PCN readout)

Encoder loss (1 - w) MSE + w CE; the decoder and classifier always train on their own loss
(gradient routing of the reference code), so w steers only the shared encoder.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pcn.core.model import N_CLASSES

_ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}


def _mlp(sizes: list[int], act: str, out_act: nn.Module | None) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        mods.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            mods.append(_ACT[act]())
    if out_act is not None:
        mods.append(out_act)
    return nn.Sequential(*mods)


class AE(nn.Module):
    def __init__(self, layers: list[int], hidden_activation: str = "relu", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = list(layers)
        self.encoder = _mlp(layers, hidden_activation, None)
        self.decoder = _mlp(layers[::-1], hidden_activation, nn.Tanh())
        self.classifier = nn.Linear(layers[-1], N_CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.decoder(z), self.classifier(z)


def _frozen(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """module(inp) with its parameters detached: gradient reaches only ``inp``."""
    return functional_call(module, {k: v.detach() for k, v in module.named_parameters()}, (inp,))


def ae_grads(model: AE, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Fill grads: encoder on (1 - w) MSE + w CE, decoder on MSE, classifier on CE."""
    w = float(cfg["ce_weight"])
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        z = model.encoder(x)
        mse_enc = F.mse_loss(_frozen(model.decoder, z), x)
        ce_enc = F.cross_entropy(_frozen(model.classifier, z), y)
        zd = z.detach()
        mse = F.mse_loss(model.decoder(zd), x)
        ce = F.cross_entropy(model.classifier(zd), y)
        loss = (1.0 - w) * mse_enc + w * ce_enc
        (loss + mse + ce).backward()
    return {"loss": loss.detach(), "energy": mse.detach(), "ce": ce.detach()}
