"""Command line: pcn train | pack | data | config | probe | aggregate | figure | bench (also python -m pcn).

A mistake in the input (a bad config, a missing or damaged file, a folder where a file should be,
a full or read-only disk) is reported as one line naming the file or key, exit status 2 for usage
errors and 1 for failures; --debug (or PCN_DEBUG=1) shows the Python traceback as well.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import sys
from pathlib import Path

from pcn.errors import PcnError, UsageError
from pcn.images import DATASETS

# Subcommands implemented in their own modules, each with add_arguments(parser) and run(args).
PLUGINS = {"aggregate": "pcn.outputs.aggregate", "figure": "pcn.outputs.figures", "probe": "pcn.study.probe", "judge": "pcn.study.judge",
           "bench": "pcn.bench", "pack": "pcn.study.packs"}
DEVICES = ["auto", "cpu", "cuda", "mps"]
DEVICE_HELP = "auto (cuda when torch sees a GPU, else cpu), cpu, cuda or mps (Apple silicon); default auto"


def _plain(text: str | None) -> str | None:
    """Help text without reST markup (``x`` -> x, :func:`f` -> f)."""
    if not text:
        return text
    import re

    return re.sub(r":[a-z]+:`([^`]*)`", r"\1", text).replace("``", "")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and help texts free of reST markup."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        for action in self._actions:
            action.help = _plain(action.help)
        self.description = _plain(self.description)
        return super().format_help()


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: must be 1 or more")
    return n


def _path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return text


def _threads(n: int | None) -> None:
    """Torch uses exactly the threads it is given: --threads, else OMP_NUM_THREADS."""
    import torch

    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        try:
            n = int(env) if env else 0
        except ValueError:
            raise UsageError(f"OMP_NUM_THREADS={env!r} is not a whole number") from None
    if n > 0:
        torch.set_num_threads(n)


def _cmd_train(args: argparse.Namespace) -> int:
    from pcn.study import config, train

    cfg = config.load(args.config, args.set)
    _threads(args.threads)

    def started(device) -> None:
        # What the job was given (e.g. a SLURM GPU allocation) next to what torch uses; printed
        # once every check has passed, so a refused run prints only its one error line.
        print(f"pcn train: device {device.type} (cuda available: {train.torch.cuda.is_available()}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})", file=sys.stderr, flush=True)

    final = train.train(cfg, args.out, args.ckpt_dir, args.device, restart_if_changed=args.restart_if_changed,
                        on_start=started)
    status = "DIVERGED" if final["diverged"] else "done"
    print(f"{status}: test_acc {final['test_acc']} recon_mse {final['recon_mse']} -> {args.out}/final.json")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from pcn.study import data

    folder = data.locate(args.dataset, args.data_dir, args.data_root)
    splits = {s: data.read_split(folder, s, args.dataset) for s in data.FILES}
    sizes = {s: len(sp) for s, sp in splits.items()}
    msg = f"{args.dataset}: {folder.resolve()} train={sizes['train']} test={sizes['test']}"
    print(msg)
    if args.out:
        from pcn.study.store import write_text

        files = {k: v for sp in splits.values() for k, v in sp.files.items()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_text(Path(args.out), msg + "\n" + json.dumps(files, indent=2, sort_keys=True) + "\n")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from pcn.study import config

    cfg = config.load(args.config, args.set)
    sys.stdout.write(yaml.safe_dump(cfg, sort_keys=True, default_flow_style=None))
    return 0


def _version() -> str:
    from pcn import __version__

    try:
        from pcn.study.provenance import describe

        return f"pcn {__version__} ({describe()})"
    except Exception:  # noqa: BLE001 - the version must print whatever else is broken
        return f"pcn {__version__}"


class _Version(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(_version())
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with ``only``, import just that plugin subcommand (fast start-up)."""
    p = _Parser(prog="pcn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action=_Version, help="print the version (and code commit) and exit")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of an error (also PCN_DEBUG=1); may come anywhere on the line")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one run", description="Train one run: writes config.json, metrics.csv, "
                       "alignment.csv, final.json and model.pt to --out, checkpoints every epoch to --ckpt-dir, and "
                       "resumes from the newest intact checkpoint when started again.")
    t.add_argument("--config", type=_path, metavar="FILE",
                   help="YAML/JSON file of training keys (see pcn/train_schema.yaml; pcn config --show prints them)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    t.add_argument("--out", required=True, type=_path, metavar="DIR", help="output folder")
    t.add_argument("--ckpt-dir", type=_path, metavar="DIR", help="checkpoint folder (default: --out)")
    t.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP)
    t.add_argument("--threads", type=_positive_int, metavar="N",
                   help="torch threads, 1 or more (default: OMP_NUM_THREADS, else torch's choice)")
    t.add_argument("--restart-if-changed", action="store_true",
                   help="when --out or the checkpoint belongs to a run with another config, keep the old "
                        "checkpoint as ckpt.pt.stale and start afresh instead of refusing (the workflow does this)")
    t.set_defaults(func=_cmd_train)

    d = sub.add_parser("data", help="check (or download) a dataset's raw files",
                       description="Check a dataset's raw files (MNIST / FashionMNIST: the four IDX files' header, "
                                   "image size, counts and images per class; CIFAR-10: the python batches' shapes, "
                                   "dtypes, labels and meta file), or download them with torchvision.")
    d.add_argument("--dataset", default="mnist", choices=DATASETS, help="default mnist")
    d.add_argument("--data-dir", type=_path, metavar="DIR",
                   help="local folder with the raw IDX files (cifar10: cifar-10-batches-py or the folder holding it)")
    d.add_argument("--data-root", default="data", type=_path, metavar="DIR",
                   help="download folder when no local folder is given (default data)")
    d.add_argument("--out", type=_path, metavar="FILE",
                   help="marker file to write on success (with the path and SHA-256 of each file)")
    d.set_defaults(func=_cmd_data)

    c = sub.add_parser("config", help="print the resolved training config",
                       description="Print the training config a run would use (every default filled in) as YAML.")
    c.add_argument("--show", action="store_true", help="print the resolved config (the default action)")
    c.add_argument("--config", type=_path, metavar="FILE", help="YAML/JSON file of training keys")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (repeatable)")
    c.set_defaults(func=_cmd_config)

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
        doc = _plain((mod.__doc__ or "").strip())
        sp = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc or None,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        for action in sp._actions:
            if action.dest == "device" and not action.help:
                action.help = DEVICE_HELP
        sp.set_defaults(func=mod.run)
    return p


def explain(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit status) for an expected failure; None for a bug."""
    if isinstance(exc, PcnError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        name = f"{exc.filename}: " if exc.filename else ""
        what = exc.strerror or str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            what += " (free some space, or write elsewhere)"
        elif exc.errno == errno.EROFS:
            what += " (write the outputs elsewhere)"
        return f"{name}{what}", 1
    if isinstance(exc, MemoryError):
        return "out of memory (try a smaller batch_size or fewer images)", 1
    return None


def _command_of(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("PCN_DEBUG", "").strip() not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    command = _command_of(argv)
    # Import only the plugin that runs (fast start); all of them for the full help.
    only = None if command is None else (command if command in PLUGINS else "train")
    prog = f"pcn {command}" if command else "pcn"
    try:
        args = build_parser(only).parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into expected failures and bugs below
        found = explain(e)
        if found is None or debug:
            raise
        message, code = found
        print(f"{prog}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
