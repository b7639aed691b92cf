"""A safe inference step size from a curvature bound, and a settling measure.

Gauss-Newton bound.  E = sum_l 1/2 ||eps_l||^2 with eps_l = z_l - W_l f(z_{l+1}) - b_l has the
Gauss-Newton Hessian H = J^T J (J: the Jacobian of the errors in z; the f'' terms are left out),
whose blocks for latent layer l (1 <= l <= L, D_l = diag f'(z_l), |f'| <= c) are

    H_ll       = [l < L or prior] I + D_l W_{l-1}^T W_{l-1} D_l
    H_l,l+1    = -W_l D_{l+1},       H_l,l-1 = -D_l W_{l-1}^T      (where those layers exist)

By block Gershgorin, lambda_max(H) <= max_l r_l with the block-row sums

    r_l = [l < L or prior] + c^2 ||W_{l-1}||^2 + c ||W_{l-1}|| + [l < L] c ||W_l||

(spectral norms).  A bottom-up term (``bpc``, weight alpha, weights V_l) adds
alpha (1 + c^2 ||V_l||^2 + c ||V_l|| + c ||V_{l-1}||) in the same way.  Gradient descent on a
quadratic is stable for eta < 2 / lambda_max, so eta = 1 / max_l r_l is stable with a factor-2
margin (which the left-out f'' terms eat into only where the errors are large).  The label
nudge beta CE adds at most beta ||C||^2 / 2 to the top block and is not included: ``safe_eta``
is the step of the free (test-time) inference, and the nudged phase uses the same step.
"""
from __future__ import annotations

import torch

from pcn.core.model import PCN

# max |f'| of each activation (gelu: 1.13 at x ~ 1.5).
SLOPE = {"tanh": 1.0, "relu": 1.0, "linear": 1.0, "gelu": 1.13}




@torch.no_grad()
def spectral_norm(w: torch.Tensor, iters: int = 6) -> float:
    """||w||_2 by power iteration on w^T w, warm-started from this tensor's last right singular
    vector (weights move little between calls, so a few iterations keep it at the top singular
    value; 100 on the first call; within 0.1 % of it on random matrices, whose top two singular values are close, and closer on trained weights).  An estimate from below that converges to ||w||_2 (an SVD per
    call cost 20-60 ms per matrix on CPU, more than a training step)."""
    key, w = w, w.detach()
    v = getattr(key, "_pcn_top_vector", None)        # kept on the tensor object itself
    if v is None or v.shape != w.shape[1:] or v.device != w.device or v.dtype != w.dtype:
        v = torch.ones(w.shape[1], dtype=w.dtype, device=w.device) / w.shape[1] ** 0.5
        iters = max(iters, 100)
    for _ in range(iters):
        u = w @ v
        v = w.t() @ u
        n = v.norm()
        if not torch.isfinite(n) or n == 0:
            return float(n)
        v = v / n
    key._pcn_top_vector = v
    return float((w @ v).norm())


def _norm(w: torch.Tensor) -> float:
    """Spectral norm ||w||_2 (``spectral_norm``)."""
    return spectral_norm(w)


def curvature_bound(model: PCN) -> float:
    """max_l r_l, the block-Gershgorin bound on lambda_max of the latent Gauss-Newton Hessian
    (dense weights only: a conv PCN is refused)."""
    if model.is_conv:
        raise ValueError("eta_mode 'safe': the curvature bound is written for dense weights; a conv PCN takes eta_mode fixed")
    c, L = SLOPE[model.activation], model.L
    nW = [_norm(w) for w in model.W]
    nV = [_norm(v) for v in model.V] if model.bottom_up > 0 else []
    rows = []
    for l in range(1, L + 1):       # latent layer l; W[l-1] predicts layer l-1 from it
        own = 1.0 if (l < L or model.prior_mean is not None) else 0.0
        r = own + c * c * nW[l - 1] ** 2 + c * nW[l - 1] + (c * nW[l] if l < L else 0.0)
        if nV:                      # delta_l (own), delta_{l+1} through V_l, and the V_{l-1} coupling
            r += model.bottom_up * (1.0 + (c * c * nV[l] ** 2 + c * nV[l] if l < L else 0.0)
                                    + c * (nV[l - 1] if l > 1 else 0.0))
        rows.append(r)
    return max(rows)


def safe_eta(model: PCN) -> float:
    """eta = 1 / curvature_bound(model): stable, with a factor-2 margin, for the free inference."""
    return 1.0 / curvature_bound(model)


def inference_eta(model: PCN, cfg: dict) -> float:
    """The step size of every inference of a run: ``eta`` (eta_mode fixed), or ``safe_eta`` of the
    current weights (eta_mode safe; recomputed per batch in training, per call in evaluation)."""
    if cfg.get("eta_mode", "fixed") == "safe" and isinstance(model, PCN):
        return safe_eta(model)
    eta = cfg["eta"]
    return eta if isinstance(eta, torch.Tensor) else float(eta)


def relative_update(z_new: list[torch.Tensor], z: list[torch.Tensor]) -> float:
    """||z' - z|| / ||z'|| over all latent layers and the batch (the settling measure: how much
    the last step still moved the latents)."""
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(z_new, z))
    den = sum(float((a ** 2).sum()) for a in z_new)
    return (num / den) ** 0.5 if den > 0 else float("nan")


def relative_update_t(z_new: list[torch.Tensor], z: list[torch.Tensor]) -> torch.Tensor:
    """``relative_update`` as a float64 0-d tensor (no host sync; runs under ``vmap``)."""
    num = sum(((a - b).double() ** 2).sum() for a, b in zip(z_new, z))
    den = sum((a.double() ** 2).sum() for a in z_new)
    return torch.where(den > 0, (num / den).sqrt(), torch.full_like(den, float("nan")))
