"""Inference under corrupted inputs (issue 23 item 3): the corruptions do what their names say,
the table's columns and values, its step-0 / step-T rows of the clean images equal the trace's,
and the summary's gain columns."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pcn.outputs import aggregate
from pcn.study import config, probe, robustness
from pcn.study.train import train

MNIST_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist").resolve()
TINY = dict(train_subset=1000, test_subset=300, val_size=200, eval_train_size=200, layers=[784, 64, 32],
            epochs=4, batch_size=50, T=8, eta=0.03, lr=1e-2, rule="pc", ce_weight=0.5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny pc model, 4 epochs on 1000 MNIST images (a few seconds; about 65 % test accuracy, enough
    for heavy noise and the half occlusion to cost accuracy visibly)."""
    out = tmp_path_factory.mktemp("robust_run")
    train(config.resolve(dict(TINY, data_dir=str(MNIST_DIR))), out, log=lambda s: None)
    return out


def _images(n=400, d=784, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g) * 2 - 1


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
def test_gaussian_noise_has_the_named_sd_and_is_not_clipped(sigma):
    x = _images()
    xc = robustness.corrupt(x, "noise", sigma)
    noise = xc - x
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert abs(float(noise.mean())) < 0.01 * sigma + 1e-3
    assert float(((xc - x) ** 2).mean()) == pytest.approx(sigma ** 2, rel=0.02)
    if sigma >= 0.5:
        assert float(xc.abs().max()) > 1.5   # not clipped to [-1, 1]


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_random_pixel_occlusion_hides_the_named_fraction_of_every_image(fraction):
    x = _images() * 0.5 + 0.6      # no pixel is 0 already
    xc = robustness.corrupt(x, "pixels", fraction)
    hidden = xc == robustness.OCCLUDED
    assert (hidden.sum(1) == round(fraction * x.shape[1])).all()      # exactly, in every image
    assert torch.equal(xc[~hidden], x[~hidden])                        # the rest untouched
    assert not torch.equal(hidden[0], hidden[1])                       # each image its own pixels
    # the pixels are spread over the whole image (about uniform per position)
    assert float(hidden.double().mean(0).std()) < 0.1


def test_half_occlusion_hides_the_bottom_half():
    x = _images(10) * 0.5 + 0.6
    xc = robustness.corrupt(x, "half", 0.5)
    img = xc.reshape(10, 28, 28)
    assert (img[:, 14:] == robustness.OCCLUDED).all() and torch.equal(img[:, :14], x.reshape(10, 28, 28)[:, :14])
    assert robustness.OCCLUDED == 0.0   # mid-grey on the [-1, 1] scale


def test_corruptions_are_seeded_and_none_is_the_clean_image():
    x = _images(20)
    assert torch.equal(robustness.corrupt(x, "none", 0.0), x)
    for name, level in robustness.CORRUPTIONS[1:]:
        assert torch.equal(robustness.corrupt(x, name, level, seed=5), robustness.corrupt(x, name, level, seed=5))
    assert not torch.equal(robustness.corrupt(x, "noise", 0.5, 1), robustness.corrupt(x, "noise", 0.5, 2))
    with pytest.raises(ValueError, match="unknown corruption"):
        robustness.corrupt(x, "blur", 1.0)


def test_robustness_table_columns_values_and_the_trace(tiny_run):
    model, cfg, ds = probe.load_run(tiny_run)
    x, y = ds.test.x[:200], ds.test.y[:200]
    df = robustness.robustness_table(model, x, y, cfg, batch=128)   # two batches
    assert list(df.columns) == robustness.COLUMNS
    T = cfg["T"]
    assert set(df.step) == {0, T, 10 * T}
    assert set(zip(df.corruption, df.level)) == set(robustness.CORRUPTIONS)
    body = df[df.metric != "input_mse"]
    assert set(body.metric) == set(robustness.METRICS) and np.isfinite(df.value).all()
    assert body[body.metric == "acc"].value.between(0, 1).all() and (body[body.metric != "acc"].value > 0).all()
    inp = df[df.metric == "input_mse"].set_index(["corruption", "level"]).value
    assert inp[("none", 0.0)] == 0 and inp[("noise", 0.25)] < inp[("noise", 0.5)] < inp[("noise", 1.0)]
    # the clean images: the same inference as the trace's, so the same numbers
    trace = probe.trace_table(model, x, y, cfg, T_probe=10 * T, n_log=5, batch=128)
    tr = trace[trace.layer == "all"].pivot(index="step", columns="metric", values="value")
    clean = df[df.corruption == "none"].pivot(index="step", columns="metric", values="value")
    for t in (0, T, 10 * T):
        for m in ("acc", "gen_mse", "recon_mse"):
            assert clean.at[t, m] == pytest.approx(tr.at[t, m], rel=1e-5, abs=1e-7), (t, m)
    # heavy noise and hiding half the image hurt the first guess; noise raises its gen_mse
    acc0 = df[(df.step == 0) & (df.metric == "acc")].set_index(["corruption", "level"]).value
    assert acc0[("noise", 1.0)] < acc0[("none", 0.0)] and acc0[("half", 0.5)] < acc0[("none", 0.0)] - 0.05
    rec0 = df[(df.step == 0) & (df.metric == "recon_mse")].set_index(["corruption", "level"]).value
    assert rec0[("noise", 1.0)] > rec0[("none", 0.0)]


def test_robustness_cli_and_summary_gain_columns(tiny_run, tmp_path):
    from pcn.cli import main

    out = tmp_path / "robustness.csv"
    assert main(["probe", "--run", str(tiny_run), "--robustness", str(out), "--n-test", "100", "--device", "cpu"]) == 0
    table = pd.read_csv(out)
    T = int(pd.read_json(tiny_run / "config.json", typ="series")["T"])
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copy(out, run / "robustness.csv")
    summary = aggregate.aggregate([run])
    acc = table[table.metric == "acc"].set_index(["corruption", "level", "step"]).value
    for name, level in robustness.CORRUPTIONS:
        label = aggregate.corruption_label(name, level)
        assert summary.at[0, f"robust_gain_T_{label}"] == pytest.approx(acc[(name, level, T)] - acc[(name, level, 0)])
        assert f"robust_gain_10T_{label}" in summary
    assert "robust_gain_T_noise0.25" in summary and "robust_gain_T_half" in summary
    long = aggregate.robustness([run], summary)
    assert {"run", "rule", "ce_weight", "corruption", "level", "step", "metric", "value"} <= set(long.columns)
    assert len(long) == len(table)


def test_ae_gets_an_empty_robustness_table():
    from pcn.core.ae import AE

    df = robustness.robustness_table(AE.__new__(AE), torch.zeros(2, 784), torch.zeros(2).long(), {"T": 5})
    assert list(df.columns) == robustness.COLUMNS and df.empty
