"""Linear probes per layer (spec 4, after Rathjens & Wiskott): how much of the class and of the
image a layer's representation carries, read out linearly.

Features of layer l: the latent z_l after test-mode inference (x only, the run's init, eta,
momentum) for a given number of steps; layer 0 is the image x itself (a reference).  For the
``ae`` baseline, layer l is the encoder's l-th hidden output (after its activation; the last
is the linear latent), and ``step`` is 0 (no inference).

Features are centred and divided by one scalar per layer (mean feature variance 1, see
``standardise``).
- class decodability: multinomial logistic regression, fit on the training subset by L-BFGS
  (float64, zero init, strong-Wolfe line search, L2 1e-3 on the weights, at most 500
  iterations: deterministic), scored on the test set;
- linear reconstructability of x: ridge regression x ~ A z_l + a in closed form (penalty
  alpha = 1e-3 x n_train), test MSE per pixel on the [-1, 1] scale and
  R^2 = 1 - MSE / MSE of the mean training image.
Features that are not finite (a diverged run) give nan, never an error.
"""
from __future__ import annotations

import pandas as pd
import torch
import torch.nn.functional as F

from pcn.study.evaluate import eval_T
from pcn.core.stepsize import inference_eta
from pcn.core.inference import init_latents
from pcn.fast.dispatch import infer
from pcn.core.model import N_CLASSES, PCN

COLUMNS = ["step", "layer", "metric", "value"]
METRICS = ("probe_acc", "probe_train_acc", "probe_ce", "ridge_mse", "ridge_r2", "dim")
L2 = 1e-3
RIDGE = 1e-3
MAX_ITER = 500


@torch.no_grad()
def pcn_features(model: PCN, x: torch.Tensor, cfg: dict, steps: list[int], batch: int = 1000) -> dict[int, list[torch.Tensor]]:
    """{t: [x, z_1^t, ..., z_L^t]} after t steps of test-mode inference, for every t in
    ``steps`` (CPU float64)."""
    keep: dict[int, list[list[torch.Tensor]]] = {t: [] for t in steps}

    def grab(t: int, z: list, eps: list, dz: list | None) -> None:
        if t in keep:
            keep[t].append([zl.detach().double().cpu() for zl in z])

    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        infer(model, xb, init_latents(model, xb, cfg["init"]), max(steps), inference_eta(model, cfg),
              momentum=cfg["momentum"], callback=grab)
    xd = x.detach().double().cpu()
    return {t: [xd] + [torch.cat(parts) for parts in zip(*chunks)] for t, chunks in keep.items()}


@torch.no_grad()
def ae_features(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """[x, h_1, ..., h_L] of the ae encoder: each Linear's output after its activation (CPU float64)."""
    feats, h = [x.detach().double().cpu()], x
    mods = list(model.encoder)
    for i, mod in enumerate(mods):
        h = mod(h)
        if i + 1 == len(mods) or isinstance(mods[i + 1], torch.nn.Linear):  # end of a layer
            feats.append(h.detach().double().cpu())
    return feats


def standardise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features centred by the training mean and divided by one scalar per layer, the root mean
    square of the training feature stds (so the mean feature variance is 1; unlike a per-feature
    z-score this does not blow up nearly constant features such as border pixels)."""
    mean = train.mean(0)
    scale = float(train.var(0).mean().sqrt())
    scale = scale if scale > 1e-12 else 1.0
    return (train - mean) / scale, (test - mean) / scale


def fit_logistic(Z: torch.Tensor, y: torch.Tensor, l2: float = L2, max_iter: int = MAX_ITER) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (W, b) minimising mean CE + l2/2 ||W||^2 by L-BFGS with a
    strong-Wolfe line search from zero weights."""
    W = torch.zeros(Z.shape[1], N_CLASSES, dtype=Z.dtype, requires_grad=True)
    b = torch.zeros(N_CLASSES, dtype=Z.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(Z @ W + b, y) + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()


def fit_ridge(Z: torch.Tensor, X: torch.Tensor, alpha: float) -> torch.Tensor:
    """Closed-form ridge A = (Z^T Z + alpha I)^-1 Z^T X for centred Z, X."""
    G = Z.t() @ Z + alpha * torch.eye(Z.shape[1], dtype=Z.dtype)
    return torch.linalg.solve(G, Z.t() @ X)


def probe_layer(Ztr: torch.Tensor, ytr: torch.Tensor, Xtr: torch.Tensor,
                Zte: torch.Tensor, yte: torch.Tensor, Xte: torch.Tensor) -> dict[str, float]:
    """Logistic-regression accuracy/CE and ridge reconstruction MSE/R^2 of one layer's features
    (train -> test); all nan when the features are not finite."""
    out = dict.fromkeys(METRICS, float("nan"))
    out["dim"] = float(Ztr.shape[1])
    if not (torch.isfinite(Ztr).all() and torch.isfinite(Zte).all()):
        return out
    Str, Ste = standardise(Ztr, Zte)
    W, b = fit_logistic(Str, ytr)
    out["probe_train_acc"] = float(((Str @ W + b).argmax(1) == ytr).double().mean())
    out["probe_acc"] = float(((Ste @ W + b).argmax(1) == yte).double().mean())
    out["probe_ce"] = float(F.cross_entropy(Ste @ W + b, yte))
    xmean = Xtr.mean(0)
    A = fit_ridge(Str, Xtr - xmean, RIDGE * len(Xtr))
    mse = float(((Ste @ A + xmean - Xte) ** 2).mean())
    out["ridge_mse"] = mse
    out["ridge_r2"] = 1.0 - mse / float(((xmean - Xte) ** 2).mean())
    return out


def probe_features(feats_tr: list[torch.Tensor], feats_te: list[torch.Tensor], ytr: torch.Tensor,
                   yte: torch.Tensor, step: int, first: int = 0) -> list[dict]:
    """Tidy rows (COLUMNS) of ``probe_layer`` for the layers ``first``.. of one step's features
    (feats[0] is x, which is also the reconstruction target)."""
    rows = []
    for l in range(first, len(feats_tr)):
        out = probe_layer(feats_tr[l], ytr, feats_tr[0], feats_te[l], yte, feats_te[0])
        rows += [dict(step=step, layer=str(l), metric=k, value=v) for k, v in out.items()]
    return rows


def probe_table(model: torch.nn.Module, cfg: dict, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor,
                yte: torch.Tensor, steps: list[int] | None = None, batch: int = 1000) -> pd.DataFrame:
    """The linear-probe table: per layer (0 = x) and inference step (default: the run's eval T),
    test-set probe accuracy and ridge reconstruction; for an ae, its encoder layers at step 0.
    Layer 0 does not depend on the step: it is fitted once and its rows repeated per step."""
    ytr_c, yte_c = ytr.cpu(), yte.cpu()
    if not isinstance(model, PCN):
        rows = probe_features(ae_features(model, xtr), ae_features(model, xte), ytr_c, yte_c, 0)
        return pd.DataFrame(rows, columns=COLUMNS)
    steps = sorted(set(steps or [eval_T(cfg)]))
    ftr, fte = pcn_features(model, xtr, cfg, steps, batch), pcn_features(model, xte, cfg, steps, batch)
    ref = probe_features(ftr[steps[0]][:1], fte[steps[0]][:1], ytr_c, yte_c, 0)  # layer 0: x itself
    rows = []
    for t in steps:
        rows += [dict(r, step=t) for r in ref] + probe_features(ftr[t], fte[t], ytr_c, yte_c, t, first=1)
    return pd.DataFrame(rows, columns=COLUMNS)
