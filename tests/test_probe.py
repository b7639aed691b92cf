"""Inference-dynamics probing: traces, sensitivity, linear probes, pc/bp alignment, clamping, CLI."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pcn.study import alignment, clamp, config, linear_probe, probe, store
from pcn.core.energy import energy, errors
from pcn.study.evaluate import evaluate
from pcn.core.inference import infer, init_latents
from pcn.core.model import PCN
from pcn.study.train import train

MNIST_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist").resolve()
TINY = dict(train_subset=1000, test_subset=300, val_size=200, eval_train_size=200, layers=[784, 32, 16],
            epochs=3, batch_size=50, T=8, eta=0.03, lr=5e-3, rule="pc", ce_weight=0.5)


@pytest.fixture(scope="module")
def pc_run(tmp_path_factory):
    """A tiny pc model trained for 3 epochs on 1000 MNIST images (a few seconds)."""
    out = tmp_path_factory.mktemp("pc_run")
    train(config.resolve(dict(TINY, data_dir=str(MNIST_DIR))), out, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ae_run")
    train(config.resolve(dict(TINY, data_dir=str(MNIST_DIR), model="ae", epochs=1)), out, log=lambda s: None)
    return out


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
    """A run whose inference blows up (linear, eta 5): training stops in its first batch."""
    out = tmp_path_factory.mktemp("div_run")
    cfg = dict(TINY, data_dir=str(MNIST_DIR), train_subset=200, eta=5.0, T=30, init="zeros", activation="linear")
    assert train(config.resolve(cfg), out, log=lambda s: None)["diverged"]
    return out


@pytest.fixture(scope="module")
def loaded(pc_run):
    return probe.load_run(pc_run)


def test_record_steps_dense_then_log_spaced():
    s = probe.record_steps(20, 200, n_log=10)
    assert s[:21] == list(range(21)) and s[-1] == 200 and len(s) == len(set(s)) and s == sorted(s)
    assert all(b / a < 1.4 for a, b in zip(s[20:], s[21:]))  # geometric spacing past T
    assert probe.record_steps(20, 5) == [0, 1, 2, 3, 4, 5]
    assert probe.default_probe_steps(20) == 200 and probe.default_probe_steps(0) == 10


def test_trace_schema_and_finite_for_stable_run(loaded):
    model, cfg, ds = loaded
    x, y = ds.test.x[:200], ds.test.y[:200]
    df = probe.trace_table(model, x, y, cfg, T_probe=40, n_log=8, batch=128)  # two batches
    assert list(df.columns) == probe.TRACE_COLUMNS
    assert set(range(cfg["T"] + 1)) <= set(df.step) and df.step.max() == 40
    layers = {"0", "1", "2", "all"}
    assert set(df.layer) == layers
    per_layer = df[df.layer != "all"]
    assert set(per_layer.metric) == {"energy", "error_norm", "z_norm", "dz_norm"}
    assert set(df[df.layer == "all"].metric) == {"energy", "dz_norm", "acc", "ce", "recon_mse", "gen_mse",
                                                  "nonfinite", "first_nonfinite_step"}
    assert not ((df.step == 0) & (df.metric == "dz_norm")).any()
    body = df[df.metric != "first_nonfinite_step"]
    assert np.isfinite(body.value).all()
    assert (df[df.metric == "nonfinite"].value == 0).all()
    assert df[df.metric == "first_nonfinite_step"].value.isna().all()
    net = df[df.layer == "all"].pivot(index="step", columns="metric", values="value")
    assert net.acc.between(0, 1).all() and (net.recon_mse > 0).all()
    # energy of the layers adds up to the total; inference lowers it
    lay = per_layer[per_layer.metric == "energy"].groupby("step").value.sum()
    np.testing.assert_allclose(lay.values, net.energy.values, rtol=1e-4)
    assert net.energy.iloc[-1] < net.energy.iloc[0]
    # at the eval T the trace agrees with pcn.study.evaluate
    ev = evaluate(model, x, y, cfg, torch.device("cpu"))
    assert net.acc[cfg["T"]] == pytest.approx(ev["acc"]) and net.recon_mse[cfg["T"]] == pytest.approx(ev["recon_mse"], rel=1e-4)


def test_trace_records_divergence():
    torch.manual_seed(0)
    model = PCN([20, 10, 5], "linear", seed=0)
    x, y = torch.randn(16, 20), torch.randint(0, 10, (16,))
    cfg = dict(T=5, eta=5.0, init="zeros", momentum=0.0)
    df = probe.trace_table(model, x, y, cfg, T_probe=300)
    net = df[df.layer == "all"]
    first = net[net.metric == "first_nonfinite_step"].value.item()
    assert 0 < first <= 300
    bad = net[(net.metric == "nonfinite")]
    assert bad[bad.step >= first].value.eq(1.0).all() and bad[bad.step < first].value.eq(0.0).all()


def test_sensitivity_grid(loaded):
    model, cfg, ds = loaded
    x, y = ds.test.x[:100], ds.test.y[:100]
    df = probe.sensitivity_table(model, x, y, cfg, eta_factors=(0.5, 1.0, 2.0))
    assert list(df.columns) == probe.SENSITIVITY_COLUMNS
    assert sorted(df["T"].unique()) == probe.sensitivity_steps(cfg["T"]) == [0, 1, 2, 4, 5, 8, 16, 40, 80]
    assert set(df.metric) == set(probe.SENSITIVITY_METRICS) and set(df.eta_factor) == {0.5, 1.0, 2.0}
    assert len(df) == 3 * 9 * len(probe.SENSITIVITY_METRICS)
    at = df[(df.eta_factor == 1.0) & (df["T"] == cfg["T"])].set_index("metric").value
    ev = evaluate(model, x, y, cfg, torch.device("cpu"))
    assert at["acc"] == pytest.approx(ev["acc"]) and at["gen_mse"] == pytest.approx(ev["gen_mse"], rel=1e-4)
    t0 = df[df["T"] == 0].pivot(index="metric", columns="eta_factor", values="value")
    assert (t0.nunique(axis=1) == 1).all()  # no step taken: eta does not matter


def test_linear_probes_beat_chance(loaded):
    model, cfg, ds = loaded
    xtr, ytr = ds.train.x[:600], ds.train.y[:600]
    df = linear_probe.probe_table(model, cfg, xtr, ytr, ds.test.x, ds.test.y, steps=[0, cfg["T"]])
    assert list(df.columns) == linear_probe.COLUMNS
    assert set(df.step) == {0, cfg["T"]} and set(df.layer) == {"0", "1", "2"}
    t = df[df.step == cfg["T"]].pivot(index="layer", columns="metric", values="value")
    assert list(t.dim) == [784, 32, 16]
    assert (t.probe_acc > 0.4).all(), t  # chance is 0.1
    assert (t.ridge_r2 > 0.1).all() and (t.ridge_r2 <= 1).all() and t.ridge_r2["0"] > 0.95
    assert np.isfinite(df.value).all()


def test_linear_probe_solvers():
    gen = torch.Generator().manual_seed(0)
    Z = torch.randn(400, 5, generator=gen, dtype=torch.float64)
    y = (Z[:, :2] @ torch.tensor([[3.0, 0.0], [0.0, 3.0]], dtype=torch.float64)).argmax(1) + 3
    W, b = linear_probe.fit_logistic(Z, y)
    assert ((Z @ W + b).argmax(1) == y).double().mean() > 0.97
    W2, b2 = linear_probe.fit_logistic(Z, y)
    assert torch.equal(W, W2) and torch.equal(b, b2)  # deterministic
    X = Z @ torch.randn(5, 7, generator=gen, dtype=torch.float64)
    Zc, Xc = Z - Z.mean(0), X - X.mean(0)
    torch.testing.assert_close(linear_probe.fit_ridge(Zc, Xc, 1e-10), torch.linalg.lstsq(Zc, Xc).solution)
    out = linear_probe.probe_layer(torch.full((10, 3), float("nan"), dtype=torch.float64), y[:10], X[:10],
                                   Z[:10, :3], y[:10], X[:10])
    assert np.isnan(out["probe_acc"]) and out["dim"] == 3


def _theory_setup(T, w, eta=0.3):
    layers = [12, 8, 6, 4]
    cfg = config.resolve(dict(layers=layers, T=T, eta=eta, init="amortised", ce_weight=w, momentum=0.0,
                              energy_norm="sum"))  # nudge beta = w / (1 - w): first order at w = 0.01
    model = PCN(layers, "tanh", amortised=True, seed=0).double()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 12, generator=gen, dtype=torch.float64).tanh()
    y = torch.randint(0, 10, (16,), generator=gen)
    return model, x, y, cfg


def _cos(model, x, y, cfg):
    return {(r["layer"], r["metric"]): r["value"] for r in alignment.grad_alignment(model, x, y, cfg)}


def test_pc_bp_alignment_tends_to_one_at_equilibrium():
    """w = 0: at a fixed point of inference dE/dz = 0, so the bp gradient of E(z*(theta), theta)
    equals the pc update dE/dtheta at z* (envelope theorem); away from it they differ."""
    cos = {T: _cos(*_theory_setup(T, 0.0)) for T in (2, 200, 1000)}
    assert min(cos[2][(str(l), "cos_W")] for l in range(3)) < 0.9
    for key, v in cos[1000].items():
        assert v > 0.999 if key[1].startswith("cos") else v == pytest.approx(1.0, abs=0.03), key
    assert cos[2][("all", "cos")] < cos[200][("all", "cos")] < cos[1000][("all", "cos")]
    # small w: the nudged pc update matches the bp gradient of (1 - w) E + w CE to first order
    small = _cos(*_theory_setup(1000, 0.01))
    assert all(v > 0.99 for k, v in small.items() if k[1].startswith("cos"))


def test_alignment_from_saved_model_and_checkpoint(pc_run, loaded):
    model, cfg, ds = loaded
    m1, c1, e1 = store.load_weights(pc_run / "model.pt")
    m2, c2, e2 = store.load_weights(pc_run / "ckpt.pt")
    assert e1 is None and e2 == TINY["epochs"] and c1 == c2 == cfg
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    rows = alignment.alignment_table([("final", 3, m1), ("ckpt", e2, m2)], ds.train.x[:32], ds.train.y[:32],
                                     cfg, ws=[0.0, 0.5], Ts=[2])
    df = pd.DataFrame(rows, columns=alignment.COLUMNS)
    assert len(df) == 2 * 2 * (3 * 2 + 1)
    assert df.value.between(-1.0001, 5).all()
    assert (df[df.source == "final"].value.values == df[df.source == "ckpt"].value.values).all()
    assert all(p.grad is None for p in model.parameters())  # the model's own grads are untouched


def test_latent_energy_leaves_out_the_data_layer():
    model = PCN([10, 7, 5, 3], "tanh", prior=True, seed=1).double()
    z = [torch.randn(4, d, dtype=torch.float64) for d in (7, 5, 3)]
    mu0 = torch.addmm(model.b[0], model.f(z[0]), model.W[0].t())  # x = mu_0 makes eps_0 = 0
    torch.testing.assert_close(clamp.latent_energy(model, z), energy(model, mu0, z))


def test_completion_with_everything_visible_is_plain_inference(loaded):
    model, cfg, ds = loaded
    x = ds.test.x[:20]
    xc, mu0, z, settle, change = clamp.complete(model, cfg, x, torch.ones(784, dtype=torch.bool), x.mean(0), 6)
    ref, eps = infer(model, x, init_latents(model, x, cfg["init"]), 6, cfg["eta"])
    assert torch.equal(xc, x)
    torch.testing.assert_close(z[-1], ref[-1])
    torch.testing.assert_close(mu0, x - errors(model, x, ref)[0])


def test_clamp_outputs(loaded, tmp_path, one_thread):
    model, cfg, ds = loaded
    df = clamp.run_clamp(model, cfg, ds.train.x[:300], ds.test.x[:200], ds.test.y[:200], tmp_path, steps=40)
    for f in ("clamp.csv", "generated.png", "completion.png", "generated.npy", "clamp_images.npz"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert list(df.columns) == clamp.COLUMNS and set(df["mode"]) == {"classify", "generate", "complete"}
    assert np.isfinite(df.value).all()
    gen = np.load(tmp_path / "generated.npy")
    assert gen.shape == (10, 784) and np.isfinite(gen).all() and np.abs(gen).max() < 3
    assert gen.std(0).max() > 0  # the class changes the image
    npz = np.load(tmp_path / "clamp_images.npz")
    assert npz["completed"].shape == (10, 784) and np.isnan(npz["occluded"][:, 392:]).all()
    np.testing.assert_array_equal(npz["completed"][:, :392], npz["original"][:, :392])
    c = df[df["mode"] == "complete"].set_index("metric").value
    assert set(c.index) == {"completion_mse", "pixel_latent_mse", "mean_image_mse", "pca_mse", "pca_ls_mse",
                            "pca_ridge", "vs_pca", "beats_pca", "vs_mean_image", "beats_mean_image", "settle",
                            "completion_change", "acc"}
    assert c["beats_mean_image"] == float(c["completion_mse"] < c["mean_image_mse"])
    assert c["vs_mean_image"] == pytest.approx(c["completion_mse"] / c["mean_image_mse"])
    # the generation samples (no judge given: no judge_acc), GEN_SAMPLES per class
    g = df[(df["mode"] == "generate") & (df.label == "all")].set_index("metric").value
    assert g["n_samples"] == clamp.GEN_SAMPLES and "judge_acc" not in g and 0 < g["class_mean_dist"] < 2
    assert 0 < c["completion_mse"] < 2 and 0 < c["mean_image_mse"] < 1 and 0 < c["pca_mse"] < c["mean_image_mse"]
    assert c["pca_ridge"] in clamp.RIDGE_GRID and c["beats_pca"] == float(c["completion_mse"] < c["pca_mse"])
    # settle is finite and small-ish here (few steps on a tiny model); tests/test_clamp.py checks settling itself
    assert c["vs_pca"] == pytest.approx(c["completion_mse"] / c["pca_mse"]) and 0 < c["settle"] < 0.5
    acc = df[(df["mode"] == "classify") & (df.label == "all")].value.item()
    assert acc == pytest.approx(evaluate(model, ds.test.x[:200], ds.test.y[:200], cfg, torch.device("cpu"))["acc"])


def _cli(run, out, *extra):
    cmd = [sys.executable, "-m", "pcn", "probe", "--run", str(run), "--out", str(out / "trace.csv"),
           "--steps", "20", "--n-test", "100", "--n-train", "300", "--threads", "1",
           "--sensitivity", str(out / "sens.csv"), "--linear-probes", str(out / "lp.csv"),
           "--alignment", str(out / "al.csv"), "--align-T", "2", "--align-batch", "16",
           "--clamp", str(out / "clamp"), "--images", str(out / "images.npz"), "--n-images", "6", *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    tables = {k: pd.read_csv(out / f) for k, f in
              dict(trace="trace.csv", sens="sens.csv", lp="lp.csv", al="al.csv", clamp="clamp/clamp.csv").items()}
    with np.load(out / "images.npz") as z:
        tables["images"] = {k: z[k] for k in z.files}
    return tables


def test_cli_on_run_dirs(pc_run, ae_run, tmp_path):
    t = _cli(pc_run, tmp_path / "pc")
    assert list(t["trace"].columns) == probe.TRACE_COLUMNS and t["trace"].step.max() == 20
    assert list(t["sens"].columns) == probe.SENSITIVITY_COLUMNS and len(t["sens"]) > 0
    assert list(t["al"].columns) == alignment.COLUMNS and set(t["al"].source) == {"init", "final"}
    assert set(t["al"].w) == {0.0, 0.5} and set(t["lp"].layer) == {0, 1, 2}
    assert t["images"]["x"].shape == t["images"]["recon"].shape == t["images"]["gen"].shape == (6, 784)
    assert np.isfinite(t["images"]["recon"]).all() and not np.array_equal(t["images"]["recon"], t["images"]["gen"])
    a = _cli(ae_run, tmp_path / "ae")
    np.testing.assert_array_equal(a["images"]["recon"], a["images"]["gen"])  # an ae generates = reconstructs
    assert a["trace"].empty and list(a["trace"].columns) == probe.TRACE_COLUMNS
    assert a["sens"].empty and a["al"].empty
    assert set(a["lp"].layer) == {0, 1, 2} and (a["lp"].step == 0).all()
    assert set(a["clamp"]["mode"]) == {"classify"}


def test_cli_on_a_diverged_run_writes_nan_not_errors(diverged_run, tmp_path):
    t = _cli(diverged_run, tmp_path / "div", "--steps", "60")
    net = t["trace"][t["trace"].layer == "all"]
    first = net[net.metric == "first_nonfinite_step"].value.item()
    assert 0 < first < 60
    assert net[(net.metric == "nonfinite") & (net.step == 60)].value.item() == 1.0
    assert net[(net.metric == "acc") & (net.step == 60)].value.item() == 0.0  # non-finite counts as wrong
    lp = t["lp"].pivot(index="layer", columns="metric", values="value")
    assert lp.probe_acc.loc[0] > 0.5 and lp.probe_acc.loc[[1, 2]].isna().all()
    c = t["clamp"].set_index(["mode", "label", "metric"]).value
    assert c[("classify", "all", "acc")] == 0.0 and np.isnan(c[("complete", "all", "completion_mse")])
    assert np.isnan(c[("complete", "all", "beats_pca")]) and np.isfinite(c[("complete", "all", "pca_mse")])
    assert not np.isfinite(t["images"]["recon"]).all() and np.isfinite(t["images"]["x"]).all()


def test_images_match_evaluate(loaded):
    """recon and gen of --images are what recon_mse and gen_mse of pcn.study.evaluate measure."""
    model, cfg, ds = loaded
    x, y = ds.test.x[:50], ds.test.y[:50]
    im = probe.image_arrays(model, x, y, cfg)
    ev = evaluate(model, x, y, cfg, torch.device("cpu"))
    assert im["y"].tolist() == y.tolist() and im["recon"].dtype == np.float32
    assert ((im["x"] - im["recon"]) ** 2).mean() == pytest.approx(ev["recon_mse"], rel=1e-4)
    assert ((im["x"] - im["gen"]) ** 2).mean() == pytest.approx(ev["gen_mse"], rel=1e-4)


def test_cli_without_trace_and_without_outputs(pc_run, tmp_path):
    base = [sys.executable, "-m", "pcn", "probe", "--run", str(pc_run), "--threads", "1"]
    res = subprocess.run(base + ["--n-test", "20", "--images", str(tmp_path / "i.npz")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "i.npz").exists() and not list(tmp_path.glob("*.csv"))
    res = subprocess.run(base, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "nothing to write" in res.stderr
