"""`pcn bench` in its tiny mode: runs in seconds and writes a JSON with sane values
(no timing assertions: timings depend on the machine and its load)."""
import json
import math

import torch

from pcn import cli


def test_bench_tiny_json(tmp_path):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["bench", "--tiny", "--ablation", "--reference", "--profile", "--threads", "1", "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    assert res["machine"]["threads"] == 1 and res["machine"]["device"] == "cpu"
    assert res["peak_gflops"] and all(v > 0 for v in res["peak_gflops"].values())
    kinds = {(c["kind"], c.get("variant")) for c in res["cases"]}
    for kind in ("baseline", "pc", "bp", "infer"):
        assert (kind, None) in kinds
    assert ("bp", "autograd") in kinds
    assert {("pc", "reference"), ("bp", "reference"), ("infer", "reference")} <= kinds
    for c in res["cases"]:
        for key in ("s_per_batch", "s_per_epoch", "samples_per_s", "gflops_nominal", "gflops_executed",
                    "frac_peak", "ratio_to_baseline", "peak_mem_mb"):
            assert isinstance(c[key], (int, float)) and math.isfinite(c[key]) and c[key] > 0, (c["case"], key)
        assert c["flops_nominal_per_batch"] > 0 and c["flops_executed_per_batch"] > 0
        assert c["s_per_epoch"] == c["s_per_batch"] * 60_000 / c["batch"]
        if c["kind"] == "bp":
            assert c["ratio_to_pc"] > 0
    assert res["rss_peak_mb"] > 0
    # the profile: shares of the pc and bp cases sum to one, and the products are a real part
    assert {"tiny/pc/T2", "tiny/bp/T2"} <= set(res["profile"])
    for p in res["profile"].values():
        assert abs(sum(p["shares"].values()) - 1.0) < 1e-9
        assert p["shares"]["matmul"] > 0.01 and p["profiled_us_per_batch"] > 0
