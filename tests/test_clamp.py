"""Occlusion completion measured fairly (issue 11 item 7): hidden-pixel MSE, the mean-image and
PCA baselines, settling, and a short trained PCN against the mean image."""
from pathlib import Path

import pytest
import torch

from pcn.errors import UsageError
from pcn.study import clamp, config, data, probe
from pcn.study.train import train

MNIST_DIR = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist").resolve()
# The default model and rule (784-256-256-32, T = 20, eta = 0.02, pc, w = 0.5), trained briefly.
SHORT = dict(data_dir=str(MNIST_DIR), train_subset=3000, test_subset=300, eval_train_size=200, epochs=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread_module():
    """One torch thread for this module: SVDs and small-batch training are many times faster
    than with two threads on a busy 2-core machine (conftest's one_thread, module-wide)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def mnist():
    """(train images, test images) of MNIST on the [-1, 1] scale: the first 2000 and 300."""
    ds = data.load(config.resolve(dict(SHORT)))
    return ds.train.x[:2000], ds.test.x[:300]


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A short pc model (the default net, 2 epochs on 3000 images; a few seconds)."""
    out = tmp_path_factory.mktemp("short_run")
    train(config.resolve(dict(SHORT)), out, log=lambda s: None)
    return probe.load_run(out)


def test_hidden_mse_ignores_the_visible_pixels():
    g = torch.Generator().manual_seed(0)
    x, pred = torch.randn(5, 20, generator=g), torch.randn(5, 20, generator=g)
    visible = clamp.top_half_mask(20)
    changed = pred.clone()
    changed[:, visible] += 100.0
    assert clamp.hidden_mse(changed, x, visible) == clamp.hidden_mse(pred, x, visible)
    assert clamp.hidden_mse(pred, x, visible) == pytest.approx(float(((pred - x)[:, 10:] ** 2).mean()))
    changed[:, ~visible] += 1.0
    assert clamp.hidden_mse(changed, x, visible) != clamp.hidden_mse(pred, x, visible)


def test_pca_solve_recovers_data_in_the_subspace_exactly():
    """Images m + U c with U of rank 32: the visible rows fix c, so the hidden rows come back."""
    g = torch.Generator().manual_seed(1)
    d, k, n = 200, 32, 400
    basis = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    xtr = torch.randn(n, k, generator=g, dtype=torch.float64) @ basis.t() + mean
    x = torch.randn(10, k, generator=g, dtype=torch.float64) @ basis.t() + mean
    visible = clamp.top_half_mask(d)
    m, U = clamp.fit_pca(xtr, k)
    torch.testing.assert_close(U @ U.t(), basis @ basis.t())  # the same subspace
    torch.testing.assert_close(clamp.pca_complete(x, visible, m, U, ridge=0.0), x)
    torch.testing.assert_close(clamp.pca_complete(x, visible, m, U, ridge=clamp.TINY_RIDGE), x, atol=1e-4, rtol=0)
    assert clamp.hidden_mse(clamp.pca_complete(x, visible, m, U, 0.0), x, visible) < 1e-20
    assert clamp.choose_ridge(xtr, visible, k) == min(clamp.RIDGE_GRID)  # noise-free: the smallest ridge


def test_pca_completion_beats_the_mean_image_on_mnist(mnist):
    xtr, x = mnist
    visible = clamp.top_half_mask(784)
    b = clamp.baselines(xtr, x, visible)
    mean_mse, pca_mse = clamp.hidden_mse(b.mean, x, visible), clamp.hidden_mse(b.pca, x, visible)
    assert pca_mse < 0.95 * mean_mse, (pca_mse, mean_mse)
    # The plain solve (tiny ridge) overfits the visible rows: the reason for the chosen ridge.
    assert clamp.hidden_mse(b.pca_ls, x, visible) > mean_mse
    assert b.ridge in clamp.RIDGE_GRID and b.ridge > clamp.TINY_RIDGE


def test_short_trained_pcn_completion_beats_the_mean_image_and_settles(short_run):
    model, cfg, ds = short_run
    xtr, x = ds.train.x[:3000], ds.test.x[:300]
    visible = clamp.top_half_mask(784)
    res = clamp.complete(model, cfg, x, visible, xtr.mean(0), steps=200)
    model_mse, mean_mse = clamp.hidden_mse(res.mu0, x, visible), clamp.hidden_mse(xtr.mean(0), x, visible)
    assert model_mse < 0.97 * mean_mse, (model_mse, mean_mse)
    assert 0 < res.settle < 5e-3 and 0 < res.change < 5e-3
    torch.testing.assert_close(res.xc[:, visible], x[:, visible])  # the visible pixels stay clamped


def test_pixel_step_one_sets_the_hidden_pixels_to_the_prediction(short_run):
    """With pixel_step = 1 (no momentum) x_h after step t is mu_0[h] of the state before it."""
    model, cfg, ds = short_run
    x, visible = ds.test.x[:20], clamp.top_half_mask(784)
    fill = ds.train.x[:500].mean(0)
    before = clamp.complete(model, dict(cfg, momentum=0.0), x, visible, fill, steps=4)
    after = clamp.complete(model, dict(cfg, momentum=0.0), x, visible, fill, steps=5)
    torch.testing.assert_close(after.xc[:, ~visible], before.mu0[:, ~visible])


def test_bad_arguments_name_the_option_and_the_allowed_values(mnist):
    xtr, x = mnist
    visible = clamp.top_half_mask(784)
    with pytest.raises(UsageError, match=r"pixel_step = 2.5; must lie in \(0, 2\)"):
        clamp.complete(None, {}, x, visible, xtr.mean(0), steps=3, pixel_step=2.5)
    with pytest.raises(UsageError, match="steps = -1; must be 0 or more"):
        clamp.complete(None, {}, x, visible, xtr.mean(0), steps=-1)
    with pytest.raises(UsageError, match=r"k = 900 .* k must lie in 1\.\.784"):
        clamp.fit_pca(xtr, 900)
    with pytest.raises(UsageError, match="ridge = -1"):
        m, U = clamp.fit_pca(xtr[:100], 8)
        clamp.pca_complete(x, visible, m, U, -1.0)
    with pytest.raises(UsageError, match="cannot choose the ridge"):
        clamp.choose_ridge(xtr[:4], visible, 32)
