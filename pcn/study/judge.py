"""An independent judge of generated images (issue 23 item 4): a small MLP classifier trained
once per dataset, by plain backpropagation, on real training images (``pcn judge``).

The model: x (d pixels, [-1, 1] scale) -> h = relu(W_1 x + b_1) (HIDDEN units) -> logits
W_2 h + b_2 (10 classes), trained on the mean cross-entropy of minibatches (Adam, learning
rate LR, batch BATCH, EPOCHS epochs, shuffled by a generator seeded with ``seed``; weights
initialised from the same seed).  Its training images are the first ``n_train`` of the
dataset's training split (the split every run trains on: the fixed permutation after the
validation images, pcn.study.data.load); its test accuracy is measured on the whole test split.
It never sees a PCN, so it scores a PCN's label -> image generations by a standard that no
learning rule shaped (``pcn probe --clamp DIR --judge FILE.pt``; pcn/study/clamp.py).

``pcn judge --dataset mnist --out results/judge/mnist.pt`` writes the weights (a pcn file that
pcn.study.store.read_blob checks) and, beside it, ``mnist.json`` with its settings and
``test_acc``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pcn.core.model import N_CLASSES
from pcn.images import DATASETS

HIDDEN = 256
EPOCHS = 10          # on the whole MNIST training split: 97.7 % test accuracy in about 13 s on one CPU thread
BATCH = 128
LR = 1e-3
SEED = 0


def build_judge(d: int, hidden: int = HIDDEN, seed: int = SEED) -> torch.nn.Sequential:
    """The judge MLP d -> hidden (relu) -> 10, its weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, N_CLASSES))


def train_judge(x: torch.Tensor, y: torch.Tensor, epochs: int = EPOCHS, hidden: int = HIDDEN,
                seed: int = SEED, batch: int = BATCH, lr: float = LR) -> torch.nn.Sequential:
    """Train the judge on (x, y) by minibatch Adam on the mean cross-entropy (module docstring)."""
    model = build_judge(x.shape[1], hidden, seed).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            idx = idx.to(x.device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def judge_labels(judge: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The judge's class of each image (-1, never a class, where an image or its logits are not
    finite: a diverged generation is never right)."""
    logits = judge(torch.nan_to_num(images, nan=0.0, posinf=0.0, neginf=0.0))
    ok = torch.isfinite(images).all(1) & torch.isfinite(logits).all(1)
    return torch.where(ok, logits.argmax(1), torch.full_like(logits[:, 0], -1).long())


def accuracy(judge: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the images the judge classifies as their label."""
    return float((judge_labels(judge, x) == y).double().mean())


def save_judge(judge: torch.nn.Sequential, info: dict, path: str | Path) -> None:
    """Weights and settings to ``path`` (atomic; ``config`` holds the settings, as in every pcn
    file) and the settings with the test accuracy to the same name with ``.json``."""
    from pcn.study.store import atomic_save, write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    layers = [judge[0].in_features, judge[0].out_features, judge[2].out_features]
    atomic_save({"kind": "judge", "config": dict(info), "layers": layers, "state": judge.state_dict()}, path)
    write_text(path.with_suffix(".json"), json.dumps(dict(info, layers=layers), indent=2, sort_keys=True) + "\n")


def load_judge(path: str | Path, device: str = "cpu") -> torch.nn.Sequential:
    """The judge saved by ``save_judge`` (DamagedFile for a damaged or foreign file)."""
    from pcn.study.store import DamagedFile, read_blob

    blob = read_blob(path, device)
    if blob.get("kind") != "judge" or "state" not in blob:
        raise DamagedFile(Path(path), "foreign", "not a judge written by pcn judge")
    d, hidden, _ = blob["layers"]
    judge = build_judge(d, hidden)
    judge.load_state_dict(blob["state"])
    return judge.to(device).eval()


# ----------------------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of ``pcn judge``."""
    p.add_argument("--dataset", default="mnist", choices=DATASETS, help="default mnist")
    p.add_argument("--data-dir", metavar="DIR", help="local folder with the raw IDX files")
    p.add_argument("--data-root", default="data", metavar="DIR", help="download folder (default data)")
    p.add_argument("--out", required=True, metavar="FILE.pt", help="judge weights; FILE.json gets its test accuracy")
    p.add_argument("--n-train", type=int, metavar="N", help="first N training images (default: all of the split)")
    p.add_argument("--epochs", type=int, default=EPOCHS, metavar="N", help=f"epochs (default {EPOCHS})")
    p.add_argument("--hidden", type=int, default=HIDDEN, metavar="N", help=f"hidden units (default {HIDDEN})")
    p.add_argument("--seed", type=int, default=SEED, metavar="N", help=f"seed (default {SEED})")
    p.add_argument("--threads", type=int, metavar="N", help="torch threads")


def run(args: argparse.Namespace) -> int:
    """``pcn judge``: train the judge on the dataset's real training images, save it."""
    from pcn.study import data

    if args.threads:
        torch.set_num_threads(args.threads)
    for flag, value in (("--epochs", args.epochs), ("--hidden", args.hidden), ("--n-train", args.n_train)):
        if value is not None and value < 1:
            print(f"pcn judge: {flag} {value}: must be 1 or more", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    ds = data.load({"dataset": args.dataset, "data_dir": args.data_dir, "data_root": args.data_root})
    x, y = ds.train.x[:args.n_train], ds.train.y[:args.n_train]
    judge = train_judge(x, y, args.epochs, args.hidden, args.seed)
    info = {"dataset": args.dataset, "n_train": len(y), "epochs": args.epochs, "hidden": args.hidden,
            "seed": args.seed, "lr": LR, "batch": BATCH, "train_acc": accuracy(judge, x, y),
            "test_acc": accuracy(judge, ds.test.x, ds.test.y), "n_test": len(ds.test.y),
            "wall_s": round(time.perf_counter() - t0, 2)}
    save_judge(judge, info, args.out)
    print(f"pcn judge: {args.dataset}: {len(y)} training images, {args.epochs} epochs: test accuracy "
          f"{info['test_acc']:.4f} -> {args.out} ({info['wall_s']:.1f}s)", file=sys.stderr)
    return 0
