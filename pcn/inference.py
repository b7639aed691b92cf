"""PC inference: T gradient steps on the latents (spec section 2).

    F(z) = (1 - w) E(z; x) + w CE(C z_L + c, y)       (w = 0 or y = None: F = E)
    v <- m v + dF/dz;   z <- z - eta v                 (m = 0: plain gradient descent)

One function serves training, evaluation and probing.  Under ``torch.no_grad`` it is a
plain tensor loop; with grad enabled the whole trajectory stays in the autograd graph
(the ``bp`` rule).  A per-step callback receives the state for tracing; without one
nothing extra is computed.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from pcn.energy import ce_latent_grad, errors, latent_grad
from pcn.model import PCN

StepCallback = Callable[[int, list, list, Optional[list]], None]


def init_latents(model: PCN, x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """z^0: ``zeros``; ``prior`` (top-down pass from the prior mean, or from 0 without a prior);
    ``amortised`` (the model's bottom-up amortiser)."""
    B = x.shape[0]
    if mode == "zeros":
        return [x.new_zeros(B, d) for d in model.layers[1:]]
    if mode == "prior":
        top = model.prior_mean.expand(B, -1) if model.prior_mean is not None else x.new_zeros(B, model.layers[-1])
        z = [top]
        for l in reversed(range(1, model.L)):
            z.insert(0, torch.addmm(model.b[l], model.f(z[0]), model.W[l].t()))
        return z
    if mode == "amortised":
        if model.V is None:
            raise ValueError("init 'amortised' needs a model built with amortised=True")
        return model.amortise(x)
    raise ValueError(f"unknown init {mode!r}; allowed: zeros, prior, amortised")


def infer(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
          y: Optional[torch.Tensor] = None, w: float = 0.0, momentum: float = 0.0,
          callback: Optional[StepCallback] = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run T steps from z0; return the final latents z^T and their errors eps(z^T).

    ``callback(t, z, eps, dz)`` is called for t = 0..T with the state z^t, its errors and the
    step dz = z^t - z^{t-1} (None at t = 0).
    """
    z = list(z0)
    eps = errors(model, x, z)
    nudge = y is not None and w > 0.0
    scale = 1.0 - w if nudge else 1.0
    vel = [torch.zeros_like(zl) for zl in z] if momentum > 0 else None
    if callback is not None:
        callback(0, z, eps, None)
    for t in range(1, T + 1):
        g = latent_grad(model, z, eps)
        if scale != 1.0:
            g = [scale * gl for gl in g]
        if nudge:
            g[-1] = g[-1] + w * ce_latent_grad(model, z[-1], y)
        if vel is not None:
            vel = [momentum * v + gl for v, gl in zip(vel, g)]
            g = vel
        dz = [-eta * gl for gl in g]
        z = [zl + d for zl, d in zip(z, dz)]
        eps = errors(model, x, z)
        if callback is not None:
            callback(t, z, eps, dz)
    return z, eps
