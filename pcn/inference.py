"""PC inference: T gradient steps on the latents (spec section 2).

    F(z) = (1 - w) E(z; x) + w CE(C z_L + c, y)       (w = 0 or y = None: F = E)
    v <- m v + dF/dz;   z <- z - eta v                 (m = 0: plain gradient descent)

with (pcn.energy) dE/dz_l = [eps_l] - f'(z_l) * (eps_{l-1} W_{l-1}), all layers updated from
the same state z^t (a simultaneous, Jacobi-style step).

One function serves training, evaluation and probing.  Under ``torch.no_grad`` it is a
plain tensor loop that updates preallocated buffers in place (f(z) is computed once per
step and layer and reused by the prediction, f'(z) and the caller).  With grad enabled the
result is differentiable in every parameter and in z0 (the ``bp`` rule): by default through
one autograd node whose backward pass is the hand-written adjoint of the T steps
(``_Unrolled``); with a callback, a label nudge or OPTIONS["adjoint"] = False, through
autograd's own graph of the out-of-place steps.  Both give the same z^T, bit for bit.  A
per-step callback receives copies of the state for tracing; without one nothing extra is
computed.

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
          compiling fails.  Off by default: on CPU the ~20 % it saves per step does not repay
          a compile per (batch shape, T) (docs/performance.md); on GPU it is unmeasured.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

from torch.autograd.function import once_differentiable

from pcn.energy import act, d2f_times, df_times
from pcn.model import PCN

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
    return _stacked_loop(model, x, z0, T, eta, y, w, momentum, callback)


def _onehot_t(model: PCN, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """onehot(y)^T, (classes, batch)."""
    return F.one_hot(y, model.C.shape[0]).to(dtype).t().contiguous()


def _nudge_grad(model: PCN, zL: torch.Tensor, onehot_t: torch.Tensor, w: float) -> torch.Tensor:
    """w d CE / d z_L = w (softmax(C z_L + c) - onehot(y)) C, formed as (classes x batch):
    torch's softmax over a short last dimension is ~10x slower than over the first.  (w is
    applied before the product: torch.compile 2.14 on CPU drops the alpha of an add whose
    operand is a matmul.)"""
    p_t = torch.softmax(torch.addmm(model.c.unsqueeze(1), model.C, zL.t()), dim=0)
    return ((p_t - onehot_t) * w).t() @ model.C


# Stacks of the adjoint are taken from and given back to a small pool: fresh multi-MB
# allocations are mmapped and page-faulted on every call, which cost as much as the loop.
_POOL: dict = {}
_POOL_CAP = 16


def _stack(x: torch.Tensor, n: int, B: int, d: int) -> torch.Tensor:
    """An (n, B, d) stack whose slots start on 64-byte boundaries, like fresh tensors do (BLAS
    rounding can depend on alignment; aligned slots keep the recording loop bitwise equal to
    the plain one)."""
    q = max(1, 64 // x.element_size())
    slot = -(-(B * d) // q) * q
    free = _POOL.get((x.dtype, x.device, n * slot))
    flat = free.pop() if free else x.new_empty(n * slot)
    return flat.as_strided((n, B, d), (slot, d, 1))


def _release(*stacks) -> None:
    """Give stacks made by ``_stack`` back to the pool (nothing may use them afterwards)."""
    for group in stacks:
        for s in group:
            if s is None:
                continue
            flat = s._base if s._base is not None else s
            free = _POOL.setdefault((flat.dtype, flat.device, flat.numel()), [])
            if len(free) < _POOL_CAP:
                free.append(flat)


class _Record(NamedTuple):
    """What the adjoint of ``bp`` needs from the forward loop, per step t: f(z^t) and the errors
    eps^t (layers ``first``..L-1 and the prior term; None for layer 0 under the Gram form) for
    t = 0..T, and for t = 0..T-1 f'(z^t) and f''(z^t) * (eps^t_l W_l) (None where f'' = 0)."""
    FZ: list
    E: list
    DF: list
    H: list
    Z: Optional[list] = None   # OPTIONS["bp_memory"] = "lean": only z^t (t < T); the rest is recomputed


@torch.no_grad()
def _forward_loop(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                  y: Optional[torch.Tensor], w: float, momentum: float,
                  callback: Optional[StepCallback], gram: Optional[bool] = None,
                  record: str = "") -> tuple[State, Optional[_Record]]:
    """The no-grad loop on preallocated buffers: every update is written in place.  With
    ``record`` = "full" the quantities the adjoint of ``bp`` reads are written into per-step
    stacks as they are formed; with "lean" only the latents z^t are kept."""
    L = model.L
    W = list(model.W)
    Wt = [Wl.t() for Wl in W]
    b = list(model.b)
    prior = model.prior_mean
    nudge = y is not None and w > 0.0
    scale = 1.0 - w if nudge else 1.0
    onehot = _onehot_t(model, y, x.dtype) if nudge else None
    gram = use_gram(model, x.shape[0], T) if gram is None else gram
    first = 1 if gram else 0
    B, dims = x.shape[0], model.layers
    n_eps = L + (prior is not None)
    eps_dims = dims[:L] + ([dims[L]] if prior is not None else [])

    z = [zl.clone(memory_format=torch.contiguous_format) for zl in z0]
    full = record == "full"
    if record == "lean":
        Zst = [_stack(x, T, B, d) for d in dims[1:]]
        Zs = [list(v) for v in zip(*[S.unbind(0) for S in Zst])]
        rec = _Record(None, None, None, None, Zst)
    if full:
        FZ = [_stack(x, T + 1, B, d) for d in dims[1:]]
        E = [None if k < first else _stack(x, T + 1, B, d) for k, d in enumerate(eps_dims)]
        DF = [_stack(x, T, B, d) for d in dims[1:]]
        has_h = model.activation not in ("relu", "linear")
        H = [_stack(x, T, B, d) if has_h else None for d in dims[1:]]
        ones = [x.new_ones(B, d) for d in dims[1:]]
        rec = _Record(FZ, E, DF, H)
        eps_n = [x.new_empty(B, d) for d in eps_dims[:first]]   # layer 0 under Gram: not stacked
        # per-step views, made once (unbind) rather than by indexing inside the loop
        FZs, DFs = ([list(v) for v in zip(*[S.unbind(0) for S in st])] for st in (FZ, DF))
        Hs = [list(v) for v in zip(*[S.unbind(0) if S is not None else [None] * T for S in H])]
        Es = [eps_n + list(v) for v in zip(*[S.unbind(0) for S in E[first:]])]
        fz, eps = FZs[0], Es[0]
        back = [x.new_empty(B, d) for d in dims[1:]]
        dfb = [x.new_empty(B, d) for d in dims[1:]]
    else:
        rec = rec if record == "lean" else None
        fz = [None] * L
        eps = [x.new_empty(B, d) for d in eps_dims]
        dfb = back = [x.new_empty(B, d) for d in dims[1:]]   # f'(z_{l+1}) * (eps_l W_l), in place
    for l in range(L):
        fz[l] = act(model, z[l], out=fz[l] if full else torch.empty_like(z[l]))
    mu = [x.new_empty(B, d) for d in dims[:L]]
    grad = [x.new_empty(B, d) for d in dims[1:]]
    vel = [torch.zeros_like(zl) for zl in z] if momentum > 0 else None
    if gram:
        c0 = (x - b[0]) @ W[0]                 # (x - b_0) W_0
        G = Wt[0] @ W[0]                       # W_0^T W_0

    def predict(lo: int) -> None:
        below = [x] + z[:-1]
        for l in range(lo, L):
            torch.addmm(b[l], fz[l], Wt[l], out=mu[l])
            torch.sub(below[l], mu[l], out=eps[l])
        if prior is not None:
            torch.sub(z[-1], prior, out=eps[L])

    def report(t: int, dz: Optional[list]) -> None:
        if gram:
            predict(0)
        callback(t, [zl.clone() for zl in z], [e.clone() for e in eps], dz)

    predict(first)
    if callback is not None:
        report(0, None)
    for t in range(1, T + 1):
        dzs = [] if callback is not None else None
        if full:
            dft, ht = DFs[t - 1], Hs[t - 1]
        elif record:
            for zs, zl in zip(Zs[t - 1], z):
                zs.copy_(zl)
        for l in range(L):
            if l == 0 and gram:
                torch.addmm(c0, fz[0], G, alpha=-1.0, out=back[0])   # = eps_0 W_0
            else:
                torch.mm(eps[l], W[l], out=back[l])
            if full:   # keep f'(z), f''(z) * back for the adjoint (f'(z) * back = df_times')
                d = torch.mul(df_times(model, z[l], fz[l], ones[l], out=dft[l]), back[l], out=dfb[l])
                if ht[l] is not None:
                    d2f_times(model, z[l], fz[l], back[l], out=ht[l])
            else:
                d = df_times(model, z[l], fz[l], back[l], out=dfb[l])
            g = grad[l]
            s = scale
            if l + 1 == n_eps and not nudge and vel is None and dzs is None:
                z[l].add_(d, alpha=eta * s)    # top, no prior: g = -d
                continue
            if l + 1 < n_eps:
                torch.sub(eps[l + 1], d, out=g)
            else:
                torch.neg(d, out=g)
            if nudge and l == L - 1:
                g.mul_(scale).add_(_nudge_grad(model, z[l], onehot, w))
                s = 1.0
            if vel is not None:
                vel[l].mul_(momentum).add_(g, alpha=s)
                g, s = vel[l], 1.0
            if dzs is not None:
                dzs.append(g * (-eta * s))
            z[l].add_(g, alpha=-eta * s)
        if full:
            fz, eps = FZs[t], Es[t]
        for l in range(L):
            act(model, z[l], out=fz[l])
        predict(first)
        if callback is not None:
            report(t, dzs)
    if gram:
        predict(0)
    return State(z, eps, fz), rec


# ---- the no-grad loop: all layers stacked in one transposed buffer ---------------------------

@torch.no_grad()
def _stacked_loop(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                  y: Optional[torch.Tensor], w: float, momentum: float,
                  callback: Optional[StepCallback], gram: Optional[bool] = None) -> State:
    """The inference loop without autograd (``pc``, evaluation, probing).

    Every latent layer is a block of rows of one (D x B) buffer, D = d_1 + ... + d_L (the
    transpose of the usual (B x d) layout, so each layer, and every run of layers, is
    contiguous).  Each step is then one kernel over all layers for every elementwise pass, and
    each product writes straight into its block:

        EPS_l = Z_l - (W_l F_{l+1} + b_l)   (l < L;  EPS_L = Z_L - b_L with a prior, else 0),
        BACK_l = W_{l-1}^T EPS_{l-1}         (l > 1;  BACK_1 from the clamped data below),
        Z <- Z - eta [s (EPS - f'(Z) * BACK) + w C^T (softmax(C Z_L + c) - onehot(y))],

    with F = f(Z), s = 1 - w (the last term only in the rows of z_L, and with a label).  With
    momentum the bracket goes through v <- m v + [...] first.  Layer 0 stays (B x d_0):
    BACK_1 = W_0^T (x - b_0)^T - G F_1 under the Gram form (``use_gram``), else
    (eps_0 W_0)^T with eps_0 = x - F_1^T W_0^T - b_0 formed every step.
    Returns (B x d) views of the buffers.
    """
    L, dims, B = model.L, model.layers, x.shape[0]
    off = [0]
    for d in dims[1:]:
        off.append(off[-1] + d)
    D, top = off[-1], slice(off[L - 1], off[L])
    W, b, prior = list(model.W), list(model.b), model.prior_mean
    nudge = y is not None and w > 0.0
    s = 1.0 - w if nudge else 1.0
    gram = use_gram(model, B, T) if gram is None else gram
    slow = momentum > 0                                 # the update goes through a gradient buffer

    buf = x.new_empty(4 + slow + (momentum > 0), D, B)
    Z, FZ, EPS, BACK = buf[0], buf[1], buf[2], buf[3]
    GR = buf[4] if slow else None
    V = buf[5].zero_() if momentum > 0 else None
    rows = [slice(off[k], off[k + 1]) for k in range(L)]
    Zl, Fl, El, Bl = ([S[r] for r in rows] for S in (Z, FZ, EPS, BACK))
    for zk, z0k in zip(Zl, z0):
        zk.copy_(z0k.t())
    bcol = [bl.unsqueeze(1) for bl in b]
    n_err = D if prior is not None else off[L - 1]      # rows that EPS = Z - MU covers
    if prior is None:
        El[-1].zero_()                                  # no energy term above z_L
    onehot = _onehot_t(model, y, x.dtype) if nudge else None
    ccol = model.c.unsqueeze(1)
    E0 = x.new_empty(B, dims[0])                        # eps_0, (B x d_0)
    if gram:
        c0 = torch.mm(W[0].t(), (x - b[0]).t())         # W_0^T (x - b_0)^T, (d_1 x B)
        G = W[0].t() @ W[0]                             # W_0^T W_0 (symmetric)

    def errors(data: bool) -> None:
        """EPS (and eps_0 if ``data``) from F = f(Z)."""
        for k in range(L - 1):
            torch.addmm(bcol[k + 1], W[k + 1], Fl[k + 1], out=El[k])
        if prior is not None:
            El[-1].copy_(prior.unsqueeze(1).expand_as(El[-1]))
        torch.sub(Z[:n_err], EPS[:n_err], out=EPS[:n_err])
        if data:
            torch.sub(x, torch.addmm(b[0], Fl[0].t(), W[0].t()), out=E0)

    def state(copy: bool) -> tuple[list, list, list]:
        """(B x d) views of z, eps, f(z) (contiguous copies if ``copy``)."""
        z, fz = [S.t() for S in Zl], [S.t() for S in Fl]
        eps = [E0] + [S.t() for S in El[:L - 1 + (prior is not None)]]
        if copy:
            z, eps, fz = ([v.clone(memory_format=torch.contiguous_format) for v in g] for g in (z, eps, fz))
        return z, eps, fz

    act(model, Z, out=FZ)
    errors(not gram or callback is not None)
    if callback is not None:
        z_, e_, _ = state(True)
        callback(0, z_, e_, None)
    for t in range(1, T + 1):
        if gram:
            torch.addmm(c0, G, Fl[0], alpha=-1.0, out=Bl[0])
        else:
            torch.mm(W[0].t(), E0.t(), out=Bl[0])
        for k in range(1, L):
            torch.mm(W[k].t(), El[k - 1], out=Bl[k])
        df_times(model, Z, FZ, BACK, out=BACK)          # f'(Z) * BACK
        if callback is not None:
            z_prev = [zk.t().clone() for zk in Zl]
        if nudge:
            P = torch.softmax(torch.addmm(ccol, model.C, Zl[-1]), dim=0).sub_(onehot)
        if not slow:
            Z.add_(EPS, alpha=-eta * s).add_(BACK, alpha=eta * s)
            if nudge:
                Zl[-1].addmm_(model.C.t(), P, alpha=-eta * w)
        else:
            step = torch.sub(EPS, BACK, out=GR)
            if s != 1.0:
                step.mul_(s)
            if nudge:
                step[top].addmm_(model.C.t(), P, alpha=w)
            if V is not None:
                step = V.mul_(momentum).add_(step)
            Z.add_(step, alpha=-eta)
        act(model, Z, out=FZ)
        errors(not gram or callback is not None)
        if callback is not None:
            z_, e_, _ = state(True)
            callback(t, z_, e_, [zn - zp for zn, zp in zip(z_, z_prev)])
    if gram and callback is None:
        errors(True)
    z, eps, fz = state(False)
    return State(z, eps, fz)


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

    Forward: the no-grad loop, recording per step only what the backward pass reads:
    f(z^t), eps^t, f'(z^t) and f''(z^t) * (eps_l^t W_l) (``_Record``).
    Backward (reverse-mode adjoint of  v^{t+1} = m v^t + g(z^t),  z^{t+1} = z^t - eta v^{t+1},
    g = dE/dz): with lam = dL/dz^{t+1}, lv = dL/dv^{t+1} and u = lv - eta lam,

        dL/dz^t = lam + H(z^t) u,    dL/dv^t = m u,    dL/dtheta += d/dtheta <u, g(z^t; theta)>,

    H the Hessian of E in z (a Hessian-vector product, written out below), so no autograd graph
    of the T steps is built and only the recorded states are kept.  With r_l = f'(z_{l+1}) * u_{l+1}
    and delta_l = u_l - r_l W_l^T (u_0 = 0; delta_L = u_L with a prior):

        (H u)_{l+1} = [delta_{l+1}] - f''(z_{l+1}) * u_{l+1} * (eps_l W_l) - f'(z_{l+1}) * (delta_l W_l)
        d<u,g>/dW_l = -eps_l^T r_l - delta_l^T f(z_{l+1}),   d<u,g>/db_l = -sum delta_l,
        d<u,g>/db_L(prior) = -sum u_L;
    layer 0 under the Gram form: delta_0 W_0 = -r_0 G and
        d<u,g>/dW_0 = -(x - b_0)^T r_0 + W_0 (f(z_1)^T r_0 + r_0^T f(z_1)),  d<u,g>/db_0 = (sum r_0) W_0^T.
    The parameter terms are accumulated step by step (no per-step stacks in the backward).
    """

    @staticmethod
    def forward(ctx, spec, x, *tensors):
        model, T, eta, momentum, gram = spec
        L = model.L
        z0 = tensors[:L]
        state, rec = _forward_loop(model, x, list(z0), T, eta, None, 0.0, momentum, None, gram=gram,
                                   record="lean" if OPTIONS.get("bp_memory") == "lean" else "full")
        ctx.spec, ctx.rec = spec, rec
        ctx.save_for_backward(x, *tensors[L:])
        return tuple(state.z)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_z):
        model, T, eta, momentum, gram = ctx.spec
        rec: _Record = ctx.rec
        x, *params = ctx.saved_tensors
        L = model.L
        W, b = params[:L], params[L:2 * L]
        has_prior = len(params) > 2 * L
        first = 1 if gram else 0
        n_eps = L + has_prior
        B, dims = x.shape[0], model.layers
        eps_dims = dims[:L] + ([dims[L]] if has_prior else [])
        lam = [g.clone() if g is not None else x.new_zeros(B, d) for g, d in zip(grad_z, dims[1:])]
        r = [x.new_empty(B, d) for d in dims[1:]]                  # r_l = f'(z_{l+1}) * u_{l+1}
        dl = [x.new_empty(B, d) for d in eps_dims]                 # delta_l
        P = [x.new_empty(B, d) for d in dims[1:]]
        # sums over the steps: dW_l (layers >= first), sum_t delta_l (biases); layer 0 under the
        # Gram form: M = sum_t f(z_1)^T r_0 and sum_t r_0
        gW = [None if l < first else x.new_zeros(dims[l], dims[l + 1]) for l in range(L)]
        Dsum = [x.new_zeros(B, d) for d in eps_dims]
        if gram:
            G = W[0].t() @ W[0]
            M = x.new_zeros(dims[1], dims[1])
            Rsum = x.new_zeros(B, dims[1])
        # per-step views, made once (unbind) rather than by indexing inside the loop
        lean = rec.Z is not None
        if lean:   # recompute f(z^t), eps^t, f'(z^t), f''(z^t) * back^t from z^t, step by step
            Zs = [list(v) for v in zip(*[S.unbind(0) for S in rec.Z])]
            tmp = [[x.new_empty(B, d) for d in dims[1:]] for _ in range(4)]
            ft, dft, ht, bk = tmp
            if model.activation in ("relu", "linear"):
                ht = [None] * L
            et = [None if k < first else x.new_empty(B, d) for k, d in enumerate(eps_dims)]
            mu = [x.new_empty(B, d) for d in dims[:L]]
            ones = [x.new_ones(B, d) for d in dims[1:]]
            c0 = (x - b[0]) @ W[0] if gram else None
        else:
            FZs, DFs = ([list(v) for v in zip(*[S.unbind(0) for S in stacks])] for stacks in (rec.FZ, rec.DF))
            Hs = [list(v) for v in zip(*[S.unbind(0) if S is not None else [None] * T for S in rec.H])]
            Es = [list(v) for v in zip(*[S.unbind(0) if S is not None else [None] * (T + 1) for S in rec.E])]
        # Without momentum u = -eta lam is carried directly (u <- u - eta H u); with momentum
        # lam and lv are, and u = lv - eta lam is formed per step.
        if momentum > 0:
            lv = [torch.zeros_like(lm) for lm in lam]
            c = 1.0
        else:
            u = [lm.mul_(-eta) for lm in lam]
            c = -eta
        for t in reversed(range(T)):
            if momentum > 0:
                u = [torch.add(v, lm, alpha=-eta) for v, lm in zip(lv, lam)]
                tgt = lam
            else:
                tgt = u
            if lean:
                zt = Zs[t]
                for l in range(L):
                    act(model, zt[l], out=ft[l])
                below = [x] + zt[:-1]
                for k in range(first, L):
                    torch.addmm(b[k], ft[k], W[k].t(), out=mu[k])
                    torch.sub(below[k], mu[k], out=et[k])
                if has_prior:
                    torch.sub(zt[-1], params[2 * L], out=et[L])
                for l in range(L):
                    if l == 0 and gram:
                        torch.addmm(c0, ft[0], G, alpha=-1.0, out=bk[0])
                    else:
                        torch.mm(et[l], W[l], out=bk[l])
                    df_times(model, zt[l], ft[l], ones[l], out=dft[l])
                    if ht[l] is not None:
                        d2f_times(model, zt[l], ft[l], bk[l], out=ht[l])
            else:
                ft, dft, ht, et = FZs[t], DFs[t], Hs[t], Es[t]
            for l in range(L):
                torch.mul(dft[l], u[l], out=r[l])
            for k in range(first, L):
                if k == 0:
                    torch.mm(r[0], W[0].t(), out=dl[0]).neg_()
                else:
                    torch.addmm(u[k - 1], r[k], W[k].t(), alpha=-1.0, out=dl[k])
            if has_prior:
                dl[L].copy_(u[L - 1])
            # parameter terms of this step (before u changes): -d<u,g>/dtheta, summed over t
            for l in range(first, L):
                gW[l].addmm_(et[l].t(), r[l]).addmm_(dl[l].t(), ft[l])
            for k in range(first, n_eps):
                Dsum[k].add_(dl[k])
            if gram:
                M.addmm_(ft[0].t(), r[0])
                Rsum.add_(r[0])
            for l in range(L):   # tgt_l += c (H u)_l
                if ht[l] is not None:
                    tgt[l].addcmul_(ht[l], u[l], value=-c)
                if l == 0 and gram:
                    torch.mm(r[0], G, out=P[0]).mul_(dft[0])
                    tgt[0].add_(P[0], alpha=c)
                else:
                    torch.mm(dl[l], W[l], out=P[l]).mul_(dft[l])
                    tgt[l].add_(P[l], alpha=-c)
                if l + 1 < n_eps:
                    tgt[l].add_(dl[l + 1], alpha=c)
            if momentum > 0:
                lv = [ul.mul_(momentum) for ul in u]
        if momentum <= 0:
            lam = [ul.mul_(-1.0 / eta) for ul in u]
        gb = [None] * L
        for l in range(first, L):
            gW[l].neg_()
            gb[l] = Dsum[l].sum(0).neg_()
        if gram:
            gW[0] = torch.addmm(W[0] @ M.add(M.t()), (x - b[0]).t(), Rsum, alpha=-1.0)
            gb[0] = Rsum.sum(0) @ W[0].t()
        gp = [Dsum[L].sum(0).neg_()] if has_prior else []
        ctx.rec = None
        _release(*(g for g in (rec.FZ, rec.E, rec.DF, rec.H, rec.Z) if g is not None))
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
    onehot = _onehot_t(model, y, x.dtype) if nudge else None
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
        # The same operations, in the same order, as ``_forward_loop`` (bitwise-equal results).
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
    warnings.warn(f"pcn.inference: torch.compile unavailable ({type(err).__name__}: {err}); using eager",
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
