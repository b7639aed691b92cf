"""The learning rules (spec section 3), the reference implementation.  Each ``*_grads``
function fills ``p.grad`` of every trainable parameter for one batch and returns the batch's
loss terms (0-d tensors).  Weight gradients are taken by autograd where that is the clearest
statement of the rule; the fast versions (``pcn.fast.rules``) are tested equal to these.

Readout (all rules): the classifier C, c always trains on its own CE at the detached final
top latent (a probe), so w decides only whether the CE shapes the representation.

The energy enters the objectives as s E, s = ``energy_scale`` (energy_norm: 2 / d_0 for
``pixel``, whose data term is the per-pixel MSE; 1 for ``sum``).

``pc``  two inferences: a free one on E (x only) from z^0, then a nudged one on
            s E + beta CE  (descended as E + (beta / s) CE),   beta = w / (1 - w)
        that continues from the free latents (equilibrated nudging: the nudge perturbs the
        free state, and the nudged phase gets the free phase's steps as a head start)
        (the minimiser of (1 - w) s E + w CE, with the E-step of test-time inference at every w;
        w = 1 is refused: beta is infinite and no local update is defined there).  Then, at the
        nudged latents z* (no graph through the trajectory), the local updates are
            s dE/dW_l = -s eps_l f(z*_{l+1})^T,   s dE/db_l = -s eps_l      (batch means).
        The readout probe trains on the free latents, the quantity that test-time inference
        produces; the amortiser, if any, regresses the nudged z*_{l+1} on g_l(z*_l) (local MSE).
``pc-ep``, ``bpc``, ``ipc``: the local variants of issue 12, documented at their functions
        and in docs/methods.md.
``bp``  inference runs on E alone, unrolled in the autograd graph; the loss
            L = (1 - w) s E(z^T; x) + w CE(C z^T_L + c, y)
        is backpropagated through all T steps to every weight (C held fixed in this term).

Every rule but ``ipc`` is an objective: ``*_objective(model, x, y, cfg)`` returns (total, terms),
where d total / d theta is the rule's update (the latents it is evaluated at are constants for
the local rules) and terms are the batch's loss terms; ``*_grads`` backpropagates it into
p.grad.  The same objective, batched over the runs of a pack by ``torch.func`` (``vmap`` of
``grad``), trains many runs at once (``pcn.fast.pack``); for that, a hyper-parameter may be a
0-d tensor (``hyper``) and the diagnostics are tensors, not Python floats.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pcn.core import inference
from pcn.core.energy import bu_errors, energy, energy_scale, layer_energies
from pcn.core.stepsize import inference_eta, relative_update_t
from pcn.core.model import PCN

Objective = tuple[torch.Tensor, dict[str, torch.Tensor]]


def hyper(cfg: dict, key: str) -> float | torch.Tensor:
    """A numeric hyper-parameter of ``cfg``: a float, or a 0-d tensor as it stands (one value per
    run of a pack, batched by ``vmap``)."""
    v = cfg[key]
    return v if isinstance(v, torch.Tensor) else float(v)


def positive(v: float | torch.Tensor) -> bool:
    """v > 0 for a float; True for a tensor hyper-parameter (a pack holds only runs whose value
    is > 0 when it is a tensor: ``pcn.fast.pack.pack_key``)."""
    return isinstance(v, torch.Tensor) or v > 0


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
        pred = model.bu_predict(l, inp) if model.conv[l] is not None else inp @ model.V[l].t() + model.a[l]
        r = pred - z[l].detach()
        loss = loss + 0.5 * (r * r).sum(1).mean()
    return loss


def nudge_strength(w: float | torch.Tensor, rule: str = "pc") -> float | torch.Tensor:
    """beta = w / (1 - w), the weight of CE against E in the nudged inference of ``pc``, ``bpc``
    and ``ipc``, for 0 <= w < 1 (a tensor w was checked by the config of each run)."""
    if isinstance(w, torch.Tensor):
        return w / (1.0 - w)
    if not 0.0 <= w < 1.0:
        raise ValueError(f"rule {rule!r}: ce_weight {w} has no local update (beta = w / (1 - w) is "
                         f"infinite at w = 1); allowed: 0 <= ce_weight < 1")
    return w / (1.0 - w)


def settle(model: PCN, x: torch.Tensor, z: list[torch.Tensor], eta, y: torch.Tensor | None = None,
           beta=0.0) -> torch.Tensor:
    """How far from its fixed point inference stopped: the relative update ||dz|| / ||z|| of one
    more step from z (of the same objective), a 0-d tensor."""
    z_next, _ = inference.step(model, x, z, inference.errors(model, x, z), None, eta, y, beta)
    return relative_update_t(z_next, z)


def nudge_gap(free: list[torch.Tensor], nudged: list[torch.Tensor]) -> torch.Tensor:
    """How far the label's nudge moves the top latent from the free (test-time) one:

        ||z_L^nudged - z_L^free|| / ||z_L^free||      (over the batch)

    The local rules learn the weights at the nudged latents; a large gap means they fit a
    generative model at top latents that free inference, and so every test input, never
    reaches (docs/methods.md).  nan where the free top latent is 0 (e.g. relu from zeros);
    a 0-d tensor."""
    return relative_update_t([free[-1]], [nudged[-1]])


def _free_phase(model: PCN, x: torch.Tensor, cfg: dict, infer: Callable = inference.infer) -> tuple[list, list, float]:
    """The run's step size and z^0, and the free inference from it (T steps on E, no label);
    returns (z0, free latents, eta).  ``infer``: the inference to run (the reference loop, or
    the same on a fast path)."""
    eta = inference_eta(model, cfg)
    z0 = inference.init_latents(model, x, cfg["init"])
    free, _ = infer(model, x, z0, cfg["T"], eta, momentum=cfg["momentum"])
    return z0, free, eta


def _nudged(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict, start: list, eta: float,
            beta: float, infer: Callable = inference.infer) -> list[torch.Tensor]:
    """T steps on E + beta CE from ``start`` (beta already divided by s)."""
    return infer(model, x, start, cfg["T"], eta, y=y, beta=beta, momentum=cfg["momentum"])[0]


def _local_objective(model: PCN, x: torch.Tensor, y: torch.Tensor, s: float, terms: list[tuple[float, list]],
                     free: list[torch.Tensor], target: list[torch.Tensor]) -> Objective:
    """sum_k c_k s E(z_k) (every z_k a constant: local), plus the readout probe's CE at the free
    top latent and, with an amortiser that is not part of the energy, its regression onto
    ``target``; with the terms (energy: s E at the first z_k)."""
    with torch.enable_grad():
        Es = [s * energy(model, x, z).mean() for _, z in terms]
        total = sum(c * E for (c, _), E in zip(terms, Es))
        ce = readout_loss(model, free[-1], y)
        total = total + ce
        out = {"energy": Es[0].detach(), "ce": ce.detach()}
        if model.V is not None and model.bottom_up == 0:
            amort = amortiser_loss(model, x, target)
            total = total + amort
            out["amortiser"] = amort.detach()
    return total, out


def backward(model: PCN, objective: Objective) -> dict[str, torch.Tensor]:
    """Fill p.grad of every parameter with d total / dtheta; return the terms."""
    total, out = objective
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        total.backward()
    return out


def pc_objective(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
                 infer: Callable = inference.infer) -> Objective:
    """Local PC rule: free inference, then nudged inference continued from it (no graph), then
    s E at the nudged latents (its theta-gradient is the update); the readout on the free latents.
    ``infer``: the inference of both phases (the reference loop by default)."""
    w = hyper(cfg, "ce_weight")
    s = energy_scale(model, cfg["energy_norm"])
    beta = nudge_strength(w, cfg.get("rule", "pc"))
    with torch.no_grad():
        _, free, eta = _free_phase(model, x, cfg, infer)
        z = _nudged(model, x, y, cfg, free, eta, beta / s, infer) if positive(beta) else free
    total, out = _local_objective(model, x, y, s, [(1.0, z)], free, z)
    with torch.no_grad():
        out["settle"] = settle(model, x, z, eta, y, beta / s)
        out["nudge_gap"] = nudge_gap(free, z) if positive(beta) else x.new_zeros((), dtype=torch.float64)
    out["loss"] = (1.0 - w) * out["energy"] + w * out["ce"]
    return total, out


def pc_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """``pc_objective``'s update in p.grad; returns the batch's terms."""
    return backward(model, pc_objective(model, x, y, cfg))


def _require_bottom_up(model: PCN, rule: str) -> None:
    """The rules on the two-way energy refuse a model built without its bottom-up term."""
    if model.bottom_up <= 0:
        raise ValueError(f"rule {rule!r} needs a model with a bottom-up term (bottom_up = bu_weight > 0)")


def bpc_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """Bottom-up PC (``bpc``): ``pc`` on the energy with a bottom-up term,
        E = sum_l 1/2 ||eps_l||^2 + alpha sum_l 1/2 ||z_{l+1} - V_l g_l(z_l) - a_l||^2,
    so both inferences use both directions and the label's nudge reaches the lower layers
    through the bottom-up errors.  The local update s dE/dtheta at the nudged latents gives
    W_l, b_l their pc update and V_l, a_l  s alpha delta_{l+1} g_l(z*_l)^T, delta_{l+1}  (errors
    that carry the label); V is the bottom-up half of the energy, not a separate amortiser."""
    return backward(model, bpc_objective(model, x, y, cfg))


def bpc_objective(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
                  infer: Callable = inference.infer) -> Objective:
    """``bpc_grads``'s objective: ``pc_objective`` on a model with a bottom-up term."""
    _require_bottom_up(model, "bpc")
    return pc_objective(model, x, y, cfg, infer)


def ep_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
             infer: Callable = inference.infer) -> dict[str, torch.Tensor]:
    """``ep_objective``'s update in p.grad (``infer``: the inference of its three phases)."""
    return backward(model, ep_objective(model, x, y, cfg, infer))


def ep_objective(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
                 infer: Callable = inference.infer) -> Objective:
    """Contrastive two-phase rule (``pc-ep``, equilibrium propagation): a free phase to z*_0 on
    E, then two nudged phases from it on s E +- beta_ep CE (symmetric nudging) to z*_+, z*_-, and

        dtheta = (1 - w) s dE/dtheta(z*_0) + w [s dE/dtheta(z*_+) - s dE/dtheta(z*_-)] / (2 beta_ep)

    whose second term tends to d CE(z*_0(theta)) / dtheta as beta_ep -> 0 at the free fixed
    point (the EP theorem; error O(beta_ep^2) with symmetric nudging), so the whole update
    estimates the gradient of bp's objective (1 - w) s E + w CE at the free equilibrium, at every
    w including w = 1.  The amortiser regresses onto the free latents (what test-time inference
    reaches); the readout probe trains on them.  ``infer``: the inference of all three phases
    (the reference loop by default; ``pcn.fast.rules`` passes the fast one)."""
    w, b = hyper(cfg, "ce_weight"), hyper(cfg, "ep_beta")
    s = energy_scale(model, cfg["energy_norm"])
    with torch.no_grad():
        _, free, eta = _free_phase(model, x, cfg, infer)
        terms = [(1.0 - w, free)]
        if positive(w):
            plus, minus = (_nudged(model, x, y, cfg, free, eta, sign * b / s, infer) for sign in (1, -1))
            terms += [(w / (2 * b), plus), (-w / (2 * b), minus)]
    total, out = _local_objective(model, x, y, s, terms, free, free)
    with torch.no_grad():
        out["settle"] = settle(model, x, free, eta)
        out["nudge_gap"] = nudge_gap(free, terms[1][1]) if positive(w) else x.new_zeros((), dtype=torch.float64)
    out["loss"] = (1.0 - w) * out["energy"] + w * out["ce"]
    return total, out


def bpc_ep_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, torch.Tensor]:
    """The contrastive rule of ``pc-ep`` on the energy of ``bpc`` (``bpc-ep``): free phase, then
    symmetric nudged phases +-ep_beta from it, on E = E_td + alpha E_bu, and

        dtheta = (1 - w) s dE/dtheta(z*_0) + w [s dE/dtheta(z*_+) - s dE/dtheta(z*_-)] / (2 beta_ep)

    for W, b and the bottom-up V, a alike.  A small nudge keeps the estimate at the gradient of
    CE at the free point; ``bpc``'s nudge beta = w / (1 - w) is large and evaluates dCE/dz_L
    near the nudged, already classified point instead, which weighs down misclassified
    examples (docs/methods.md)."""
    return backward(model, bpc_ep_objective(model, x, y, cfg))


def bpc_ep_objective(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
                     infer: Callable = inference.infer) -> Objective:
    """``bpc_ep_grads``'s objective: ``ep_objective`` on a model with a bottom-up term."""
    _require_bottom_up(model, "bpc-ep")
    return ep_objective(model, x, y, cfg, infer)


def ipc_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
              weight_step: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Incremental PC (``ipc``, Salvatori et al.): the nudged inference of ``pc`` (from z^0, on
    E + (beta / s) CE, beta = w / (1 - w)) with a weight step after every inference step:
    for t = 1..T, z^t = step(z^{t-1}) with the current weights, then theta takes the optimiser's
    step on s dE/dtheta(z^t).  ``weight_step`` (the optimiser's step) is called after steps
    1..T-1; the gradients at z^T (with the readout on free latents and the amortiser's
    regression onto z^T) are left for the caller's step, so a batch makes T weight steps.
    Without ``weight_step`` (alignment) the weights stay fixed and the W, b gradients are the
    mean over t of s dE/dtheta(z^t): the batch's update to first order in the learning rate."""
    w = float(cfg["ce_weight"])
    s = energy_scale(model, cfg["energy_norm"])
    beta = nudge_strength(w, "ipc") / s
    T, m = cfg["T"], cfg["momentum"]
    with torch.no_grad():
        z0, free, eta = _free_phase(model, x, cfg)
    gen = model.generative_parameters()
    acc = [torch.zeros_like(p) for p in gen]
    z, v = list(z0), None
    for t in range(1, T + 1):
        with torch.no_grad():
            z, v = inference.step(model, x, z, inference.errors(model, x, z), v, eta, y, beta, m)
        if t == T:
            break
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            (s * energy(model, x, z).mean()).backward()
        if weight_step is not None:
            weight_step()
        else:
            acc = [a + p.grad for a, p in zip(acc, gen)]
    out = backward(model, _local_objective(model, x, y, s, [(1.0, z)], free, z))
    if weight_step is None and T > 1:
        for a, p in zip(acc, gen):
            p.grad = (a + p.grad) / T
    with torch.no_grad():
        out["settle"] = settle(model, x, z, eta, y, beta)
        out["nudge_gap"] = nudge_gap(free, z)
    out["loss"] = (1.0 - w) * out["energy"] + w * out["ce"]
    return out


def bp_grads(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
             infer_state: Callable = inference.infer_state) -> dict[str, torch.Tensor]:
    """``bp_objective``'s gradient in p.grad (``infer_state``: the differentiable inference)."""
    return backward(model, bp_objective(model, x, y, cfg, infer_state))


def bp_objective(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict,
                 infer_state: Callable = inference.infer_state) -> Objective:
    """Backprop through inference: L = (1 - w) s E(z^T) + w CE(z^T_L), plus the readout probe.
    ``infer_state``: the (differentiable) inference to unroll, the reference loop by default.
    E includes the bottom-up term of a ``bpc`` model (the objective its local rule follows)."""
    w = hyper(cfg, "ce_weight")
    s = energy_scale(model, cfg["energy_norm"])
    with torch.enable_grad():
        eta = inference_eta(model, cfg)
        z0 = inference.init_latents(model, x, cfg["init"])
        st = infer_state(model, x, z0, cfg["T"], eta, momentum=cfg["momentum"])
        E = layer_energies(st.eps).sum(0)
        if model.bottom_up > 0:
            E = E + model.bottom_up * layer_energies(bu_errors(model, x, st.z)).sum(0)
        E = s * E.mean()
        zL = st.z[-1]
        ce = F.cross_entropy(torch.addmm(model.c.detach(), zL, model.C.detach().t()), y)
        loss = (1.0 - w) * E + w * ce
        total = loss + readout_loss(model, zL, y)
    return total, {"loss": loss.detach(), "energy": E.detach(), "ce": ce.detach()}


RULES = {"pc": pc_grads, "bp": bp_grads, "pc-ep": ep_grads, "bpc": bpc_grads, "bpc-ep": bpc_ep_grads,
         "ipc": ipc_grads}
OBJECTIVES = {"pc": pc_objective, "bp": bp_objective, "pc-ep": ep_objective, "bpc": bpc_objective,
              "bpc-ep": bpc_ep_objective}
"""The rules that are an objective (all but ``ipc``, whose weights step inside inference)."""
LOCAL = ("pc", "pc-ep", "bpc", "bpc-ep", "ipc")
"""The local rules: no gradient through the inference trajectory."""
