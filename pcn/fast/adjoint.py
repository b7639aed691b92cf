"""``bp``'s fast path: the T inference steps on E as one autograd node (``_Unrolled``) whose
forward is the stacked loop and whose backward is the hand-written reverse-mode adjoint, so
no autograd graph of the T steps is built.  Tested equal to autograd through the reference
loop, and to finite differences (tests/test_fast_inference.py).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from pcn.core.inference import State
from pcn.core.model import PCN
from pcn.fast.kernels import act, d2f_times, df_times
from pcn.fast.options import OPTIONS
from pcn.fast.stacked import (_Record, _back, _blocks, _data_error, _errors, _gram_terms, _has_d2f, _layout,
                              _release, stacked_loop, use_gram)

def applies(model: PCN, x: torch.Tensor, T: int, y, beta: float, callback) -> bool:
    return (OPTIONS.get("adjoint", True) and T > 0 and callback is None and (y is None or beta <= 0.0)
            and not x.requires_grad and model.activation in ("gelu", "tanh", "relu", "linear"))


def infer_state(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
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

    Forward: ``stacked_loop``, recording per step only what the backward pass reads:
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
        state, rec = stacked_loop(model, x, list(tensors[:L]), T, eta, None, 0.0, momentum, None, gram=gram,
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
