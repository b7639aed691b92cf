"""PC inference, the reference implementation (spec section 2): T gradient steps on the latents.

    F(z) = E(z; x) + beta CE(C z_L + c, y)            (beta = 0 or y = None: F = E)
    v <- m v + dF/dz;   z <- z - eta v                 (m = 0: plain gradient descent)

with dE/dz from ``pcn.core.energy.latent_grad``; all layers are updated from the same state
z^t (a simultaneous, Jacobi-style step).  Written plainly, one layer at a time and out of
place, so that the same code runs without autograd (``pc``, evaluation, probing) and with it,
differentiable in every parameter and in z0 (``bp`` backpropagates through it).

This is what every new energy or inference variant is written against first.  The fast paths
beside it (``pcn.fast``: a stacked no-grad loop, a hand-written adjoint for ``bp``, a compiled
loop) compute the same thing and are tested equal to it; ``pcn.fast.dispatch`` picks them
where they apply and falls back to this code otherwise.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from pcn.core.energy import bu_latent_grad, ce_latent_grad, errors, latent_grad
from pcn.core.model import PCN

StepCallback = Callable[[int, list, list, Optional[list]], None]


class State(NamedTuple):
    """Final latents z, their errors eps (eps_0 first) and activations fz = f(z)."""
    z: list
    eps: list
    fz: list


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
            z.insert(0, model.predict(l, model.f(z[0])))
        return z
    if mode == "amortised":
        if model.V is None:
            raise ValueError("init 'amortised' needs a model built with amortised=True")
        return model.amortise(x)
    raise ValueError(f"unknown init {mode!r}; allowed: zeros, prior, amortised")


def nudged(y: Optional[torch.Tensor], beta: float) -> bool:
    """Whether the label enters inference (a label is given and beta != 0; a negative beta is
    the opposite nudge of ``pc-ep``'s symmetric estimate).  A tensor beta (one per run of a
    pack, ``pcn.fast.pack``) always enters: its value cannot steer Python control flow under
    ``vmap``, and a zero nudge adds zero."""
    if y is None:
        return False
    return isinstance(beta, torch.Tensor) or beta != 0.0


def objective_grad(model: PCN, x: torch.Tensor, z: list[torch.Tensor], eps: list[torch.Tensor],
                   y: Optional[torch.Tensor] = None, beta: float = 0.0) -> list[torch.Tensor]:
    """dF/dz_l for l = 1..L:  dE/dz_l (with the bottom-up term if the model has one)  +
    beta dCE/dz_L in the top layer (with a label)."""
    g = latent_grad(model, z, eps)
    if model.bottom_up > 0:
        g = [a + b for a, b in zip(g, bu_latent_grad(model, x, z))]
    if nudged(y, beta):
        g[-1] = g[-1] + beta * ce_latent_grad(model, z[-1], y)
    return g


def step(model: PCN, x: torch.Tensor, z: list[torch.Tensor], eps: list[torch.Tensor],
         v: Optional[list[torch.Tensor]], eta: float, y: Optional[torch.Tensor] = None, beta: float = 0.0,
         momentum: float = 0.0) -> tuple[list[torch.Tensor], Optional[list[torch.Tensor]]]:
    """One inference step from z (with errors eps = errors(z)): returns (z', v').

        v' = m v + dF/dz,   z' = z - eta v'      (without momentum: z' = z - eta dF/dz)
    """
    g = objective_grad(model, x, z, eps, y, beta)
    if momentum > 0:
        v = [momentum * vl + gl for vl, gl in zip(v, g)] if v is not None else g
        g = v
    return [zl - eta * gl for zl, gl in zip(z, g)], v


def infer_state(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                y: Optional[torch.Tensor] = None, beta: float = 0.0, momentum: float = 0.0,
                callback: Optional[StepCallback] = None) -> State:
    """Run T steps from z0; return the final ``State`` (z^T, eps(z^T), f(z^T)).

    ``callback(t, z, eps, dz)`` is called for t = 0..T with the state z^t, its errors and the
    step dz = z^t - z^{t-1} (None at t = 0).  z0 is never modified.
    """
    z, v = list(z0), None
    eps = errors(model, x, z)
    if callback is not None:
        callback(0, z, eps, None)
    for t in range(1, T + 1):
        z_new, v = step(model, x, z, eps, v, eta, y, beta, momentum)
        dz = [a - b for a, b in zip(z_new, z)] if callback is not None else None
        z = z_new
        eps = errors(model, x, z)
        if callback is not None:
            callback(t, z, eps, dz)
    return State(z, eps, [model.f(zl) for zl in z])


def infer(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
          y: Optional[torch.Tensor] = None, beta: float = 0.0, momentum: float = 0.0,
          callback: Optional[StepCallback] = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``infer_state`` returning only (z^T, eps(z^T))."""
    s = infer_state(model, x, z0, T, eta, y, beta, momentum, callback)
    return s.z, s.eps
