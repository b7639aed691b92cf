"""The image-grid figure (``images``): reconstructions, generation, label -> image and
occlusion completion per rule / model and CE weight, from the images and clamp tables."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pcn.images import rgb, to_display
from pcn.outputs.figures.common import (
    _prepare, _fmt, _extra_factors, _empty,
)


def _mosaic(pixels: np.ndarray, ncols: int) -> np.ndarray:
    """Images (n, d) tiled into one array, ``ncols`` per row, separated by a grey line: (H, W)
    for grey images, non-finite pixels nan (drawn red); (H, W, 3) RGB in [0, 1] for colour ones
    (CIFAR-10's 3 x 32 x 32), a pixel with a non-finite channel pure red (pcn.images)."""
    imgs = to_display(np.asarray(pixels, dtype=float))
    colour = imgs.ndim == 4
    imgs = rgb(imgs) if colour else np.where(np.isfinite(imgs), np.clip(imgs, -1, 1), np.nan)
    n, h, w = imgs.shape[:3]
    nrows = int(np.ceil(n / ncols))
    out = np.full((nrows * (h + 1) - 1, ncols * (w + 1) - 1) + imgs.shape[3:], 0.5 if colour else 0.0)
    for k in range(n):
        r, c = divmod(k, ncols)
        out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = imgs[k]
    return out


def _show(ax, pixels: np.ndarray, ncols: int, diverged: bool = False, note: str = "") -> None:
    cmap = plt.get_cmap("gray").with_extremes(bad="red")
    mosaic = _mosaic(pixels, ncols)
    if mosaic.ndim == 3:  # colour: already RGB in [0, 1]
        ax.imshow(mosaic, interpolation="nearest")
    else:
        ax.imshow(np.ma.masked_invalid(mosaic), cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(diverged)
        spine.set_color("red")
        spine.set_linewidth(2)
    text = "; ".join(t for t in ("DIVERGED" if diverged else "", note) if t)
    if text:
        ax.set_xlabel(text, fontsize=7, color="red" if diverged else "0.2")


def _image_index(table: dict, summary: pd.DataFrame | None) -> pd.DataFrame:
    """One row per image of the images table (``row`` = its row in ``pixels``, ``cls`` = its
    class) with its run's factors, line label (``line``), panel (``facet``) and diverged flag;
    factors missing from the summary are read from the run folder name."""
    from pcn.outputs.naming import parse_run_dir

    idx = pd.DataFrame({"run": table["run"], "kind": table["kind"], "pos": table["pos"], "cls": table["label"]})
    idx["row"] = np.arange(len(idx))
    runs = pd.DataFrame({"run": sorted(set(idx["run"]))})
    extra = _extra_factors(summary) if summary is not None else None
    if summary is not None and "run" in summary:
        keep = [c for c in summary.columns
                if c in ("run", "diverged", "dataset", "model", "rule", "ce_weight", "seed") or c in (extra or [])]
        runs = runs.merge(summary[keep], on="run", how="left")
    parsed = pd.DataFrame([parse_run_dir(r) for r in runs["run"]], index=runs.index)
    for c in parsed.columns:
        runs[c] = runs[c].fillna(parsed[c]) if c in runs else parsed[c]
    if "diverged" in runs:
        runs["diverged"] = runs["diverged"].fillna(False)
    runs = _prepare(runs, extra).rename(columns={"label": "line"})
    runs["seed"] = pd.to_numeric(runs["seed"], errors="coerce") if "seed" in runs else 0
    if "ce_weight" not in runs:
        runs["ce_weight"] = np.nan
    return idx.merge(runs, on="run", how="left")


def images(table: dict, summary: pd.DataFrame | None = None, clamp: pd.DataFrame | None = None,
           n_show: int = 8) -> plt.Figure:
    """Image grids per rule / model (rows) and CE weight (columns), for the lowest seed of each:
    (1) reconstruction mu_0 and top-down generation of the first test digits; (2) label -> image
    generation (classes 0-9, from the clamp outputs); (3) completion of images whose bottom half
    is occluded.  Diverged runs are framed red; non-finite and occluded pixels are red."""
    idx = _image_index(table, summary)
    pixels = table["pixels"]
    sections = [("Reconstruction (mu_0 after inference) and top-down generation of test digits",
                 [("recon", "reconstruction"), ("gen", "generation")], "x", "input x"),
                ("Label -> image: class clamped through the CE term (classes 0-9)",
                 [("generated", "generated")], None, None),
                ("Occlusion: bottom half hidden (red), completed by inference", [("completed", "completed")],
                 "occluded", "occluded input")]
    datasets = sorted(set(idx["facet"].astype(str))) or [""]
    weights = sorted(set(idx["ce_weight"].dropna().astype(float))) or [float("nan")]
    metrics = _clamp_notes(clamp)
    plan = []  # (dataset, section, rows); a row = (title, kind, line label or None)
    for ds in datasets:
        sub = idx[idx["facet"].astype(str) == ds]
        lines = sorted(set(sub["line"]), key=lambda s: (s.startswith(("ae", "cre")), s))
        for title, kinds, ref_kind, ref_title in sections:
            rows = [(ref_title, ref_kind, None)] if ref_kind and (sub["kind"] == ref_kind).any() else []
            for line in lines:
                for kind, name in kinds:
                    if kind == "gen" and line.startswith(("ae", "cre")):
                        continue  # an ae's (cre's) generation from its latent is its reconstruction
                    if ((sub["line"] == line) & (sub["kind"] == kind)).any():
                        rows.append((f"{line}\n{name}", kind, line))
            if rows:
                plan.append((ds, title, rows))
    if not plan:
        fig, ax = plt.subplots(figsize=(6, 3))
        _empty(ax, "no images")
        return fig
    ncols = {"generated": 5}
    cell_w = 2.3
    heights = [1.35 * len(r) + (0.85 if k == 0 else 0.6) for k, (_, _, r) in enumerate(plan)]
    fig = plt.figure(figsize=(1.6 + cell_w * len(weights), sum(heights)))
    subfigs = np.atleast_1d(fig.subfigures(len(plan), 1, height_ratios=heights))
    for k, (sf, (ds, title, rows)) in enumerate(zip(subfigs, plan)):
        note = "\n(rows: rule / model; columns: CE weight w; lowest seed; red frame = diverged run)" if k == 0 else ""
        sf.suptitle((f"{ds}: {title}" if ds else title) + note, fontsize=9, x=0.02, ha="left")
        height = heights[k]
        top = 1 - (height - 1.35 * len(rows) + 0.05) / height
        sf.subplots_adjust(left=1.5 / fig.get_figwidth(), right=0.98, top=top,
                           bottom=0.1 / height,
                           hspace=0.3, wspace=0.08)
        axes = sf.subplots(len(rows), len(weights), squeeze=False)
        sub = idx[idx["facet"].astype(str) == ds]
        for i, (row_title, kind, line) in enumerate(rows):
            for j, w in enumerate(weights):
                ax = axes[i][j]
                ax.axis("off")
                if line is None:  # reference row: the same test images in every run, drawn once
                    if j > 0:
                        continue
                    sel = sub[sub["kind"] == kind]
                else:
                    sel = sub[(sub["kind"] == kind) & (sub["line"] == line)]
                    if not pd.isna(w):
                        sel = sel[np.isclose(sel["ce_weight"].astype(float), w)]
                if sel.empty:
                    continue
                run = sel.sort_values(["seed", "run"])["run"].iloc[0]
                sel = sel[sel["run"] == run].sort_values("pos").head(10 if kind == "generated" else n_show)
                ax.axis("on")
                k = len(sel)
                _show(ax, pixels[sel["row"].to_numpy()], ncols.get(kind, int(np.ceil(k / 2)) if k > 4 else k),
                      bool(sel["diverged"].iloc[0]) if line is not None else False,
                      metrics.get((run, kind), "") if line is not None else "")
            axes[i][0].text(-0.06, 0.5, row_title, transform=axes[i][0].transAxes, ha="right", va="center",
                            fontsize=8)
        for j, w in enumerate(weights):
            axes[0][j].set_title(f"w = {_fmt(w)}", fontsize=8)
    return fig


def _clamp_notes(clamp: pd.DataFrame | None) -> dict:
    """{(run, kind): short text} from the clamp table: self-classification of the generated
    images and completion MSE on the hidden pixels against the mean-image and (where the table
    has it) PCA baselines."""
    if clamp is None or clamp.empty or "run" not in clamp:
        return {}
    c = clamp[clamp["label"].astype(str) == "all"]
    notes = {}
    for run, g in c.groupby("run"):
        v = {(m, k): float(x) for m, k, x in zip(g["mode"], g["metric"], pd.to_numeric(g["value"], errors="coerce"))}
        if ("generate", "self_acc") in v:
            notes[(run, "generated")] = f"self-classified {v[('generate', 'self_acc')]:.0%}"
        if ("complete", "completion_mse") in v:
            pca = f", PCA {v[('complete', 'pca_mse')]:.3f}" if ("complete", "pca_mse") in v else ""
            notes[(run, "completed")] = (f"MSE {v[('complete', 'completion_mse')]:.3f} "
                                         f"(mean img {v.get(('complete', 'mean_image_mse'), float('nan')):.3f}{pca})")
    return notes
