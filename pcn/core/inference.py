"""PC inference: T gradient steps on the latents (spec section 2).

    F(z) = (1 - w) E(z; x) + w CE(C z_L + c, y)       (w = 0 or y = None: F = E)
    v <- m v + dF/dz;   z <- z - eta v                 (m = 0: plain gradient descent)

with (pcn.core.energy) dE/dz_l = [eps_l] - f'(z_l) * (eps_{l-1} W_{l-1}), all layers updated from
the same state z^t (a simultaneous, Jacobi-style step).

One function serves training, evaluation and probing.  Under ``torch.no_grad`` it is a
plain tensor loop (``_stacked_loop``) on preallocated buffers in a *stacked* layout: all latent
layers are row blocks of one (D x B) tensor per quantity (z, f(z), eps, back-projections;
D = d_1 + ... + d_L), so every elementwise pass is one kernel over all layers and every
product writes straight into its block; f(z) is computed once per step and reused by the
prediction, f'(z) and the caller.  The returned tensors are (B x d) views of those buffers
(not contiguous).  With grad enabled the result is differentiable in every parameter and in
z0 (the ``bp`` rule): by default through one autograd node whose forward is the same stacked
loop and whose backward pass is the hand-written adjoint of the T steps (``_Unrolled``);
with a callback, a label nudge or OPTIONS["adjoint"] = False, through autograd's own graph
of the out-of-place steps (``_infer_graph``).  The two agree to rounding.  A per-step
callback receives copies of the state for tracing; without one nothing extra is computed.

Speed switches (``OPTIONS``; none changes the mathematics, only the floating-point rounding;
environment variables PCN_GRAM, PCN_ADJOINT, PCN_COMPILE override the defaults):

``gram``  The data layer is clamped, so its back-projection needs no per-step pass over
          the d_0-wide data:  eps_0 W_0 = (x - b_0) W_0 - f(z_1) (W_0^T W_0).  With
          c_0 = (x - b_0) W_0 and G = W_0^T W_0 formed once per call, a step costs a
          d_1 x d_1 product for layer 0 instead of two d_0 x d_1 ones, and mu_0, eps_0 are
          formed only at the end (or when a callback asks for them).  ``"auto"`` (default)
          uses it when it saves multiply-adds (``use_gram``); True/False force it.
``adjoint``  bp's backward pass by the adjoint (default True) rather than autograd's graph.
``bp_memory``  "fast" (default): the adjoint keeps f(z^t), eps^t, f'(z^t), f''(z^t) * back^t
          per step; "lean": it keeps z^t only and recomputes the rest in the backward pass
          (about a quarter of the memory for one more forward step per backward step).
``compile``  torch.compile the no-grad T-step loop: False (default), True, or "auto" = only
          on CUDA, where the compiled loop replays as CUDA graphs.  Falls back to eager if
          compiling fails.  Off by default: on CPU the 3-11 % it saves against the stacked
          eager loop does not repay a compile per (batch shape, T) (docs/performance.md); on
          GPU it is unmeasured.  (It compiles the out-of-place ``_infer_graph`` form.)
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, NamedTuple, Optional

import torch

from torch.autograd.function import once_differentiable

from pcn.core.energy import act, class_residual_t, d2f_times, df_times, onehot_t
from pcn.core.model import PCN

StepCallback = Callable[[int, list, list, Optional[list]], None]

OPTIONS: dict = {"gram": "auto", "adjoint": True, "bp_memory": "fast", "compile": False}


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


def use_gram(model: PCN, batch: int, T: int) -> bool:
    """Whether the layer-0 Gram form saves at least 10 % of the multiply-adds it replaces:

    direct: 2 T B d0 d1 (prediction + back-projection per step);
    gram:   B d0 d1 + d0 d1^2 (c_0 and G once) + T B d1^2 (f(z_1) G per step).
    """
    opt = OPTIONS.get("gram", "auto")
    if opt != "auto":
        return bool(opt)
    d0, d1 = model.layers[0], model.layers[1]
    return T > 0 and batch * d0 * d1 + d0 * d1 * d1 + T * batch * d1 * d1 < 0.9 * 2 * T * batch * d0 * d1


class State(NamedTuple):
    """Final latents z, their errors eps and activations fz = f(z) (for reuse by the rules)."""
    z: list
    eps: list
    fz: list


def infer(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
          y: Optional[torch.Tensor] = None, w: float = 0.0, momentum: float = 0.0,
          callback: Optional[StepCallback] = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Run T steps from z0; return the final latents z^T and their errors eps(z^T).

    ``callback(t, z, eps, dz)`` is called for t = 0..T with the state z^t, its errors and the
    step dz = z^t - z^{t-1} (None at t = 0).  z0 is never modified.
    """
    s = infer_state(model, x, z0, T, eta, y=y, w=w, momentum=momentum, callback=callback)
    return s.z, s.eps


def infer_state(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                y: Optional[torch.Tensor] = None, w: float = 0.0, momentum: float = 0.0,
                callback: Optional[StepCallback] = None) -> State:
    """``infer`` returning also f(z^T) (a ``State``)."""
    if torch.is_grad_enabled():
        if _adjoint_applies(model, x, T, y, w, callback):
            return _infer_adjoint(model, x, z0, T, eta, momentum)
        return _infer_graph(model, x, z0, T, eta, y, w, momentum, callback)
    if callback is None and _want_compile(x):
        fn = _compiled()
        if fn is not None:
            try:
                return _run_compiled(fn, model, x, z0, T, eta, y, w, momentum)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back to eager
                _disable_compile(e)
    return _stacked_loop(model, x, z0, T, eta, y, w, momentum, callback)[0]


def _nudge_grad(model: PCN, zL: torch.Tensor, onehot: torch.Tensor, w: float) -> torch.Tensor:
    """w d CE / d z_L = w (softmax(C z_L + c) - onehot(y)) C, (batch x d_L).  (w is applied
    before the product: torch.compile 2.14 on CPU drops the alpha of an add whose operand is a
    matmul.)"""
    return (class_residual_t(model, zL.t(), onehot) * w).t() @ model.C


# ---- the stacked layout ----------------------------------------------------------------------
#
# The loops below keep every latent layer as a block of rows of one (D x B) buffer per quantity,
# D = d_1 + ... + d_L: the transpose of the usual (B x d) layout, so each layer, and every run of
# layers, is contiguous.  Every elementwise pass is then one kernel over all layers, and every
# product writes straight into its block.  Layer 0 (the clamped data) stays (B x d_0).

class _Layout(NamedTuple):
    rows: list    # rows[k]: the rows of latent layer k + 1 (z[k] in the list layout)
    D: int
    top: slice    # rows of z_L
    n_err: int    # EPS = Z - MU covers rows [0, n_err): all with a prior, else all but z_L's


def _layout(model: PCN) -> _Layout:
    off = [0]
    for d in model.layers[1:]:
        off.append(off[-1] + d)
    rows = [slice(off[k], off[k + 1]) for k in range(model.L)]
    return _Layout(rows, off[-1], rows[-1], off[-1] if model.prior_mean is not None else off[-2])


def _blocks(S: torch.Tensor, lay: _Layout) -> list[torch.Tensor]:
    """Views of a stacked buffer: the row block of each latent layer, then rows [0, n_err)."""
    return [S[r] for r in lay.rows] + [S[:lay.n_err]]


def _errors(model: PCN, W: list, bcol: list, Zb: list, Fb: list, Eb: list) -> None:
    """EPS_k = Z_k - (W_{k+1} F_{k+1} + b_{k+1}) in the rows of z[k], k < L - 1, and
    EPS_top = Z_top - b_L with a prior (without one the top rows are left alone: zero).
    Arguments are ``_blocks`` of the stacked buffers; ``bcol``: the biases as columns."""
    L = model.L
    for k in range(L - 1):
        torch.addmm(bcol[k + 1], W[k + 1], Fb[k + 1], out=Eb[k])
    if len(bcol) > L:
        Eb[L - 1].copy_(bcol[L].expand_as(Eb[L - 1]))
    torch.sub(Zb[-1], Eb[-1], out=Eb[-1])


def _data_error(x: torch.Tensor, W0: torch.Tensor, b0: torch.Tensor, F1: torch.Tensor,
                out: torch.Tensor) -> torch.Tensor:
    """eps_0 = x - F_1^T W_0^T - b_0, (B x d_0), with no (B x d_0) temporary."""
    return torch.addmm(x, F1.t(), W0.t(), alpha=-1.0, out=out).sub_(b0)


def _back(model: PCN, Wt: list, Fb: list, Eb: list, E0: Optional[torch.Tensor], gram: Optional[tuple],
          Bb: list) -> None:
    """BACK_{k+1} = W_k^T EPS_k (the rows of z[k] receive layer k's error): layer 0 from
    eps_0 (B x d_0), or under the Gram form ``gram`` = (c0, G): BACK_1 = c0 - G F_1 with
    c0 = W_0^T (x - b_0)^T and G = W_0^T W_0.  ``Wt``: the W_k^T; the rest are ``_blocks``."""
    if gram is not None:
        torch.addmm(gram[0], gram[1], Fb[0], alpha=-1.0, out=Bb[0])
    else:
        torch.mm(Wt[0], E0.t(), out=Bb[0])
    for k in range(1, model.L):
        torch.mm(Wt[k], Eb[k - 1], out=Bb[k])


def _gram_terms(x: torch.Tensor, W0: torch.Tensor, b0: torch.Tensor) -> tuple:
    """(c0, G) = (W_0^T (x - b_0)^T, W_0^T W_0) (c0 as W_0^T x^T - W_0^T b_0: no (B x d_0) temporary)."""
    return torch.addmm((b0 @ W0).neg_().unsqueeze(1), W0.t(), x.t()), W0.t() @ W0


# Stacks of the adjoint are taken from and given back to a small pool: fresh multi-MB
# allocations are mmapped and page-faulted on every call, which cost as much as the loop.
_POOL: dict = {}
_POOL_CAP = 16


def _stack(x: torch.Tensor, n: int, R: int, C: int) -> torch.Tensor:
    """An (n, R, C) stack whose slots start on 64-byte boundaries, like fresh tensors do."""
    q = max(1, 64 // x.element_size())
    slot = -(-(R * C) // q) * q
    free = _POOL.get((x.dtype, x.device, n * slot))
    flat = free.pop() if free else x.new_empty(n * slot)
    return flat.as_strided((n, R, C), (slot, C, 1))


def _release(*stacks) -> None:
    """Give stacks made by ``_stack`` back to the pool (nothing may use them afterwards)."""
    for s in stacks:
        if s is None:
            continue
        flat = s._base if s._base is not None else s
        free = _POOL.setdefault((flat.dtype, flat.device, flat.numel()), [])
        if len(free) < _POOL_CAP:
            free.append(flat)


class _Record(NamedTuple):
    """What the adjoint of ``bp`` reads, as (steps, D, B) stacks in the stacked layout: f(z^t)
    and EPS^t for t = 0..T; f'(z^t) and f''(z^t) * BACK^t (None where f'' = 0) for t < T; E0:
    eps_0^t, (T + 1, B, d_0), without the Gram form.  "lean": only Z, z^t for t < T."""
    FZ: Optional[torch.Tensor] = None
    E: Optional[torch.Tensor] = None
    DF: Optional[torch.Tensor] = None
    H: Optional[torch.Tensor] = None
    E0: Optional[torch.Tensor] = None
    Z: Optional[torch.Tensor] = None


def _has_d2f(model: PCN) -> bool:
    return model.activation not in ("relu", "linear")


@torch.no_grad()
def _stacked_loop(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                  y: Optional[torch.Tensor], w: float, momentum: float,
                  callback: Optional[StepCallback], gram: Optional[bool] = None,
                  record: str = "") -> tuple[State, Optional[_Record]]:
    """The inference loop without autograd, in the stacked layout (``pc``, evaluation,
    probing, and the forward pass of ``bp``'s adjoint).  One step:

        BACK = W^T EPS (``_back``),  Z <- Z - eta [s (EPS - f'(Z) * BACK) + w C^T (softmax(C Z_L + c) - onehot(y))],
        F = f(Z),  EPS = Z - (W F + b) (``_errors``),

    s = 1 - w, the last term only in the rows of z_L and only with a label; with momentum the
    bracket goes through v <- m v + [...].  Under the Gram form (``use_gram``) eps_0 is formed
    only at the end (or for a callback).  ``record`` = "full" keeps what the adjoint reads
    (``_Record``), "lean" only z^t.  Returns (B x d) views of the buffers.
    """
    L, dims, B = model.L, model.layers, x.shape[0]
    lay = _layout(model)
    W, b = list(model.W), list(model.b) + ([model.prior_mean] if model.prior_mean is not None else [])
    bcol, Wt = [bl.unsqueeze(1) for bl in b], [Wk.t() for Wk in W]
    nudge = y is not None and w > 0.0
    s = 1.0 - w if nudge else 1.0
    gram = use_gram(model, B, T) if gram is None else gram
    gt = _gram_terms(x, W[0], b[0]) if gram else None
    full = record == "full"

    buf = x.new_empty(2 + 2 * (not full) + (momentum > 0), lay.D, B)
    Z, BACK = buf[0], buf[1]
    V = buf[-1].zero_() if momentum > 0 else None
    if full:
        FZs, Es = _stack(x, T + 1, lay.D, B), _stack(x, T + 1, lay.D, B)
        DFs = _stack(x, T, lay.D, B)
        Hs = _stack(x, T, lay.D, B) if _has_d2f(model) else None
        E0s = None if gram else _stack(x, T + 1, B, dims[0])
        rec = _Record(FZs, Es, DFs, Hs, E0s)
        ones = torch.ones_like(Z)
        if model.prior_mean is None:
            Es[:, lay.top].zero_()
        FZ, EPS = FZs[0], Es[0]
        E0 = x.new_empty(B, dims[0]) if gram else E0s[0]
    else:
        FZ, EPS = buf[2], buf[3]
        EPS[lay.top].zero_()
        E0 = x.new_empty(B, dims[0])
        rec = _Record(Z=_stack(x, T, lay.D, B)) if record == "lean" else None
    GR = torch.empty_like(Z) if momentum > 0 else None
    for k, z0k in enumerate(z0):
        Z[lay.rows[k]].copy_(z0k.t())
    onehot = onehot_t(model, y, x.dtype) if nudge else None
    Ct = model.C.t()
    data_each_step = not gram or callback is not None

    Zb, Bb = _blocks(Z, lay), _blocks(BACK, lay)
    Fb, Eb = _blocks(FZ, lay), _blocks(EPS, lay)

    def evaluate() -> None:
        """F, EPS (and eps_0 where needed) at the current Z."""
        act(model, Z, out=FZ)
        _errors(model, W, bcol, Zb, Fb, Eb)
        if data_each_step:
            _data_error(x, W[0], b[0], Fb[0], out=E0)

    def state(copy: bool) -> tuple[list, list, list]:
        """(B x d) views of z, eps, f(z) (contiguous copies if ``copy``)."""
        z, fz = [Z[r].t() for r in lay.rows], [FZ[r].t() for r in lay.rows]
        eps = [E0] + [EPS[r].t() for r in lay.rows[:L - 1 + (model.prior_mean is not None)]]
        if copy:
            z, eps, fz = ([v.clone(memory_format=torch.contiguous_format) for v in g] for g in (z, eps, fz))
        return z, eps, fz

    evaluate()
    if callback is not None:
        z_, e_, _ = state(True)
        callback(0, z_, e_, None)
    for t in range(1, T + 1):
        if rec is not None and rec.Z is not None:
            rec.Z[t - 1].copy_(Z)
        _back(model, Wt, Fb, Eb, E0, gt, Bb)
        if full:   # keep f'(z), f''(z) * BACK for the adjoint; then f'(z) * BACK
            df_times(model, Z, FZ, ones, out=DFs[t - 1])
            if Hs is not None:
                d2f_times(model, Z, FZ, BACK, out=Hs[t - 1])
            torch.mul(DFs[t - 1], BACK, out=BACK)
        else:
            df_times(model, Z, FZ, BACK, out=BACK)
        if callback is not None:
            z_prev = [Z[r].t().clone() for r in lay.rows]
        if nudge:
            P = class_residual_t(model, Zb[L - 1], onehot)
        if V is None:
            Z.add_(EPS, alpha=-eta * s).add_(BACK, alpha=eta * s)
            if nudge:
                Zb[L - 1].addmm_(Ct, P, alpha=-eta * w)
        else:
            step = torch.sub(EPS, BACK, out=GR)
            if s != 1.0:
                step.mul_(s)
            if nudge:
                step[lay.top].addmm_(Ct, P, alpha=w)
            Z.add_(V.mul_(momentum).add_(step), alpha=-eta)
        if full:
            FZ, EPS = FZs[t], Es[t]
            Fb, Eb = _blocks(FZ, lay), _blocks(EPS, lay)
            if not gram:
                E0 = E0s[t]
        evaluate()
        if callback is not None:
            z_, e_, _ = state(True)
            callback(t, z_, e_, [zn - zp for zn, zp in zip(z_, z_prev)])
    if not data_each_step:
        _data_error(x, W[0], b[0], Fb[0], out=E0)
    return State(*state(False)), rec


# ---- bp: the unrolled inference with a hand-written adjoint ----------------------------------

def _adjoint_applies(model: PCN, x: torch.Tensor, T: int, y, w: float, callback) -> bool:
    return (OPTIONS.get("adjoint", True) and T > 0 and callback is None and (y is None or w <= 0.0)
            and not x.requires_grad and model.activation in ("gelu", "tanh", "relu", "linear"))


def _infer_adjoint(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                   momentum: float) -> State:
    """z^T through ``_Unrolled`` (a single autograd node), then eps(z^T), f(z^T) by autograd."""
    params = list(model.W) + list(model.b) + ([model.prior_mean] if model.prior_mean is not None else [])
    spec = (model, T, eta, momentum, use_gram(model, x.shape[0], T))
    z = list(_Unrolled.apply(spec, x, *z0, *params))
    fz = [act(model, zl) for zl in z]
    below = [x] + z[:-1]
    eps = [below[l] - torch.addmm(model.b[l], fz[l], model.W[l].t()) for l in range(model.L)]
    if model.prior_mean is not None:
        eps.append(z[-1] - model.prior_mean)
    return State(z, eps, fz)


class _Unrolled(torch.autograd.Function):
    """z^T = Phi_T(z^0; theta), the T inference steps on E, as one autograd node.

    Forward: ``_stacked_loop``, recording per step only what the backward pass reads:
    f(z^t), eps^t, f'(z^t) and f''(z^t) * (eps_l^t W_l) (``_Record``).
    Backward (reverse-mode adjoint of  v^{t+1} = m v^t + g(z^t),  z^{t+1} = z^t - eta v^{t+1},
    g = dE/dz): with lam = dL/dz^{t+1}, lv = dL/dv^{t+1} and u = lv - eta lam,

        dL/dz^t = lam + H(z^t) u,    dL/dv^t = m u,    dL/dtheta += d/dtheta <u, g(z^t; theta)>,

    H the Hessian of E in z (a Hessian-vector product, written out below), so no autograd graph
    of the T steps is built and only the recorded states are kept.  With r_l = f'(z_{l+1}) * u_{l+1}
    and delta_l = u_l - r_l W_l^T (u_0 = 0; delta_L = u_L with a prior):

        (H u)_{l+1} = [delta_{l+1}] - f''(z_{l+1}) * u_{l+1} * (eps_l W_l) - f'(z_{l+1}) * (delta_l W_l)
        d<u,g>/dW_l = -eps_l^T r_l - delta_l^T f(z_{l+1}),   d<u,g>/db_l = -sum delta_l,
        d<u,g>/db_L(prior) = -sum u_L,   d<u,g>/db_0 = (sum r_0) W_0^T;
    layer 0 under the Gram form: delta_0 W_0 = -r_0 G and
        d<u,g>/dW_0 = -(x - b_0)^T r_0 + W_0 (f(z_1)^T r_0 + r_0^T f(z_1)).
    All of it runs in the stacked layout (transposed: each product below is the transpose of
    the one above); the parameter terms are accumulated step by step.
    """

    @staticmethod
    def forward(ctx, spec, x, *tensors):
        model, T, eta, momentum, gram = spec
        L = model.L
        state, rec = _stacked_loop(model, x, list(tensors[:L]), T, eta, None, 0.0, momentum, None, gram=gram,
                                   record="lean" if OPTIONS.get("bp_memory") == "lean" else "full")
        ctx.spec, ctx.rec = spec, rec
        ctx.save_for_backward(x, *tensors[L:])
        return tuple(zl.contiguous() for zl in state.z)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_z):
        model, T, eta, momentum, gram = ctx.spec
        rec: _Record = ctx.rec
        x, *params = ctx.saved_tensors
        L, dims, B = model.L, model.layers, x.shape[0]
        W, b = params[:L], params[L:]
        has_prior = len(params) > 2 * L
        lay = _layout(model)
        rows = lay.rows
        LAM = x.new_zeros(lay.D, B)
        for k, g in enumerate(grad_z):
            if g is not None:
                LAM[rows[k]].copy_(g.t())
        R, DL, P = x.new_empty(3, lay.D, B).unbind(0)    # r = f'(z) * u, delta, (H u) terms
        if not has_prior:
            DL[lay.top].zero_()
        gW = [x.new_zeros(dims[l], dims[l + 1]) for l in range(L)]
        Dsum = x.new_zeros(lay.D, B)         # sum_t delta (biases of layers >= 1, prior)
        Rsum = x.new_zeros(dims[1], B)       # sum_t r_0 (bias of layer 0)
        gt = _gram_terms(x, W[0], b[0]) if gram else None
        if gram:
            M = x.new_zeros(dims[1], dims[1])   # sum_t f(z_1)^T r_0
        lean = rec.Z is not None
        if lean:   # recompute f(z^t), eps^t, f'(z^t), f''(z^t) * BACK^t from z^t, step by step
            FT, ET, DFT, BK = x.new_empty(4, lay.D, B).unbind(0)
            HT = torch.empty_like(FT) if _has_d2f(model) else None
            ET[lay.top].zero_()
            E0T = None if gram else x.new_empty(B, dims[0])
            ones = torch.ones_like(FT)
            FTb, ETb, BKb = _blocks(FT, lay), _blocks(ET, lay), _blocks(BK, lay)
            bcol, Wt = [bl.unsqueeze(1) for bl in b], [Wk.t() for Wk in W]
        # Without momentum u = -eta lam is carried directly (u <- u - eta H u); with momentum
        # lam and lv are, and u = lv - eta lam is formed per step.
        if momentum > 0:
            LV, U = torch.zeros_like(LAM), torch.empty_like(LAM)
            tgt, c = LAM, 1.0
        else:
            U = tgt = LAM.mul_(-eta)
            c = -eta
        Ub, Rb, DLb, Pb = (_blocks(S, lay) for S in (U, R, DL, P))
        Rt = [Rk.t() for Rk in Rb]
        Gneg = gt[1].neg() if gram else None
        for t in reversed(range(T)):
            if momentum > 0:
                torch.add(LV, LAM, alpha=-eta, out=U)
            if lean:
                Zt = rec.Z[t]
                act(model, Zt, out=FT)
                _errors(model, W, bcol, _blocks(Zt, lay), FTb, ETb)
                if not gram:
                    _data_error(x, W[0], b[0], FTb[0], out=E0T)
                _back(model, Wt, FTb, ETb, E0T, gt, BKb)
                df_times(model, Zt, FT, ones, out=DFT)
                if HT is not None:
                    d2f_times(model, Zt, FT, BK, out=HT)
                Ft, Et, DFt, Ht, E0t = FT, ET, DFT, HT, E0T
            else:
                Ft, Et, DFt = rec.FZ[t], rec.E[t], rec.DF[t]
                Ht = rec.H[t] if rec.H is not None else None
                E0t = rec.E0[t] if rec.E0 is not None else None
            torch.mul(DFt, U, out=R)
            if has_prior:
                DLb[L - 1].copy_(Ub[L - 1])
            for k in range(1, L):
                torch.addmm(Ub[k - 1], W[k], Rb[k], alpha=-1.0, out=DLb[k - 1])
            # parameter terms of this step (before u changes): -d<u,g>/dtheta, summed over t
            Eb, Fb = _blocks(Et, lay), _blocks(Ft, lay)
            for k in range(1, L):
                gW[k].addmm_(Eb[k - 1], Rt[k]).addmm_(DLb[k - 1], Fb[k].t())
            if gram:
                M.addmm_(Fb[0], Rt[0])
                torch.mm(Gneg, Rb[0], out=Pb[0])                    # (delta_0 W_0)^T = -G r_0^T
            else:
                DL0 = torch.mm(W[0], Rb[0]).neg_()                   # delta_0^T
                gW[0].addmm_(E0t.t(), Rt[0]).addmm_(DL0, Fb[0].t())
                torch.mm(W[0].t(), DL0, out=Pb[0])
            Rsum.add_(Rb[0])
            Dsum.add_(DL)
            for k in range(1, L):
                torch.mm(W[k].t(), DLb[k - 1], out=Pb[k])
            # tgt += c H u = c [delta_above - f''(z) * BACK * u - f'(z) * (delta W)]  (tgt may be u:
            # the term that reads u goes first)
            if Ht is not None:
                tgt.addcmul_(Ht, U, value=-c)
            tgt.add_(P.mul_(DFt), alpha=-c).add_(DL, alpha=c)
            if momentum > 0:
                torch.mul(U, momentum, out=LV)
        if momentum <= 0:
            LAM = U.mul_(-1.0 / eta)
        lam = [LAM[r].t().contiguous() for r in rows]
        gb = [Rsum.sum(1) @ W[0].t()] + [Dsum[rows[k - 1]].sum(1).neg_() for k in range(1, L)]
        for k in range(1, L):
            gW[k].neg_()
        if gram:
            gW[0] = torch.addmm(W[0] @ M.add(M.t()), (x - b[0]).t(), Rsum.t(), alpha=-1.0)
        else:
            gW[0].neg_()
        gp = [Dsum[lay.top].sum(1).neg_()] if has_prior else []
        ctx.rec = None
        _release(*rec)
        return (None, None, *lam, *gW, *gb, *gp)


def _infer_graph(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                 y: Optional[torch.Tensor], w: float, momentum: float,
                 callback: Optional[StepCallback], gram: Optional[bool] = None) -> State:
    """The differentiable loop: every step out of place, so autograd sees the trajectory.
    Used under grad mode when the adjoint does not apply (a callback, a label nudge, or
    OPTIONS["adjoint"] = False).  Autograd keeps per step only what its backward needs."""
    L = model.L
    W = list(model.W)
    b = list(model.b)
    prior = model.prior_mean
    nudge = y is not None and w > 0.0
    scale = 1.0 - w if nudge else 1.0
    onehot = onehot_t(model, y, x.dtype) if nudge else None
    gram = use_gram(model, x.shape[0], T) if gram is None else gram
    if gram:
        c0 = (x - b[0]) @ W[0]
        G = W[0].t() @ W[0]

    def errs(z: list, fz: list, first: int) -> list:
        below = [x] + z[:-1]
        e = [None] * first + [below[l] - torch.addmm(b[l], fz[l], W[l].t()) for l in range(first, L)]
        return e + ([z[-1] - prior] if prior is not None else [])

    z = list(z0)
    fz = [act(model, zl) for zl in z]
    first = 1 if gram else 0
    eps = errs(z, fz, first)
    vel = [torch.zeros_like(zl) for zl in z] if momentum > 0 else None
    if callback is not None:
        callback(0, z, errs(z, fz, 0) if gram else eps, None)
    for t in range(1, T + 1):
        g = []
        for l in range(L):
            back = torch.addmm(c0, fz[0], G, alpha=-1.0) if (l == 0 and gram) else eps[l] @ W[l]
            dfb = df_times(model, z[l], fz[l], back)
            g.append(eps[l + 1] - dfb if l + 1 < len(eps) else -dfb)
        # The same mathematics as ``_stacked_loop`` (out of place, per layer: equal up to rounding).
        s = [scale] * L
        if nudge:
            g[-1] = g[-1] * scale + _nudge_grad(model, z[-1], onehot, w)
            s[-1] = 1.0
        if vel is not None:
            vel = [torch.add(v * momentum, gl, alpha=sl) for v, gl, sl in zip(vel, g, s)]
            g, s = vel, [1.0] * L
        dz = [gl * (-eta * sl) for gl, sl in zip(g, s)] if callback is not None else None
        z = [torch.add(zl, gl, alpha=-eta * sl) for zl, gl, sl in zip(z, g, s)]
        fz = [act(model, zl) for zl in z]
        eps = errs(z, fz, first)
        if callback is not None:
            callback(t, z, errs(z, fz, 0) if gram else eps, dz)
    if gram:
        eps = errs(z, fz, 0)
    return State(z, eps, fz)


# ---- optional torch.compile of the no-grad loop ----------------------------------------------

_COMPILED: dict = {}


def _want_compile(x: torch.Tensor) -> bool:
    opt = OPTIONS.get("compile", False)
    if opt == "auto":
        return x.is_cuda
    return bool(opt) and _COMPILED.get("fn", True) is not None


def _compiled():
    """The compiled loop (built once), or None where torch.compile is unavailable."""
    if "fn" not in _COMPILED:
        try:
            _COMPILED["fn"] = torch.compile(_functional_loop, dynamic=False)
            _COMPILED["cuda"] = torch.compile(_functional_loop, dynamic=False, mode="reduce-overhead")
        except Exception as e:  # noqa: BLE001
            _disable_compile(e)
    return _COMPILED.get("fn")


def _run_compiled(fn, model: PCN, x: torch.Tensor, z0: list, T: int, eta: float, y, w: float,
                  momentum: float) -> State:
    """On CUDA the compiled loop replays as CUDA graphs ("reduce-overhead"), whose outputs
    live in graph-owned memory that the next replay overwrites: hand back copies."""
    gram = use_gram(model, x.shape[0], T)
    if not x.is_cuda:
        return fn(model, x, z0, T, eta, y, w, momentum, gram)
    torch.compiler.cudagraph_mark_step_begin()
    s = _COMPILED["cuda"](model, x, z0, T, eta, y, w, momentum, gram)
    return State(*([t.clone() for t in part] for part in s))


def _disable_compile(err: Exception) -> None:
    warnings.warn(f"pcn.core.inference: torch.compile unavailable ({type(err).__name__}: {err}); using eager",
                  RuntimeWarning, stacklevel=3)
    OPTIONS["compile"] = False
    _COMPILED["fn"] = None


def _functional_loop(model: PCN, x: torch.Tensor, z0: list, T: int, eta: float, y, w: float,
                     momentum: float, gram: bool) -> State:
    """Out-of-place form of the same loop, for the compiler to fuse (no callback)."""
    with torch.no_grad():
        return _infer_graph(model, x, z0, T, eta, y, w, momentum, None, gram)


def _env_options() -> None:
    """PCN_GRAM=auto|0|1, PCN_ADJOINT=0|1, PCN_BP_MEMORY=fast|lean, PCN_COMPILE=0|1|auto
    override the defaults."""
    mem = os.environ.get("PCN_BP_MEMORY", "").strip().lower()
    if mem:
        if mem not in ("fast", "lean"):
            raise ValueError(f"PCN_BP_MEMORY={mem!r}: expected fast or lean")
        OPTIONS["bp_memory"] = mem
    names = {"PCN_GRAM": "gram", "PCN_ADJOINT": "adjoint", "PCN_COMPILE": "compile"}
    for env, key in names.items():
        v = os.environ.get(env)
        if v is None or v == "":
            continue
        v = v.strip().lower()
        if v == "auto" and key != "adjoint":
            OPTIONS[key] = "auto"
        elif v in ("1", "true", "yes", "on"):
            OPTIONS[key] = True
        elif v in ("0", "false", "no", "off"):
            OPTIONS[key] = False
        else:
            raise ValueError(f"{env}={v!r}: expected 0, 1" + ("" if key == "adjoint" else " or auto"))


_env_options()
