"""What is reported: the summary of the timings (summarise) and the text table."""
from __future__ import annotations

import statistics

from pcn.bench.cases import Case
from pcn.bench.pcx import format_pcx

#: samples per epoch of the s_per_epoch column
EPOCH = 60_000


def summarise(cases: list[Case], peaks: list[Case]) -> dict:
    """Per case its median time and what follows from it (epochs, GFLOP/s, fraction of the
    sgemm peak, ratios to the baseline MLP and, for bp, to pc at the same T) and the peaks."""
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
        if r["kind"] == "pack":              # per-run throughput of a pack against the run alone
            alone = by.get(r["alone"])
            r["per_run_speedup"] = alone["s_per_epoch"] / r["s_per_epoch"] if alone else None
    return {"peak_gflops": pk, "peak_gflops_max": peak, "cases": rows}


def format_profile(prof: dict) -> str:
    """One line per profiled case: its time shares per op group."""
    lines = []
    for name, p in prof.items():
        sh = "  ".join(f"{g} {100 * v:.0f}%" for g, v in p["shares"].items())
        lines.append(f"profile {name} ({p['profiled_us_per_batch'] / 1000:.2f} ms/batch profiled): {sh}")
    return "\n".join(lines)


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


def format_packs(res: dict) -> str:
    """One line per pack case: per-run time and throughput against the same run alone, both
    measured in this run."""
    lines = []
    for r in res["cases"]:
        if r["kind"] == "pack" and r.get("per_run_speedup"):
            lines.append(f"{r['case']}: {r['runs']} runs, {r['s_per_epoch']:.2f} s per run-epoch; per-run throughput "
                         f"x{r['per_run_speedup']:.2f} against {r['alone']} alone")
    return "\n".join(lines)


def format_table(res: dict) -> str:
    """The text table of a run: machine line, one line per case, the PCX lines, RSS and wall."""
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
