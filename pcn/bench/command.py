"""The ``pcn bench`` command line: its options and the run that ties cases, timing and report."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from pcn.errors import UsageError

from pcn.bench.cases import (_ablation_cases, _compile_cases, _variant, make_cases, make_conv_cases, make_pack_cases,
                              make_peaks)
from pcn.bench.pcx import PCX_JSON_HELP, compare_pcx, read_pcx_json
from pcn.bench.report import EPOCH, format_packs, format_profile, format_reference, format_table, summarise
from pcn.bench.timing import _rss_peak_mb, peak_step_memory, profile_cases, run_cases

def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="ref network only, fewer repetitions (~30 s)")
    mode.add_argument("--full", action="store_true", help="more repetitions, and T = 20 for the wide network")
    mode.add_argument("--tiny", action="store_true", help="a tiny network, seconds (for tests)")
    p.add_argument("--T", type=int, nargs="+", help="inference steps to measure (default per network)")
    p.add_argument("--reps", type=int, help="timed repetitions per case (default 7; quick 5; full 11; tiny 2)")
    p.add_argument("--init", default="amortised", choices=["zeros", "prior", "amortised"],
                   help="latent initialisation (default: the training default, amortised)")
    p.add_argument("--ce-weight", type=float, default=0.5, help="CE weight w of the pc/bp cases")
    p.add_argument("--compile", action="store_true", help="also time pc and infer with torch.compile (compiles first)")
    p.add_argument("--reference", action="store_true",
                   help="also time the reference implementation (pcn.core) of every infer, pc and bp case")
    p.add_argument("--ablation", action="store_true",
                   help="also time pc/infer without the Gram form, bp with the lean adjoint, and bp through "
                        "autograd instead of the adjoint")
    p.add_argument("--fused-adam", action="store_true",
                   help="use torch's fused Adam for the baseline MLP too (pcn train's optimizer, used by the "
                        "pc and bp cases, is fused already)")
    p.add_argument("--runs", type=int, nargs="+", metavar="R",
                   help="also time packs of R runs (pcn pack) of every pc and bp case: per-run throughput against "
                        "the run alone, both in this run")
    p.add_argument("--conv", action="store_true",
                   help="also time conv PCN pc and bp steps (the 16 / 32-channel MNIST net of docs/results.md; "
                        "--tiny: an 8 x 8 one) beside a plain PyTorch conv net of the same shapes")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch threads (default: OMP_NUM_THREADS, else torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--profile", action="store_true",
                   help="also profile the pc and bp cases (torch.profiler): time shares per op group")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--pcx-json", metavar="FILE", help=PCX_JSON_HELP)


def run(args: argparse.Namespace) -> int:
    from pcn.cli import _threads
    from pcn.study.train import pick_device

    pcx = read_pcx_json(args.pcx_json) if args.pcx_json else None  # a bad file fails now, not after the run
    _threads(args.threads)
    device = pick_device(args.device)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    reps = args.reps or (2 if args.tiny else 5 if args.quick else 11 if args.full else 7)
    t_start = time.perf_counter()
    cases = make_cases(args, device)
    peaks = make_peaks(args, device)
    if args.ablation:
        cases += _ablation_cases(cases)
    if args.runs:
        if min(args.runs) < 1:
            raise UsageError(f"--runs {args.runs}: every R must be 1 or more")
        cases += make_pack_cases(args, device, cases)
    if args.compile:
        cases += _compile_cases(cases, log)
    if args.reference:
        cases += [_variant(c, "reference", {"reference": True}) for c in cases
                  if c.kind in ("infer", "pc", "bp") and "variant" not in c.extra]
    if args.conv:       # after the variants: no fast path, compiled form or pack covers conv
        cases += make_conv_cases(args, device)
    log(f"pcn bench: {len(cases)} cases + {len(peaks)} sgemm peaks, {reps} repetitions, "
        f"{torch.get_num_threads()} threads, {device}")
    run_cases(cases + peaks, reps, 1, device, log)
    if not args.no_memory:
        for c in cases:
            c.mem = peak_step_memory(c.step, device)
    summary = summarise(cases, peaks)
    prof = profile_cases(cases, 20 if not args.tiny else 2) if args.profile else None
    result = {
        "machine": {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                    "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "settings": {"reps": reps, "epoch_samples": EPOCH, "init": args.init, "ce_weight": args.ce_weight,
                     "fused_adam": args.fused_adam,
                     "mode": "tiny" if args.tiny else "quick" if args.quick else "full" if args.full else "default"},
        **summary,
        "pcx": compare_pcx(summary, pcx, device.type),
        "profile": prof,
        "rss_peak_mb": _rss_peak_mb(),
        "wall_s": time.perf_counter() - t_start,
    }
    print(format_table(result))
    if args.runs:
        print(format_packs(result))
    if args.reference:
        print(format_reference(result))
    if prof:
        print(format_profile(prof))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0
