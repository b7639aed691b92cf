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

What cannot be batched trains in packs of one (``why_alone``): ``ipc`` (its weights step
inside inference), ``eta_mode: safe`` (each run's step size comes from its own weights, a
data-dependent value) and the ``ae`` / ``cre`` baselines.
"""
from __future__ import annotations

import copy
import json

import torch
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from pcn.core.model import PCN
from pcn.core.rules import OBJECTIVES

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
    if cfg.get("eta_mode", "fixed") != "fixed":
        return f"eta_mode {cfg['eta_mode']!r} takes each run's step size from its own weights"
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


def pack_grads(models: list[PCN], x: torch.Tensor, y: torch.Tensor, cfgs: list[dict]) -> list[dict[str, torch.Tensor]]:
    """One batch of every run of a pack: fill p.grad of each run's parameters with its rule's
    update and return each run's loss terms, computed as one ``vmap`` over the runs.

    x: (R, B, d_0) and y: (R, B), run r's batch in row r; ``cfgs``: the runs' configs (equal
    but for ``PACK_FREE``, which ``pack_key`` checks)."""
    keys = {pack_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError("pack_grads: the runs differ in more than " + ", ".join(PACK_FREE))
    cfg = cfgs[0]
    hyper_keys = differing(cfgs)
    wrapped = [_Apply(m) for m in models]
    params, _ = stack_module_state(wrapped)
    base = _meta_base(keys.pop(), wrapped[0])
    dtype = x.dtype
    hypers = {k: torch.tensor([float(c[k]) for c in cfgs], dtype=dtype, device=x.device) for k in hyper_keys}

    def one(p, xr, yr, hr):
        return functional_call(base, p, (_objective, xr, yr, hr, cfg))

    grads, terms = vmap(grad(one, has_aux=True))(params, x, y, hypers)
    out = []
    for r, model in enumerate(models):
        for name, p in model.named_parameters():
            p.grad = grads["m." + name][r]
        out.append({k: v[r] for k, v in terms.items()})
    return out
