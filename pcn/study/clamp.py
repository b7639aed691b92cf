"""Clamping modes of one trained PCN (spec 4): which variables are clamped decides the task.

classify   image -> label: x clamped, test-mode inference (x only), readout of z_L.
generate   label -> image: x unclamped (no data layer); the class clamps z_L through the CE term:
           z descends F(z) = w_ce CE(C z_L + c, y) + sum_{l=1}^{L-1} 1/2 ||eps_l||^2 + prior(z_L),
           then x_hat = model.generate(z_L).  prior(z_L) = 1/2 ||z_L - m||^2 with m the model's
           prior mean when it has one, else the mean test-mode top latent of the training subset
           (without a prior the CE alone would push z_L without bound; with unit weight the
           step stays stable at any eta < 2).  Start: z_L = m, lower latents from a top-down
           pass (so every eps_l starts at 0).
complete   occluded image -> completed image: only the visible pixels (top half: the first d/2
           pixels, rows 0-13 of a 28x28 image) are clamped; the occluded pixels are latents too,
           initialised to the mean training image and updated by the same gradient descent on E
           (dE/dx_o = eps_0 at the occluded pixels).  The completion is the model's prediction
           mu_0 at the occluded pixels after inference.
All three use the run's eta and momentum; generate and complete run ``steps`` steps.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pcn.core.stepsize import inference_eta
from pcn.core.energy import cross_entropy, errors, latent_grad
from pcn.study.evaluate import eval_T
from pcn.core.inference import init_latents
from pcn.fast.dispatch import infer
from pcn.core.model import N_CLASSES, PCN

COLUMNS = ["mode", "label", "metric", "value"]


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
        e = z[l - 1] - torch.addmm(model.b[l], model.f(z[l]), model.W[l].t())
        total = total + 0.5 * (e * e).sum(1)
    if model.prior_mean is not None:
        total = total + 0.5 * ((z[-1] - model.prior_mean) ** 2).sum(1)
    return total


def top_down(model: PCN, zL: torch.Tensor) -> list[torch.Tensor]:
    """[z_1, ..., z_L] with z_L given and each lower latent its top-down prediction mu_l."""
    z = [zL]
    for l in reversed(range(1, model.L)):
        z.insert(0, torch.addmm(model.b[l], model.f(z[0]), model.W[l].t()))
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
    z = [zl.detach() for zl in top_down(model, start.detach().expand(N_CLASSES, -1).clone())]
    vel = None
    for _ in range(steps):
        with torch.enable_grad():
            zr = [zl.requires_grad_(True) for zl in z]
            Fv = w_ce * cross_entropy(model, zr[-1], y) + latent_energy(model, zr)
            if model.prior_mean is None:
                Fv = Fv + 0.5 * ((zr[-1] - m) ** 2).sum(1)
            g = torch.autograd.grad(Fv.sum(), zr)
        z, vel = _step([zl.detach() for zl in z], list(g), vel, cfg["eta"], cfg["momentum"])
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


# ----------------------------------------------------------------------------- complete

def top_half_mask(d: int, device: torch.device | None = None) -> torch.Tensor:
    """Visible-pixel mask: the first d // 2 pixels (the top half of a row-major image)."""
    mask = torch.zeros(d, dtype=torch.bool, device=device)
    mask[: d // 2] = True
    return mask


@torch.no_grad()
def complete(model: PCN, cfg: dict, x: torch.Tensor, visible: torch.Tensor, fill: torch.Tensor,
             steps: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Infer the occluded pixels jointly with the latents (visible pixels clamped); return
    (pixel latents x_c, prediction mu_0, latents) after ``steps`` steps."""
    xc = torch.where(visible, x, fill)
    state = list(init_latents(model, xc, cfg["init"])) + [xc]
    hidden = (~visible).to(x.dtype)
    vel = None
    for _ in range(steps):
        eps = errors(model, state[-1], state[:-1])
        g = latent_grad(model, state[:-1], eps) + [eps[0] * hidden]
        state, vel = _step(state, g, vel, cfg["eta"], cfg["momentum"])
    xc, z = state[-1], state[:-1]
    mu0 = xc - errors(model, xc, z)[0]
    return xc, mu0, z


def complete_rows(x: torch.Tensor, y: torch.Tensor, visible: torch.Tensor, fill: torch.Tensor,
                  xc: torch.Tensor, mu0: torch.Tensor, pred: torch.Tensor) -> list[dict]:
    """Per-pixel MSE on the occluded pixels of the completion mu_0 (completion_mse), of the pixel
    latents (pixel_latent_mse) and of the mean training image (mean_image_mse, the baseline);
    acc: readout accuracy after inference from the occluded image."""
    occ = ~visible

    def mse(a: torch.Tensor) -> float:
        return float(((a[:, occ] - x[:, occ]) ** 2).mean())

    vals = {"completion_mse": mse(mu0), "pixel_latent_mse": mse(xc),
            "mean_image_mse": mse(fill.expand_as(x)), "acc": float((pred == y).double().mean())}
    return [dict(mode="complete", label="all", metric=k, value=v) for k, v in vals.items()]


# ----------------------------------------------------------------------------- outputs

def save_grid(rows: list[np.ndarray], path: str | Path, row_titles: list[str], col_titles: list[str]) -> None:
    """PNG grid of images on the [-1, 1] scale (nan pixels drawn red), one list entry per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_r, n_c = len(rows), max(len(r) for r in rows)
    d = rows[0].shape[1]
    side = math.isqrt(d)
    shape = (side, side) if side * side == d else (1, d)
    cmap = plt.get_cmap("gray").with_extremes(bad="red")
    fig, axes = plt.subplots(n_r, n_c, figsize=(1.1 * n_c, 1.2 * n_r), squeeze=False)
    for i, imgs in enumerate(rows):
        for j in range(n_c):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(imgs):
                ax.imshow(np.clip(imgs[j].reshape(shape), -1, 1), cmap=cmap, vmin=-1, vmax=1)
            if i == 0 and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
        axes[i][0].text(-0.1, 0.5, row_titles[i], transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run_clamp(model: torch.nn.Module, cfg: dict, xtr: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              out_dir: str | Path, steps: int, n_show: int = 10) -> pd.DataFrame:
    """All three modes; writes out_dir/clamp.csv (COLUMNS), generated.png, completion.png and
    clamp_images.npz.  An ae gets the classify rows only."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = classify_rows(model, x, y, cfg)
    if isinstance(model, PCN):
        rows += _generate(model, cfg, xtr, x, y, steps, out) + _complete(model, cfg, xtr, x, y, steps, out, n_show)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.to_csv(out / "clamp.csv", index=False)
    return df


def _generate(model: PCN, cfg: dict, xtr: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              steps: int, out: Path) -> list[dict]:
    """The generate mode with its image outputs (generated.png, generated.npy)."""
    m = test_latents(model, xtr, cfg)[-1].mean(0)
    images, z = generate_from_labels(model, cfg, m, steps)
    arr = images.detach().cpu().numpy()
    np.save(out / "generated.npy", arr)
    save_grid([arr], out / "generated.png", ["generated"], [str(c) for c in range(N_CLASSES)])
    return generate_rows(model, cfg, images, z[-1], x, y)


def _complete(model: PCN, cfg: dict, xtr: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              steps: int, out: Path, n_show: int) -> list[dict]:
    """The complete mode with its image outputs (completion.png, clamp_images.npz: original,
    occluded, completed, visible mask and the true labels of the shown images)."""
    visible, fill = top_half_mask(x.shape[1], x.device), xtr.mean(0)
    xc, mu0, z = complete(model, cfg, x, visible, fill, steps)
    with torch.no_grad():
        pred = labels_of(model.readout(z[-1]))
    shown = torch.where(visible, x, torch.full_like(x, float("nan")))[:n_show]
    completed = torch.where(visible, x, mu0)[:n_show]
    arrs = {k: v.detach().cpu().numpy() for k, v in
            dict(original=x[:n_show], occluded=shown, completed=completed, visible=visible, labels=y[:n_show]).items()}
    np.savez(out / "clamp_images.npz", **arrs)
    save_grid([arrs["original"], arrs["occluded"], arrs["completed"]], out / "completion.png",
              ["original", "occluded", "completed"], [str(int(c)) for c in y[:n_show]])
    return complete_rows(x, y, visible, fill, xc, mu0, pred)
