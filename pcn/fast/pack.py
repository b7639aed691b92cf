"""Many runs as one computation: the runs of a pack (issue 26), batched by ``torch.func``.

Runs that share their shapes (layers, T, rule, init, batch size, epochs, data, ...) and differ
only in ``PACK_FREE`` (seed, learning rate, weight decay, and the hyper-parameters that enter
the objective: ce_weight, eta, ep_beta) train as one stacked computation.  For run r with
weights theta_r, batch (x_r, y_r) and hyper-parameters h_r, the reference rule's objective
(``pcn.core.rules.OBJECTIVES``) gives

    g_r, terms_r = grad(total)(theta_r; x_r, y_r, h_r),        r = 1..R,

and ``vmap`` turns the R evaluations into one: every product of the inference becomes a
batched product over the run dimension.  Nothing here restates the mathematics: it is the
reference objective, batched.  Each run keeps its own model, optimiser, scheduler and data
order (``pcn.study.train``); only the gradient computation is shared.  A hyper-parameter that
is equal across the pack stays a Python float (so the objective's control flow is that of a
run alone); one that differs is a 0-d tensor per run (``pcn.core.rules.hyper``).

The fast path (``fast_applies``: ``pc`` and ``pc-ep``) runs each inference phase of all R runs
as one hand-batched loop (``packed_infer``: (R, B, d) latents, batched products, the layer-0
Gram form of ``pcn.fast.stacked``) and writes the weight gradients out, batched
(``_local_grads``, as ``pcn.fast.rules.pc_grads`` does for one run).  Tested equal to the
reference rule run by run (tests/test_pack.py).

With ``eta_mode: safe`` each run's step size is computed from its own weights before the batch
(as a run alone computes it) and enters as a per-run eta.  What cannot be batched trains in
packs of one (``why_alone``): ``ipc`` (its weights step inside inference) and the ``ae`` /
``cre`` baselines.
"""
from __future__ import annotations

import copy
import json

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from pcn.core.energy import energy_scale, onehot
from pcn.core.inference import init_latents
from pcn.core.model import PCN
from pcn.core.rules import OBJECTIVES, hyper, nudge_strength
from pcn.core.stepsize import inference_eta
from pcn.fast.kernels import df_times
from pcn.fast.options import OPTIONS
from pcn.fast.stacked import use_gram

PACK_FREE = ("seed", "lr", "weight_decay", "ce_weight", "eta", "ep_beta")
"""Keys in which the runs of a pack may differ."""
OBJECTIVE_HYPERS = ("ce_weight", "eta", "ep_beta")
"""Of those, the ones that enter the objective (a tensor per run when they differ)."""


def why_alone(cfg: dict) -> str | None:
    """Why a run cannot share a pack (it then trains in a pack of one), or None."""
    if cfg["model"] != "pcn":
        return f"model {cfg['model']!r} is a feed-forward baseline"
    if cfg["rule"] not in OBJECTIVES:
        return f"rule {cfg['rule']!r} steps the weights inside inference"
    if cfg.get("arch", "mlp") == "conv":
        return "arch 'conv' has no packed (stacked) path"
    return None


def pack_key(cfg: dict) -> str:
    """Runs with equal keys can train in one pack: the config without ``PACK_FREE``, plus whether
    ce_weight > 0 (it decides which inference phases run).  A run that cannot share a pack gets
    a key of its own (its whole config)."""
    if why_alone(cfg):
        return json.dumps({"alone": cfg}, sort_keys=True, default=str)
    shared = {k: v for k, v in cfg.items() if k not in PACK_FREE}
    shared["ce_weight > 0"] = float(cfg["ce_weight"]) > 0
    return json.dumps(shared, sort_keys=True, default=str)


class _Apply(nn.Module):
    """A PCN under the name ``m``, whose forward calls ``fn(model, *args)``: what
    ``functional_call`` needs to run a rule's objective with swapped-in weights."""

    def __init__(self, model: PCN):
        super().__init__()
        self.m = model

    def forward(self, fn, *args):
        return fn(self.m, *args)


_BASES: dict[str, _Apply] = {}


def _meta_base(key: str, wrapped: _Apply) -> _Apply:
    """A weightless (meta-device) copy of a pack's model, made once per ``pack_key`` (which fixes
    the model's structure): ``functional_call`` swaps each run's weights into it."""
    if key not in _BASES:
        _BASES[key] = copy.deepcopy(wrapped).to("meta")
    return _BASES[key]


def _objective(model: PCN, x: torch.Tensor, y: torch.Tensor, hypers: dict, cfg: dict):
    """The rule's objective of one run, its differing hyper-parameters from ``hypers``."""
    return OBJECTIVES[cfg["rule"]](model, x, y, {**cfg, **hypers})


def differing(cfgs: list[dict]) -> list[str]:
    """The objective's hyper-parameters that differ between the runs of a pack."""
    return [k for k in OBJECTIVE_HYPERS if len({float(c[k]) for c in cfgs}) > 1]


def _col(v):
    """A per-run hyper-parameter as a (R, 1, 1) column to scale (R, B, d) tensors; a float as is."""
    return v.reshape(-1, 1, 1) if isinstance(v, torch.Tensor) else v


@torch.no_grad()
def packed_infer(model: PCN, P: dict, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta,
                 y: torch.Tensor | None = None, beta=0.0, momentum: float = 0.0) -> list[torch.Tensor]:
    """``pcn.core.inference.infer``'s z^T for R runs at once: weights ``P`` (stack_module_state
    of ``_Apply`` models: (R, ...) tensors), x (R, B, d_0), z0[k] (R, B, d_{k+1}); eta and beta
    floats or (R,) tensors.  One step, batched over the runs:

        eps_l = z_l - (f(z_{l+1}) W_l^T + b_l),   g_l = [eps_l] - f'(z_l) * (eps_{l-1} W_{l-1}),
        g_L += beta (softmax(z_L C^T + c) - onehot(y)) C,   v <- m v + g,   z <- z - eta v,

    layer 0's back-projection by the Gram form where it saves work (``use_gram``):
    eps_0 W_0 = (x - b_0) W_0 - f(z_1) (W_0^T W_0)."""
    L = model.L
    W = [P[f"m.W.{l}"] for l in range(L)]
    bcol = [P[f"m.b.{l}"].unsqueeze(1) for l in range(L)]
    prior = P.get("m.prior_mean")
    eta, beta = _col(eta), _col(beta)
    nudge = y is not None and (isinstance(beta, torch.Tensor) or beta != 0.0)
    if nudge:
        C, ccol = P["m.C"], P["m.c"].unsqueeze(1)
        hot = onehot(y.reshape(-1), C.shape[1], x.dtype).reshape(*y.shape, -1)
    gram = use_gram(model, x.shape[1], T)
    if gram:
        c0 = torch.baddbmm(-(bcol[0] @ W[0]), x, W[0])        # (x - b_0) W_0
        G = W[0].mT @ W[0]
    z, v = list(z0), None
    for _ in range(T):
        fz = [model.f(zl) for zl in z]
        eps = [z[l - 1] - torch.baddbmm(bcol[l], fz[l], W[l].mT) for l in range(1, L)]
        if prior is not None:
            eps.append(z[-1] - prior.unsqueeze(1))
        if gram:
            back = torch.baddbmm(c0, fz[0], G, alpha=-1.0)
        else:
            back = (x - torch.baddbmm(bcol[0], fz[0], W[0].mT)) @ W[0]
        g = []
        for l in range(1, L + 1):
            if l > 1:
                back = eps[l - 2] @ W[l - 1]
            gl = df_times(model, z[l - 1], fz[l - 1], back).neg()
            g.append(gl.add_(eps[l - 1]) if l - 1 < len(eps) else gl)
        if nudge:
            p = torch.softmax(torch.baddbmm(ccol, z[-1], C.mT), dim=-1).sub_(hot)
            g[-1] = g[-1] + beta * (p @ C)
        if momentum > 0:
            v = [vl.mul_(momentum).add_(gl) for vl, gl in zip(v, g)] if v is not None else g
            g = v
        z = [zl - eta * gl for zl, gl in zip(z, g)]
    return z


def fast_applies(cfg: dict) -> bool:
    """Where the batched fast path applies: pc and pc-ep (the plain energy), unless
    OPTIONS["reference"] asks for the reference everywhere."""
    return cfg["rule"] in ("pc", "pc-ep") and not OPTIONS.get("reference")


def _phases(model: PCN, P: dict, x: torch.Tensor, y: torch.Tensor, cfg: dict, hypers: dict,
            z0: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """The latents of every inference phase of the rule, for all runs: the free phase from z0
    on E, then (ce_weight > 0) ``pc``'s nudged phase with beta = w / (1 - w) / s, or ``pc-ep``'s
    two with +-ep_beta / s, each continued from the free latents (as in ``pcn.core.rules``)."""
    h = {k: hypers.get(k, cfg[k]) for k in ("ce_weight", "eta", "ep_beta")}
    w, eta = hyper(h, "ce_weight"), hyper(h, "eta")
    s = energy_scale(model, cfg["energy_norm"])
    T, m = cfg["T"], cfg["momentum"]
    free = packed_infer(model, P, x, z0, T, eta, momentum=m)
    if float(cfg["ce_weight"]) == 0:   # the pack's key: every run's w is 0, or none is
        return [free]
    if cfg["rule"] == "pc":
        return [free, packed_infer(model, P, x, free, T, eta, y, nudge_strength(w) / s, m)]
    b = hyper(h, "ep_beta")
    return [free] + [packed_infer(model, P, x, free, T, eta, y, sign * b / s, m) for sign in (1, -1)]


def _energy_grads(model: PCN, P: dict, x: torch.Tensor, z: list[torch.Tensor], coef, grads: dict) -> torch.Tensor:
    """Add coef * d(s E(z)) / dtheta (batch mean, z a constant) for every run to ``grads``
    (coef: s times the term's weight, a float or an (R,) tensor):

        d/dW_l = -eps_l^T f(z_{l+1}) / B,   d/db_l = -sum_b eps_l / B   (and the prior's b_L);

    returns the per-run energy E(z) (batch mean), (R,)."""
    L, B = model.L, x.shape[1]
    below = [x] + z[:-1]
    fz = [model.f(zl) for zl in z]
    eps = [below[l] - torch.baddbmm(P[f"m.b.{l}"].unsqueeze(1), fz[l], P[f"m.W.{l}"].mT) for l in range(L)]
    names = [(f"m.W.{l}", f"m.b.{l}") for l in range(L)]
    if P.get("m.prior_mean") is not None:
        eps.append(z[-1] - P["m.prior_mean"].unsqueeze(1))
    c = _col(coef) / B if isinstance(coef, torch.Tensor) else coef / B
    for l in range(L):
        gw = eps[l].mT @ fz[l] * -c
        gb = eps[l].sum(1) * (-c.reshape(-1, 1) if isinstance(c, torch.Tensor) else -c)
        for name, g in zip(names[l], (gw, gb)):
            grads[name] = grads[name] + g if name in grads else g
    if len(eps) > L:
        g = eps[L].sum(1) * (-c.reshape(-1, 1) if isinstance(c, torch.Tensor) else -c)
        grads["m.prior_mean"] = grads["m.prior_mean"] + g if "m.prior_mean" in grads else g
    return sum(0.5 * (e * e).sum((1, 2)) for e in eps) / B


def _relative(z_new: list[torch.Tensor], z: list[torch.Tensor]) -> torch.Tensor:
    """``pcn.core.stepsize.relative_update_t`` per run: ||z' - z|| / ||z'||, (R,) float64."""
    num = sum(((a - b).double() ** 2).sum((1, 2)) for a, b in zip(z_new, z))
    den = sum((a.double() ** 2).sum((1, 2)) for a in z_new)
    return torch.where(den > 0, (num / den).sqrt(), torch.full_like(den, float("nan")))


def _local_grads(model: PCN, P: dict, x: torch.Tensor, y: torch.Tensor, cfg: dict, hypers: dict,
                 z0: list[torch.Tensor], states: list[list[torch.Tensor]]) -> tuple[dict, dict]:
    """``pc`` and ``pc-ep``'s updates and terms (``pcn.core.rules.pc_objective`` /
    ``ep_objective``) for all runs, written out and batched: the energy gradients at the phases'
    latents, the readout probe's CE gradients at the free top latent, the amortiser's
    regression, ``settle`` (one more batched step) and the nudge gap."""
    h = {k: hypers.get(k, cfg[k]) for k in ("ce_weight", "eta", "ep_beta")}
    w, eta = hyper(h, "ce_weight"), hyper(h, "eta")
    s = energy_scale(model, cfg["energy_norm"])
    B = x.shape[1]
    free = states[0]
    grads: dict = {}
    if cfg["rule"] == "pc":
        beta = nudge_strength(w) / s
        z = states[1] if len(states) > 1 else free
        E = _energy_grads(model, P, x, z, s, grads)
        settle = _relative(packed_infer(model, P, x, z, 1, eta, y if len(states) > 1 else None, beta), z)
        target, gap_to = z, z
    else:
        b = hyper(h, "ep_beta")
        E = _energy_grads(model, P, x, free, (1.0 - w) * s, grads)
        if len(states) > 1:
            _energy_grads(model, P, x, states[1], w / (2 * b) * s, grads)
            _energy_grads(model, P, x, states[2], -w / (2 * b) * s, grads)
        settle = _relative(packed_infer(model, P, x, free, 1, eta), free)
        target, gap_to = free, states[1] if len(states) > 1 else free
    # the readout probe on the free top latent
    zL = free[-1]
    logp = torch.log_softmax(torch.baddbmm(P["m.c"].unsqueeze(1), zL, P["m.C"].mT), dim=-1)
    hot = onehot(y.reshape(-1), logp.shape[-1], x.dtype).reshape(logp.shape)
    ce = -(logp * hot).sum(-1).mean(1)
    res = logp.exp() - hot
    grads["m.C"], grads["m.c"] = res.mT @ zL / B, res.mean(1)
    terms = {"energy": s * E, "ce": ce}
    if P.get("m.V.0") is not None:   # the amortiser regresses onto the target latents
        inputs = [x] + [model.f(zl) for zl in target[:-1]]
        amort = 0.0
        for l in range(model.L):
            r = torch.baddbmm(P[f"m.a.{l}"].unsqueeze(1), inputs[l], P[f"m.V.{l}"].mT) - target[l]
            grads[f"m.V.{l}"], grads[f"m.a.{l}"] = r.mT @ inputs[l] / B, r.mean(1)
            amort = amort + 0.5 * (r * r).sum((1, 2)) / B
        terms["amortiser"] = amort
    terms["settle"] = settle
    terms["nudge_gap"] = _relative([free[-1]], [gap_to[-1]]) if len(states) > 1 else torch.zeros_like(settle)
    terms["loss"] = (1.0 - w) * terms["energy"] + w * ce
    return grads, terms


def pack_grads(models: list[PCN], x: torch.Tensor, y: torch.Tensor, cfgs: list[dict],
               key: str | None = None) -> list[dict[str, torch.Tensor]]:
    """One batch of every run of a pack: fill p.grad of each run's parameters with its rule's
    update and return each run's loss terms (on the host), computed batched over the runs.

    x: (R, B, d_0) and y: (R, B), run r's batch in row r; ``cfgs``: the runs' configs (equal
    but for ``PACK_FREE``); ``key``: their common ``pack_key``, if the caller has checked it
    (else it is checked here)."""
    if key is None:
        keys = {pack_key(c) for c in cfgs}
        if len(keys) != 1:
            raise ValueError("pack_grads: the runs differ in more than " + ", ".join(PACK_FREE))
        key = keys.pop()
    cfg = cfgs[0]
    hyper_keys = differing(cfgs)
    safe = None
    if cfg.get("eta_mode", "fixed") == "safe":   # each run's own step, from its weights, as alone
        safe = [inference_eta(m, c) for m, c in zip(models, cfgs)]
        cfg = {**cfg, "eta_mode": "fixed"}
        hyper_keys = [k for k in hyper_keys if k != "eta"]
    wrapped = [_Apply(m) for m in models]
    params, _ = stack_module_state(wrapped)
    base = _meta_base(key, wrapped[0])
    dtype = x.dtype
    hypers = {k: torch.tensor([float(c[k]) for c in cfgs], dtype=dtype, device=x.device) for k in hyper_keys}
    if safe is not None:
        hypers["eta"] = torch.tensor(safe, dtype=dtype, device=x.device)

    if fast_applies(cfg):
        with torch.no_grad():
            z0 = vmap(lambda p, xr: functional_call(base, p, (init_latents, xr, cfg["init"])))(params, x)
            states = _phases(wrapped[0].m, params, x, y, cfg, hypers, z0)
            grads, terms = _local_grads(wrapped[0].m, params, x, y, cfg, hypers, z0, states)
    else:
        def one(p, xr, yr, hr):
            return functional_call(base, p, (_objective, xr, yr, hr, cfg))

        grads, terms = vmap(grad(one, has_aux=True))(params, x, y, hypers)
    terms = {k: v.cpu() for k, v in terms.items()}  # one transfer per term, not one per run
    out = []
    for r, model in enumerate(models):
        for name, p in model.named_parameters():
            p.grad = grads["m." + name][r]
        out.append({k: v[r] for k, v in terms.items()})
    return out
