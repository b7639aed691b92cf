"""PCX's figures beside ours: the stored past measurement (PCX_PAST), a same-session
``--pcx-json`` file (read_pcx_json), the ratios (compare_pcx) and their lines in the table
(format_pcx)."""
from __future__ import annotations

import json

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
