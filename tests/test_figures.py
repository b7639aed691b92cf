"""Probe tables and figures from fake run folders: `pcn aggregate` of the probe outputs
(sensitivity, linear probes, training-time alignment, clamping, images) and every figure of
`pcn figure`, drawn from small fixture tables (no training, a few seconds)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import pytest

from pcn.outputs import aggregate as agg
from pcn.outputs import figures
from pcn.study.config import resolve
from pcn.outputs.naming import run_dir

D = 784  # 28 x 28 images
WEIGHTS = (0.0, 0.5, 1.0)
T_TRAIN = 5


def _write_run(d: Path, model: str, w: float, seed: int, diverged: bool, clamped: bool, rng) -> None:
    """One fake finished run with every file the workflow's probe rules write."""
    factors = dict(dataset="mnist", model=model, rule=factors_rule(d), ce_weight=w, seed=seed)
    cfg = resolve({"epochs": 2, "T": T_TRAIN, "layers": [784, 32, 8]}, factors)
    acc, mse = 0.5 + 0.4 * w + 0.01 * seed, 0.1 + 0.1 * w
    final = dict(cfg, test_acc=acc, val_acc=acc, train_acc=acc, recon_mse=float("nan") if diverged else mse,
                 gen_mse=2 * mse, energy=5.0, wall_s=1.0, epochs_done=2, diverged=diverged,
                 diverged_epoch=2 if diverged else None, diverged_batch=3 if diverged else None)
    (d / "final.json").write_text(json.dumps(final))
    pd.DataFrame(dict(epoch=[1, 2], train_loss=[1, .5], train_energy=[1, .5], train_ce=[1, .5], train_acc=[.5, acc],
                      val_acc=[.5, acc], test_acc=[.5, acc], recon_mse=[.2, mse], gen_mse=[.3, .2], energy=[2, 1],
                      seconds=[1, 1], diverged=[False, diverged])).to_csv(d / "metrics.csv", index=False)
    layers = ["0", "1", "2"]
    lp = [(T_TRAIN if model == "pcn" else 0, lay, m, np.nan if (diverged and lay != "0") else v)
          for lay in layers for m, v in (("probe_acc", 0.9 - 0.1 * int(lay) + 0.05 * w),
                                         ("ridge_mse", 0.01 + 0.05 * int(lay) + 0.02 * w),
                                         ("ridge_r2", 0.9 - 0.2 * int(lay)), ("dim", [784, 32, 8][int(lay)]))]
    pd.DataFrame(lp, columns=["step", "layer", "metric", "value"]).to_csv(d / "linear_probes.csv", index=False)
    x = rng.uniform(-1, 1, (8, D)).astype(np.float32)
    recon = np.full_like(x, np.nan) if diverged else np.clip(x + 0.3 * rng.standard_normal(x.shape), -1, 1)
    with open(d / "images.npz", "wb") as fh:
        np.savez(fh, x=x, recon=recon, gen=recon if model == "ae" else 0.5 * recon, y=np.arange(8))
    if model == "ae":
        # training writes a header-only alignment.csv for an ae (no inference, nothing to compare)
        pd.DataFrame(columns=["epoch", "layer", "metric", "value"]).to_csv(d / "alignment.csv", index=False)
        return
    trace = [(s, "all", m, v) for s in range(0, 4 * T_TRAIN + 1)
             for m, v in (("energy", 10 / (s + 1)), ("acc", min(0.9, 0.1 + s / 10)))]
    trace.append((4 * T_TRAIN, "all", "first_nonfinite_step", np.nan))
    # the relative update of the dynamics figure: ||dz|| = 1 / s, ||z|| = sqrt(3^2 + 4^2) = 5
    trace += [(s, lay, "z_norm", v) for s in range(0, 4 * T_TRAIN + 1) for lay, v in (("1", 3.0), ("2", 4.0))]
    trace += [(s, "all", "dz_norm", 1.0 / s) for s in range(1, 4 * T_TRAIN + 1)]
    trace += [(s, "all", "gen_mse", 0.3 + 0.1 / (s + 1)) for s in range(0, 4 * T_TRAIN + 1)]
    pd.DataFrame(trace, columns=["step", "layer", "metric", "value"]).to_csv(d / "trace.csv", index=False)
    sens = []
    for k, t in itertools.product((0.5, 1.0, 2.0), (0, 1, 2, T_TRAIN, 2 * T_TRAIN, 10 * T_TRAIN)):
        blown = diverged or (k == 2.0 and t >= 2 * T_TRAIN)
        sens += [(k, 0.02 * k, t, "acc", 0.1 if blown else 0.5 + 0.01 * t),
                 (k, 0.02 * k, t, "recon_mse", np.inf if blown else 0.3 / (1 + t)),
                 (k, 0.02 * k, t, "nonfinite", 1.0 if blown else 0.0)]
    pd.DataFrame(sens, columns=["eta_factor", "eta", "T", "metric", "value"]).to_csv(d / "sensitivity.csv", index=False)
    rob = []
    for c, level in (("none", 0.0), ("noise", 0.5), ("pixels", 0.25), ("half", 0.5)):
        for t in (0, T_TRAIN, 10 * T_TRAIN):   # inference gains on the corrupted images: acc rises with t
            rob += [(c, level, t, "acc", np.nan if diverged else 0.4 + 0.01 * t - 0.1 * level),
                    (c, level, t, "gen_mse", 0.2 + level), (c, level, t, "recon_mse", 0.1 + level)]
        rob.append((c, level, 0, "input_mse", level ** 2))
    pd.DataFrame(rob, columns=["corruption", "level", "step", "metric", "value"]).to_csv(d / "robustness.csv",
                                                                                      index=False)
    al = []
    for epoch in range(2 if diverged else 3):
        zero = w == 1.0  # no energy term: the pc update of the generative weights is 0
        for lay in ("0", "1"):
            al += [(epoch, lay, "cos_W", np.nan if zero else 0.7 + 0.1 * epoch),
                   (epoch, lay, "cos_b", np.nan if zero else 0.8), (epoch, lay, "norm_ratio_W", 0.0 if zero else 1.0)]
        al.append((epoch, "all", "cos", np.nan if zero else 0.75 + 0.1 * epoch))
    pd.DataFrame(al, columns=["epoch", "layer", "metric", "value"]).to_csv(d / "alignment.csv", index=False)
    if clamped:
        c = d / "clamp"
        c.mkdir()
        rows = [("classify", "all", "acc", acc), ("generate", "all", "self_acc", 0.6),
                ("generate", "all", "p_class", 0.8), ("complete", "all", "completion_mse", 0.12),
                ("complete", "all", "mean_image_mse", 0.25), ("complete", "all", "pca_mse", 0.13)]
        pd.DataFrame(rows, columns=["mode", "label", "metric", "value"]).to_csv(c / "clamp.csv", index=False)
        np.save(c / "generated.npy", rng.uniform(-1, 1, (10, D)).astype(np.float32))
        occluded = x.copy()
        occluded[:, D // 2:] = np.nan
        np.savez(c / "clamp_images.npz", original=x, occluded=occluded, completed=x, visible=np.arange(D) < D // 2,
                 labels=np.arange(8))


def factors_rule(d: Path) -> str:
    return d.as_posix().split("/rule~", 1)[1].split("/", 1)[0]


def make_runs(root: Path) -> tuple[list[str], list[str]]:
    """Fake runs: pcn pc / pc-ep / bpc / bpc-ep / bp and ae x 3 CE weights x 2 seeds (no pc, bpc at w = 1); pcn pc w=0.5 seed 1 diverged;
    seed 0 of every pcn run clamped.  Returns (all runs, clamped runs)."""
    rng = np.random.default_rng(0)
    runs, clamped = [], []
    for model, rule, w, seed in itertools.product(("pcn", "ae"), ("pc", "pc-ep", "bpc", "bpc-ep", "bp"), WEIGHTS, (0, 1)):
        if (model == "ae" and rule != "bp") or (model == "pcn" and rule in ("pc", "bpc") and w == 1.0):
            continue   # ae runs ignore the rule (recorded as bp); pc and bpc have no w = 1
        d = root / "results" / "runs" / run_dir(dict(dataset="mnist", model=model, rule=rule, ce_weight=w, seed=seed))
        d.mkdir(parents=True)
        is_clamped = model == "pcn" and seed == 0
        _write_run(d, model, w, seed, diverged=(model, rule, w, seed) == ("pcn", "pc", 0.5, 1), clamped=is_clamped,
                   rng=rng)
        runs.append(str(d))
        if is_clamped:
            clamped.append(str(d))
    return runs, clamped


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs, clamped = make_runs(root)
    pcn_runs = [r for r in runs if "model~pcn" in r]
    summary = agg.aggregate(runs)
    tables = {
        "summary": summary,
        "curves": agg.curves(runs, summary),
        "traces": agg.traces(pcn_runs),
        "sensitivity": agg.sensitivity(pcn_runs),
        "linear_probes": agg.linear_probes(runs, summary),
        "alignment": agg.alignment(pcn_runs),
        "clamp": agg.clamp(clamped),
        "robustness": agg.robustness(pcn_runs),
        "images": agg.images(runs, clamped),
    }
    return dict(root=root, runs=runs, clamped=clamped, pcn_runs=pcn_runs, tables=tables)


# --------------------------------------------------------------------------- aggregation
FACTORS = ["run", "dataset", "model", "rule", "ce_weight", "seed", "T"]


def test_aggregate_sensitivity_renames_test_time_columns(fake):
    s = fake["tables"]["sensitivity"]
    assert list(s.columns) == FACTORS + ["eta_factor", "test_eta", "test_T", "metric", "value"]
    assert s["run"].nunique() == len(fake["pcn_runs"]) == 26
    assert set(s["T"]) == {T_TRAIN} and set(s["test_T"]) == {0, 1, 2, 5, 10, 50}


def test_aggregate_linear_probes_has_pcn_and_ae_runs(fake):
    lp = fake["tables"]["linear_probes"]
    assert list(lp.columns) == FACTORS + ["step", "layer", "metric", "value"]
    assert lp["run"].nunique() == len(fake["runs"]) == 32
    assert set(lp.loc[lp.model == "ae", "step"]) == {0} and set(lp.loc[lp.model == "pcn", "step"]) == {T_TRAIN}


def test_aggregate_alignment_skips_empty_ae_tables(fake):
    al = fake["tables"]["alignment"]
    assert list(al.columns) == FACTORS + ["epoch", "layer", "metric", "value"]
    assert set(al.model) == {"pcn"} and al["run"].nunique() == 26
    assert agg.alignment([r for r in fake["runs"] if "model~ae" in r]).empty


def test_aggregate_clamp_of_clamped_runs(fake):
    c = fake["tables"]["clamp"]
    assert list(c.columns) == FACTORS + ["mode", "label", "metric", "value"]
    assert set(c["run"]) == set(fake["clamped"]) and set(c.seed) == {0}
    assert agg.clamp(fake["runs"])["run"].nunique() == len(fake["clamped"]) == 13  # only runs with clamp outputs


def test_aggregate_images_long_table(fake):
    im = fake["tables"]["images"]
    n_runs, n_clamped = len(fake["runs"]), len(fake["clamped"])
    assert set(im) == {"run", "kind", "pos", "label", "pixels"}
    assert im["pixels"].shape == (n_runs * 3 * 8 + n_clamped * (10 + 3 * 8), D)
    counts = pd.Series(im["kind"]).value_counts()
    assert counts["x"] == counts["recon"] == counts["gen"] == 8 * n_runs
    assert counts["generated"] == 10 * n_clamped and counts["completed"] == 8 * n_clamped
    gen = im["label"][im["kind"] == "generated"]
    assert list(gen[:10]) == list(range(10))
    # clamp images only of the runs named, when a list is given
    assert "generated" not in set(agg.images(fake["runs"], clamp_runs=[])["kind"])


def test_aggregate_cli_writes_probe_tables(fake, tmp_path):
    from pcn.cli import main

    outs = {k: tmp_path / f"{k}.csv" for k in ("sensitivity", "linear-probes", "alignment", "clamp")}
    args = ["aggregate", "--runs", *fake["runs"], *itertools.chain(*[(f"--{k}-out", str(v)) for k, v in outs.items()]),
            "--images-out", str(tmp_path / "images.npz"), "--clamp-runs", *fake["clamped"]]
    assert main(args) == 0
    assert len(pd.read_csv(outs["linear-probes"])) == len(fake["tables"]["linear_probes"])
    assert pd.read_csv(outs["sensitivity"])["run"].nunique() == 26
    assert pd.read_csv(outs["clamp"])["run"].nunique() == len(fake["clamped"])
    im = agg.read_images(tmp_path / "images.npz")
    np.testing.assert_array_equal(im["pixels"], fake["tables"]["images"]["pixels"])
    assert im["run"].dtype.kind == "U"  # no pickled objects


def test_attach_refuses_clashing_columns(tmp_path):
    runs, _ = make_runs(tmp_path)
    run = next(r for r in runs if "model~pcn" in r)
    pd.DataFrame({"step": [0], "layer": ["all"], "metric": ["acc"], "value": [0.0], "T": [1]}).to_csv(
        Path(run) / "trace.csv", index=False)
    with pytest.raises(ValueError, match="clash"):
        agg.traces([run])


# --------------------------------------------------------------------------- figures
@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_every_figure_from_fixture_tables(fake, tmp_path, name):
    png, pdf = figures.draw(name, fake["tables"], tmp_path / f"{name}.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert png.stat().st_size > 10_000 and pdf.stat().st_size > 5_000


def _axes_texts(fig) -> str:
    out = []
    for ax in fig.get_axes():
        out += [ax.get_title(), ax.get_xlabel()] + [t.get_text() for t in ax.texts]
    return "\n".join(out)


def test_probe_figures_mark_diverged_runs(fake):
    t = fake["tables"]
    for fig in (figures.probes(t["linear_probes"], t["summary"]), figures.sensitivity(t["sensitivity"], t["summary"]),
                figures.alignment(t["alignment"], t["summary"])):
        assert "1 diverged run (x)" in _axes_texts(fig)  # pcn pc w=0.5 seed 1
        figures.plt.close(fig)
    fig = figures.images(t["images"], t["summary"], t["clamp"])
    assert "self-classified 60%" in _axes_texts(fig) and "MSE 0.120 (mean img 0.250, PCA 0.130)" in _axes_texts(fig)
    figures.plt.close(fig)


def test_sensitivity_rings_nonfinite_inference_and_alignment_notes_zero_update(fake):
    t = fake["tables"]
    fig = figures.sensitivity(t["sensitivity"], t["summary"])
    rings = [c for ax in fig.get_axes() for c in ax.collections if c.get_label() == "non-finite inference"]
    assert rings  # eta x 2 at long T went non-finite in the fixture
    figures.plt.close(fig)
    fig = figures.alignment(t["alignment"], t["summary"])
    assert "no cosine at w=1" in _axes_texts(fig)
    figures.plt.close(fig)


def test_images_figure_without_clamp_outputs_and_all_diverged(fake, tmp_path):
    t = fake["tables"]
    no_clamp = agg.images(fake["runs"], clamp_runs=[])
    summary = t["summary"].assign(diverged=True)
    png, _ = figures.draw("images", {"images": no_clamp, "summary": summary}, tmp_path / "i.png")
    assert png.stat().st_size > 10_000
    png, _ = figures.draw("images", {"images": no_clamp}, tmp_path / "j.png")  # factors from the run folders
    assert png.stat().st_size > 10_000


def test_figure_cli_redraws_probe_figures_from_files(fake, tmp_path):
    from pcn.cli import main

    t = fake["tables"]
    for k in ("summary", "linear_probes", "clamp"):
        t[k].to_csv(tmp_path / f"{k}.csv", index=False)
    with open(tmp_path / "images.npz", "wb") as fh:
        np.savez(fh, **t["images"])
    out = tmp_path / "figs" / "images.png"
    assert main(["figure", "images", "--summary", str(tmp_path / "summary.csv"), "--images",
                 str(tmp_path / "images.npz"), "--clamp", str(tmp_path / "clamp.csv"), "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000 and out.with_suffix(".pdf").exists()
    with pytest.raises(SystemExit, match="--linear-probes"):
        main(["figure", "probes", "--summary", str(tmp_path / "summary.csv"), "--out", str(tmp_path / "p.png")])


def _drawn_lines(ax) -> dict:
    """{colour: (x, y)} of the first line of each colour drawn on ``ax`` (the data line; after it come
    error bar caps; legend proxies, which have no data, left out)."""
    from matplotlib.colors import to_hex

    out = {}
    for ln in ax.lines:
        if len(ln.get_xdata()):
            xy = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
            out.setdefault(to_hex(ln.get_color()), xy)
    return out


def test_ce_weight_lines_are_seed_means_of_runs_that_did_not_diverge(fake):
    """Each rule's line is, per CE weight, the mean over seeds of the summary's test accuracy,
    without the diverged run (pcn pc w=0.5 seed 1, drawn as an x marker instead)."""
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import to_hex

    s = fake["tables"]["summary"]
    s = s.assign(test_acc=s["test_acc"] + 0.1 * s["seed"] * (s["rule"] == "pc"))  # seeds differ, by rule
    fig = figures.ce_weight(s, metrics=("test_acc",))
    ax = fig.get_axes()[0]
    prepared = figures._prepare(s)
    lines = _drawn_lines(ax)
    for label, colour in figures._palette(prepared, "label").items():
        ok = prepared[(prepared["label"] == label) & ~prepared["diverged"]]
        want = ok.groupby("ce_weight")["test_acc"].mean()
        x, y = lines[to_hex(colour)]
        np.testing.assert_allclose(x, want.index)
        np.testing.assert_allclose(y, want.to_numpy())
    # the pc band: one sd over seeds (0.11 apart at w = 0: sd = 0.11 / sqrt(2)) about the mean (pc has
    # no w = 1, and its w = 0.5 has one run left beside the diverged one: no band there)
    pc = to_hex(figures._palette(prepared, "label")["pcn pc"])
    band = np.concatenate([p.vertices for c in ax.collections if isinstance(c, PolyCollection)
                           and to_hex(c.get_facecolor()[0]) == pc for p in c.get_paths()])
    band = band[np.isfinite(band).all(axis=1)]
    sd = 0.11 / 2 ** 0.5
    np.testing.assert_allclose([band[:, 1].min(), band[:, 1].max()], [0.555 - sd, 0.555 + sd])
    assert "1 diverged run (x)" in ax.get_title()
    figures.plt.close(fig)


def test_tradeoff_points_are_seed_means_of_both_axes(fake):
    """The trade-off front of each rule passes through the (reconstruction MSE, accuracy) seed means
    per CE weight of the runs that did not diverge; the diverged run (given a finite MSE here) is an
    x marker, not averaged in."""
    from matplotlib.colors import to_hex

    s = fake["tables"]["summary"]
    s = s.assign(recon_mse=pd.to_numeric(s["recon_mse"]).fillna(0.5) + 0.02 * s["seed"])
    main = figures.tradeoff(s)   # main row: accuracy vs gen_mse; second row: vs recon_mse
    assert [a.get_xlabel() for a in main.get_axes()] == ["generation MSE (lower is better)",
                                                         "reconstruction MSE (lower is better)"]
    figures.plt.close(main)
    fig = figures.tradeoff(s, xs=("recon_mse",))
    lines = _drawn_lines(fig.get_axes()[0])
    prepared = figures._numeric(figures._prepare(s), ["recon_mse", "test_acc"])
    for label, colour in figures._palette(prepared, "label").items():
        ok = prepared[(prepared["label"] == label) & ~prepared["diverged"]]
        want = ok.groupby("ce_weight")[["recon_mse", "test_acc"]].mean()
        x, y = lines[to_hex(colour)]
        np.testing.assert_allclose(x, want["recon_mse"].to_numpy())
        np.testing.assert_allclose(y, want["test_acc"].to_numpy())
    marker = next(c for c in fig.get_axes()[0].collections if c.get_label() == "pcn pc (diverged)")
    np.testing.assert_allclose(marker.get_offsets(), [[0.52, 0.71]])
    figures.plt.close(fig)


def test_tradeoff_uses_a_log_axis_only_where_one_point_would_squash_the_front():
    fig, (a, b, c) = plt.subplots(1, 3)
    assert figures._log_if_wide(a, pd.Series([0.08, 0.2, 0.26, 3.9]))      # bp at w = 1 (full MNIST)
    assert a.get_xscale() == "log"
    assert not figures._log_if_wide(b, pd.Series([0.08, 0.2, 0.26]))
    assert not figures._log_if_wide(c, pd.Series([0.0, 0.2, 3.9]))         # a zero: no log axis
    assert b.get_xscale() == c.get_xscale() == "linear"
    assert figures._log_if_wide(b, pd.Series([0.08, 3.9]), axis="y") and b.get_yscale() == "log"
    plt.close(fig)


def test_the_inference_arms_are_drawn_apart_never_pooled():
    """With init swept, init is a factor: every figure line (and inference_gain's panel) is one
    arm, so the amortised and the zeros arm are never averaged together as 'seeds'; ae and cre
    (no inference) carry no arm in their label."""
    rows = []
    for init, acc0 in (("amortised", 0.9), ("zeros", 0.1)):
        for w in (0.0, 0.5):
            for seed in (0, 1):
                rows.append(dict(dataset="mnist", model="pcn", rule="pc", init=init, ce_weight=w, seed=seed,
                                 T=20 if init == "amortised" else 100, diverged=False, test_acc=0.8,
                                 gen_mse=0.2, recon_mse=0.01, acc_step0=acc0, acc_T=0.8, acc_10T=0.8,
                                 gen_mse_step0=0.3, gen_mse_T=0.2, gen_mse_10T=0.2))
    rows.append(dict(rows[0], model="ae", rule="bp", init="amortised"))
    s = pd.DataFrame(rows)
    assert "init" in agg.factor_columns(s) and "init" not in agg.factor_columns(s[s.init == "zeros"])
    labels = set(figures._prepare(s, figures._extra_factors(s))["label"])
    assert labels == {"pcn pc init=amortised", "pcn pc init=zeros", "ae"}, labels
    fig = figures.inference_gain(s)
    titles = {ax.get_title() for ax in fig.get_axes()}
    assert {"mnist pcn pc init=amortised", "mnist pcn pc init=zeros"} <= titles, titles
    for ax in fig.get_axes():   # step 0's line is the arm's own: 0.9 amortised, 0.1 from zeros
        if ax.get_title().endswith("init=zeros") and ax.get_ylabel() == "test accuracy":
            step0 = [l for l in ax.get_lines() if l.get_label() == "step0"]
            assert step0 and np.allclose(step0[0].get_ydata(), 0.1), [l.get_ydata() for l in step0]
    plt.close(fig)


# --------------------------------------------------------------------------- issue 23: dynamics, robustness
def test_dynamics_and_robustness_figures_are_written(fake, tmp_path):
    """The two figures of issue 23 items 2-3 exist as PNG and PDF, drawn from the fixture tables."""
    for name in ("dynamics", "robustness"):
        png, pdf = figures.draw(name, fake["tables"], tmp_path / f"{name}.png")
        assert png.exists() and pdf.exists() and png.stat().st_size > 10_000, name


def test_dynamics_relative_update_and_its_lines(fake):
    from pcn.outputs.figures.fixed_point import relative_update

    t = fake["tables"]
    rel = relative_update(t["traces"])
    one = rel[rel.run == fake["pcn_runs"][0]].set_index("step")["value"]
    assert 0 not in one.index and one[4] == pytest.approx((1 / 4) / 5) and one[20] == pytest.approx(1 / 100)
    fig = figures.dynamics(t["traces"], t["summary"])
    labels = {line.get_label() for ax in fig.get_axes() for line in ax.get_lines()}
    assert {"pcn pc", "pcn bp", "pcn pc-ep"} <= labels and "ae" not in labels     # one line per rule
    assert any(ax.get_ylabel().startswith("relative update") for ax in fig.get_axes())
    assert len(fig.get_axes()) == 4 * len(WEIGHTS)                                  # 4 metrics x CE weights
    figures.plt.close(fig)


def test_robustness_figure_stages_and_columns(fake):
    from pcn.outputs.figures.robustness import stage_of

    assert list(stage_of(pd.Series([0, 5, 50, 7]), pd.Series([5, 5, 5, 5]))) == ["step 0", "T", "10 T", ""]
    t = fake["tables"]
    fig = figures.robustness(t["robustness"], t["summary"])
    titles = {ax.get_title().split(" ")[0] for ax in fig.get_axes() if ax.get_title()}
    assert titles == {"none", "noise0.5", "pixels0.25", "half"}
    labels = {line.get_label() for ax in fig.get_axes() for line in ax.get_lines()}
    assert {"step 0", "T", "10 T"} <= labels
    figures.plt.close(fig)
    with pytest.raises(figures.TableError, match="missing column"):
        figures.draw("robustness", {"robustness": t["robustness"].drop(columns=["level"])}, "/tmp/never.png")
