"""Local-vs-BP gradient alignment (spec 4): for the same weights and the same batch, the cosine
between a local rule's weight update and the BP gradient of the same objective
(``pcn.core.rules.bp_grads``: d/dtheta [(1 - w) s E(z^T) + w CE(z^T_L)] through the unrolled
inference), per generative layer.  The local rule is the run's own (``pc``, ``pc-ep``, ``bpc``,
``bpc-ep``, ``ipc``; ``pc`` for ``bp`` runs).  ``pc``, ``bpc`` and ``ipc`` follow s dE/dtheta at latents
nudged by beta = w / (1 - w), the update of E + beta CE; scaled by (1 - w) it is the update of
(1 - w) s E + w CE.  ``pc-ep``'s and ``bpc-ep``'s updates estimate that gradient itself (no scaling).

Theory: at w = 0 and an inference run to a fixed point (dE/dz = 0), the envelope theorem gives
dE(z*(theta), theta)/dtheta = dE/dtheta|_{z*}, i.e. the two agree exactly; for small w they
agree to first order in w.  Away from equilibrium (small T) they differ.

Compared: W_l and b_l for l = 0..L-1, and for ``bpc`` also the bottom-up V_l, a_l (part of its
energy; ``cos_V`` rows, and in layer "all").  The readout C, c trains on its own probe CE under
every rule, and the amortiser of the other rules has different objectives under the local rule
and bp, so neither is compared.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch

from pcn.core.model import PCN
from pcn.core.rules import LOCAL
from pcn.fast.rules import bp_grads, rule
from pcn.study.config import NUDGED_RULES

COLUMNS = ["source", "epoch", "w", "T", "layer", "metric", "value"]


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """cos(a, b) of two flattened tensors; nan when either is zero or non-finite."""
    a, b = a.flatten().double(), b.flatten().double()
    den = float(a.norm() * b.norm())
    num = float(a @ b)
    return num / den if den > 0 and math.isfinite(den) and math.isfinite(num) else float("nan")


def _ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a|| / ||b||; nan when ||b|| is zero or non-finite."""
    na, nb = float(a.double().norm()), float(b.double().norm())
    return na / nb if nb > 0 and math.isfinite(nb) else float("nan")


def rule_grads(rule, model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """The generative-parameter gradients (W.l, b.l) one learning rule gives for one batch,
    computed on a copy of ``model`` (the model's own .grad fields are left untouched)."""
    m = copy.deepcopy(model)
    m.zero_grad(set_to_none=True)
    rule(m, x, y, cfg)
    out = {}
    for l in range(m.L):
        pairs = [(f"W.{l}", m.W[l]), (f"b.{l}", m.b[l])]
        if m.bottom_up > 0:               # bpc: the bottom-up weights are part of the energy
            pairs += [(f"V.{l}", m.V[l]), (f"a.{l}", m.a[l])]
        for name, p in pairs:
            out[name] = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
    return out


def grad_alignment(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> list[dict]:
    """Rows (layer, metric, value): per generative layer l the cosines cos_W, cos_b between the
    pc update and the bp gradient (both as descent directions' negatives, i.e. gradients), and
    norm_ratio_W = ||pc_W|| / ||bp_W||; layer "all" is the cosine over every weight of the energy
    together (W_l, b_l; with a bottom-up term also V_l, a_l).
    ``cfg`` supplies ce_weight, T, eta, init and momentum of both rules.

    pc's update is -dE/dtheta at the latents nudged by beta = w / (1 - w); scaled by (1 - w) it
    is the update of (1 - w) (E + beta CE) = (1 - w) E + w CE, bp's objective, so the norm ratio
    compares like with like.  At w = 1 pc has no update: every value is nan."""
    w = float(cfg["ce_weight"])
    local = cfg.get("rule", "pc") if cfg.get("rule", "pc") in LOCAL else "pc"
    nudged = local in NUDGED_RULES
    if w >= 1.0 and nudged:
        nan = float("nan")
        return [dict(layer=str(l), metric=m, value=nan) for l in range(model.L)
                for m in ("cos_W", "cos_b", "norm_ratio_W")] + [dict(layer="all", metric="cos", value=nan)]
    scale = (1.0 - w) if nudged else 1.0
    pc = {k: scale * g for k, g in rule_grads(rule(local), model, x, y, dict(cfg, rule=local)).items()}
    bp = rule_grads(bp_grads, model, x, y, cfg)
    rows = []
    for l in range(model.L):
        W, b = f"W.{l}", f"b.{l}"
        rows += [dict(layer=str(l), metric="cos_W", value=_cosine(pc[W], bp[W])),
                 dict(layer=str(l), metric="cos_b", value=_cosine(pc[b], bp[b])),
                 dict(layer=str(l), metric="norm_ratio_W", value=_ratio(pc[W], bp[W]))]
        if f"V.{l}" in pc:
            rows.append(dict(layer=str(l), metric="cos_V", value=_cosine(pc[f"V.{l}"], bp[f"V.{l}"])))
    flat_pc = torch.cat([g.flatten() for g in pc.values()])
    flat_bp = torch.cat([g.flatten() for g in bp.values()])
    rows.append(dict(layer="all", metric="cos", value=_cosine(flat_pc, flat_bp)))
    return rows


def alignment_table(sources: list[tuple[str, int | None, PCN]], x: torch.Tensor, y: torch.Tensor,
                    cfg: dict, ws: list[float], Ts: list[int]) -> list[dict]:
    """Tidy rows (COLUMNS) of ``grad_alignment`` for every weight source (name, epoch, model),
    CE weight in ``ws`` and inference length in ``Ts``; other settings from ``cfg``."""
    rows = []
    for name, epoch, model in sources:
        for w in ws:
            for T in Ts:
                c = dict(cfg, ce_weight=float(w), T=int(T))
                for r in grad_alignment(model, x, y, c):
                    rows.append(dict(source=name, epoch=epoch, w=float(w), T=int(T), **r))
    return rows
