"""Speed benchmark of pc, bp and inference against a plain PyTorch MLP and the sgemm peak.

All cases are measured in one run on one device (docs/performance.md).

Networks (matrix sizes as PCX's MLP benchmark, Pinchetti et al. 2024):

    ref   layers [784, 128, 128, 128, 10], batch 128, GELU, T = 5 and 20
    wide  layers [784, 1024, 1024, 10],    batch 512, GELU, T = 5 (T = 20 with --full)

Mapping to PCX.  PCX's MLP is a *discriminative* PCN: x (784) is clamped at the source and each
layer predicts the next one up, x -> 128 -> 128 -> 128 -> 10 (label).  Ours is *generative*:
layer l+1 predicts layer l, mu_l = W_l f(z_{l+1}) + b_l, with W_0: 784 x 128, ..., W_3: 128 x 10,
the same four matrices.  Per inference step PCX multiplies by each matrix once forward
(prediction) and by three of them backward (the error back-projection stops at the clamped
input); ours back-projects all four, including the data error through W_0 (784 x 128), since
z_1 is inferred from eps_0.  Nominal matmul work per step is therefore 4 + 4 matrix products
here against 4 + 3 in PCX (68.8 vs 43.0 MFLOP at batch 128).  Our loop does not execute the
nominal count: the Gram form (pcn.fast.stacked, OPTIONS["gram"]) replaces the two per-step
784 x 128 products of the clamped layer by one 128 x 128 product.

FLOP counts (2 per multiply-add, matmuls only; d_l = layers[l], B = batch; "nominal" is the
textbook algorithm, "executed" what this code runs):

    step (nominal)    sum_l 2 * 2 B d_l d_{l+1}          prediction + back-projection, every layer
    step (executed)   as nominal, but layer 0: 2 B d_1^2 (f(z_1) G) under the Gram form
    nudge (pc)        + 2 * 2 B d_L 10 per step          readout logits and CE gradient
    pc                errors at z^0 + T steps + weight update (sum_l 2 B d_l d_{l+1}) + readout
                      (+ Gram setup (x - b_0) W_0, W_0^T W_0 and the final mu_0)
                      (+ amortiser: its forward pass, and its local regression: forward for
                    layers >= 1 (layer 0 reuses the guess) + gradient)
    bp                the T forward steps (no nudge) + their backward pass: nominal 2 products
                      per forward product; executed (adjoint in pcn.fast.adjoint) 4 per layer and
                      step, layer 0 under the Gram form 2 d_1 x d_1 ones; + final loss fwd/bwd
    infer             errors at z^0 + T steps (test mode, no label)
    baseline MLP      forward sum_i 2 B d_i d_{i+1}, backward 2x (no input gradient at layer 0)

Throughput: median over repetitions (after warm-up) of seconds per batch, cases interleaved
round-robin so that background load hits all alike; "epoch" = 60,000 samples.  Peak: torch
sgemm in the same run, a large square product and one of the batch x layer shape.  Memory:
peak bytes of tensors alive during one training step beyond what existed before it (a dispatch
mode that tracks storages; on CUDA torch.cuda.max_memory_allocated), and the process' peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

EPOCH = 60_000
#: PCX's figures as stored: a past measurement, not one of this run.  PCX 0.6.3 (JAX, jitted),
#: 784-128-128-128-10, batch 128, seconds per 59,904-sample epoch, with the plain PyTorch MLP timed
#: beside it; reported in issue 5, on the 2-core CPU of docs/performance.md in its fast state.
PCX_PAST = {"date": "date not recorded: issue 5, stored here since 2026-11-27",
            "machine": "2-core AMD EPYC CPU, 2 threads, fast state: PyTorch MLP 0.50 s per epoch",
            "baseline_mlp_s": 0.50, "pc_T5_s": 0.70, "pc_T20_s": 4.2, "epoch": 59_904}
#: the keys of a ``--pcx-json`` file (``epoch``, samples per epoch, is optional: 59,904)
PCX_KEYS = ("date", "machine", "baseline_mlp_s", "pc_T5_s", "pc_T20_s")
PCX_JSON_HELP = ("PCX's figures measured in this same session, a JSON object: {\"date\": \"2026-11-30 07:40 UTC\", "
                 "\"machine\": \"2-core EPYC, slow state\", \"baseline_mlp_s\": 1.80, \"pc_T5_s\": 2.12, "
                 "\"pc_T20_s\": 11.31} (seconds per 59,904-sample epoch of PCX's benchmark: its PyTorch MLP and "
                 "PCX at T = 5 and 20; optional \"epoch\": samples per epoch).  Without it the stored figures "
                 "(a past measurement) are printed as such, with no ratio claimed as measured")


def read_pcx_json(path: str) -> dict:
    """PCX's figures from ``path`` (format: PCX_JSON_HELP); a one-line SystemExit naming the file and
    what is wrong with it."""
    where = f"pcn bench: --pcx-json {path}"
    try:
        with open(path) as fh:
            ref = json.load(fh)
    except OSError as e:
        raise SystemExit(f"{where}: cannot read it ({e.strerror})")
    except json.JSONDecodeError as e:
        raise SystemExit(f"{where}: not JSON ({e.msg}, line {e.lineno})")
    if not isinstance(ref, dict):
        raise SystemExit(f"{where}: not a JSON object")
    missing = [k for k in PCX_KEYS if k not in ref]
    if missing:
        raise SystemExit(f"{where}: missing key {', '.join(map(repr, missing))} (needs {', '.join(PCX_KEYS)})")
    for k in ("baseline_mlp_s", "pc_T5_s", "pc_T20_s", "epoch"):
        v = ref.get(k, 1)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise SystemExit(f"{where}: key {k!r} must be a positive number, not {v!r}")
    return {"epoch": PCX_PAST["epoch"], **ref, "file": path}


NETS = {
    "ref": dict(layers=[784, 128, 128, 128, 10], batch=128),
    "wide": dict(layers=[784, 1024, 1024, 10], batch=512),
    "tiny": dict(layers=[64, 32, 16], batch=32),   # --tiny: for the test suite
}


# ---- FLOP counts ------------------------------------------------------------------------------

def _mm(B: int, a: int, b: int) -> int:
    return 2 * B * a * b


def flop_counts(kind: str, layers: list[int], B: int, T: int, gram: bool, amortised: bool,
                nudge: bool, n_classes: int = 10) -> tuple[int, int]:
    """(nominal, executed) matmul FLOPs of one batch of ``kind`` (see the module docstring)."""
    L = len(layers) - 1
    d = layers
    pred = [_mm(B, d[l], d[l + 1]) for l in range(L)]
    if kind == "baseline":
        fwd = sum(pred)
        return 3 * fwd - pred[0], 3 * fwd - pred[0]
    step_nom = 2 * sum(pred)
    step_exe = step_nom - (2 * pred[0] - _mm(B, d[1], d[1]) if gram else 0)
    readout = _mm(B, d[L], n_classes)
    setup_exe = (pred[0] + 2 * d[0] * d[1] * d[1] + pred[0]) if gram else 0   # c0, G, final mu_0
    init_nom = sum(pred)                          # errors at z^0
    init_exe = sum(pred) - (pred[0] if gram else 0)
    amort = sum(_mm(B, d[l], d[l + 1]) for l in range(L)) if amortised else 0
    if kind == "infer":
        return init_nom + T * step_nom + amort, init_exe + T * step_exe + setup_exe + amort
    if kind == "pc":
        per_step_nudge = 2 * readout if nudge else 0
        tail = sum(pred) + 2 * readout            # weight update, readout logits + its gradient
        # amortiser: the initial guess, and its local regression (forward again, except layer 0
        # whose guess is reused, + gradient)
        am = 3 * amort - (pred[0] if amortised else 0)
        nom = init_nom + T * (step_nom + per_step_nudge) + tail + am
        exe = init_exe + T * (step_exe + per_step_nudge) + setup_exe + tail + am
        return nom, exe
    if kind in ("bp", "bp_autograd"):
        final = 3 * sum(pred) + 4 * readout       # final errors + their backward, CE and probe
        amort_bp = 3 * amort - (_mm(B, d[0], d[1]) if amortised else 0)
        nom = 3 * (init_nom + T * step_nom) + final + amort_bp
        if kind == "bp_autograd":                 # autograd's graph: 2 backward products per product
            return nom, 3 * (init_exe + T * step_exe + setup_exe) + final + amort_bp
        if gram:
            bwd_step = 4 * sum(pred[1:]) + 2 * _mm(B, d[1], d[1])
            bwd_tail = _mm(d[0], d[1], d[1]) + _mm(B, d[0], d[1]) + 2 * d[0] * d[1] * d[1]
        else:
            bwd_step, bwd_tail = 4 * sum(pred), 0
        exe = (init_exe + T * step_exe + setup_exe) + T * bwd_step + bwd_tail + final + amort_bp
        return nom, exe
    raise ValueError(kind)


# ---- memory -----------------------------------------------------------------------------------

class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _free(self, key: int, nbytes: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key, n = st.data_ptr(), st.nbytes()
            if n == 0 or key in seen or key in self._refs:
                continue
            self._refs[key] = weakref.ref(st, lambda _r, k=key, m=n: self._free(k, m))
            self.live += n
            self.peak = max(self.peak, self.live)
        return out


def peak_step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak extra bytes alive during one call of ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from pcn.fast import stacked

    stacked._POOL.clear()              # count the adjoint's stacks as fresh allocations
    with _LiveBytes() as m:
        step()
    return m.peak


def _rss_peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


# ---- cases ------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    net: str
    kind: str          # baseline | pc | bp | infer | peak
    T: int
    batch: int
    layers: list
    step: Callable[[], None]
    flops: tuple[int, int]
    per_rep: int       # batches per timed repetition
    extra: dict = field(default_factory=dict)
    times: list = field(default_factory=list)
    mem: int | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _data(layers: list[int], B: int, device: torch.device, n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.rand(B, layers[0], generator=g) * 2 - 1).to(device) for _ in range(n)]
    ys = [torch.randint(0, 10, (B,), generator=g).to(device) for _ in range(n)]
    return xs, ys


def _cycle(xs, ys):
    state = {"i": 0}

    def nxt():
        i = state["i"] = (state["i"] + 1) % len(xs)
        return xs[i], ys[i]
    return nxt


def make_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    from pcn.study import config
    from pcn.core.inference import init_latents
    from pcn.core.model import PCN
    from pcn.fast.dispatch import infer
    from pcn.fast.rules import rule
    from pcn.fast.stacked import use_gram
    from pcn.study.train import build_optimizer

    nets = ["tiny"] if args.tiny else (["ref"] + ([] if args.quick else ["wide"]))
    cases: list[Case] = []
    for net in nets:
        layers, B = NETS[net]["layers"], NETS[net]["batch"]
        Ts = [2, 4] if net == "tiny" else ([5] if (net == "wide" and not args.full) else [5, 20])
        if args.T:
            Ts = args.T
        per_rep = {"tiny": 2, "ref": 10, "wide": 2}[net]
        if args.quick:
            per_rep = max(1, per_rep // 2)
        xs, ys = _data(layers, B, device)

        # (a) plain PyTorch backprop MLP of the same matrix sizes
        torch.manual_seed(0)
        mods: list[nn.Module] = []
        for i in range(len(layers) - 1):
            mods.append(nn.Linear(layers[i], layers[i + 1]))
            if i < len(layers) - 2:
                mods.append(nn.GELU())
        mlp = nn.Sequential(*mods).to(device)
        mopt = torch.optim.Adam(mlp.parameters(), lr=1e-3, fused=True if args.fused_adam else None)
        nxt = _cycle(xs, ys)

        def base_step(mlp=mlp, mopt=mopt, nxt=nxt):
            x, y = nxt()
            mopt.zero_grad(set_to_none=True)
            F.cross_entropy(mlp(x), y).backward()
            mopt.step()
        fl = flop_counts("baseline", layers, B, 0, False, False, False)
        cases.append(Case(f"{net}/baseline", net, "baseline", 0, B, layers, base_step, fl, per_rep))

        for T in Ts:
            cfg = config.resolve(dict(layers=layers, activation="gelu", T=T, init=args.init,
                                      batch_size=B, ce_weight=args.ce_weight))
            amort = cfg["init"] == "amortised"
            gram = use_gram(PCN(layers, "gelu"), B, T)
            for kind in ("pc", "bp", "infer"):
                model = PCN(layers, "gelu", amortised=amort, seed=0).to(device)
                if args.fused_adam:
                    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                           fused=True)
                else:
                    opt = build_optimizer(cfg, model.parameters())
                nxt = _cycle(xs, ys)
                if kind == "infer":
                    def step(model=model, cfg=cfg, nxt=nxt):
                        x, _ = nxt()
                        with torch.no_grad():
                            infer(model, x, init_latents(model, x, cfg["init"]), cfg["T"], cfg["eta"],
                                  momentum=cfg["momentum"])
                else:
                    def step(model=model, cfg=cfg, opt=opt, nxt=nxt, rule=rule(kind)):
                        x, y = nxt()
                        terms = rule(model, x, y, cfg)
                        [float(terms[k]) for k in ("loss", "energy", "ce")]  # as pcn.study.train does
                        opt.step()
                fl = flop_counts(kind, layers, B, T, gram, amort, kind == "pc" and cfg["ce_weight"] > 0)
                cases.append(Case(f"{net}/{kind}/T{T}", net, kind, T, B, layers, step, fl, per_rep,
                                  extra={"init": cfg["init"], "gram": gram, "eta": cfg["eta"],
                                         "ce_weight": cfg["ce_weight"]}))
    return cases


def make_peaks(args: argparse.Namespace, device: torch.device) -> list[Case]:
    """sgemm: a large square product and the batch x layer products of the networks."""
    shapes = [("square", 512, 512, 512)] if args.tiny else [("square", 2048, 2048, 2048)]
    if not args.tiny:
        shapes.append(("ref_B128x784x128", 128, 784, 128))
        if not args.quick:
            shapes.append(("wide_B512x1024x1024", 512, 1024, 1024))
    out = []
    for name, m, k, n in shapes:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        c = torch.empty(m, n, device=device)
        reps = max(1, int(2e9 // (2 * m * k * n)))   # ~2 GFLOP per timed repetition

        def step(a=a, b=b, c=c):
            torch.mm(a, b, out=c)
        out.append(Case(f"peak/{name}", "peak", "peak", 0, m, [m, k, n], step, (2 * m * k * n,) * 2, reps))
    return out


def run_cases(cases: list[Case], reps: int, warmup: int, device: torch.device, log) -> None:
    for c in cases:                         # warm-up (allocator, MKL, optimizer state)
        for _ in range(warmup * c.per_rep):
            c.step()
    _sync(device)
    for r in range(reps):                   # round-robin: background load hits every case alike
        for c in cases:
            c.step()                        # untimed: the case's caches and allocator warm again,
            _sync(device)                   # as in training, where one model runs batch after batch
            t0 = time.perf_counter()
            for _ in range(c.per_rep):
                c.step()
            _sync(device)
            c.times.append((time.perf_counter() - t0) / c.per_rep)
        log(f"  repetition {r + 1}/{reps} done")


def summarise(cases: list[Case], peaks: list[Case]) -> dict:
    pk = {c.name.split("/", 1)[1]: c.flops[0] / statistics.median(c.times) / 1e9 for c in peaks}
    peak = max(pk.values())
    base = {c.net: statistics.median(c.times) for c in cases if c.kind == "baseline"}
    rows = []
    for c in cases:
        t = statistics.median(c.times)
        nom, exe = c.flops
        shape_peak = pk.get("ref_B128x784x128") if c.net == "ref" else pk.get("wide_B512x1024x1024")
        row = {
            "case": c.name, "net": c.net, "kind": c.kind, "T": c.T, "batch": c.batch, "layers": c.layers,
            "s_per_batch": t, "s_per_batch_min": min(c.times), "s_per_batch_max": max(c.times),
            "s_per_epoch": t * EPOCH / c.batch, "samples_per_s": c.batch / t,
            "flops_nominal_per_batch": nom, "flops_executed_per_batch": exe,
            "gflops_nominal": nom / t / 1e9, "gflops_executed": exe / t / 1e9,
            "frac_peak": exe / t / 1e9 / peak,
            "frac_shape_peak": exe / t / 1e9 / shape_peak if shape_peak else None,
            "ratio_to_baseline": t / base[c.net],
            "peak_mem_mb": c.mem / 2**20 if c.mem is not None else None,
            "reps": len(c.times),
        }
        row.update(c.extra)
        rows.append(row)
    by = {r["case"]: r for r in rows}
    for r in rows:                          # bp cost relative to pc at the same T
        if r["kind"] == "bp":
            pc = by.get(f"{r['net']}/pc/T{r['T']}")
            r["ratio_to_pc"] = r["s_per_batch"] / pc["s_per_batch"] if pc else None
    return {"peak_gflops": pk, "peak_gflops_max": peak, "cases": rows}


def compare_pcx(summary: dict, pcx: dict | None = None, device: str = "cpu") -> dict:
    """Our ref pc against PCX's figures: ``pcx`` (read_pcx_json: measured in this session, so the
    ratios are as measured) or else the stored PCX_PAST (a past measurement, possibly in another
    machine state: its ratios are not measured ones, and no scaling makes them so; the two
    baseline-MLP figures show how far the states differ).  The stored figures are CPU ones: a run
    on another ``device`` gets no ratio against them (``"skipped"`` says why)."""
    ref = pcx or PCX_PAST
    by = {r["case"]: r for r in summary["cases"]}
    keep = ("date", "machine", "file", "epoch", "baseline_mlp_s", "pc_T5_s", "pc_T20_s")
    out = {"pcx": {k: ref.get(k) for k in keep}, "same_session": pcx is not None}
    if pcx is None and device != "cpu":
        out["skipped"] = (f"PCX's stored figures were measured on a CPU and this run is on {device}: no ratio "
                          "(--pcx-json FILE with PCX measured on this device gives one)")
        return out
    b = by.get("ref/baseline")
    if b is not None:
        out["baseline"] = {"samples_per_s": b["samples_per_s"],
                           "pcx_baseline_samples_per_s": ref["epoch"] / ref["baseline_mlp_s"]}
    for T in (5, 20):
        r = by.get(f"ref/pc/T{T}")
        if r is not None:
            theirs = ref["epoch"] / ref[f"pc_T{T}_s"]
            out[f"pc_T{T}"] = {"samples_per_s": r["samples_per_s"], "pcx_samples_per_s": theirs,
                               "speedup_vs_pcx": r["samples_per_s"] / theirs, "target": 1.5 if T == 20 else 1.0}
        bp = by.get(f"ref/bp/T{T}")
        if bp is not None:
            out[f"bp_over_pc_T{T}"] = {"ratio": bp["ratio_to_pc"], "target_max": 3.0}
    return out


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
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch threads (default: OMP_NUM_THREADS, else torch's)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--profile", action="store_true",
                   help="also profile the pc and bp cases (torch.profiler): time shares per op group")
    p.add_argument("--json", help="write all results to this JSON file")
    p.add_argument("--pcx-json", metavar="FILE", help=PCX_JSON_HELP)


def _variant(c: Case, tag: str, options: dict) -> Case:
    """Case ``c`` run with pcn.fast.options.OPTIONS overridden."""
    from pcn.fast.options import OPTIONS

    inner = c.step

    def step(inner=inner):
        old = dict(OPTIONS)
        OPTIONS.update(options)
        try:
            inner()
        finally:
            OPTIONS.clear()
            OPTIONS.update(old)
    return Case(f"{c.name}/{tag}", c.net, c.kind, c.T, c.batch, c.layers, step, c.flops, c.per_rep,
                extra=dict(c.extra, variant=tag, options=options))


def _compile_cases(cases: list[Case], log) -> list[Case]:
    """The infer and pc cases under torch.compile, with their compile time."""
    from pcn.fast import compiled

    out = []
    for c in [c for c in cases if c.kind in ("infer", "pc") and "variant" not in c.extra]:
        v = _variant(c, "compiled", {"compile": True})
        t0 = time.perf_counter()
        v.step()
        v.extra["compile_s"] = time.perf_counter() - t0
        if compiled._COMPILED.get("fn") is None:
            log("torch.compile unavailable; skipping the compiled cases")
            return []
        log(f"  compiled {c.name} in {v.extra['compile_s']:.1f} s")
        out.append(v)
    return out


def _ablation_cases(cases: list[Case]) -> list[Case]:
    """What each speed device buys: pc/infer without the Gram form; bp with the lean adjoint
    (recomputing), and through autograd's graph of the unrolled loop instead of the adjoint
    (with and without the Gram form)."""
    from pcn.bench import flop_counts as fc

    out = []
    for c in cases:
        if c.kind in ("pc", "infer") and c.extra.get("gram"):
            v = _variant(c, "no-gram", {"gram": False})
            amort = c.extra["init"] == "amortised"
            v.flops = (c.flops[0], fc(c.kind, c.layers, c.batch, c.T, False, amort,
                                      c.kind == "pc" and c.extra["ce_weight"] > 0)[0])
            v.extra["gram"] = False
            out.append(v)
        if c.kind == "bp":
            out.append(_variant(c, "lean", {"bp_memory": "lean"}))
            amort = c.extra["init"] == "amortised"
            for tag, gram in (("autograd", c.extra.get("gram")), ("autograd-no-gram", False)):
                if tag == "autograd-no-gram" and not c.extra.get("gram"):
                    continue
                v = _variant(c, tag, {"adjoint": False, "gram": gram})
                v.flops = fc("bp_autograd", c.layers, c.batch, c.T, gram, amort, False)
                v.extra["gram"] = gram
                out.append(v)
    return out


# op groups of the profile (torch.profiler's self CPU time per aten op)
PROFILE_GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul", "aten::dot"),
    "activation": ("aten::gelu", "aten::gelu_backward", "aten::tanh", "aten::tanh_backward",
                   "aten::threshold_backward", "aten::clamp_min", "aten::exp_", "aten::exp"),
    "optimizer": ("aten::_fused_adam_", "aten::_fused_adamw_", "aten::_foreach_add_"),
    "copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
    "softmax/CE": ("aten::_softmax", "aten::_log_softmax", "aten::nll_loss_forward", "aten::gather"),
    "other elementwise": ("aten::add_", "aten::add", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_",
                          "aten::addcmul_", "aten::addcmul", "aten::neg_", "aten::div_", "aten::sum",
                          "aten::mean", "aten::fill_", "aten::zero_", "aten::linalg_vector_norm"),
}


def profile_cases(cases: list[Case], batches: int) -> dict:
    """Where the time of the pc and bp cases goes: torch.profiler's self CPU time per op,
    summed into PROFILE_GROUPS (the rest: dispatch, views, allocation, small ops), as shares
    of the profiled total.  The profiler adds a few microseconds per op, so small ops are
    over-represented; the shares are a guide, the timed table is the measurement."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for c in cases:
        if c.kind not in ("pc", "bp") or "variant" in c.extra:
            continue
        c.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(batches):
                c.step()
        totals: dict = {g: 0.0 for g in PROFILE_GROUPS}
        totals["rest"] = 0.0
        ops = {}
        for ev in prof.key_averages():
            t = ev.self_cpu_time_total
            ops[ev.key] = ops.get(ev.key, 0.0) + t
            group = next((g for g, names in PROFILE_GROUPS.items() if ev.key in names), "rest")
            totals[group] += t
        total = sum(totals.values()) or 1.0
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
        out[c.name] = {"shares": {g: v / total for g, v in totals.items()},
                       "top_ops": {k: v / total for k, v in top},
                       "profiled_us_per_batch": total / batches}
    return out


def format_profile(prof: dict) -> str:
    lines = []
    for name, p in prof.items():
        sh = "  ".join(f"{g} {100 * v:.0f}%" for g, v in p["shares"].items())
        lines.append(f"profile {name} ({p['profiled_us_per_batch'] / 1000:.2f} ms/batch profiled): {sh}")
    return "\n".join(lines)


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
    if args.compile:
        cases += _compile_cases(cases, log)
    if args.reference:
        cases += [_variant(c, "reference", {"reference": True}) for c in cases
                  if c.kind in ("infer", "pc", "bp") and "variant" not in c.extra]
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
    if args.reference:
        print(format_reference(result))
    if prof:
        print(format_profile(prof))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def format_reference(res: dict) -> str:
    """One line per case timed on both paths: the fast path's speed-up over the reference,
    both measured in this run."""
    by_name = {r["case"]: r for r in res["cases"]}
    lines = []
    for name, r in by_name.items():
        ref = by_name.get(f"{name}/reference")
        if ref is not None:
            lines.append(f"{name}: fast {r['s_per_epoch']:.2f} s/epoch, reference {ref['s_per_epoch']:.2f} "
                         f"-> fast path x{ref['s_per_epoch'] / r['s_per_epoch']:.2f}")
    return "\n".join(lines)


def format_table(res: dict) -> str:
    m = res["machine"]
    lines = [f"device {m['device']}  torch {m['torch']}  threads {m['threads']}  "
             f"load {m['load_avg_1min']}  sgemm peak " +
             ", ".join(f"{k} {v:.1f}" for k, v in res["peak_gflops"].items()) + " GFLOP/s",
             f"{'case':<30}{'s/epoch':>9}{'samples/s':>11}{'GF/s nom':>10}{'GF/s exe':>10}"
             f"{'%peak':>7}{'x base':>8}{'x pc':>6}{'mem MB':>8}"]
    for r in res["cases"]:
        xpc = r.get("ratio_to_pc")
        mem = r["peak_mem_mb"]
        lines.append(f"{r['case']:<30}{r['s_per_epoch']:>9.2f}{r['samples_per_s']:>11.0f}"
                     f"{r['gflops_nominal']:>10.1f}{r['gflops_executed']:>10.1f}{100 * r['frac_peak']:>6.0f}%"
                     f"{r['ratio_to_baseline']:>8.2f}{(f'{xpc:.2f}' if xpc else ''):>6}"
                     f"{(f'{mem:.1f}' if mem is not None else ''):>8}")
    lines += format_pcx(res["pcx"])
    lines.append(f"process peak RSS {res['rss_peak_mb']:.0f} MB, wall {res['wall_s']:.0f} s")
    return "\n".join(lines)


def format_pcx(px: dict) -> list[str]:
    """The PCX lines of the table: same-session figures as measured ratios; the stored ones as what
    they are, a past measurement with its date and machine state."""
    ref = px["pcx"]
    if "skipped" in px:
        return [f"PCX: {px['skipped']}"]
    if not {"baseline", "pc_T5", "pc_T20"} & set(px):
        return []  # no ref network in this run (--tiny)
    if px["same_session"]:
        head = f"PCX, measured in this session ({ref['file']}: {ref['date']}; {ref['machine']}):"
        vs = "as measured"
    else:
        head = (f"PCX, a past measurement, not this session ({ref['date']}; {ref['machine']}).\n"
                f"Its ratios below may mix two machine states; --pcx-json FILE gives measured ones:")
        vs = "vs the past PCX figure"
    lines = [head]
    if "baseline" in px:
        b = px["baseline"]
        lines.append(f"baseline MLP: {b['samples_per_s']:.0f} samples/s here, {b['pcx_baseline_samples_per_s']:.0f} "
                     f"beside PCX ({ref['baseline_mlp_s']} s per epoch)")
    for T in (5, 20):
        if f"pc_T{T}" in px:
            p = px[f"pc_T{T}"]
            lines.append(f"pc T={T}: {p['samples_per_s']:.0f} samples/s vs PCX {p['pcx_samples_per_s']:.0f} "
                         f"({ref[f'pc_T{T}_s']} s per epoch) -> x{p['speedup_vs_pcx']:.2f} {vs} "
                         f"(target x{p['target']:.1f})")
        if f"bp_over_pc_T{T}" in px:
            lines.append(f"bp/pc T={T}: {px[f'bp_over_pc_T{T}']['ratio']:.2f} (target <= 3)")
    return lines
