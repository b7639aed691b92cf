"""Inference-dynamics probe of a trained run: traces, sensitivity, linear probes, alignment, clamping.

``pcn probe --run RUN_DIR --out trace.csv [--steps N] [--trace-factor K]`` writes the per-step
trace table; the other outputs (``--sensitivity``, ``--linear-probes``, ``--alignment``,
``--robustness``, ``--clamp``, ``--images``) are optional, and so is the trace (at least one
output must be asked for).
Everything here runs test-mode inference (x only, no label) with the run's own init, eta and
momentum, on the first ``--n-test`` images of the run's test split.
See docs/probing.md for every table's columns.

This module holds the traces, the test-time sensitivity and the command line; the linear
probes, the gradient alignment, the corrupted-input inference and the clamping modes live in
pcn/study/linear_probe.py, pcn/study/alignment.py, pcn/study/robustness.py and
pcn/study/clamp.py (its generations scored by the judge of pcn/study/judge.py).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from pcn.study import data
from pcn.core.stepsize import inference_eta
from pcn.core.inference import init_latents
from pcn.fast.dispatch import infer
from pcn.core.model import PCN

TRACE_COLUMNS = ["step", "layer", "metric", "value"]
SENSITIVITY_COLUMNS = ["eta_factor", "eta", "T", "metric", "value"]
SENSITIVITY_METRICS = ("acc", "recon_mse", "gen_mse", "energy", "nonfinite")
ETA_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
N_IMAGES = 8


# ----------------------------------------------------------------------------- run loading

def load_run(run_dir: str | Path, device: str = "cpu",
             data_dir: str | None = None) -> tuple[torch.nn.Module, dict, data.Dataset]:
    """(model, config, dataset) of a trained run folder (model.pt; data as the run saw it,
    its data_dir replaced by ``data_dir`` when given)."""
    from pcn.study.store import load_model

    model, cfg = load_model(Path(run_dir) / "model.pt", device)
    model.eval()
    dcfg = dict(cfg, data_dir=data_dir) if data_dir else cfg
    return model, cfg, data.load(dcfg)


def default_probe_steps(T_train: int) -> int:
    """T_probe = 10 x the training T (at least 10)."""
    return 10 * max(int(T_train), 1)


def trace_steps(T_train: int, T_probe: int, trace_factor: int | None = None) -> int:
    """Length of the trace: ``trace_factor`` x the training T (at least 1 step) when given,
    else T_probe (the steps of the other probes)."""
    if trace_factor is None:
        return T_probe
    return max(int(trace_factor) * max(int(T_train), 1), 1)


def record_steps(T_train: int, T_probe: int, n_log: int = 30) -> list[int]:
    """Steps at which the trace is recorded: every step 0..min(T_train, T_probe), then
    ``n_log`` log-spaced steps from T_train to T_probe (rounded), and the decades of the
    training T, 10^k x T_train <= T_probe (so 10 T and 100 T are recorded exactly, as the
    summary's step columns read them); T_probe always included."""
    steps = set(range(min(T_train, T_probe) + 1)) | {T_probe}
    if T_probe > max(T_train, 1) and n_log > 0:
        steps |= {int(round(s)) for s in np.geomspace(max(T_train, 1), T_probe, n_log)}
    decade = max(int(T_train), 1)
    while decade <= T_probe:
        steps.add(decade)
        decade *= 10
    return sorted(steps)


# ----------------------------------------------------------------------------- traces

class TraceRecorder:
    """Callback for ``pcn.core.inference.infer`` that sums per-sample metrics over batches at the
    recorded steps, and finds the first step at which any latent became non-finite."""

    def __init__(self, model: PCN, steps: list[int]):
        self.model, self.steps = model, set(steps)
        self.sums: dict[tuple[int, str, str], float] = defaultdict(float)
        self.n = 0
        self.first_nonfinite = math.inf
        self.x = self.y = None

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> "TraceRecorder":
        """Set the batch the next inference runs on."""
        self.x, self.y = x, y
        self.n += len(y)
        return self

    def _add(self, t: int, layer: str, metric: str, value: torch.Tensor) -> None:
        self.sums[(t, layer, metric)] += float(value)

    def __call__(self, t: int, z: list, eps: list, dz: list | None) -> None:
        if t < self.first_nonfinite and not all(bool(torch.isfinite(a).all()) for a in list(z) + list(eps)):
            self.first_nonfinite = t
        if t in self.steps:
            self._layers(t, z, eps, dz)
            self._network(t, z, eps, dz)

    def _layers(self, t: int, z: list, eps: list, dz: list | None) -> None:
        """energy_l, error_norm_l (eps layers), z_norm_l and dz_norm_l (latent layers)."""
        for l, e in enumerate(eps):
            self._add(t, str(l), "energy", 0.5 * (e * e).sum())
            self._add(t, str(l), "error_norm", e.norm(dim=1).sum())
        for l, zl in enumerate(z, start=1):
            self._add(t, str(l), "z_norm", zl.norm(dim=1).sum())
            if dz is not None:
                self._add(t, str(l), "dz_norm", dz[l - 1].norm(dim=1).sum())

    def _network(self, t: int, z: list, eps: list, dz: list | None) -> None:
        """Whole-network metrics (layer "all")."""
        m, x, y = self.model, self.x, self.y
        d = x.shape[1]
        logits = m.readout(z[-1])
        finite = torch.stack([torch.isfinite(a).all(1) for a in list(z) + list(eps)]).all(0)
        self._add(t, "all", "energy", 0.5 * sum((e * e).sum() for e in eps))
        if dz is not None:
            self._add(t, "all", "dz_norm", torch.sqrt(sum((dl * dl).sum(1) for dl in dz)).sum())
        self._add(t, "all", "acc", ((logits.argmax(1) == y) & finite).sum())
        self._add(t, "all", "ce", F.cross_entropy(logits, y, reduction="sum"))
        self._add(t, "all", "recon_mse", (eps[0] * eps[0]).sum() / d)
        self._add(t, "all", "gen_mse", ((m.generate(z[-1]) - x) ** 2).sum() / d)
        self._add(t, "all", "nonfinite", (~finite).sum())

    def rows(self) -> list[dict]:
        """Tidy rows (TRACE_COLUMNS): sums turned into means over samples."""
        rows = [dict(step=t, layer=layer, metric=metric, value=v / max(self.n, 1))
                for (t, layer, metric), v in sorted(self.sums.items(), key=_row_order)]
        last = max(self.steps) if self.steps else 0
        first = self.first_nonfinite if math.isfinite(self.first_nonfinite) else float("nan")
        rows.append(dict(step=last, layer="all", metric="first_nonfinite_step", value=first))
        return rows


def _row_order(item: tuple) -> tuple:
    """Sort key: step, then numbered layers in order, then "all", then metric."""
    (t, layer, metric), _ = item
    return (t, layer == "all", int(layer) if layer.isdigit() else 0, metric)


@torch.no_grad()
def run_recorder(model: PCN, x: torch.Tensor, y: torch.Tensor, cfg: dict, steps: list[int],
                 eta: float, batch: int = 1000) -> TraceRecorder:
    """Test-mode inference (x only) for max(steps) steps from the run's init, in batches,
    recording at ``steps``; returns the filled recorder."""
    rec = TraceRecorder(model, steps)
    for i in range(0, len(y), batch):
        xb, yb = x[i:i + batch], y[i:i + batch]
        z0 = init_latents(model, xb, cfg["init"])
        infer(model, xb, z0, max(steps), eta, momentum=cfg["momentum"], callback=rec.batch(xb, yb))
    return rec


def trace_table(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict,
                T_probe: int, n_log: int = 30, batch: int = 1000) -> pd.DataFrame:
    """The trace table (TRACE_COLUMNS) of test-mode inference for T_probe steps at the run's
    eta; an empty table with the same columns for a model without inference (ae)."""
    if not isinstance(model, PCN):
        return pd.DataFrame(columns=TRACE_COLUMNS)
    steps = record_steps(cfg["T"], T_probe, n_log)
    rec = run_recorder(model, x, y, cfg, steps, inference_eta(model, cfg), batch)
    return pd.DataFrame(rec.rows(), columns=TRACE_COLUMNS)


# ----------------------------------------------------------------------------- sensitivity

def sensitivity_steps(T_train: int) -> list[int]:
    """Test-time T grid: 0, 1, 2, 5, T/2, T, 2T, 5T, 10T (T = training T, at least 1)."""
    T = max(int(T_train), 1)
    return sorted({0, 1, 2, 5, T // 2, T, 2 * T, 5 * T, 10 * T})


def sensitivity_table(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict,
                      eta_factors: tuple[float, ...] = ETA_FACTORS, batch: int = 1000) -> pd.DataFrame:
    """acc, recon_mse, gen_mse, energy and the non-finite fraction after test-time inference,
    on the full grid eta = factor x training eta  x  T in ``sensitivity_steps`` (one inference
    per eta, read off at every T).  Empty (same columns) for a model without inference."""
    if not isinstance(model, PCN):
        return pd.DataFrame(columns=SENSITIVITY_COLUMNS)
    Ts = sensitivity_steps(cfg["T"])
    rows = []
    for k in eta_factors:
        eta = float(k) * inference_eta(model, cfg)
        for r in run_recorder(model, x, y, cfg, Ts, eta, batch).rows():
            if r["layer"] == "all" and r["metric"] in SENSITIVITY_METRICS:
                rows.append(dict(eta_factor=float(k), eta=eta, T=r["step"], metric=r["metric"], value=r["value"]))
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


# ----------------------------------------------------------------------------- images

@torch.no_grad()
def image_arrays(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict) -> dict[str, np.ndarray]:
    """A few test digits with the model's reconstruction and generation, as float32 arrays
    (n, d) on the [-1, 1] pixel scale, and their labels:

    - ``x``: the images; ``y``: their labels (int64);
    - ``recon``: mu_0, the model's own prediction of x after test-mode inference for eval T
      steps (x clamped), as ``recon_mse`` in pcn/study/evaluate.py;
    - ``gen``: the pure top-down pass ``model.generate(z_L)`` from the inferred top latent
      alone, as ``gen_mse``.
    An ``ae`` has no inference: ``recon`` and ``gen`` are both its decoder output x_hat.
    Non-finite values (a diverged run) are kept as they are (nan / inf)."""
    from pcn.study.evaluate import eval_T

    if isinstance(model, PCN):
        z, eps = infer(model, x, init_latents(model, x, cfg["init"]), eval_T(cfg), inference_eta(model, cfg),
                       momentum=cfg["momentum"])
        recon, gen = x - eps[0], model.generate(z[-1])
    else:
        recon = gen = model(x)[1]
    out = {k: v.detach().float().cpu().numpy() for k, v in dict(x=x, recon=recon, gen=gen).items()}
    out["y"] = y.detach().cpu().numpy().astype(np.int64)
    return out


def save_images(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict, path: str | Path) -> None:
    """``image_arrays`` of (x, y) to an .npz file (keys x, recon, gen, y)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # a file handle: np.savez would append .npz to another suffix
        np.savez(fh, **image_arrays(model, x, y, cfg))


# ----------------------------------------------------------------------------- command line

def _int_list(text: str) -> list[int]:
    """'0,20,200' -> [0, 20, 200]."""
    return [int(s) for s in text.split(",") if s.strip()]


def _float_list(text: str) -> list[float]:
    """'0.25,1,4' -> [0.25, 1.0, 4.0]."""
    return [float(s) for s in text.split(",") if s.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pcn probe`` (every output is optional; at least one must be given)."""
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="trained run folder (model.pt, config.json)")
    p.add_argument("--out", metavar="FILE.csv", help="trace table CSV (step, layer, metric, value)")
    p.add_argument("--steps", type=int, metavar="N", help="T_probe, inference steps of the trace (default 10 x training T)")
    p.add_argument("--trace-factor", type=int, metavar="K",
                   help="the trace runs K x training T steps (default: --steps, T_probe); the workflow's probe.trace_factor")
    p.add_argument("--log-points", type=int, default=30, metavar="N", help="log-spaced trace steps past training T (default 30)")
    p.add_argument("--n-test", type=int, default=1000, metavar="N", help="first N test images probed (default 1000)")
    p.add_argument("--n-train", type=int, default=5000, metavar="N", help="first N training images that fit the linear probes (default 5000)")
    p.add_argument("--batch", type=int, default=1000, metavar="N", help="inference batch size (default 1000)")
    p.add_argument("--sensitivity", metavar="FILE.csv", help="write the test-time T x eta sensitivity table (CSV)")
    p.add_argument("--eta-factors", type=_float_list, default=list(ETA_FACTORS), metavar="F,F,...",
                   help="eta multipliers of the sensitivity grid (default 0.25,0.5,1,2,4)")
    p.add_argument("--linear-probes", metavar="FILE.csv", help="write the per-layer linear probe table (CSV)")
    p.add_argument("--probe-at", type=_int_list, metavar="T,T,...", help="inference steps at which latents are probed (default: eval T)")
    p.add_argument("--alignment", metavar="FILE.csv", help="write the PC-vs-BP gradient alignment table (CSV)")
    p.add_argument("--align-batch", type=int, default=128, metavar="N", help="training images in the alignment batch (default 128)")
    p.add_argument("--align-T", type=_int_list, metavar="T,T,...", help="inference lengths of the alignment (default: T, 10T)")
    p.add_argument("--checkpoints", nargs="*", default=[], metavar="FILE.pt", help="extra model.pt/ckpt.pt files for the alignment")
    p.add_argument("--robustness", metavar="FILE.csv",
                   help="write accuracy and gen_mse after inference from corrupted test images (noise, occlusion) "
                        "at steps 0, T, 10 T (CSV; pcn/study/robustness.py)")
    p.add_argument("--judge", metavar="FILE.pt",
                   help="with --clamp: the dataset's judge classifier (pcn judge) that scores the label -> image "
                        "generations")
    p.add_argument("--gen-samples", type=int, default=None, metavar="K",
                   help="with --clamp: label -> image samples per class scored by the judge and the class means "
                        "(default 10; 0: none)")
    p.add_argument("--clamp", metavar="DIR", help="folder for the clamping modes (clamp.csv, PNG grids, clamp_images.npz)")
    p.add_argument("--images", metavar="FILE.npz",
                   help="write the first --n-images test digits with their reconstruction and generation (x, recon, gen, y)")
    p.add_argument("--n-images", type=int, default=N_IMAGES, metavar="N", help=f"test digits in --images (default {N_IMAGES})")
    p.add_argument("--data-dir", metavar="DIR", help="override the run's data_dir (folder with the raw IDX files)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto (cuda when torch sees a GPU, else cpu), cpu, cuda or mps (Apple silicon); default auto")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads")


def _write(df: pd.DataFrame, path: str | Path) -> None:
    """CSV write, creating the parent folder."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)


def _timed(log: Callable[[str], None], what: str, fn: Callable[[], pd.DataFrame], path: str) -> None:
    """Build one table, write it, log the time taken."""
    t0 = time.perf_counter()
    df = fn()
    _write(df, path)
    log(f"{what}: {len(df)} rows -> {path} ({time.perf_counter() - t0:.1f}s)")


def _alignment(args: argparse.Namespace, model: torch.nn.Module, cfg: dict, ds: data.Dataset) -> pd.DataFrame:
    """The alignment table of a run: initial weights (rebuilt from the seed), final weights and
    any --checkpoints, at the run's w and at w = 0."""
    from pcn.study import alignment
    from pcn.study.store import build_model, load_weights

    if not isinstance(model, PCN):
        return pd.DataFrame(columns=alignment.COLUMNS)
    dev = next(model.parameters()).device
    try:
        final = json.loads((Path(args.run) / "final.json").read_text())
    except (OSError, ValueError):  # missing or damaged: the epoch of the final weights is then unknown
        final = {}
    final = final if isinstance(final, dict) else {}
    sources = [("init", 0, build_model(cfg).to(dev)), ("final", final.get("epochs_done"), model)]
    for path in args.checkpoints:
        m, _, epoch = load_weights(path, str(dev))
        sources.append((Path(path).stem, epoch, m))
    x, y = ds.train.x[:args.align_batch].to(dev), ds.train.y[:args.align_batch].to(dev)
    ws = sorted({float(cfg["ce_weight"]), 0.0})
    Ts = args.align_T or sorted({cfg["T"], 10 * max(cfg["T"], 1)})
    return pd.DataFrame(alignment.alignment_table(sources, x, y, cfg, ws, Ts), columns=alignment.COLUMNS)


def run(args: argparse.Namespace) -> int:
    """``pcn probe``: load the run, write the requested tables."""
    from pcn.study import clamp, linear_probe
    from pcn.study.train import pick_device

    log = lambda s: print(f"pcn probe: {s}", file=sys.stderr, flush=True)  # noqa: E731
    outputs = ("out", "sensitivity", "linear_probes", "alignment", "robustness", "clamp", "images")
    if not any(getattr(args, k, None) for k in outputs):
        log("nothing to write: give --out, --sensitivity, --linear-probes, --alignment, --robustness, --clamp "
            "and/or --images")
        return 2
    if args.trace_factor is not None and args.trace_factor < 1:
        log(f"--trace-factor {args.trace_factor}: must be 1 or more")
        return 2
    if args.gen_samples is not None and args.gen_samples < 0:
        log(f"--gen-samples {args.gen_samples}: must be 0 or more")
        return 2
    if getattr(args, "judge", None) and not args.clamp:
        log("--judge scores the clamp job's generations: give --clamp DIR too")
        return 2
    if args.threads is not None and args.threads < 1:
        log(f"--threads {args.threads}: must be 1 or more")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    if not run_dir.is_dir():
        log(f"--run {run_dir}: {'is a file, not' if run_dir.exists() else 'no such'} run folder")
        return 1
    # Errors of the run's files (a damaged model.pt, missing data) are one line (pcn.cli.main).
    model, cfg, ds = load_run(run_dir, str(pick_device(args.device)), args.data_dir)
    dev = next(model.parameters()).device
    x, y = ds.test.x[:args.n_test].to(dev), ds.test.y[:args.n_test].to(dev)
    T_probe = args.steps or default_probe_steps(cfg["T"])
    log(f"{args.run}: model {cfg['model']}, {len(y)} test images, T_probe {T_probe}")
    if args.out:
        T_trace = trace_steps(cfg["T"], T_probe, args.trace_factor)
        _timed(log, f"trace ({T_trace} steps)",
               lambda: trace_table(model, x, y, cfg, T_trace, args.log_points, args.batch), args.out)
    if args.sensitivity:
        _timed(log, "sensitivity", lambda: sensitivity_table(model, x, y, cfg, tuple(args.eta_factors), args.batch),
               args.sensitivity)
    if args.linear_probes:
        xtr, ytr = ds.train.x[:args.n_train].to(dev), ds.train.y[:args.n_train].to(dev)
        _timed(log, "linear probes", lambda: linear_probe.probe_table(model, cfg, xtr, ytr, x, y, args.probe_at,
                                                                     args.batch), args.linear_probes)
    if args.alignment:
        _timed(log, "alignment", lambda: _alignment(args, model, cfg, ds), args.alignment)
    if args.robustness:
        from pcn.study import robustness

        _timed(log, "robustness", lambda: robustness.robustness_table(model, x, y, cfg, args.batch), args.robustness)
    if args.clamp:
        t0 = time.perf_counter()
        judge = None
        if args.judge:
            from pcn.study.judge import load_judge

            judge = load_judge(args.judge, str(dev))
        samples = clamp.GEN_SAMPLES if args.gen_samples is None else args.gen_samples
        clamp.run_clamp(model, cfg, ds.train.x[:args.n_train].to(dev), x, y, args.clamp, T_probe, judge=judge,
                        samples=samples)
        log(f"clamp -> {args.clamp} ({time.perf_counter() - t0:.1f}s)")
    if args.images:
        t0 = time.perf_counter()
        k = min(args.n_images, len(y))
        save_images(model, x[:k], y[:k], cfg, args.images)
        log(f"images: {k} test digits -> {args.images} ({time.perf_counter() - t0:.1f}s)")
    return 0
