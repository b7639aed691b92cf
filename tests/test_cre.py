"""The reference model ``cre`` (Rathjens & Wiskott's FC classification-reconstruction encoder):
architecture, gradient routing against autograd, Adam per module, config keys, and a short
real-MNIST training."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pcn.core.ae import AE, ae_grads
from pcn.core.cre import CRE
from pcn.study import config
from pcn.study.evaluate import evaluate
from pcn.study.store import build_model, load_model
from pcn.study.train import build_optimizer, train


def _linears(seq: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in seq.modules() if isinstance(m, nn.Linear)]


def _acts(seq: nn.Sequential) -> list[str]:
    return [type(m).__name__ for m in seq if not isinstance(m, nn.Linear)]


def test_medium_architecture():
    m = CRE("medium", latent=32)
    assert _linears(m.encoder) == [(784, 616), (616, 32)] and _acts(m.encoder) == ["ReLU", "ReLU"]
    assert _linears(m.decoder) == [(32, 616), (616, 784)] and _acts(m.decoder) == ["ReLU", "Tanh"]
    assert _linears(m.classifier) == [(32, 12), (12, 10)] and _acts(m.classifier) == ["ReLU"]
    assert m.layers == [784, 616, 32]
    # ReLU latent: never negative, and some units are exactly 0 on some inputs; tanh output in (-1, 1)
    x = torch.randn(256, 784).clamp(-1, 1)
    z, xh, logits = m(x)
    assert z.shape == (256, 32) and (z >= 0).all() and (z == 0).any()
    assert xh.shape == (256, 784) and (xh.abs() < 1).all()
    assert logits.shape == (256, 10)


def test_small_architecture():
    m = CRE("small", latent=20)
    assert _linears(m.encoder) == [(784, 20)] and _acts(m.encoder) == ["ReLU"]
    assert _linears(m.decoder) == [(20, 784)] and _acts(m.decoder) == ["Tanh"]
    assert _linears(m.classifier) == [(20, 10)]


def test_init_follows_seed_in_reference_order():
    """Default nn.Linear init drawn after manual_seed(seed), encoder first, then decoder, classifier."""
    a, b, c = CRE("medium", 32, seed=3), CRE("medium", 32, seed=3), CRE("medium", 32, seed=4)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert not torch.equal(a.encoder[0].weight, c.encoder[0].weight)
    torch.manual_seed(3)
    first = nn.Linear(784, 616)
    assert torch.equal(a.encoder[0].weight, first.weight) and torch.equal(a.encoder[0].bias, first.bias)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("size", ["small", "medium"])
def test_gradient_routing_matches_autograd(size, w):
    model = CRE(size, latent=6, seed=1).double()
    torch.manual_seed(0)
    x = torch.rand(9, 784, dtype=torch.float64) * 2 - 1
    y = torch.randint(0, 10, (9,))
    terms = ae_grads(model, x, y, {"ce_weight": w})
    got = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    z, xh, logits = model(x)
    mse, ce = F.mse_loss(xh, x), F.cross_entropy(logits, y)
    torch.testing.assert_close(terms["energy"], mse.detach())
    torch.testing.assert_close(terms["ce"], ce.detach())
    # encoder: (1 - w) MSE + w CE
    enc = list(model.encoder.parameters())
    want = torch.autograd.grad((1 - w) * mse + w * ce, enc, retain_graph=True, allow_unused=True)
    for (n, _), g in zip(model.encoder.named_parameters(), want):
        g = torch.zeros_like(got[f"encoder.{n}"]) if g is None else g
        torch.testing.assert_close(got[f"encoder.{n}"], g, rtol=1e-9, atol=1e-12)
    # heads: their own loss only, whatever w
    for part, loss in (("decoder", mse), ("classifier", ce)):
        named = list(getattr(model, part).named_parameters())
        want = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True)
        for (n, _), g in zip(named, want):
            assert g.abs().sum() > 0, f"{part}.{n}"
            torch.testing.assert_close(got[f"{part}.{n}"], g, rtol=1e-9, atol=1e-12)


def test_one_adam_equals_adam_per_module():
    """The run's single Adam (build_optimizer) takes the same steps as the reference's three
    Adams (encoder, decoder, classifier), at the same lr: Adam's state is per parameter."""
    cfg = config.resolve({"model": "cre", "latent": 8})
    one, three = CRE("medium", 8, seed=0), CRE("medium", 8, seed=0)
    start = [p.detach().clone() for p in one.parameters()]
    opt = build_optimizer(cfg, one.parameters())
    opts = [torch.optim.Adam(getattr(three, p).parameters(), lr=cfg["lr"]) for p in ("encoder", "decoder", "classifier")]
    torch.manual_seed(0)
    for _ in range(3):
        x, y = torch.rand(32, 784) * 2 - 1, torch.randint(0, 10, (32,))
        ae_grads(one, x, y, cfg)
        opt.step()
        ae_grads(three, x, y, cfg)
        for o in opts:
            o.step()
    moved = 0.0
    for (n, p), q, p0 in zip(one.named_parameters(), three.parameters(), start):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=n)
        moved = max(moved, float((p.detach() - p0).abs().max()))
    assert moved > 1e-3  # the steps did move the weights


def test_config_keys():
    cfg = config.resolve({"model": "cre", "rule": "pc", "init": "zeros"})
    assert cfg["rule"] == "bp" and cfg["cre_size"] == "medium" and cfg["latent"] == 32
    assert cfg["init"] == config.defaults()["init"]  # ignored, like an ae's: one canonical value
    m = build_model(dict(cfg, cre_size="small", latent=5))
    assert isinstance(m, CRE) and isinstance(m, AE) and _linears(m.encoder) == [(784, 5)]
    for bad in ({"cre_size": "large"}, {"latent": 0}):
        with pytest.raises(config.ConfigError, match=next(iter(bad))):
            config.resolve({"model": "cre", **bad})


def test_short_mnist_training(tmp_path, mnist_dir, one_thread):
    """250 Adam steps on real MNIST: far above chance (0.82 measured), and the saved model reloads."""
    cfg = config.resolve(dict(model="cre", latent=32, ce_weight=0.5, data_dir=str(mnist_dir), train_subset=4000,
                              test_subset=1000, val_size=500, eval_train_size=200, epochs=2, batch_size=32,
                              lr_schedule="constant"))
    final = train(cfg, tmp_path / "run", device="cpu", log=lambda s: None)
    assert final["rule"] == "bp" and not final["diverged"]
    assert final["test_acc"] > 0.65, final["test_acc"]  # chance: 0.1
    # the mean-image MSE on this scale is 0.27 (spec 7): the decoder learnt more than the mean (0.15 measured)
    assert 0 < final["recon_mse"] < 0.2, final["recon_mse"]
    model, saved = load_model(tmp_path / "run" / "model.pt")
    assert isinstance(model, CRE) and saved["cre_size"] == "medium"
    from pcn.study import data
    ds = data.load(cfg)
    again = evaluate(model, ds.test.x, ds.test.y, saved, torch.device("cpu"))
    assert again["acc"] == pytest.approx(final["test_acc"]) and again["recon_mse"] == pytest.approx(final["recon_mse"])


def test_model_specific_settings_are_not_factors():
    """Keys set for the cre runs alone (train_by_model) do not become figure factors; a key swept
    within one model does."""
    import pandas as pd

    from pcn.outputs.aggregate import factor_columns

    s = pd.DataFrame(dict(run=list("abcd"), dataset="mnist", model=["pcn", "pcn", "cre", "cre"],
                          rule=["pc", "pc", "bp", "bp"], ce_weight=[0.0, 1.0, 0.0, 1.0], seed=0, T=20,
                          batch_size=[128, 128, 512, 512], epochs=[30, 30, 10, 10], eta=[0.02, 0.05, 0.02, 0.02]))
    cols = factor_columns(s)
    assert "batch_size" not in cols and "epochs" not in cols and "eta" in cols
