"""Training of one run: any (dataset, model, rule, w, seed, hyper-parameters).

Writes to ``out``: config.json (resolved config + code version + data files read),
metrics.csv (one row per epoch), alignment.csv, final.json (config + final metrics), model.pt
(loads back with ``load_model``).  Checkpoints every epoch to ``ckpt_dir/ckpt.pt`` (atomically,
with a SHA-256; the one before is kept as ``ckpt.pt.prev``); started again, a run resumes from
the newest intact checkpoint and ends bitwise equal to an uninterrupted run on CPU, and every
output is written again.  A damaged checkpoint is moved aside (``ckpt.pt.<reason>``) with a
warning.  A run folder or checkpoint of another config is refused before anything is written
(or, with ``restart_if_changed``, its checkpoint is moved aside and the run starts afresh), and so
is a run folder that another ``pcn train`` is running in (an OS lock, ``.pcn-train.lock``).
A non-finite loss stops the run cleanly: the outputs are written with diverged = true and
where it happened.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from pcn.core.ae import ae_grads
from pcn.core.model import PCN
from pcn.core.stepsize import spectral_norm
from pcn.errors import PcnError, UsageError
from pcn.study import config as config_mod
from pcn.study import data, provenance, runlock, store
from pcn.study.alignment import grad_alignment
from pcn.study.evaluate import evaluate
from pcn.study.store import atomic_save, build_model, write_text
from pcn.fast.rules import rule

METRIC_COLUMNS = ["epoch", "train_loss", "train_energy", "train_ce", "train_acc", "val_acc", "test_acc",
                  "recon_mse", "gen_mse", "energy", "train_settle", "train_nudge_gap", "seconds", "diverged"]
ALIGN_COLUMNS = ["epoch", "layer", "metric", "value"]
ALIGN_BATCH = 128  # the first 128 training images: the fixed batch of the alignment log
# Keys that say where data lives, not what is computed: they may change on resume.
LOCATION_KEYS = ("data_dir", "data_root")
# Keys of config.json / final.json that record what a run was computed with (code version,
# device, data files read), not what it computes: ignored when a run folder or checkpoint is matched.
PROVENANCE_KEYS = provenance.CODE_KEYS + provenance.COMPUTE_KEYS + ("data_files",)
IGNORED_KEYS = LOCATION_KEYS + PROVENANCE_KEYS
OUTPUT_FILES = ("config.json", "metrics.csv", "alignment.csv", "final.json", "model.pt")


class RefusedError(UsageError):
    """The run folder or checkpoint belongs to a run with another config."""


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


def grads_fn(cfg: dict, weight_step: Callable[[], None] | None = None) -> Callable:
    """The batch-gradient function of a run; ``ipc`` also gets the optimiser's ``weight_step``
    (it steps the weights inside inference)."""
    if cfg["model"] in ("ae", "cre"):
        return ae_grads
    fn = rule(cfg["rule"])
    return functools.partial(fn, weight_step=weight_step) if cfg["rule"] == "ipc" else fn


@torch.no_grad()
def cap_weights(model: torch.nn.Module, cap: float | None) -> None:
    """W <- W min(1, cap / ||W||_2) for every generative W_l of a pcn (and the bottom-up V_l of a
    model whose energy has them); nothing when ``cap`` is None."""
    if cap is None or not isinstance(model, PCN):
        return
    if model.is_conv:
        raise ValueError("weight_cap: the spectral-norm cap is written for dense weights; a conv PCN takes weight_cap null")
    mats = list(model.W) + (list(model.V) if model.bottom_up > 0 else [])
    for w in mats:
        n = spectral_norm(w)
        if n > cap:
            w.mul_(cap / n)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def fits_on_device(nbytes: int, free_bytes: int) -> bool:
    """Whether a tensor of ``nbytes`` goes to the device once per job: at most half its free memory
    (the rest is left for the model, inference buffers and the optimiser)."""
    return nbytes <= free_bytes // 2


def place_training_set(x: torch.Tensor, y: torch.Tensor, dev: torch.device,
                       log: Callable[[str], None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set on ``dev`` once per job when it fits (``fits_on_device``: CUDA's free
    memory; CPU and MPS share host memory), else kept in host memory and copied batch by batch."""
    if dev.type != "cuda":
        return x.to(dev), y.to(dev)
    need = x.element_size() * x.nelement() + y.element_size() * y.nelement()
    free, _ = torch.cuda.mem_get_info(dev)
    if fits_on_device(need, free):
        return x.to(dev), y.to(dev)
    log(f"training set ({need / 2**20:.0f} MiB) exceeds half the free GPU memory ({free / 2**20:.0f} MiB): "
        f"kept in host memory, copied batch by batch")
    return x.pin_memory(), y.pin_memory()


def pick_device(name: str) -> torch.device:
    """auto (cuda, else cpu), cpu, cuda or mps (Apple silicon); an unavailable one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PcnError("--device cuda was asked for, but torch sees no CUDA device "
                       "(use --device cpu, or auto to take CUDA when there is one)")
    if name == "mps" and not _mps_available():
        raise PcnError("--device mps was asked for, but torch has no MPS backend here (MPS needs "
                       "Apple silicon and macOS 12.3+; use --device cpu)")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name!r}: choose auto, cpu, cuda or mps")
    return torch.device(name)


def _clean(v):
    """JSON-safe value: non-finite floats become null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with store.naming(path):
        with open(tmp, "w", newline="") as fh:
            wr = csv.DictWriter(fh, fieldnames=columns)
            wr.writeheader()
            wr.writerows(rows)
        os.replace(tmp, path)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a permutation fixed by (seed, epoch), so a resumed run
    sees exactly the batches an uninterrupted one does."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _differing(old: dict, new: dict) -> list[str]:
    old = {k: v for k, v in old.items() if k not in IGNORED_KEYS}
    new = {k: v for k, v in new.items() if k not in IGNORED_KEYS}
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _refusal(what: str, path: Path, diff: list[str], old: dict, new: dict, out: Path, ckpt_path: Path) -> str:
    shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6]) + (" ..." if len(diff) > 6 else "")
    return (f"{what} {path} belongs to a run with another config ({shown}); nothing was written. "
            f"To start afresh keep the old run and use another --out/--ckpt-dir, or pass --restart-if-changed "
            f"(the old checkpoint is kept as {ckpt_path.name}.stale and this run's outputs in {out} are replaced)")


def _check_folder(path: Path, option: str) -> None:
    """``path`` is (or can become) a writable folder; raises naming the option otherwise."""
    if str(path) == "":
        raise UsageError(f"{option}: empty path (give a folder)")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file, not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{option} {path}: {probe} is a file, not a folder")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise PcnError(f"{option} {path}: {probe} is not writable (read-only file system or no permission)")


def _read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing or damaged."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _scan_checkpoints(ckpt_path: Path, cfg: dict) -> tuple[list[tuple[Path, str]], dict | None, list]:
    """Look at ckpt.pt and ckpt.pt.prev without changing anything: (damaged files with their
    reason, the newest intact checkpoint of this config or None, intact ones of another config
    as (path, checkpoint, differing keys))."""
    damaged, foreign_cfg = [], []
    for path in (ckpt_path, store.previous_of(ckpt_path)):
        if not path.exists():
            continue
        try:
            ck = store.read_checkpoint(path)
        except store.DamagedFile as e:
            damaged.append((path, e.reason, str(e)))
            continue
        diff = _differing(ck["config"], cfg)
        if diff:
            foreign_cfg.append((path, ck, diff))
            continue
        return damaged, ck | {"_path": path}, foreign_cfg
    return damaged, None, foreign_cfg


def _restore(ck: dict, model, opt, sched) -> bool:
    """Load a checkpoint's states; False (states left unusable) when they do not fit."""
    try:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        int(ck["epoch"]), list(ck["rows"]), list(ck["align"]), float(ck["elapsed"])
    except Exception:  # noqa: BLE001 - a checkpoint of other code or shapes
        return False
    return True


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
          log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
          restart_if_changed: bool = False, on_start: Callable[[torch.device], None] | None = None) -> dict:
    """Train one run to completion (or divergence); return the final metrics dict.

    Everything that can refuse the run (config, paths, data, a run folder or checkpoint of
    another config, another pcn train holding the folder: pcn.study.runlock) is checked before
    the first file is written; the folder's lock is held until the run returns."""
    cfg = config_mod.resolve(cfg, for_run=True)
    if str(out) == "":
        raise UsageError("--out: empty path (give the run's output folder)")
    if ckpt_dir is not None and str(ckpt_dir) == "":
        raise UsageError("--ckpt-dir: empty path (leave it out to checkpoint into --out)")
    out = Path(out)
    ckpt_path = Path(ckpt_dir or out) / "ckpt.pt"
    _check_folder(out, "--out")
    _check_folder(ckpt_path.parent, "--ckpt-dir" if ckpt_dir else "--out")
    dev = pick_device(device)
    ds = data.load(cfg)
    _look(cfg, out, ckpt_path, restart_if_changed)  # a refused run writes nothing, not even the lock
    # One pcn train per run folder (and checkpoint folder): the lock is the first thing written.
    folders = {"--out": out} | ({"--ckpt-dir": ckpt_path.parent} if ckpt_dir else {})
    with runlock.hold(folders):
        return _train_locked(cfg, out, ckpt_path, dev, ds, log, restart_if_changed, on_start)


def _look(cfg: dict, out: Path, ckpt_path: Path, restart_if_changed: bool) -> tuple:
    """What the run folder and checkpoints hold: (config.json's config or None, its keys that
    differ from ``cfg``, damaged checkpoints, the checkpoint to resume or None, checkpoints of
    another config).  Without ``restart_if_changed`` a run folder or checkpoint of another config
    is refused (RefusedError)."""
    old_cfg = _read_json(out / "config.json")
    out_diff = _differing(old_cfg, cfg) if old_cfg is not None else []
    damaged, ck, other = _scan_checkpoints(ckpt_path, cfg)
    if not restart_if_changed:
        if out_diff:
            raise RefusedError(_refusal("run folder", out, out_diff, old_cfg, cfg, out, ckpt_path))
        if other and ck is None:
            path, old_ck, diff = other[0]
            raise RefusedError(_refusal("checkpoint", path, diff, old_ck["config"], cfg, out, ckpt_path))
    return old_cfg, out_diff, damaged, ck, other


def progress_due(b: int, n_batches: int) -> bool:
    """Whether batch b ends a quarter of a long epoch (>= 200 batches): a progress line then."""
    return n_batches >= 200 and (b + 1) % (n_batches // 4) == 0 and b + 1 < n_batches


class Run:
    """One run's training state and bookkeeping, shared by ``train`` (a run alone) and
    ``pcn.study.packs.train_pack`` (runs whose gradients are computed together).  Per batch the
    order is always: the batch's gradients (by whoever computes them), ``record`` (the
    divergence check, the weight step, the schedule step, the sums); per epoch ``end_epoch``
    (evaluation, metrics.csv, alignment.csv, checkpoint)."""

    def __init__(self, cfg: dict, out: Path, ckpt_path: Path, dev: torch.device, ds: data.Dataset,
                 log: Callable[[str], None], restart_if_changed: bool):
        self.cfg, self.out, self.ckpt_path, self.dev, self.ds, self.log = cfg, out, ckpt_path, dev, ds, log
        self.restart_if_changed = restart_if_changed
        self.progress = True   # a progress line per quarter epoch (a pack logs one for all its runs)

    def open(self, train_x: torch.Tensor) -> None:
        """Look at the folders again (under the lock), write config.json, build or restore the
        model, optimiser and schedule."""
        cfg, out, ckpt_path, log, dev, ds = self.cfg, self.out, self.ckpt_path, self.log, self.dev, self.ds
        old_cfg, out_diff, damaged, ck, other = _look(cfg, out, ckpt_path, self.restart_if_changed)
        out.mkdir(parents=True, exist_ok=True)
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        for path, reason, why in damaged:
            kept = store.move_aside(path, reason)
            log(f"WARNING: {why}; moved it aside to {kept}")
        for path, _, diff in other:
            kept = store.move_aside(path, "stale")
            log(f"WARNING: checkpoint {path} belongs to another config (keys {diff} differ); "
                f"kept it as {kept} and starting afresh")
        if out_diff:
            log(f"WARNING: run folder {out} held a run with another config (keys {out_diff} differ); replacing its outputs")
            for name in OUTPUT_FILES:
                (out / name).unlink(missing_ok=True)
        self.prov = {**provenance.code_version(), **provenance.compute(dev), "data_files": ds.files}
        write_text(out / "config.json", config_mod.dumps({**cfg, **self.prov}))

        self.n_eval = min(cfg["eval_train_size"], len(ds.train))
        self.B, self.n = cfg["batch_size"], len(train_x)
        self.n_batches = math.ceil(self.n / self.B)
        self.model, self.opt, self.sched = self._fresh()
        self.rows: list[dict] = []
        self.align = _alignment_rows(self.model, ds, cfg, 0, dev)
        self.start_epoch, self.elapsed = 1, 0.0
        if ck is not None:
            if _restore(ck, self.model, self.opt, self.sched):
                self.rows, self.align = list(ck["rows"]), list(ck["align"])
                self.start_epoch, self.elapsed = ck["epoch"] + 1, ck["elapsed"]
                log(f"resuming from {ck['_path']} after epoch {ck['epoch']}")
            else:
                kept = store.move_aside(ck["_path"], "incompatible")
                log(f"WARNING: checkpoint {ck['_path']} does not fit this model; moved it aside to {kept}, "
                    f"starting from scratch")
                self.model, self.opt, self.sched = self._fresh()
        elif damaged:
            log("WARNING: no intact checkpoint left; starting from scratch")
        self.step = grads_fn(cfg, self.weight_step)
        self.diverged_at: tuple[int, int] | None = None

    def _fresh(self):
        m = build_model(self.cfg).to(self.dev)
        o = build_optimizer(self.cfg, m.parameters())
        return m, o, build_scheduler(self.cfg, o, self.n_batches)

    def weight_step(self) -> None:
        """The optimiser's step, then the weight cap."""
        self.opt.step()
        cap_weights(self.model, self.cfg.get("weight_cap"))

    @property
    def active(self) -> bool:
        """Still training: not diverged and not past its last epoch."""
        return self.diverged_at is None

    def trains_in(self, epoch: int) -> bool:
        """Whether this run has epoch ``epoch`` still to train."""
        return self.active and self.start_epoch <= epoch <= self.cfg["epochs"]

    def begin_epoch(self, epoch: int, device: torch.device) -> None:
        self.epoch, self.t0 = epoch, time.perf_counter()
        self.order = epoch_order(self.n, self.cfg["seed"], epoch).to(device)
        self.sums = {"loss": 0.0, "energy": 0.0, "ce": 0.0}
        self.settle_sum = self.gap_sum = 0.0
        self.done = 0

    def batch_index(self, b: int) -> torch.Tensor:
        """The training-set rows of batch b of this epoch."""
        return self.order[b * self.B:(b + 1) * self.B]

    def record(self, b: int, terms: dict) -> bool:
        """After batch b's gradients: stop on a non-finite loss (False: the run is frozen with the
        weights before this batch), else take the weight step and add up the terms."""
        vals = {k: float(terms[k]) for k in self.sums}
        if not all(math.isfinite(v) for v in vals.values()):
            self.diverged_at = (self.epoch, b)
            return False
        self.weight_step()
        self.sched.step()
        for k in self.sums:
            self.sums[k] += vals[k]
        self.settle_sum += float(terms["settle"]) if "settle" in terms else float("nan")
        self.gap_sum += float(terms["nudge_gap"]) if "nudge_gap" in terms else float("nan")
        self.done = b + 1
        if self.progress and progress_due(b, self.n_batches):
            self.log(f"  epoch {self.epoch} batch {b + 1}/{self.n_batches} loss {self.sums['loss'] / (b + 1):.4f}")
        return True

    def end_epoch(self, seconds: float | None = None) -> None:
        """Evaluate, write metrics.csv and alignment.csv, checkpoint (not after a divergence).
        ``seconds``: the epoch's training time (default: since ``begin_epoch``)."""
        cfg, ds, dev, model, epoch = self.cfg, self.ds, self.dev, self.model, self.epoch
        seconds = time.perf_counter() - self.t0 if seconds is None else seconds
        self.elapsed += seconds
        done = max(self.done, 1)
        tr = evaluate(model, ds.train.x[:self.n_eval], ds.train.y[:self.n_eval], cfg, dev)
        va = evaluate(model, ds.val.x, ds.val.y, cfg, dev) if len(ds.val) else {"acc": float("nan")}
        te = evaluate(model, ds.test.x, ds.test.y, cfg, dev)
        row = {"epoch": epoch, "train_loss": self.sums["loss"] / done, "train_energy": self.sums["energy"] / done,
               "train_ce": self.sums["ce"] / done, "train_acc": tr["acc"], "val_acc": va["acc"],
               "test_acc": te["acc"], "recon_mse": te["recon_mse"], "gen_mse": te["gen_mse"],
               "energy": te["energy"], "train_settle": self.settle_sum / done,
               "train_nudge_gap": self.gap_sum / done, "seconds": seconds, "diverged": self.diverged_at is not None}
        self.rows.append(row)
        _write_csv(self.out / "metrics.csv", self.rows, METRIC_COLUMNS)
        if not self.diverged_at:
            self.align += _alignment_rows(model, ds, cfg, epoch, dev)
        _write_csv(self.out / "alignment.csv", self.align, ALIGN_COLUMNS)
        if self.diverged_at:
            self.log(f"epoch {epoch}: DIVERGED at batch {self.diverged_at[1]} (non-finite loss); stopping")
            return
        store.save_checkpoint({"epoch": epoch, "model": model.state_dict(), "opt": self.opt.state_dict(),
                               "sched": self.sched.state_dict(), "rows": self.rows, "align": self.align,
                               "config": cfg, "elapsed": self.elapsed}, self.ckpt_path)
        _fail_once_after(epoch, self.out)
        self.log(f"epoch {epoch}/{cfg['epochs']} loss {row['train_loss']:.4f} test_acc {te['acc']:.4f} "
                 f"val_acc {va['acc']:.4f} recon_mse {te['recon_mse']:.4f} gen_mse {te['gen_mse']:.4f} "
                 f"({seconds:.1f}s)")

    def finish(self) -> dict:
        """Every output again (also when the checkpoint was already finished: a forced re-run);
        returns final.json's dict."""
        rows, diverged_at = self.rows, self.diverged_at
        _write_csv(self.out / "metrics.csv", rows, METRIC_COLUMNS)
        _write_csv(self.out / "alignment.csv", self.align, ALIGN_COLUMNS)
        last = rows[-1] if rows else {}
        final = dict(self.cfg)
        final.update({k: _clean(last.get(k, float("nan"))) for k in
                      ("train_acc", "val_acc", "test_acc", "recon_mse", "gen_mse", "energy", "train_settle",
                       "train_nudge_gap")})
        final.update({"wall_s": self.elapsed, "epochs_done": len(rows) - (1 if diverged_at else 0),
                      "diverged": diverged_at is not None,
                      "diverged_epoch": diverged_at[0] if diverged_at else None,
                      "diverged_batch": diverged_at[1] if diverged_at else None})
        final.update(self.prov)
        state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        atomic_save({"config": self.cfg, "state": state}, self.out / "model.pt")
        write_text(self.out / "final.json", json.dumps(final, indent=2))
        return final


def _train_locked(cfg: dict, out: Path, ckpt_path: Path, dev: torch.device, ds: data.Dataset,
                  log: Callable[[str], None], restart_if_changed: bool,
                  on_start: Callable[[torch.device], None] | None) -> dict:
    """The run itself, with its folders locked; the folders are looked at again under the lock."""
    _look(cfg, out, ckpt_path, restart_if_changed)
    if on_start is not None:
        on_start(dev)
    train_x, train_y = place_training_set(ds.train.x, ds.train.y, dev, log)
    run = Run(cfg, out, ckpt_path, dev, ds, log, restart_if_changed)
    run.open(train_x)
    for epoch in range(run.start_epoch, cfg["epochs"] + 1):
        run.begin_epoch(epoch, train_x.device)
        for b in range(run.n_batches):
            idx = run.batch_index(b)
            terms = run.step(run.model, train_x[idx].to(dev, non_blocking=True),
                             train_y[idx].to(dev, non_blocking=True), cfg)
            if not run.record(b, terms):
                break
        run.end_epoch()
        if not run.active:
            break
    return run.finish()
