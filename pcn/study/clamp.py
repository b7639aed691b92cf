"""Clamping modes of one trained PCN (spec 4): which variables are clamped decides the task.

classify   image -> label: x clamped, test-mode inference (x only), readout of z_L.
generate   label -> image: x unclamped (no data layer); the class clamps z_L through the CE term:
           z descends F(z) = w_ce CE(C z_L + c, y) + sum_{l=1}^{L-1} 1/2 ||eps_l||^2 + prior(z_L),
           then x_hat = model.generate(z_L).  prior(z_L) = 1/2 ||z_L - m||^2 with m the model's
           prior mean when it has one, else the mean test-mode top latent of the training subset
           (without a prior the CE alone would push z_L without bound; with unit weight the
           step stays stable at any eta < 2).  Start: z_L = m, lower latents from a top-down
           pass (so every eps_l starts at 0).  Judged fairly (issue 23 item 4): K samples per
           class, the same descent from K starts (that one and the test-mode top latents of
           the first K - 1 training images), are scored by an independent classifier trained
           on real images (pcn/study/judge.py; judge_acc) and by the distance of their mean to
           the real class mean (class_mean_dist; ``sample_rows``).
complete   occluded image -> completed image: only the visible pixels v (top half: the first
           d/2 pixels, rows 0-13 of a 28x28 image; rows 0-15 of each CIFAR-10 colour plane) are clamped; the hidden pixels h are latents
           x_h too, initialised to the mean training image.  Each step the latents z take the
           run's gradient step on E (eta, momentum) and the hidden pixels a plain step of size
           ``pixel_step`` on dE/dx_h = eps_0[h] = x_h - mu_0[h] (no momentum; both from the same
           state).  The curvature of E in x_h is 1, so pixel_step = 1 (the default) sets x_h to
           the current prediction mu_0[h] (the exact minimum over x_h) and any pixel_step in
           (0, 2) is stable for that block; the fixed point is the same for every pixel_step:
           x_h = mu_0[h] and z at a minimum of the visible-pixel energy.  With pixel_step = eta
           (the rule before issue 11 item 7) the completion MSE of two 2-epoch models came
           within 0.001 of its 1000-step value after about 400 steps, with 1 after 100-200
           (docs/results.md).  The completion is mu_0[h] after ``steps`` steps.
All three use the run's eta and momentum; generate and complete run ``steps`` steps.

Completion is scored on the hidden pixels only (as it already was before issue 11 item 7):
MSE(p) = mean over images n and hidden pixels j of (p_nj - x_nj)^2; the visible pixels are
clamped and never enter the score.  Two baselines,
both fitted on the training images the job is given (at most PCA_MAX_FIT of them):
  mean   p = m, the mean training image;
  PCA    with m and the top k = 32 principal directions U (d x k, orthonormal columns) of the
         centred training images, the code c solves the ridge least squares over the visible
         rows  min_c ||U_v c + m_v - x_v||^2 + lambda ||c||^2, i.e.
         c = (U_v^T U_v + lambda I)^{-1} U_v^T (x_v - m_v), and p_h = U_h c + m_h.
         U_v^T U_v is badly conditioned (on MNIST its smallest singular values are about 0.04:
         some directions barely touch the top half), so the plain solve (lambda = 1e-6,
         ``pca_ls_mse``) overfits the visible pixels and predicts the hidden ones far worse than
         the mean image.  The PCA baseline ``pca_mse`` therefore uses the lambda of RIDGE_GRID
         with the lowest hidden-pixel MSE on a held-out fifth of the training images (PCA fitted
         on the other four fifths), then refits U on all of them; the test images never choose
         lambda.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from pcn.core.stepsize import inference_eta
from pcn.core.energy import cross_entropy, errors, latent_grad
from pcn.study.evaluate import eval_T
from pcn.core.inference import init_latents
from pcn.fast.dispatch import infer
from pcn.core.model import N_CLASSES, PCN
from pcn.errors import UsageError
from pcn.images import half_planes, rgb, to_display

COLUMNS = ["mode", "label", "metric", "value"]
PCA_K = 32                  # principal directions of the PCA baseline
PCA_MAX_FIT = 10_000        # training images the PCA baseline is fitted on (the first ones)
TINY_RIDGE = 1e-6           # lambda of the plain least-squares solve (pca_ls_mse)
RIDGE_GRID = (1e-6, 1e-3, 1e-2, 3e-2, 0.1, 0.2, 0.3, 1.0, 3.0)  # lambdas tried for pca_mse
PIXEL_STEP = 1.0            # step of the hidden-pixel latents in complete (stable in (0, 2))
GEN_SAMPLES = 10            # generations per class scored by the judge (generate_samples)


# ----------------------------------------------------------------------------- classify

@torch.no_grad()
def test_latents(model: PCN, x: torch.Tensor, cfg: dict, steps: int | None = None) -> list[torch.Tensor]:
    """Latents after test-mode inference (x only) for ``steps`` (default: eval T) steps."""
    T = eval_T(cfg) if steps is None else steps
    z, _ = infer(model, x, init_latents(model, x, cfg["init"]), T, inference_eta(model, cfg), momentum=cfg["momentum"])
    return z


def labels_of(logits: torch.Tensor) -> torch.Tensor:
    """argmax of each row; -1 (never a class) where the row is not finite."""
    return torch.where(torch.isfinite(logits).all(1), logits.argmax(1), torch.full_like(logits[:, 0], -1).long())


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Predicted labels (-1 where not finite): PCN readout after test-mode inference, or the
    ae's classifier head."""
    if isinstance(model, PCN):
        return labels_of(model.readout(test_latents(model, x, cfg)[-1]))
    return labels_of(model(x)[2])


def classify_rows(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> list[dict]:
    """Rows (COLUMNS): accuracy overall (label "all") and per true class."""
    hit = (predict(model, x, cfg) == y).double()
    rows = [dict(mode="classify", label="all", metric="acc", value=float(hit.mean()))]
    for c in range(N_CLASSES):
        sel = y == c
        acc = float(hit[sel].mean()) if sel.any() else float("nan")
        rows.append(dict(mode="classify", label=str(c), metric="acc", value=acc))
    return rows


# ----------------------------------------------------------------------------- generate

def latent_energy(model: PCN, z: list[torch.Tensor]) -> torch.Tensor:
    """Energy of the latent layers only, sum_{l=1}^{L-1} 1/2 ||z_l - mu_l||^2 per sample
    (plus the model's prior term if it has one); the data layer's term is left out."""
    total = z[0].new_zeros(z[0].shape[0])
    for l in range(1, model.L):
        e = z[l - 1] - model.predict(l, model.f(z[l]))
        total = total + 0.5 * (e * e).sum(1)
    if model.prior_mean is not None:
        total = total + 0.5 * ((z[-1] - model.prior_mean) ** 2).sum(1)
    return total


def top_down(model: PCN, zL: torch.Tensor) -> list[torch.Tensor]:
    """[z_1, ..., z_L] with z_L given and each lower latent its top-down prediction mu_l."""
    z = [zL]
    for l in reversed(range(1, model.L)):
        z.insert(0, model.predict(l, model.f(z[0])))
    return z


def _step(z: list[torch.Tensor], g: list[torch.Tensor], vel: list[torch.Tensor] | None,
          eta: float, momentum: float) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """One (momentum) gradient-descent step on a list of states, as in pcn.core.inference.infer."""
    if momentum > 0:
        vel = [momentum * v + gl for v, gl in zip(vel or [torch.zeros_like(gl) for gl in g], g)]
        g = vel
    return [zl - eta * gl for zl, gl in zip(z, g)], vel


def generate_from_labels(model: PCN, cfg: dict, m: torch.Tensor, steps: int,
                         w_ce: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One image per class: descend F = w_ce CE + latent energy + prior (mean ``m`` unless the
    model has its own prior) from the start described in the module docstring; return
    (model.generate(z_L) of shape (10, d), final latents)."""
    y = torch.arange(N_CLASSES, device=m.device)
    start = model.prior_mean if model.prior_mean is not None else m
    return descend_labels(model, cfg, m, start.detach().expand(N_CLASSES, -1).clone(), y, steps, w_ce)


def generate_samples(model: PCN, cfg: dict, m: torch.Tensor, starts: torch.Tensor, steps: int,
                     w_ce: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """K images per class: the descent of ``generate_from_labels`` from K top-latent starts
    (``starts``, K x d_L; the same K for every class).  Returns (images (10 K, d), labels (10 K,)),
    class c in rows c K .. c K + K - 1."""
    K = starts.shape[0]
    y = torch.arange(N_CLASSES, device=m.device).repeat_interleave(K)
    images, _ = descend_labels(model, cfg, m, starts.detach().repeat(N_CLASSES, 1), y, steps, w_ce)
    return images, y


def sample_starts(model: PCN, m: torch.Tensor, z_train: torch.Tensor, K: int) -> torch.Tensor:
    """K starts of ``generate_samples``: the start of ``generate_from_labels`` (the prior mean,
    else m) and the test-mode top latents of the first K - 1 training images (``z_train``)."""
    start = model.prior_mean if model.prior_mean is not None else m
    return torch.cat([start.detach().reshape(1, -1), z_train[:max(K - 1, 0)].detach()])


def descend_labels(model: PCN, cfg: dict, m: torch.Tensor, zL0: torch.Tensor, y: torch.Tensor, steps: int,
                   w_ce: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Descend F = w_ce CE(C z_L + c, y) + latent energy (+ 1/2 ||z_L - m||^2 without a model
    prior) for ``steps`` steps (the run's eta, momentum) from z_L = zL0 (one row per image, its
    lower latents top-down); return (model.generate(z_L), final latents)."""
    z = [zl.detach() for zl in top_down(model, zL0.detach())]
    vel, eta = None, inference_eta(model, cfg)
    for _ in range(steps):
        with torch.enable_grad():
            zr = [zl.requires_grad_(True) for zl in z]
            Fv = w_ce * cross_entropy(model, zr[-1], y) + latent_energy(model, zr)
            if model.prior_mean is None:
                Fv = Fv + 0.5 * ((zr[-1] - m) ** 2).sum(1)
            g = torch.autograd.grad(Fv.sum(), zr)
        z, vel = _step([zl.detach() for zl in z], list(g), vel, eta, cfg["momentum"])
    with torch.no_grad():
        return model.generate(z[-1]), z


def generate_rows(model: PCN, cfg: dict, images: torch.Tensor, zL: torch.Tensor,
                  x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Per class: p_class (readout probability of the clamped class at the final z_L), self_acc
    (the model classifies the generated image as that class, test mode), class_mean_mse (MSE to
    the mean test image of that class); label "all" holds their means."""
    with torch.no_grad():
        p = torch.softmax(model.readout(zL), 1).diagonal()
    pred = predict(model, images, cfg)
    rows = []
    for c in range(N_CLASSES):
        sel = y == c
        cm = float(((images[c] - x[sel].mean(0)) ** 2).mean()) if sel.any() else float("nan")
        vals = {"p_class": float(p[c]), "self_acc": float(pred[c] == c), "class_mean_mse": cm}
        rows += [dict(mode="generate", label=str(c), metric=k, value=v) for k, v in vals.items()]
    for k in ("p_class", "self_acc", "class_mean_mse"):
        vals = [r["value"] for r in rows if r["metric"] == k]
        rows.append(dict(mode="generate", label="all", metric=k, value=float(np.mean(vals))))
    return rows


def sample_rows(samples: torch.Tensor, labels: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                judge: torch.nn.Module | None = None) -> list[dict]:
    """Rows of the generation samples (``generate_samples``), per class c and their mean over
    the classes (label "all"), all on the [-1, 1] pixel scale:

    class_mean_dist  sqrt(mean_j (g_bar_cj - x_bar_cj)^2): per-pixel RMS distance of the mean
                     g_bar_c of class c's samples to the mean x_bar_c of the real test images of
                     class c;
    sample_spread    sqrt(mean_{k,j} (g_ckj - g_bar_cj)^2): how far the samples of a class lie
                     from their own mean (0: every start gave the same image);
    judge_acc        (with a judge) the fraction of class c's samples that the judge
                     (pcn/study/judge.py) classifies as c;
    and, label "all" only, n_samples (K per class) and judge_real_acc, the judge's accuracy on
    the real test images x (the reference a generation is held to)."""
    from pcn.study.judge import judge_labels

    rows, hits = [], None
    if judge is not None:
        hits = (judge_labels(judge, samples) == labels).double()
    for c in range(N_CLASSES):
        g, real = samples[labels == c], x[y == c]
        mean = g.mean(0)
        dist = float(((mean - real.mean(0)) ** 2).mean().sqrt()) if len(real) else float("nan")
        vals = {"class_mean_dist": dist, "sample_spread": float(((g - mean) ** 2).mean().sqrt())}
        if hits is not None:
            vals["judge_acc"] = float(hits[labels == c].mean())
        rows += [dict(mode="generate", label=str(c), metric=k, value=v) for k, v in vals.items()]
    for k in ("class_mean_dist", "sample_spread", "judge_acc"):
        vals = [r["value"] for r in rows if r["metric"] == k]
        if vals:
            rows.append(dict(mode="generate", label="all", metric=k, value=float(np.nanmean(vals))))
    rows.append(dict(mode="generate", label="all", metric="n_samples", value=float(len(labels) // N_CLASSES)))
    if judge is not None:
        rows.append(dict(mode="generate", label="all", metric="judge_real_acc",
                         value=float((judge_labels(judge, x) == y).double().mean())))
    return rows


# ----------------------------------------------------------------------------- complete

def top_half_mask(d: int, device: torch.device | None = None) -> torch.Tensor:
    """Visible-pixel mask: the top half of a row-major image, in every channel plane (grey: the
    first d // 2 pixels; 32 x 32 x 3 colour: rows 0-15 of each plane; pcn.images.half_planes)."""
    c, per = half_planes(d)
    mask = torch.zeros(c, per, dtype=torch.bool, device=device)
    mask[:, : per // 2] = True
    return mask.reshape(d)


class Completion(NamedTuple):
    """Result of ``complete``: pixel latents x_c (visible pixels = x), prediction mu_0, latents
    z_1..z_L, and two settling measures of the last step (nan when steps = 0):
    settle = ||s^T - s^{T-1}|| / ||s^T|| over the inferred state s = (z_1..z_L, x_h), as the
    summary's settle_T; change = ||mu_0[h]^T - mu_0[h]^{T-1}|| / ||mu_0[h]^T|| of the completion."""

    xc: torch.Tensor
    mu0: torch.Tensor
    z: list[torch.Tensor]
    settle: float
    change: float


def _rel(new: list[torch.Tensor], old: list[torch.Tensor]) -> float:
    """||new - old|| / ||new|| over all tensors together (nan when ||new|| = 0)."""
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(new, old))
    den = sum(float((a ** 2).sum()) for a in new)
    return math.sqrt(num / den) if den > 0 else float("nan")


@torch.no_grad()
def complete(model: PCN, cfg: dict, x: torch.Tensor, visible: torch.Tensor, fill: torch.Tensor,
             steps: int, pixel_step: float = PIXEL_STEP) -> Completion:
    """Infer the hidden pixels jointly with the latents (visible pixels clamped) for ``steps``
    steps: z <- z - eta dE/dz (with the run's momentum), x_h <- x_h - pixel_step eps_0[h], both
    from the same state (module docstring); returns a ``Completion``."""
    if steps < 0:
        raise UsageError(f"complete: steps = {steps}; must be 0 or more (--steps)")
    if not 0 < pixel_step < 2:
        raise UsageError(f"complete: pixel_step = {pixel_step}; must lie in (0, 2) (1 = exact minimum over x_h)")
    hid, hid_weight = ~visible, (~visible).to(x.dtype)
    xc = torch.where(visible, x, fill)
    z, vel = list(init_latents(model, xc, cfg["init"])), None
    settle = change = float("nan")
    eta = inference_eta(model, cfg)
    for t in range(steps):
        eps = errors(model, xc, z)
        z_new, vel = _step(z, latent_grad(model, z, eps), vel, eta, cfg["momentum"])
        xc_new = xc - pixel_step * eps[0] * hid_weight
        if t == steps - 1:
            mu_new = xc_new - errors(model, xc_new, z_new)[0]
            settle = _rel(z_new + [xc_new[:, hid]], z + [xc[:, hid]])
            change = _rel([mu_new[:, hid]], [(xc - eps[0])[:, hid]])
        z, xc = z_new, xc_new
    return Completion(xc, xc - errors(model, xc, z)[0], z, settle, change)


def hidden_mse(pred: torch.Tensor, x: torch.Tensor, visible: torch.Tensor) -> float:
    """Mean over images n and hidden pixels j (visible[j] False) of (pred_nj - x_nj)^2; the
    visible pixels of ``pred`` do not enter.  pred may be one image (d,) or a batch (n, d)."""
    hid = ~visible
    return float(((pred.expand_as(x)[:, hid] - x[:, hid]) ** 2).mean())


def fit_pca(xtr: torch.Tensor, k: int = PCA_K) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, U): the mean image m (d,) and the top k principal directions U (d x k, orthonormal
    columns, largest variance first): the eigenvectors of the k largest eigenvalues of the
    scatter matrix (X - m)^T (X - m) (= the top right singular vectors of X - m), in float64.
    eigh of the d x d scatter matrix is cheaper than an SVD of X - m for n > d."""
    n, d = xtr.shape
    if not 1 <= k <= min(n, d):
        raise UsageError(f"PCA baseline: k = {k} directions from {n} training images of {d} pixels; "
                         f"k must lie in 1..{min(n, d)}")
    x64 = xtr.double()
    m = x64.mean(0)
    xc = x64 - m
    return m, torch.linalg.eigh(xc.t() @ xc)[1][:, -k:].flip(1)


def pca_complete(x: torch.Tensor, visible: torch.Tensor, m: torch.Tensor, U: torch.Tensor,
                 ridge: float) -> torch.Tensor:
    """PCA prediction U c + m of whole images (n, d), dtype of x, where the code c minimises
    ||U_v c + m_v - x_v||^2 + ridge ||c||^2 over the visible rows v:
    c = (U_v^T U_v + ridge I)^{-1} U_v^T (x_v - m_v).  Needs ridge > 0 or at least k visible pixels."""
    Uv, k = U[visible], U.shape[1]
    if ridge < 0 or (ridge == 0 and Uv.shape[0] < k):
        raise UsageError(f"PCA baseline: ridge = {ridge} with {Uv.shape[0]} visible pixels and k = {k}; "
                         f"ridge must be > 0, or >= 0 with at least k visible pixels")
    r = x.double()[:, visible] - m[visible]
    c = torch.linalg.solve(Uv.t() @ Uv + ridge * torch.eye(k, dtype=U.dtype, device=U.device), Uv.t() @ r.t())
    return (U @ c).t().add(m).to(x.dtype)


def choose_ridge(xtr: torch.Tensor, visible: torch.Tensor, k: int = PCA_K,
                 grid: tuple[float, ...] = RIDGE_GRID) -> float:
    """The ridge of ``grid`` with the lowest hidden-pixel MSE of ``pca_complete`` on the last
    fifth of xtr, the PCA fitted on the first four fifths (ties: the first in grid)."""
    n_fit = len(xtr) - len(xtr) // 5
    if len(xtr) // 5 < 1 or n_fit < k:
        raise UsageError(f"PCA baseline: {len(xtr)} training images cannot choose the ridge "
                         f"(need at least {max(5, math.ceil(k * 5 / 4))} for k = {k}; --n-train)")
    m, U = fit_pca(xtr[:n_fit], k)
    held = xtr[n_fit:]
    scores = [hidden_mse(pca_complete(held, visible, m, U, lam), held, visible) for lam in grid]
    return grid[int(np.argmin(scores))]


class Baselines(NamedTuple):
    """Baseline predictions of whole images: the mean training image (d,; the completion's
    fill too), the PCA completion with the chosen ridge and with TINY_RIDGE (n, d), and the
    chosen ridge."""

    mean: torch.Tensor
    pca: torch.Tensor
    pca_ls: torch.Tensor
    ridge: float


def baselines(xtr: torch.Tensor, x: torch.Tensor, visible: torch.Tensor, k: int = PCA_K) -> Baselines:
    """The mean image of xtr and the PCA-k completions of x, the PCA fitted on the first
    PCA_MAX_FIT images of xtr.  The PCA runs on the CPU in float64 (mps has no float64); the
    predictions come back on x's device and dtype."""
    xfit, xq, vis = xtr[:PCA_MAX_FIT].cpu(), x.cpu(), visible.cpu()
    ridge = choose_ridge(xfit, vis, k)
    m, U = fit_pca(xfit, k)
    pca, pca_ls = (pca_complete(xq, vis, m, U, lam).to(x.device) for lam in (ridge, TINY_RIDGE))
    return Baselines(xtr.mean(0), pca, pca_ls, ridge)


def complete_rows(x: torch.Tensor, y: torch.Tensor, visible: torch.Tensor, res: Completion,
                  base: Baselines, pred: torch.Tensor) -> list[dict]:
    """Rows (label "all"), MSE on the hidden pixels only (``hidden_mse``): completion_mse (mu_0),
    pixel_latent_mse (the pixel latents x_h), mean_image_mse, pca_mse (ridge chosen on training
    images), pca_ls_mse (ridge TINY_RIDGE); pca_ridge (the chosen ridge); vs_pca =
    completion_mse / pca_mse and beats_pca (1 when completion_mse < pca_mse, else 0; nan when
    either is nan), and the same against the mean image (vs_mean_image, beats_mean_image);
    settle and completion_change (``Completion``); acc: readout accuracy after inference from
    the occluded image."""
    model_mse, pca_mse = hidden_mse(res.mu0, x, visible), hidden_mse(base.pca, x, visible)
    mean_mse = hidden_mse(base.mean, x, visible)
    vals = {"completion_mse": model_mse, "pixel_latent_mse": hidden_mse(res.xc, x, visible),
            "mean_image_mse": mean_mse, "pca_mse": pca_mse,
            "pca_ls_mse": hidden_mse(base.pca_ls, x, visible), "pca_ridge": base.ridge,
            "vs_pca": model_mse / pca_mse if pca_mse > 0 else float("nan"), "beats_pca": _beats(model_mse, pca_mse),
            "vs_mean_image": model_mse / mean_mse if mean_mse > 0 else float("nan"),
            "beats_mean_image": _beats(model_mse, mean_mse),
            "settle": res.settle, "completion_change": res.change, "acc": float((pred == y).double().mean())}
    return [dict(mode="complete", label="all", metric=k, value=v) for k, v in vals.items()]


def _beats(mse: float, baseline: float) -> float:
    """1.0 when mse < baseline, 0.0 when not, nan when either is not finite."""
    return float(mse < baseline) if math.isfinite(mse) and math.isfinite(baseline) else float("nan")


# ----------------------------------------------------------------------------- outputs

def save_grid(rows: list[np.ndarray], path: str | Path, row_titles: list[str], col_titles: list[str]) -> None:
    """PNG grid of images on the [-1, 1] scale (nan pixels drawn red), one list entry per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_r, n_c = len(rows), max(len(r) for r in rows)
    cmap = plt.get_cmap("gray").with_extremes(bad="red")
    fig, axes = plt.subplots(n_r, n_c, figsize=(1.1 * n_c, 1.2 * n_r), squeeze=False)
    for i, imgs in enumerate(rows):
        for j in range(n_c):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(imgs):
                img = to_display(np.asarray(imgs[j:j + 1], dtype=float))[0]
                if img.ndim == 3:  # colour (h, w, 3)
                    ax.imshow(rgb(img))
                else:
                    ax.imshow(np.clip(img, -1, 1), cmap=cmap, vmin=-1, vmax=1)
            if i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
        axes[i][0].text(-0.1, 0.5, row_titles[i], transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run_clamp(model: torch.nn.Module, cfg: dict, xtr: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              out_dir: str | Path, steps: int, n_show: int = 10, judge: torch.nn.Module | None = None,
              samples: int = GEN_SAMPLES) -> pd.DataFrame:
    """All three modes; writes out_dir/clamp.csv (COLUMNS), generated.png, completion.png and
    clamp_images.npz.  The generate mode also draws ``samples`` images per class
    (``generate_samples``), scored by ``judge`` when given (``sample_rows``).  An ae gets the
    classify rows only."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = classify_rows(model, x, y, cfg)
    if isinstance(model, PCN):
        rows += _generate(model, cfg, xtr, x, y, steps, out, judge, samples)
        rows += _complete(model, cfg, xtr, x, y, steps, out, n_show)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.to_csv(out / "clamp.csv", index=False)
    return df


def _generate(model: PCN, cfg: dict, xtr: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              steps: int, out: Path, judge: torch.nn.Module | None = None, samples: int = GEN_SAMPLES) -> list[dict]:
    """The generate mode with its image outputs (generated.png, generated.npy), and its samples."""
    z_train = test_latents(model, xtr, cfg)[-1]
    m = z_train.mean(0)
    images, z = generate_from_labels(model, cfg, m, steps)
    arr = images.detach().cpu().numpy()
    np.save(out / "generated.npy", arr)
    save_grid([arr], out / "generated.png", ["generated"], [str(c) for c in range(N_CLASSES)])
    rows = generate_rows(model, cfg, images, z[-1], x, y)
    if samples >= 1:
        many, labels = generate_samples(model, cfg, m, sample_starts(model, m, z_train, samples), steps)
        rows += sample_rows(many.detach(), labels, x, y, judge)
    return rows


def _complete(model: PCN, cfg: dict, xtr: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              steps: int, out: Path, n_show: int) -> list[dict]:
    """The complete mode with its image outputs (completion.png, clamp_images.npz: original,
    occluded, completed, visible mask and the true labels of the shown images)."""
    visible, fill = top_half_mask(x.shape[1], x.device), xtr.mean(0)
    res = complete(model, cfg, x, visible, fill, steps)
    with torch.no_grad():
        pred = labels_of(model.readout(res.z[-1]))
    shown = torch.where(visible, x, torch.full_like(x, float("nan")))[:n_show]
    completed = torch.where(visible, x, res.mu0)[:n_show]
    arrs = {k: v.detach().cpu().numpy() for k, v in
            dict(original=x[:n_show], occluded=shown, completed=completed, visible=visible, labels=y[:n_show]).items()}
    np.savez(out / "clamp_images.npz", **arrs)
    save_grid([arrs["original"], arrs["occluded"], arrs["completed"]], out / "completion.png",
              ["original", "occluded", "completed"], [str(int(c)) for c in y[:n_show]])
    return complete_rows(x, y, visible, res, baselines(xtr, x, visible), pred)
