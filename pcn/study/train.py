"""Training of one run: any (dataset, model, rule, w, seed, hyper-parameters).

Writes to ``out``: config.json (resolved config), metrics.csv (one row per epoch),
final.json (config + final metrics), model.pt (loads back with ``load_model``).
Checkpoints every epoch to ``ckpt_dir/ckpt.pt`` (atomically); started again, a run resumes
from it and ends bitwise equal to an uninterrupted run on CPU.  A non-finite loss stops the
run cleanly: the outputs are written with diverged = true and where it happened.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from pcn.study import config as config_mod
from pcn.study import data
from pcn.core.ae import AE, ae_grads
from pcn.study.alignment import grad_alignment
from pcn.study.evaluate import evaluate
from pcn.study.store import atomic_save, build_model, write_text
from pcn.core.model import PCN
from pcn.fast.rules import rule

METRIC_COLUMNS = ["epoch", "train_loss", "train_energy", "train_ce", "train_acc", "val_acc", "test_acc",
                  "recon_mse", "gen_mse", "energy", "seconds", "diverged"]
ALIGN_COLUMNS = ["epoch", "layer", "metric", "value"]
ALIGN_BATCH = 128  # the first 128 training images: the fixed batch of the alignment log
# Keys that say where data lives, not what is computed: they may change on resume.
LOCATION_KEYS = ("data_dir", "data_root")


def build_optimizer(cfg: dict, params) -> torch.optim.Optimizer:
    kind, lr, wd = cfg["optimizer"], cfg["lr"], cfg["weight_decay"]
    if kind in ("adam", "adamw"):
        # fused: one kernel for all parameters (3x faster steps; only rounding differs)
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, weight_decay=wd, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=cfg["sgd_momentum"], weight_decay=wd)


def build_scheduler(cfg: dict, opt: torch.optim.Optimizer, n_batches: int):
    """Per-batch lr schedule: constant, or cosine from lr to 0 over epochs * n_batches steps."""
    if cfg["lr_schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["epochs"] * n_batches)


def grads_fn(cfg: dict) -> Callable:
    return ae_grads if cfg["model"] == "ae" else rule(cfg["rule"])


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def _clean(v):
    """JSON-safe value: non-finite floats become null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=columns)
        wr.writeheader()
        wr.writerows(rows)
    os.replace(tmp, path)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a permutation fixed by (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one does."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _load_checkpoint(path: Path, cfg: dict) -> dict | None:
    if not path.exists():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=False)
    old = {k: v for k, v in ck["config"].items() if k not in LOCATION_KEYS}
    new = {k: v for k, v in cfg.items() if k not in LOCATION_KEYS}
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise RuntimeError(f"checkpoint {path} belongs to a run with another config (keys {diff} differ); "
                           f"delete it or use another --ckpt-dir")
    return ck


def _alignment_rows(model, ds: data.Dataset, cfg: dict, epoch: int, dev: torch.device) -> list[dict]:
    """PC-vs-BP gradient cosines per layer on the fixed alignment batch (pcn runs only)."""
    if not isinstance(model, PCN):
        return []
    x, y = ds.train.x[:ALIGN_BATCH].to(dev), ds.train.y[:ALIGN_BATCH].to(dev)
    return [dict(epoch=epoch, **r) for r in grad_alignment(model, x, y, cfg)]


def _fail_once_after(epoch: int, out: Path) -> None:
    """Test-only fault injection (tests/test_slurm_e2e.py): crash one run once, after a checkpoint.

    With PCN_FAIL_ONCE_AFTER_EPOCH=N and PCN_FAIL_ONCE_MARKER=<path> in the environment, the
    first run to save the checkpoint of epoch N creates the marker file (atomically; it holds
    that run's output folder) and exits with status 3.  Every later run, including the restarted
    one, sees the marker and carries on, so a retried job resumes from its checkpoint.  Unset
    (always, outside that test), this does nothing.
    """
    after, marker = os.environ.get("PCN_FAIL_ONCE_AFTER_EPOCH"), os.environ.get("PCN_FAIL_ONCE_MARKER")
    if not after or not marker or epoch != int(after):
        return
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{out}\n")
    print(f"pcn train: injected failure after the checkpoint of epoch {epoch} "
          f"(PCN_FAIL_ONCE_AFTER_EPOCH={after}, marker {marker}); exiting with status 3", file=sys.stderr, flush=True)
    raise SystemExit(3)


def train(cfg: dict, out: str | Path, ckpt_dir: str | Path | None = None, device: str = "auto",
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict:
    """Train one run to completion (or divergence); return the final metrics dict."""
    cfg = config_mod.resolve(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(ckpt_dir or out) / "ckpt.pt"
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    write_text(out / "config.json", config_mod.dumps(cfg))

    ds = data.load(cfg)
    train_x, train_y = ds.train.x.to(dev), ds.train.y.to(dev)
    n_eval = min(cfg["eval_train_size"], len(ds.train))
    model = build_model(cfg).to(dev)
    opt = build_optimizer(cfg, model.parameters())
    B, n = cfg["batch_size"], len(train_y)
    n_batches = math.ceil(n / B)
    sched = build_scheduler(cfg, opt, n_batches)
    rows: list[dict] = []
    align = _alignment_rows(model, ds, cfg, 0, dev)
    start_epoch, elapsed = 1, 0.0
    ck = _load_checkpoint(ckpt_path, cfg)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        rows, align, start_epoch, elapsed = ck["rows"], ck["align"], ck["epoch"] + 1, ck["elapsed"]
        log(f"resuming from {ckpt_path} after epoch {ck['epoch']}")

    step = grads_fn(cfg)
    diverged_at: tuple[int, int] | None = None
    for epoch in range(start_epoch, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        order = epoch_order(n, cfg["seed"], epoch).to(dev)
        sums = {"loss": 0.0, "energy": 0.0, "ce": 0.0}
        for b in range(n_batches):
            idx = order[b * B:(b + 1) * B]
            terms = step(model, train_x[idx], train_y[idx], cfg)
            vals = {k: float(terms[k]) for k in sums}
            if not all(math.isfinite(v) for v in vals.values()):
                diverged_at = (epoch, b)
                break
            opt.step()
            sched.step()
            for k in sums:
                sums[k] += vals[k]
            if n_batches >= 200 and (b + 1) % (n_batches // 4) == 0 and b + 1 < n_batches:
                log(f"  epoch {epoch} batch {b + 1}/{n_batches} loss {sums['loss'] / (b + 1):.4f}")
        seconds = time.perf_counter() - t0
        elapsed += seconds
        done = (b + 1) if diverged_at else n_batches
        tr = evaluate(model, ds.train.x[:n_eval], ds.train.y[:n_eval], cfg, dev)
        va = evaluate(model, ds.val.x, ds.val.y, cfg, dev) if len(ds.val) else {"acc": float("nan")}
        te = evaluate(model, ds.test.x, ds.test.y, cfg, dev)
        row = {"epoch": epoch, "train_loss": sums["loss"] / max(done, 1), "train_energy": sums["energy"] / max(done, 1),
               "train_ce": sums["ce"] / max(done, 1), "train_acc": tr["acc"], "val_acc": va["acc"],
               "test_acc": te["acc"], "recon_mse": te["recon_mse"], "gen_mse": te["gen_mse"],
               "energy": te["energy"], "seconds": seconds, "diverged": diverged_at is not None}
        rows.append(row)
        _write_csv(out / "metrics.csv", rows, METRIC_COLUMNS)
        if not diverged_at:
            align += _alignment_rows(model, ds, cfg, epoch, dev)
        _write_csv(out / "alignment.csv", align, ALIGN_COLUMNS)
        if diverged_at:
            log(f"epoch {epoch}: DIVERGED at batch {diverged_at[1]} (non-finite loss); stopping")
            break
        atomic_save({"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                      "rows": rows, "align": align, "config": cfg, "elapsed": elapsed}, ckpt_path)
        _fail_once_after(epoch, out)
        log(f"epoch {epoch}/{cfg['epochs']} loss {row['train_loss']:.4f} test_acc {te['acc']:.4f} "
            f"val_acc {va['acc']:.4f} recon_mse {te['recon_mse']:.4f} gen_mse {te['gen_mse']:.4f} "
            f"({seconds:.1f}s)")

    last = rows[-1] if rows else {}
    final = dict(cfg)
    final.update({k: _clean(last.get(k, float("nan"))) for k in
                  ("train_acc", "val_acc", "test_acc", "recon_mse", "gen_mse", "energy")})
    final.update({"wall_s": elapsed, "epochs_done": len(rows) - (1 if diverged_at else 0),
                  "diverged": diverged_at is not None,
                  "diverged_epoch": diverged_at[0] if diverged_at else None,
                  "diverged_batch": diverged_at[1] if diverged_at else None})
    atomic_save({"config": cfg, "state": {k: v.cpu() for k, v in model.state_dict().items()}}, out / "model.pt")
    write_text(out / "final.json", json.dumps(final, indent=2))
    return final
