"""Fast versions of the learning rules in ``pcn.core.rules`` (same mathematics, tested equal).

``pc``: the weight, readout and amortiser gradients are written out (no autograd), in the
(d x batch) orientation of the stacked inference buffers, and f(z*) is reused from the
inference.  ``bp``: the reference rule with the fast differentiable inference (the adjoint).
``pc-ep``: the reference rule with the fast no-grad inference.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from pcn.core import rules as reference
from pcn.core.energy import energy_scale
from pcn.core.inference import init_latents
from pcn.core.stepsize import inference_eta
from pcn.core.model import PCN
from pcn.fast.dispatch import infer, infer_state, note_reference
from pcn.fast.kernels import mean_half_sq, onehot_t
from pcn.fast.options import OPTIONS


def _readout_grads(model: PCN, zL: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Set dCE/dC, dCE/dc at the detached top latent; return the per-batch mean CE.
    Formed as (classes x batch): softmax over a short last dimension is slow in torch."""
    B = zL.shape[0]
    logp = torch.log_softmax(torch.addmm(model.c.unsqueeze(1), model.C, zL.t()), dim=0)
    ce = logp.gather(0, y.unsqueeze(0)).mean().neg()
    p = logp.exp_().sub_(onehot_t(model, y, zL.dtype))          # softmax - onehot, (classes x B)
    model.C.grad = p @ zL / B
    model.c.grad = p.mean(1)
    return ce


def _amortiser_grads(model: PCN, x: torch.Tensor, z: list[torch.Tensor],
                     fz: list[torch.Tensor] | None = None, guess0: torch.Tensor | None = None) -> torch.Tensor:
    """Local regression of the amortiser onto the inferred latents:
    loss = sum_l 1/2 ||V_l g_l(z*_l) + a_l - z*_{l+1}||^2 (batch mean).  ``fz``: f(z*) if known;
    ``guess0``: V_0 x + a_0 if known (the amortised z_1^0: layer 0's input is x either way).
    Residuals are formed as (d x batch), the orientation of the inference's stacked buffers."""
    B = x.shape[0]
    res = []
    for l in range(model.L):
        inp = x if l == 0 else (fz[l - 1] if fz is not None else model.f(z[l - 1]))
        if l == 0 and guess0 is not None:
            r = torch.sub(guess0.t(), z[0].t())
        else:
            r = torch.addmm(model.a[l].unsqueeze(1), model.V[l], inp.t()).sub_(z[l].t())
        model.V[l].grad = torch.addmm(model.V[l], r, inp, beta=0.0, alpha=1.0 / B)
        model.a[l].grad = r.mean(1)
        res.append(r)
    return mean_half_sq(res, B)


def _fast_pc_applies(model: PCN) -> bool:
    """The written-out pc gradients cover the plain dense energy (no bottom-up term, no conv)."""
    return model.bottom_up == 0 and not model.is_conv


@torch.no_grad()
def pc_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Local PC rule (``pcn.core.rules.pc_grads``): free and nudged inference, -dE/dtheta at the
    nudged latents (the amortiser regresses onto them too), the readout on the free ones."""
    if not _fast_pc_applies(model):
        note_reference("rule 'pc' on a model with a bottom-up energy or conv layers")
        return reference.pc_grads(model, x, y, cfg)
    w = float(cfg["ce_weight"])
    s = energy_scale(model, cfg["energy_norm"])
    beta = reference.nudge_strength(w) / s
    T, m = cfg["T"], cfg["momentum"]
    eta = inference_eta(model, cfg)
    z0 = init_latents(model, x, cfg["init"])
    free = infer_state(model, x, z0, T, eta, momentum=m)
    z, eps, fz = infer_state(model, x, free.z, T, eta, y=y, beta=beta, momentum=m) if beta > 0 else free
    B = x.shape[0]
    k = -s / B
    for l in range(model.L):  # f(z*) comes from the inference (computed there once)
        model.W[l].grad = torch.addmm(model.W[l], eps[l].t(), fz[l], beta=0.0, alpha=k)
        model.b[l].grad = eps[l].sum(0).mul_(k)
    if model.prior_mean is not None:
        model.prior_mean.grad = eps[-1].sum(0).mul_(k)
    E = s * mean_half_sq(eps, B)
    ce = _readout_grads(model, free.z[-1], y)
    out = {"loss": (1.0 - w) * E + w * ce, "energy": E, "ce": ce,
           "settle": reference.settle(model, x, z, eta, y, beta),
           "nudge_gap": reference.nudge_gap(free.z, z) if beta > 0 else x.new_zeros((), dtype=torch.float64)}
    if model.V is not None:
        guess0 = z0[0] if cfg["init"] == "amortised" else None
        out["amortiser"] = _amortiser_grads(model, x, z, fz, guess0)
    return out


bp_grads = functools.partial(reference.bp_grads, infer_state=infer_state)
# pc-ep: the reference rule with its three inferences (free, +beta, -beta) on the fast loop; the
# weight gradients at the three latent states stay autograd's (a small share of the batch).
ep_grads = functools.partial(reference.ep_grads, infer=infer)

RULES = {"pc": pc_grads, "bp": bp_grads, "pc-ep": ep_grads}


def rule(name: str) -> Callable:
    """The gradient function of learning rule ``name``: its fast version where there is one,
    else the reference rule (with a one-line note); all reference under OPTIONS["reference"]."""
    if name not in reference.RULES:
        raise ValueError(f"unknown rule {name!r}; allowed: {sorted(reference.RULES)}")
    if OPTIONS.get("reference"):
        return reference.RULES[name]
    if name in RULES:
        return RULES[name]
    note_reference(f"rule {name!r}")
    return reference.RULES[name]
