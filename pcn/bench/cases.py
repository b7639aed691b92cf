"""What is timed: the networks (NETS), one Case per (network, kind, T) with its step function
and FLOP counts, the sgemm peaks, and the variants (compiled, ablations, reference)."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pcn.bench.flops import flop_counts

NETS = {
    "ref": dict(layers=[784, 128, 128, 128, 10], batch=128),
    "wide": dict(layers=[784, 1024, 1024, 10], batch=512),
    "tiny": dict(layers=[64, 32, 16], batch=32),   # --tiny: for the test suite
}


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


def _backprop_step(net: nn.Module, opt: torch.optim.Optimizer, nxt: Callable) -> Callable[[], None]:
    """One training step of a plain network (the baselines): CE on the next batch, backprop, step."""
    def step():
        x, y = nxt()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return step


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
        base_step = _backprop_step(mlp, mopt, _cycle(xs, ys))
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


#: The conv networks of ``--conv``: MNIST-sized maps (28 -> 14 -> 7, stride-2 4 x 4 kernels) and
#: a dense latent, the net of docs/results.md "Conv PCNs"; ``conv-tiny``: 8 x 8 input, for tests.
CONV_NETS = {
    "conv": dict(layers=[784, 128], channels=[16, 32], kernels=[4, 4], strides=[2, 2], padding=[1, 1], batch=64),
    "conv-tiny": dict(layers=[64, 8], channels=[2, 4], kernels=[3, 3], strides=[2, 2], padding=[1, 1], batch=8),
}


def conv_link_flops(model, B: int) -> list[int]:
    """2 B x (multiply-adds of one application) of every link's linear map: a conv link
    2 B c_{l+1} h_{l+1} w_{l+1} c_l k^2 (its transposed convolution, its adjoint the same), a
    dense link 2 B d_l d_{l+1}."""
    out = []
    for l, g in enumerate(model.conv):
        if g is None:
            out.append(2 * B * model.layers[l] * model.layers[l + 1])
        else:
            c, h, w = g.above
            out.append(2 * B * c * h * w * g.below[0] * g.kernel ** 2)
    return out


def make_conv_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    """``--conv``: a plain PyTorch conv net (conv-gelu-conv-gelu-dense-gelu-dense, the same
    kernels and maps, trained by backprop on CE) beside conv PCN ``pc`` and ``bp`` steps (the
    reference core: no fast path covers conv).  Nominal FLOPs count the link maps applied:
    baseline 3 per link (forward, two backward); ``pc`` (2 T + 1) x 2 in inference (predict and
    its adjoint per step, both phases and the settle step) + 3 for the weight gradient; ``bp``
    T x 2 x 3 (the unrolled steps forward and backward) + 3."""
    from pcn.core.model import PCN, ConvSpec
    from pcn.fast.rules import rule
    from pcn.images import image_shape
    from pcn.study import config
    from pcn.study.train import build_optimizer

    net = "conv-tiny" if args.tiny else "conv"
    spec = CONV_NETS[net]
    layers, B = spec["layers"], spec["batch"]
    Ts = args.T or ([2] if args.tiny else [5, 20])
    per_rep = 2 if args.tiny else 4
    xs, ys = _data(layers, B, device)
    keys = dict(arch="conv", conv_channels=spec["channels"], kernels=spec["kernels"], strides=spec["strides"],
                padding=spec["padding"], activation="gelu", init=args.init, batch_size=B, ce_weight=args.ce_weight)
    conv = ConvSpec(image_shape(layers[0]), spec["channels"], spec["kernels"], spec["strides"], spec["padding"])
    probe = PCN(layers, "gelu", conv=conv)
    links = conv_link_flops(probe, B)
    per_link = sum(links)

    torch.manual_seed(0)
    mods: list[nn.Module] = [nn.Unflatten(1, image_shape(layers[0]))]
    for g in probe.conv:
        if g is not None:
            mods += [nn.Conv2d(g.below[0], g.above[0], g.kernel, g.stride, g.padding), nn.GELU()]
    mods.append(nn.Flatten())
    dims = probe.layers[len([g for g in probe.conv if g is not None]):] + [10]
    for i in range(len(dims) - 1):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < len(dims) - 2:
            mods.append(nn.GELU())
    cnn = nn.Sequential(*mods).to(device)
    base_step = _backprop_step(cnn, torch.optim.Adam(cnn.parameters(), lr=1e-3), _cycle(xs, ys))
    base_fl = 3 * per_link
    cases = [Case(f"{net}/baseline", net, "baseline", 0, B, layers, base_step, (base_fl, base_fl), per_rep)]
    for T in Ts:
        cfg = config.resolve(dict(keys, layers=layers, T=T))
        for kind in ("pc", "bp"):
            model = PCN(layers, "gelu", amortised=cfg["init"] == "amortised", seed=0, conv=conv).to(device)
            opt = build_optimizer(cfg, model.parameters())
            nxt = _cycle(xs, ys)

            def step(model=model, cfg=cfg, opt=opt, nxt=nxt, rule=rule(kind)):
                x, y = nxt()
                terms = rule(model, x, y, cfg)
                [float(terms[k]) for k in ("loss", "energy", "ce")]
                opt.step()
            n = ((2 * T + 1) * 2 + 3) if kind == "pc" else (T * 2 * 3 + 3)
            cases.append(Case(f"{net}/{kind}/T{T}", net, kind, T, B, layers, step, (n * per_link, n * per_link),
                              per_rep, extra={"init": cfg["init"], "eta": cfg["eta"], "ce_weight": cfg["ce_weight"],
                                              "conv_channels": spec["channels"]}))
    return cases


def make_pack_cases(args: argparse.Namespace, device: torch.device, cases: list[Case]) -> list[Case]:
    """``--runs R ...``: R runs of the same shape (differing seed and ce_weight) as one pack
    (``pcn.fast.pack.pack_grads`` and each run's own optimiser step), for every pc and bp case
    timed alone.  ``batch`` is R x the batch size, so s_per_epoch is the time per run-epoch."""
    from pcn.core.model import PCN
    from pcn.fast.pack import pack_grads
    from pcn.study import config
    from pcn.study.train import build_optimizer

    out = []
    for c in [c for c in cases if c.kind in ("pc", "bp") and "variant" not in c.extra]:
        for R in args.runs:
            cfgs = [config.resolve(dict(layers=c.layers, activation="gelu", T=c.T, init=c.extra["init"], rule=c.kind,
                                        batch_size=c.batch, ce_weight=args.ce_weight if r % 2 == 0 else args.ce_weight / 2,
                                        seed=r)) for r in range(R)]
            models = [PCN(c.layers, "gelu", amortised=cfgs[0]["init"] == "amortised", seed=r).to(device) for r in range(R)]
            opts = [build_optimizer(cf, m.parameters()) for cf, m in zip(cfgs, models)]
            xs, ys = _data(c.layers, c.batch, device, n=2 * R, seed=1)
            x = [torch.stack(xs[i::2]) for i in range(2)]
            y = [torch.stack(ys[i::2]) for i in range(2)]
            nxt = _cycle(x, y)

            def step(models=models, opts=opts, cfgs=cfgs, nxt=nxt):
                xb, yb = nxt()
                terms = pack_grads(models, xb, yb, cfgs)
                for t, o in zip(terms, opts):
                    [float(t[k]) for k in ("loss", "energy", "ce")]  # as pcn.study.train does
                    o.step()
            fl = tuple(R * f for f in c.flops)
            out.append(Case(f"{c.net}/pack{R}/{c.kind}/T{c.T}", c.net, "pack", c.T, R * c.batch, c.layers, step, fl,
                            max(1, c.per_rep // R), extra=dict(c.extra, runs=R, rule=c.kind, alone=c.name)))
    return out


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
    out = []
    for c in cases:
        if c.kind in ("pc", "infer") and c.extra.get("gram"):
            v = _variant(c, "no-gram", {"gram": False})
            amort = c.extra["init"] == "amortised"
            v.flops = (c.flops[0], flop_counts(c.kind, c.layers, c.batch, c.T, False, amort,
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
                v.flops = flop_counts("bp_autograd", c.layers, c.batch, c.T, gram, amort, False)
                v.extra["gram"] = gram
                out.append(v)
    return out
