"""The learning rules (spec section 3), the reference implementation.  Each ``*_grads``
function fills ``p.grad`` of every trainable parameter for one batch and returns the batch's
loss terms (0-d tensors).  Weight gradients are taken by autograd where that is the clearest
statement of the rule; the fast versions (``pcn.fast.rules``) are tested equal to these.

Readout (all rules): the classifier C, c always trains on its own CE at the detached final
top latent (a probe), so w decides only whether the CE shapes the representation.

The energy enters the objectives as s E, s = ``energy_scale`` (energy_norm: 2 / d_0 for
``pixel``, whose data term is the per-pixel MSE; 1 for ``sum``).

``pc``  two inferences from the same start: a free one on E (x only) and a nudged one on
            s E + beta CE  (descended as E + (beta / s) CE),   beta = w / (1 - w)
        (the minimiser of (1 - w) s E + w CE, with the E-step of test-time inference at every w;
        w = 1 is refused: beta is infinite and no local update is defined there).  Then, at the
        nudged latents z* (no graph through the trajectory), the local updates are
            s dE/dW_l = -s eps_l f(z*_{l+1})^T,   s dE/db_l = -s eps_l      (batch means).
        The readout probe trains on the free latents, the quantity that test-time inference
        produces; the amortiser, if any, regresses the nudged z*_{l+1} on g_l(z*_l) (local MSE).
``bp``  inference runs on E alone, unrolled in the autograd graph; the loss
            L = (1 - w) s E(z^T; x) + w CE(C z^T_L + c, y)
        is backpropagated through all T steps to every weight (C held fixed in this term).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pcn.core import inference
from pcn.core.energy import energy, energy_scale, layer_energies
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


def nudge_strength(w: float) -> float:
    """beta = w / (1 - w), the weight of CE against E in pc's nudged inference, for 0 <= w < 1."""
    if not 0.0 <= w < 1.0:
        raise ValueError(f"rule 'pc': ce_weight {w} has no local update (beta = w / (1 - w) is "
                         f"infinite at w = 1); allowed: 0 <= ce_weight < 1")
    return w / (1.0 - w)


def pc_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Local PC rule: free and nudged inference (no graph), then -dE/dtheta at the nudged latents;
    the readout on the free latents."""
    w = float(cfg["ce_weight"])
    s = energy_scale(model, cfg["energy_norm"])
    beta = nudge_strength(w) / s
    T, eta, m = cfg["T"], cfg["eta"], cfg["momentum"]
    with torch.no_grad():
        z0 = inference.init_latents(model, x, cfg["init"])
        free, _ = inference.infer(model, x, z0, T, eta, momentum=m)
        z = inference.infer(model, x, z0, T, eta, y=y, beta=beta, momentum=m)[0] if beta > 0 else free
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        E = s * energy(model, x, z).mean()      # z is a constant here: dE/dtheta at z* only
        ce = readout_loss(model, free[-1], y)
        total = E + ce
        out = {"loss": ((1.0 - w) * E + w * ce).detach(), "energy": E.detach(), "ce": ce.detach()}
        if model.V is not None:
            amort = amortiser_loss(model, x, z)
            total = total + amort
            out["amortiser"] = amort.detach()
        total.backward()
    return out


def bp_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
             infer_state: Callable = inference.infer_state) -> dict[str, torch.Tensor]:
    """Backprop through inference: L = (1 - w) s E(z^T) + w CE(z^T_L), plus the readout probe.
    ``infer_state``: the (differentiable) inference to unroll, the reference loop by default."""
    w = float(cfg["ce_weight"])
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        z0 = inference.init_latents(model, x, cfg["init"])
        st = infer_state(model, x, z0, cfg["T"], cfg["eta"], momentum=cfg["momentum"])
        E = energy_scale(model, cfg["energy_norm"]) * layer_energies(st.eps).sum(0).mean()
        zL = st.z[-1]
        ce = F.cross_entropy(torch.addmm(model.c.detach(), zL, model.C.detach().t()), y)
        loss = (1.0 - w) * E + w * ce
        (loss + readout_loss(model, zL, y)).backward()
    return {"loss": loss.detach(), "energy": E.detach(), "ce": ce.detach()}


RULES = {"pc": pc_grads, "bp": bp_grads}
