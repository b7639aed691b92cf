"""Fixed point versus trajectory (issue 23 item 2): the trace reaches 100 T (``--trace-factor``),
10 T and 100 T are recorded exactly, the summary's 100 T columns and steps_to_final_acc."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pcn.outputs import aggregate
from pcn.study import config, probe
from pcn.study.train import train

MNIST_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist").resolve()
TINY = dict(train_subset=600, test_subset=100, val_size=200, eval_train_size=100, layers=[784, 16, 8],
            epochs=1, batch_size=50, T=4, eta=0.05, lr=5e-3, rule="pc", ce_weight=0.5)


def test_record_steps_hold_every_decade_of_T():
    for T, factor in ((20, 100), (8, 100), (7, 10), (3, 1000)):
        s = probe.record_steps(T, factor * T, n_log=30)
        assert {T, 10 * T, factor * T} <= set(s) and s[:T + 1] == list(range(T + 1))
        assert all(10 ** k * T in s for k in range(int(math.log10(factor)) + 1))
    assert probe.trace_steps(20, 200) == 200 and probe.trace_steps(20, 200, 100) == 2000
    assert probe.trace_steps(0, 50, 100) == 100


def _trace(acc: dict, T: int) -> pd.DataFrame:
    rows = []
    for t, a in acc.items():
        rows += [(t, "all", "acc", a), (t, "all", "gen_mse", 1 / (t + 1)), (t, "all", "energy", 10 / (t + 1)),
                 (t, "1", "z_norm", 2.0)]
        if t:
            rows.append((t, "all", "dz_norm", 1 / t))
    return pd.DataFrame(rows, columns=["step", "layer", "metric", "value"])


def test_steps_to_final_on_a_hand_made_trace():
    acc = pd.Series({0: 0.5, 1: 0.9, 2: 0.7, 5: 0.795, 10: 0.81, 50: 0.80, 100: 0.805})
    assert aggregate.steps_to_final(acc) == 5          # 0.795..0.81 all within 0.01 of 0.805
    assert aggregate.steps_to_final(acc, tol=0.001) == 100
    assert aggregate.steps_to_final(pd.Series({0: 0.1, 3: 0.1})) == 0
    assert math.isnan(aggregate.steps_to_final(pd.Series({0: 0.1, 3: float("nan")})))
    # a value that leaves and comes back: counted from after its last excursion
    assert aggregate.steps_to_final(pd.Series({0: 0.8, 1: 0.8, 2: 0.5, 3: 0.8})) == 3
    assert aggregate.steps_to_final(pd.Series({0: 0.8, 1: float("nan"), 3: 0.8})) == 3


def test_summary_columns_at_100T():
    T = 4
    acc = {t: min(0.9, 0.1 * t) for t in sorted(set(range(T + 1)) | {10, 20, 40, 100, 400})}
    out = aggregate.inference_stages(_trace(acc, T), T)
    assert out["probe_steps"] == 400
    assert out["acc_100T"] == 0.9 and out["gen_mse_100T"] == pytest.approx(1 / 401)
    assert out["energy_100T"] == pytest.approx(10 / 401) and out["settle_100T"] == pytest.approx((1 / 400) / 2)
    assert out["acc_10T"] == 0.9 and out["acc_T"] == pytest.approx(0.4)
    assert out["steps_to_final_acc"] == 10               # 0.9 from step 10 (9 would be, but 10 is recorded)
    short = aggregate.inference_stages(_trace({t: acc[t] for t in acc if t <= 40}, T), T)
    assert short["acc_100T"] == short["acc_10T"]        # a shorter trace: its last step
    assert "100T" in aggregate.STAGES


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp_run")
    train(config.resolve(dict(TINY, data_dir=str(MNIST_DIR))), out, log=lambda s: None)
    return out


def test_trace_factor_cli_reaches_100T_and_the_summary_reads_it(tiny_run, tmp_path):
    from pcn.cli import main

    run = tmp_path / "run"
    import shutil

    shutil.copytree(tiny_run, run)
    assert main(["probe", "--run", str(run), "--out", str(run / "trace.csv"), "--steps", "8", "--trace-factor", "100",
                 "--n-test", "50", "--device", "cpu"]) == 0
    tr = pd.read_csv(run / "trace.csv")
    T = TINY["T"]
    assert tr.step.max() == 100 * T and {T, 10 * T, 100 * T} <= set(tr.step)
    s = aggregate.aggregate([run])
    for c in ("acc_100T", "gen_mse_100T", "energy_100T", "settle_100T", "recon_mse_100T", "steps_to_final_acc"):
        assert np.isfinite(s.at[0, c]), c
    assert 0 <= s.at[0, "steps_to_final_acc"] <= 100 * T
    assert main(["probe", "--run", str(run), "--out", str(tmp_path / "t.csv"), "--trace-factor", "0"]) == 2
