"""The stacked no-grad inference loop: the fast path of ``pcn.core.inference.infer_state``
for ``pc``, evaluation and probing (any activation, label nudge, momentum, callback), and the
forward pass of ``bp``'s adjoint (``pcn.fast.adjoint``).

All latent layers are row blocks of one (D x B) tensor per quantity (z, f(z), eps,
back-projections; D = d_1 + ... + d_L), so every elementwise pass is one kernel over all
layers and every product writes straight into its block; f(z) is computed once per step and
reused by the prediction, f'(z) and the caller.  The returned tensors are (B x d) views of
those buffers (not contiguous).  Under the Gram form (``use_gram``, OPTIONS["gram"]) the
clamped data layer's back-projection costs no pass over the d_0-wide data.  Tested equal to
the reference loop to rounding (tests/test_fast_inference.py).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from pcn.core.inference import State, StepCallback
from pcn.core.model import PCN
from pcn.fast.kernels import act, class_residual_t, d2f_times, df_times, onehot_t
from pcn.fast.options import OPTIONS

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
def stacked_loop(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                  y: Optional[torch.Tensor], beta: float, momentum: float,
                  callback: Optional[StepCallback], gram: Optional[bool] = None,
                  record: str = "") -> tuple[State, Optional[_Record]]:
    """The inference loop without autograd, in the stacked layout (``pc``, evaluation,
    probing, and the forward pass of ``bp``'s adjoint).  One step:

        BACK = W^T EPS (``_back``),  Z <- Z - eta [(EPS - f'(Z) * BACK) + beta C^T (softmax(C Z_L + c) - onehot(y))],
        F = f(Z),  EPS = Z - (W F + b) (``_errors``),

    the last term only in the rows of z_L and only with a label; with momentum the
    bracket goes through v <- m v + [...].  Under the Gram form (``use_gram``) eps_0 is formed
    only at the end (or for a callback).  ``record`` = "full" keeps what the adjoint reads
    (``_Record``), "lean" only z^t.  Returns (B x d) views of the buffers.
    """
    L, dims, B = model.L, model.layers, x.shape[0]
    lay = _layout(model)
    W, b = list(model.W), list(model.b) + ([model.prior_mean] if model.prior_mean is not None else [])
    bcol, Wt = [bl.unsqueeze(1) for bl in b], [Wk.t() for Wk in W]
    nudge = y is not None and beta != 0.0   # beta < 0: pc-ep's opposite nudge
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
            Z.add_(EPS, alpha=-eta).add_(BACK, alpha=eta)
            if nudge:
                Zb[L - 1].addmm_(Ct, P, alpha=-eta * beta)
        else:
            step = torch.sub(EPS, BACK, out=GR)
            if nudge:
                step[lay.top].addmm_(Ct, P, alpha=beta)
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
