"""Training many runs in one process (``pcn pack``): runs that can share a pack
(``pcn.fast.pack.pack_key``) have their batch gradients computed as one ``vmap``; everything
else stays each run's own, exactly as ``pcn train`` does it (``pcn.study.train.Run``): its data
order (its seed), its model, optimiser and schedule, its divergence check (a run whose loss is
not finite is frozen with the weights before that batch and recorded as diverged, the others go
on), its checkpoint (a killed pack resumes every run from its own) and its output files.

Packs are trained one after the other; a pack of one computes exactly what ``pcn train`` does
(the fast paths), so ``ipc``, ``eta_mode: safe`` and the baselines run here too.  A run's
``seconds`` and ``wall_s`` are the wall time of its pack's training epochs (shared by all runs
of the pack, evaluation not included).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from pcn.errors import UsageError
from pcn.fast.pack import pack_grads, pack_key
from pcn.study import config as config_mod
from pcn.study import data, runlock
from pcn.study.train import Run, _check_folder, _look, pick_device, place_training_set, progress_due


def group(cfgs: list[dict], max_size: int | None = None) -> list[list[int]]:
    """Indices of ``cfgs`` grouped into packs by ``pack_key``, in first-seen order, each pack cut
    into pieces of at most ``max_size`` runs."""
    packs: dict[str, list[int]] = {}
    for i, c in enumerate(cfgs):
        packs.setdefault(pack_key(c), []).append(i)
    out = []
    for idx in packs.values():
        step = max_size or len(idx)
        out += [idx[k:k + step] for k in range(0, len(idx), step)]
    return out


def train_pack(cfgs: list[dict], outs: list[str | Path], device: str = "auto",
               log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
               restart_if_changed: bool = False, max_pack: int | None = None,
               ckpt_dirs: list[str | Path] | None = None) -> list[dict]:
    """Train every run (config ``cfgs[i]`` into folder ``outs[i]``, checkpointing into
    ``ckpt_dirs[i]``, default ``outs[i]``) in packs; return their final metrics dicts in the
    order given.

    Every run is checked as ``pcn train`` checks it (config, folder, data, a folder or
    checkpoint of another config) before anything is written; the folders of a pack are locked
    while it trains."""
    if len(cfgs) != len(outs):
        raise UsageError(f"pcn pack: {len(cfgs)} configs but {len(outs)} output folders")
    if not cfgs:
        raise UsageError("pcn pack: no runs given (--run CONFIG OUT, once per run)")
    if ckpt_dirs is not None and len(ckpt_dirs) != len(outs):
        raise UsageError(f"pcn pack: {len(ckpt_dirs)} --ckpt-dir for {len(outs)} runs (give one per run, or none)")
    outs = [Path(o) for o in outs]
    ckpts = [Path(c) / "ckpt.pt" for c in ckpt_dirs] if ckpt_dirs is not None else [o / "ckpt.pt" for o in outs]
    dupes = sorted({str(o) for o in outs if outs.count(o) > 1})
    if dupes:
        raise UsageError(f"pcn pack: output folder given to more than one run: {', '.join(dupes)}")
    cfgs = [config_mod.resolve(c, for_run=True) for c in cfgs]
    for o, ck in zip(outs, ckpts):
        if str(o) == "" or str(ck.parent) == "":
            raise UsageError("--run / --ckpt-dir: empty folder")
        _check_folder(o, f"--run ... {o}")
        _check_folder(ck.parent, f"--ckpt-dir {ck.parent}")
    dev = pick_device(device)
    for c, o, ck in zip(cfgs, outs, ckpts):
        _look(c, o, ck, restart_if_changed)  # a refused run refuses all: nothing written
    finals: list[dict | None] = [None] * len(cfgs)
    for idx in group(cfgs, max_pack):
        ds = data.load(cfgs[idx[0]])
        log(f"pack of {len(idx)} run(s): " + ", ".join(str(outs[i]) for i in idx))
        folders = {f"--run {outs[i]}": outs[i] for i in idx}
        folders |= {f"--ckpt-dir {ckpts[i].parent}": ckpts[i].parent for i in idx}
        with runlock.hold(folders):
            for i, final in zip(idx, _train_one_pack([cfgs[i] for i in idx], [outs[i] for i in idx],
                                                      [ckpts[i] for i in idx], dev, ds, log, restart_if_changed)):
                finals[i] = final
    return finals


def _train_one_pack(cfgs: list[dict], outs: list[Path], ckpts: list[Path], dev: torch.device, ds: data.Dataset,
                    log: Callable[[str], None], restart_if_changed: bool) -> list[dict]:
    """The runs of one pack (equal ``pack_key``), their folders locked."""
    train_x, train_y = place_training_set(ds.train.x, ds.train.y, dev, log)
    runs = []
    root = os.path.commonpath([str(o.resolve()) for o in outs]) if len(outs) > 1 else None
    for c, o, ck in zip(cfgs, outs, ckpts):
        name = os.path.relpath(o.resolve(), root) if root else (o.name or str(o))
        run = Run(c, o, ck, dev, ds, (lambda s, name=name: log(f"[{name}] {s}")), restart_if_changed)
        run.open(train_x)
        run.progress = len(outs) == 1
        runs.append(run)
    n_batches = runs[0].n_batches
    keys = {pack_key(c) for c in cfgs}
    if len(keys) != 1:   # group() made the pack: a bug if it fails
        raise AssertionError("a pack of runs of different shapes")
    key = keys.pop()
    first = min(r.start_epoch for r in runs)
    for epoch in range(first, cfgs[0]["epochs"] + 1):
        todo = [r for r in runs if r.trains_in(epoch)]
        if not todo:
            continue
        t0 = time.perf_counter()
        for r in todo:
            r.begin_epoch(epoch, train_x.device)
        for b in range(n_batches):
            live = [r for r in todo if r.active]
            if not live:
                break
            idx = [r.batch_index(b) for r in live]
            if len(live) == 1:
                r = live[0]
                terms = [r.step(r.model, train_x[idx[0]].to(dev, non_blocking=True),
                                train_y[idx[0]].to(dev, non_blocking=True), r.cfg)]
            else:
                xs = torch.stack([train_x[i] for i in idx]).to(dev, non_blocking=True)
                ys = torch.stack([train_y[i] for i in idx]).to(dev, non_blocking=True)
                terms = pack_grads([r.model for r in live], xs, ys, [r.cfg for r in live], key)
            for r, t in zip(live, terms):
                r.record(b, t)
            if len(runs) > 1 and progress_due(b, n_batches):
                log(f"  epoch {epoch} batch {b + 1}/{n_batches}: {len(live)} run(s) training, "
                    f"{time.perf_counter() - t0:.0f} s")
        seconds = time.perf_counter() - t0
        for r in todo:
            r.end_epoch(seconds)
    return [r.finish() for r in runs]


def _vary(specs: list[str]) -> list[dict[str, str]]:
    """The grid of ``--vary KEY=V1,V2,...`` options: one dict of key=value strings per run."""
    grid: list[dict[str, str]] = [{}]
    for spec in specs:
        key, sep, values = spec.partition("=")
        vals = [v for v in values.split(",") if v != ""]
        if not sep or not key or not vals:
            raise UsageError(f"--vary {spec!r}: expected KEY=VALUE1,VALUE2,... (e.g. --vary seed=0,1,2)")
        if any(key in g for g in grid):
            raise UsageError(f"--vary {key}: the key is given twice")
        grid = [{**g, key: v} for g in grid for v in vals]
    return grid


def add_arguments(p) -> None:
    """The options of ``pcn pack``."""
    p.add_argument("--run", nargs=2, action="append", default=[], metavar=("CONFIG", "OUT"),
                   help="one run: its config file (YAML/JSON, as for pcn train --config) and output folder (repeatable)")
    p.add_argument("--ckpt-dir", action="append", metavar="DIR",
                   help="checkpoint folder of each --run, in their order (repeatable; default: each run's OUT)")
    p.add_argument("--config", metavar="FILE", help="with --vary: the base config of the grid")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key in every run (repeatable)")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a grid axis (repeatable): one run per combination, in OUT_ROOT/KEY=V,KEY=V")
    p.add_argument("--out-root", metavar="DIR", help="with --vary: the folder that holds the grid's run folders")
    p.add_argument("--max-pack", type=int, metavar="N", help="at most N runs per pack (default: all that fit one)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--threads", type=int, metavar="N", help="torch threads (default: OMP_NUM_THREADS, else torch's choice)")
    p.add_argument("--restart-if-changed", action="store_true",
                   help="as for pcn train: a folder or checkpoint of another config starts afresh instead of refusing")


def run(args) -> int:
    """``pcn pack``: train the runs given (``--run``, or the ``--vary`` grid) in packs."""
    from pcn.cli import _threads

    if args.max_pack is not None and args.max_pack < 1:
        raise UsageError(f"--max-pack {args.max_pack}: must be 1 or more")
    cfgs, outs = [], []
    for path, out in args.run:
        cfgs.append(config_mod.load(path, args.set))
        outs.append(out)
    if args.vary:
        if not args.out_root:
            raise UsageError("--vary needs --out-root (the folder of the grid's run folders)")
        for point in _vary(args.vary):
            cfgs.append(config_mod.load(args.config, [*args.set, *(f"{k}={v}" for k, v in point.items())]))
            outs.append(str(Path(args.out_root) / ",".join(f"{k}={v}" for k, v in point.items())))
    elif args.config or args.out_root:
        raise UsageError("--config and --out-root go with --vary (or give each run as --run CONFIG OUT)")
    _threads(args.threads)
    finals = train_pack(cfgs, outs, args.device, restart_if_changed=args.restart_if_changed, max_pack=args.max_pack,
                        ckpt_dirs=args.ckpt_dir)
    for out, final in zip(outs, finals):
        status = "DIVERGED" if final["diverged"] else "done"
        print(f"{status}: test_acc {final['test_acc']} -> {out}/final.json")
    return 0
