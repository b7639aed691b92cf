"""The learning rules (spec section 3), the reference implementation.  Each ``*_grads``
function fills ``p.grad`` of every trainable parameter for one batch and returns the batch's
loss terms (0-d tensors).  Weight gradients are taken by autograd where that is the clearest
statement of the rule; the fast versions (``pcn.fast.rules``) are tested equal to these.

Readout (all rules): the classifier C, c always trains on its own CE at the detached final
top latent (a probe), so w decides only whether the CE shapes the representation.

``pc``  inference minimises F = (1 - w) E + w CE with x and y given; then, at the final
        latents z* (no graph through the trajectory), the local updates are
            dF/dW_l = -(1 - w) eps_l f(z*_{l+1})^T,   dF/db_l = -(1 - w) eps_l
        (batch means).  The amortiser, if any, regresses z*_{l+1} on g_l(z*_l) (local MSE).
``bp``  inference runs on E alone, unrolled in the autograd graph; the loss
            L = (1 - w) E(z^T; x) + w CE(C z^T_L + c, y)
        is backpropagated through all T steps to every weight (C held fixed in this term).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pcn.core import inference
from pcn.core.energy import energy, layer_energies
from pcn.core.model import PCN


def readout_loss(model: PCN, zL: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The readout probe's loss: mean CE(C z_L + c, y) at the detached top latent."""
    return F.cross_entropy(model.readout(zL.detach()), y)


def amortiser_loss(model: PCN, x: torch.Tensor, z: list[torch.Tensor]) -> torch.Tensor:
    """Local regression of the amortiser onto the (detached) inferred latents z*:
    sum_l 1/2 ||V_l g_l(z*_l) + a_l - z*_{l+1}||^2, batch mean (g_0 = identity, g_l = f)."""
    below = [x] + [zl.detach() for zl in z[:-1]]
    loss = 0.0
    for l in range(model.L):
        inp = below[l] if l == 0 else model.f(below[l])
        r = inp @ model.V[l].t() + model.a[l] - z[l].detach()
        loss = loss + 0.5 * (r * r).sum(1).mean()
    return loss


def pc_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Local PC rule: infer on F with the label (no graph), then -dF/dtheta at the final latents."""
    w = float(cfg["ce_weight"])
    with torch.no_grad():
        z0 = inference.init_latents(model, x, cfg["init"])
        z, _ = inference.infer(model, x, z0, cfg["T"], cfg["eta"], y=y, w=w, momentum=cfg["momentum"])
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        E = energy(model, x, z).mean()      # z is a constant here: dE/dtheta at z* only
        ce = readout_loss(model, z[-1], y)
        total = (1.0 - w) * E + ce
        out = {"loss": ((1.0 - w) * E + w * ce).detach(), "energy": E.detach(), "ce": ce.detach()}
        if model.V is not None:
            amort = amortiser_loss(model, x, z)
            total = total + amort
            out["amortiser"] = amort.detach()
        total.backward()
    return out


def bp_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
             infer_state: Callable = inference.infer_state) -> dict[str, torch.Tensor]:
    """Backprop through inference: L = (1 - w) E(z^T) + w CE(z^T_L), plus the readout probe.
    ``infer_state``: the (differentiable) inference to unroll, the reference loop by default."""
    w = float(cfg["ce_weight"])
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        z0 = inference.init_latents(model, x, cfg["init"])
        s = infer_state(model, x, z0, cfg["T"], cfg["eta"], momentum=cfg["momentum"])
        E = layer_energies(s.eps).sum(0).mean()
        zL = s.z[-1]
        ce = F.cross_entropy(torch.addmm(model.c.detach(), zL, model.C.detach().t()), y)
        loss = (1.0 - w) * E + w * ce
        (loss + readout_loss(model, zL, y)).backward()
    return {"loss": loss.detach(), "energy": E.detach(), "ce": ce.detach()}


RULES = {"pc": pc_grads, "bp": bp_grads}
