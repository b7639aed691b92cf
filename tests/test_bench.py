"""`pcn bench` in its tiny mode: runs in seconds and writes a JSON with sane values
(no timing assertions: timings depend on the machine and its load)."""
import json
import math

import pytest
import torch

from pcn import bench, cli

PCX = {"date": "2026-11-30 07:40 UTC", "machine": "2-core EPYC, slow state", "baseline_mlp_s": 1.80,
       "pc_T5_s": 2.12, "pc_T20_s": 11.31}


def test_bench_tiny_json(tmp_path):
    out = tmp_path / "bench.json"
    (tmp_path / "pcx.json").write_text(json.dumps(PCX))
    threads = torch.get_num_threads()
    try:
        assert cli.main(["bench", "--tiny", "--conv", "--ablation", "--reference", "--profile", "--threads", "1",
                         "--json", str(out), "--pcx-json", str(tmp_path / "pcx.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    auto = "cuda" if torch.cuda.is_available() else "cpu"     # --device auto: CUDA where torch sees a GPU
    assert res["machine"]["threads"] == 1 and res["machine"]["device"] == auto
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
    # --conv: a conv PCN's pc and bp beside a plain conv net, each against its own baseline
    conv = {c["case"]: c for c in res["cases"] if c["net"] == "conv-tiny"}
    assert set(conv) == {"conv-tiny/baseline", "conv-tiny/pc/T2", "conv-tiny/bp/T2"}
    assert conv["conv-tiny/baseline"]["ratio_to_baseline"] == 1.0 and conv["conv-tiny/bp/T2"]["ratio_to_pc"] > 0
    assert res["pcx"]["same_session"] and res["pcx"]["pcx"]["machine"] == PCX["machine"]
    # the profile: shares of the pc and bp cases sum to one, and the products are a real part
    assert {"tiny/pc/T2", "tiny/bp/T2"} <= set(res["profile"])
    for p in res["profile"].values():
        assert abs(sum(p["shares"].values()) - 1.0) < 1e-9
        assert p["shares"]["matmul"] > 0.01 and p["profiled_us_per_batch"] > 0


def _summary(baseline_s: float, pc5_s: float, pc20_s: float) -> dict:
    """A bench summary with the ref cases only, from seconds per 60,000-sample epoch."""
    cases = [("ref/baseline", baseline_s), ("ref/pc/T5", pc5_s), ("ref/pc/T20", pc20_s)]
    return {"cases": [{"case": c, "samples_per_s": 60_000 / t} for c, t in cases]}


def test_pcx_comparison_same_session_or_past():
    """With same-session PCX figures the ratio is measured (ours / theirs, no scaling) and printed
    as such; without, the stored figures are printed as a past measurement with date and state."""
    s = _summary(1.75, 4.0, 7.54)
    px = bench.compare_pcx(s, {**PCX, "epoch": 59_904, "file": "pcx.json"})
    assert px["same_session"]
    assert px["pc_T20"]["speedup_vs_pcx"] == pytest.approx((60_000 / 7.54) / (59_904 / 11.31))
    text = "\n".join(bench.format_pcx(px))
    assert "measured in this session (pcx.json: 2026-11-30 07:40 UTC; 2-core EPYC, slow state)" in text
    assert "x1.50 as measured" in text and "past" not in text and "equal" not in text

    past = bench.compare_pcx(s)
    assert not past["same_session"] and past["pcx"]["pc_T20_s"] == 4.2
    text = "\n".join(bench.format_pcx(past))
    assert "a past measurement, not this session (date not recorded" in text and "fast state" in text
    assert "as measured" not in text and "vs the past PCX figure" in text

    on_gpu = bench.compare_pcx(s, device="cuda")      # CPU figures: no ratio for a GPU run
    assert not {"baseline", "pc_T5", "pc_T20"} & set(on_gpu)
    assert bench.format_pcx(on_gpu) == [f"PCX: {on_gpu['skipped']}"] and "measured on a CPU" in on_gpu["skipped"]
    assert "pc_T20" in bench.compare_pcx(s, {**PCX, "epoch": 59_904, "file": "pcx.json"}, device="cuda")


@pytest.mark.parametrize("content, message", [
    (None, "cannot read it"),
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    (json.dumps({k: v for k, v in PCX.items() if k != "pc_T20_s"}), "missing key 'pc_T20_s'"),
    (json.dumps({**PCX, "pc_T5_s": "fast"}), "key 'pc_T5_s' must be a positive number"),
], ids=["no-file", "not-json", "not-object", "missing-key", "bad-time"])
def test_bad_pcx_json_is_one_line_naming_file_and_key(tmp_path, content, message):
    path = tmp_path / "pcx.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--tiny", "--pcx-json", str(path)])
    assert str(e.value).startswith(f"pcn bench: --pcx-json {path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_bench_runs_times_packs_against_the_run_alone(tmp_path, capsys):
    """--runs: one pack case per (pc/bp case, R), its per-run speed-up against the run alone."""
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        assert cli.main(["bench", "--tiny", "--runs", "1", "3", "--no-memory", "--threads", "1",
                         "--json", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads(out.read_text())
    by = {c["case"]: c for c in res["cases"]}
    for kind in ("pc", "bp"):
        for T in (2, 4):
            alone = by[f"tiny/{kind}/T{T}"]
            for R in (1, 3):
                c = by[f"tiny/pack{R}/{kind}/T{T}"]
                assert c["kind"] == "pack" and c["runs"] == R and c["batch"] == R * alone["batch"]
                assert c["flops_nominal_per_batch"] == R * alone["flops_nominal_per_batch"]
                assert c["per_run_speedup"] == pytest.approx(alone["s_per_epoch"] / c["s_per_epoch"])
    assert "per-run throughput x" in capsys.readouterr().out
    assert cli.main(["bench", "--tiny", "--runs", "0"]) == 2


def test_conv_link_flops_count_the_multiply_adds():
    """2 B c_out h_out w_out c_in k^2 for a conv link (8 x 8 -> 2 x 4 x 4 with 3 x 3 kernels:
    2 x 4 x 32 x 9 = 2304 per sample x 2), 2 B d_l d_{l+1} for a dense one."""
    from pcn.bench.cases import conv_link_flops
    from pcn.core.model import PCN, ConvSpec

    m = PCN([64, 5], "tanh", conv=ConvSpec((1, 8, 8), [2], [3], [2], [1]))
    assert conv_link_flops(m, 3) == [2 * 3 * 2 * 4 * 4 * 1 * 9, 2 * 3 * 32 * 5]
