"""Fused kernels of the fast paths: f(z), f'(z) * g and f''(z) * a with torch's own fused
activation kernels (the ones autograd uses: one pass over memory instead of several, and
differentiable twice, which ``bp``'s adjoint needs), optionally written into a preallocated
buffer (``out=``); plus the class residual and batch-mean energy helpers of the fast rules.
Each agrees with the plain formula in ``pcn.core`` (``model.f``, ``model.df``) to rounding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pcn.core.model import PCN

_LOG_INV_SQRT_2PI = -0.9189385332046727  # log(1 / sqrt(2 pi))

_GELU_BWD = torch.ops.aten.gelu_backward.default
_GELU_BWD_OUT = torch.ops.aten.gelu_backward.grad_input
_TANH_BWD = torch.ops.aten.tanh_backward.default
_TANH_BWD_OUT = torch.ops.aten.tanh_backward.grad_input
_RELU_BWD = torch.ops.aten.threshold_backward.default
_RELU_BWD_OUT = torch.ops.aten.threshold_backward.grad_input


def act(model: PCN, z: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """f(z), optionally into ``out`` (same values as ``model.f``)."""
    if out is None:
        return model.f(z)
    a = model.activation
    if a == "gelu":
        return torch._C._nn.gelu(z, out=out)
    if a == "tanh":
        return torch.tanh(z, out=out)
    if a == "relu":
        return torch.clamp_min(z, 0.0, out=out)
    if a == "linear":
        return out.copy_(z)
    return out.copy_(model.f(z))


def df_times(model: PCN, z: torch.Tensor, fz: torch.Tensor | None, g: torch.Tensor,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """f'(z) * g elementwise (``fz`` = f(z) if known: tanh reuses it), optionally into ``out``.

    gelu: f'(z) = Phi(z) + z phi(z); tanh: 1 - f(z)^2; relu: 1[z > 0]; linear: 1.
    """
    a = model.activation
    if a == "gelu":
        return _GELU_BWD(g, z) if out is None else _GELU_BWD_OUT(g, z, grad_input=out)
    if a == "tanh":
        t = torch.tanh(z) if fz is None else fz
        return _TANH_BWD(g, t) if out is None else _TANH_BWD_OUT(g, t, grad_input=out)
    if a == "relu":
        return _RELU_BWD(g, z, 0) if out is None else _RELU_BWD_OUT(g, z, 0, grad_input=out)
    if a == "linear":
        return g if out is None else out.copy_(g)
    r = model.df(z) * g
    return r if out is None else out.copy_(r)


def d2f_times(model: PCN, z: torch.Tensor, fz: torch.Tensor | None, a: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor | None:
    """f''(z) * a elementwise (optionally into ``out``), or None where f'' = 0 (relu, linear).

    gelu: f''(z) = phi(z) (2 - z^2); tanh: -2 f(z) (1 - f(z)^2).  (The adjoint of ``bp``.)
    """
    act_name = model.activation
    if act_name == "gelu":   # (0-dim tensor constants: no per-op scalar wrapping)
        c = z.new_tensor([_LOG_INV_SQRT_2PI, 2.0])
        h = torch.addcmul(c[0], z, z, value=-0.5).exp_().mul_(torch.addcmul(c[1], z, z, value=-1.0))
    elif act_name == "tanh":
        t = torch.tanh(z) if fz is None else fz
        h = (t * t).sub_(1.0).mul_(t).mul_(2.0)
    elif act_name in ("relu", "linear"):
        return None
    else:
        zr = z.detach().requires_grad_(True)
        with torch.enable_grad():
            (h,) = torch.autograd.grad(model.df(zr).sum(), zr)
    return h.mul_(a) if out is None else torch.mul(h, a, out=out)


def mean_half_sq(parts: list[torch.Tensor], batch: int) -> torch.Tensor:
    """sum_l 1/2 ||parts_l||^2 / batch: with the errors eps_l, the batch mean of E (any
    orientation, (B x d) or (d x B); one fused norm over all parts)."""
    return torch.stack(torch._foreach_norm(parts)).square().sum() / (2 * batch)


def onehot_t(model: PCN, y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """onehot(y)^T, (classes x batch)."""
    return F.one_hot(y, model.C.shape[0]).to(dtype).t().contiguous()


def class_residual_t(model: PCN, zL_t: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """(softmax(C z_L + c) - onehot(y))^T, (classes x batch), from z_L^T (d_L x batch) and
    ``onehot_t``: formed as (classes x batch) because torch's softmax over a short last
    dimension is ~10x slower than over the first.  d CE / d z_L = residual^T C."""
    return torch.softmax(torch.addmm(model.c.unsqueeze(1), model.C, zL_t), dim=0).sub_(onehot)
