"""The PC energy and its analytic latent gradient (spec section 2), the reference implementation.

    eps_l   = z_l - mu_l,  mu_l = W_l f(z_{l+1}) + b_l,  z_0 = x
    E(z; x) = sum_{l<L} 1/2 ||eps_l||^2  (+ 1/2 ||z_L - b_L||^2 with a prior)
    dE/dz_l = eps_l - f'(z_l) * (W_{l-1}^T eps_{l-1}),   l = 1..L (no eps_L term without a prior)
    CE(z_L, y) = -log softmax(C z_L + c)_y,   dCE/dz_L = (softmax(C z_L + c) - onehot(y)) C

With a bottom-up term (``model.bottom_up`` = alpha > 0, rule ``bpc``), every latent is also
predicted from below by the bottom-up weights V_l, a_l (g_0 = identity, g_l = f):

    delta_{l+1} = z_{l+1} - (V_l g_l(z_l) + a_l),              l = 0..L-1
    E_bu(z; x)  = alpha sum_l 1/2 ||delta_{l+1}||^2,           E = E_td + E_bu
    dE_bu/dz_l  = alpha delta_l - alpha f'(z_l) * (V_l^T delta_{l+1})    (second term for l < L)

All functions take a batch (rows are samples) and return per-sample quantities; they are
plain tensor code, so they run without autograd and are also differentiable by it.
The weights are reached only through the model's layer operations (``predict``, ``back``,
``bu_predict``, ``bu_back``: a matrix product for a dense link, a (transposed) convolution for a
conv link, ``pcn.core.model``), so the same code is the energy of MLP and conv PCNs; there
``W_l^T`` below stands for ``back`` and ``V_l^T`` for ``bu_back``.
A new energy term is added here (``errors``/``energy`` and ``latent_grad``), then, optionally,
to the fast paths in ``pcn.fast``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pcn.core.model import PCN


def errors(model: PCN, x: torch.Tensor, z: list[torch.Tensor]) -> list[torch.Tensor]:
    """eps_l = z_l - (W_l f(z_{l+1}) + b_l) for l = 0..L-1, and eps_L = z_L - b_L with a prior."""
    below = [x] + z[:-1]
    eps = [below[l] - model.predict(l, model.f(z[l])) for l in range(model.L)]
    if model.prior_mean is not None:
        eps.append(z[-1] - model.prior_mean)
    return eps


def layer_energies(eps: list[torch.Tensor]) -> torch.Tensor:
    """Per-layer, per-sample energies 1/2 ||eps_l||^2, shape (n_terms, batch)."""
    return torch.stack([0.5 * (e * e).sum(1) for e in eps])


def bu_errors(model: PCN, x: torch.Tensor, z: list[torch.Tensor]) -> list[torch.Tensor]:
    """delta_{l+1} = z_{l+1} - (V_l g_l(z_l) + a_l) for l = 0..L-1 (g_0 = identity, z_0 = x)."""
    below = [x] + [model.f(zl) for zl in z[:-1]]
    return [z[l] - model.bu_predict(l, below[l]) for l in range(model.L)]


def energy(model: PCN, x: torch.Tensor, z: list[torch.Tensor]) -> torch.Tensor:
    """E(z; x) per sample, shape (batch,): the top-down energy, plus alpha E_bu with a
    bottom-up term."""
    E = layer_energies(errors(model, x, z)).sum(0)
    if model.bottom_up > 0:
        E = E + model.bottom_up * layer_energies(bu_errors(model, x, z)).sum(0)
    return E


def latent_grad(model: PCN, z: list[torch.Tensor], eps: list[torch.Tensor]) -> list[torch.Tensor]:
    """dE/dz_l = [eps_l] - f'(z_l) * (eps_{l-1} W_{l-1}) for l = 1..L, from the errors ``eps``."""
    grads = []
    for l in range(1, model.L + 1):
        g = -model.df(z[l - 1]) * model.back(l - 1, eps[l - 1])
        if l < model.L or model.prior_mean is not None:
            g = g + eps[l]
        grads.append(g)
    return grads


def bu_latent_grad(model: PCN, x: torch.Tensor, z: list[torch.Tensor]) -> list[torch.Tensor]:
    """dE_bu/dz_l = alpha delta_l - alpha f'(z_l) * (delta_{l+1} V_l) for l = 1..L (the second
    term for l < L), with alpha = ``model.bottom_up``."""
    d, a = bu_errors(model, x, z), model.bottom_up
    grads = []
    for l in range(1, model.L + 1):
        g = a * d[l - 1]
        if l < model.L:
            g = g - a * model.df(z[l - 1]) * model.bu_back(l, d[l])
        grads.append(g)
    return grads


def energy_scale(model: PCN, norm: str) -> float:
    """s of the normalised energy s E used in the objectives: 1 for ``sum``; 2 / d_0 for
    ``pixel`` (then the data term s 1/2 ||eps_0||^2 is the per-pixel MSE of the prediction)."""
    if norm == "sum":
        return 1.0
    if norm == "pixel":
        return 2.0 / model.layers[0]
    raise ValueError(f"unknown energy_norm {norm!r}; allowed: pixel, sum")


def cross_entropy(model: PCN, zL: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE of the readout per sample, shape (batch,)."""
    return F.cross_entropy(model.readout(zL), y, reduction="none")


def onehot(y: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """onehot(y) as (batch, n), by comparison with 0..n-1 (no check of y's range, so it also
    runs under ``vmap``, where F.one_hot's data-dependent check cannot)."""
    return (y.unsqueeze(1) == torch.arange(n, device=y.device)).to(dtype)


def ce_latent_grad(model: PCN, zL: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(C z_L + c, y) / d z_L = (softmax(C z_L + c) - onehot(y)) C, per sample."""
    p = torch.softmax(model.readout(zL), dim=1) - onehot(y, model.C.shape[0], zL.dtype)
    return p @ model.C
