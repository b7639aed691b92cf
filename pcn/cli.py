"""Command line: ``pcn train | data | probe | aggregate | figure | bench`` (also ``python -m pcn``)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

# Subcommands implemented in their own modules, each with add_arguments(parser) and run(args).
PLUGINS = {"aggregate": "pcn.outputs.aggregate", "figure": "pcn.outputs.figures", "probe": "pcn.study.probe", "bench": "pcn.bench"}


def _threads(n: int | None) -> None:
    """Torch uses exactly the threads it is given: --threads, else OMP_NUM_THREADS."""
    import torch

    n = n or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if n > 0:
        torch.set_num_threads(n)


def _cmd_train(args: argparse.Namespace) -> int:
    from pcn.study import config, train

    try:
        cfg = config.load(args.config, args.set)
    except config.ConfigError as e:
        print(f"pcn train: bad config: {e}", file=sys.stderr)
        return 2
    _threads(args.threads)
    try:
        device = train.pick_device(args.device)
    except RuntimeError as e:
        print(f"pcn train: {e}", file=sys.stderr)
        return 1
    # What the job was given (e.g. a SLURM GPU allocation) next to what torch uses.
    print(f"pcn train: device {device.type} (cuda available: {train.torch.cuda.is_available()}, "
          f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})", file=sys.stderr, flush=True)
    try:
        final = train.train(cfg, args.out, args.ckpt_dir, args.device)
    except (train.data.DataError, RuntimeError) as e:
        print(f"pcn train: {e}", file=sys.stderr)
        return 1
    status = "DIVERGED" if final["diverged"] else "done"
    print(f"{status}: test_acc {final['test_acc']} recon_mse {final['recon_mse']} -> {args.out}/final.json")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from pcn.study import data

    try:
        folder = data.locate(args.dataset, args.data_dir, args.data_root)
        sizes = {s: len(data.read_split(folder, s)) for s in data.FILES}
    except data.DataError as e:
        print(f"pcn data: {e}", file=sys.stderr)
        return 1
    msg = f"{args.dataset}: {folder.resolve()} train={sizes['train']} test={sizes['test']}"
    print(msg)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(msg + "\n")
    return 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with ``only``, import just that plugin subcommand (fast start-up)."""
    p = argparse.ArgumentParser(prog="pcn", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train one run")
    t.add_argument("--config", help="YAML/JSON file of training keys (see pcn/train_schema.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--ckpt-dir", help="checkpoint folder (default: --out)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--threads", type=int, help="torch threads (default: OMP_NUM_THREADS, else torch's)")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("data", help="check (or download) a dataset's raw files")
    d.add_argument("--dataset", default="mnist", choices=["mnist", "fashionmnist"])
    d.add_argument("--data-dir", help="local folder with the raw IDX files")
    d.add_argument("--data-root", default="data", help="download folder when no local folder is given")
    d.add_argument("--out", help="marker file to write on success")
    d.set_defaults(func=_cmd_data)

    for name, module in PLUGINS.items():
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        sp = sub.add_parser(name, help=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in PLUGINS else ("train" if argv and argv[0] in ("train", "data") else None)
    args = build_parser(only).parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
