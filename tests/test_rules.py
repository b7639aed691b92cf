"""The learning rules: pc = -dF/dtheta at the final latents; bp = the true gradient through
the unrolled inference (finite differences); the w = 0 and w = 1 ends.  Every test runs on
the reference rules (pcn.core.rules) and on their fast versions (pcn.fast.rules)."""
import pytest
import torch
import torch.nn.functional as F

from pcn.study import config
from pcn.core.ae import AE, ae_grads
from pcn.core.energy import cross_entropy, energy, layer_energies
from pcn.core.inference import infer, init_latents
from pcn.core.model import PCN
from pcn.core import rules as reference_rules
from pcn.fast import rules as fast_rules
from pcn.fast.dispatch import infer as fast_infer

IMPLS = {"reference": reference_rules.RULES, "fast": fast_rules.RULES}


@pytest.fixture(params=sorted(IMPLS))
def impl(request):
    return IMPLS[request.param]


def _cfg(**kw):
    base = dict(layers=[10, 8, 6, 4], T=6, eta=0.1, init="amortised", ce_weight=0.5, momentum=0.0, energy_norm="sum")
    base.update(kw)
    return config.resolve(base)


def _setup(cfg, seed=0, B=7):
    torch.manual_seed(seed)
    model = PCN(cfg["layers"], cfg["activation"], prior=cfg["prior"],
                amortised=cfg["init"] == "amortised", seed=seed).double()
    x = torch.randn(B, cfg["layers"][0], dtype=torch.float64).tanh()
    y = torch.randint(0, 10, (B,))
    return model, x, y


def _grads(model):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("w", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("prior", [False, True])
def test_pc_update_is_minus_dE_dtheta_at_nudged_latents(w, prior, impl):
    cfg = _cfg(ce_weight=w, prior=prior)
    model, x, y = _setup(cfg)
    impl["pc"](model, x, y, cfg)
    got = _grads(model)
    # The free latents, then the nudged ones (beta = w / (1 - w)) continued from them.
    z0 = init_latents(model, x, "amortised")
    with torch.no_grad():
        free, _ = infer(model, x, z0, cfg["T"], cfg["eta"])
        z = infer(model, x, free, cfg["T"], cfg["eta"], y=y, beta=w / (1 - w))[0] if w > 0 else free
    z, free = [zl.detach() for zl in z], [zl.detach() for zl in free]  # no graph through the trajectory
    model.zero_grad(set_to_none=True)
    energy(model, x, z).mean().backward()
    for l in range(model.L):
        torch.testing.assert_close(got[f"W.{l}"], model.W[l].grad, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got[f"b.{l}"], model.b[l].grad, rtol=1e-9, atol=1e-12)
        assert model.W[l].grad.abs().max() > 0        # the generative weights move at every w < 1
    if prior:
        torch.testing.assert_close(got["prior_mean"], model.prior_mean.grad, rtol=1e-9, atol=1e-12)
    # Readout: its own CE at the free (label-free) top latent, the one it is tested on.
    model.zero_grad(set_to_none=True)
    cross_entropy(model, free[-1], y).mean().backward()
    torch.testing.assert_close(got["C"], model.C.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got["c"], model.c.grad, rtol=1e-9, atol=1e-12)
    # Amortiser: local regression onto the nudged latents.
    model.zero_grad(set_to_none=True)
    loss = 0
    for l in range(model.L):
        inp = x if l == 0 else model.f(z[l - 1])
        loss = loss + 0.5 * ((inp @ model.V[l].t() + model.a[l] - z[l]) ** 2).sum(1).mean()
    loss.backward()
    for l in range(model.L):
        torch.testing.assert_close(got[f"V.{l}"], model.V[l].grad, rtol=1e-9, atol=1e-12)


def test_nudged_step_is_eta_times_the_gradient_of_the_documented_objective():
    """One nudged inference step moves z by -eta d/dz [E + beta CE], beta = w / (1 - w) (autograd)."""
    from pcn.core.inference import step
    from pcn.core.energy import errors

    cfg = _cfg(ce_weight=0.75)
    model, x, y = _setup(cfg)
    z = [zl.detach().requires_grad_(True) for zl in init_latents(model, x, "amortised")]
    beta = 0.75 / 0.25
    Fsum = (energy(model, x, z) + beta * cross_entropy(model, z[-1], y)).sum()
    grads = torch.autograd.grad(Fsum, z)
    with torch.no_grad():
        z1, _ = step(model, x, [zl.detach() for zl in z], errors(model, x, z), None, 0.1, y, beta)
        fast, _ = fast_infer(model, x, [zl.detach() for zl in z], 1, 0.1, y=y, beta=beta)
    for a, b, g, zl in zip(z1, fast, grads, z):
        torch.testing.assert_close(a, zl.detach() - 0.1 * g, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_pc_refuses_w1(impl):
    with pytest.raises(config.ConfigError, match="rule 'pc' needs ce_weight < 1"):
        _cfg(ce_weight=1.0)
    cfg = dict(_cfg(ce_weight=1.0, rule="bp"), rule="pc")
    model, x, y = _setup(cfg)
    with pytest.raises(ValueError, match="ce_weight 1.0 has no local update"):
        impl["pc"](model, x, y, cfg)


def test_pc_update_depends_on_trajectory_only_through_its_end(impl, monkeypatch):
    """Two different trajectories that end at the same latents give the same update."""
    cfg = _cfg(ce_weight=0.4, init="zeros", T=0)
    model, x, y = _setup(cfg)
    with torch.no_grad():
        free, _ = infer(model, x, init_latents(model, x, "zeros"), 9, 0.1)
        zstar, _ = infer(model, x, free, 9, 0.1, y=y, beta=0.4 / 0.6)   # the nudged phase continues the free one
    with monkeypatch.context() as m:
        start = lambda mm, xx, mode: [zl.clone() for zl in zstar]  # noqa: E731
        m.setattr(reference_rules.inference, "init_latents", start)
        m.setattr(fast_rules, "init_latents", start)
        impl["pc"](model, x, y, cfg)  # T = 0: update taken at z* directly
    direct = _grads(model)
    cfg9 = _cfg(ce_weight=0.4, init="zeros", T=9)
    impl["pc"](model, x, y, cfg9)
    via = _grads(model)
    for k in ("W.0", "W.1", "W.2", "b.0"):
        torch.testing.assert_close(direct[k], via[k], rtol=1e-9, atol=1e-12)


def _bp_objective(model, x, y, cfg):
    """L(theta) = (1 - w) E(z^T) + w CE(C z^T_L + c), z^T a function of theta via T steps."""
    w = cfg["ce_weight"]
    z, eps = infer(model, x, init_latents(model, x, cfg["init"]), cfg["T"], cfg["eta"])
    return (1 - w) * layer_energies(eps).sum(0).mean() + w * cross_entropy(model, z[-1], y).mean()


@pytest.mark.parametrize("init", ["zeros", "amortised"])
@pytest.mark.parametrize("w", [0.0, 0.6, 1.0])
def test_bp_gradient_matches_finite_differences(init, w, impl):
    cfg = _cfg(ce_weight=w, init=init, T=5, eta=0.2, activation="tanh", rule="bp")
    model, x, y = _setup(cfg, B=4)
    impl["bp"](model, x, y, cfg)
    got = _grads(model)
    gen = torch.Generator().manual_seed(1)
    names = ["W.0", "W.1", "W.2", "b.0", "b.2"] + (["V.0", "V.2", "a.1"] if init == "amortised" else [])
    params = dict(model.named_parameters())
    h = 1e-6
    with torch.no_grad():
        for name in names:
            p = params[name]
            for _ in range(4):
                i = tuple(int(torch.randint(0, s, (1,), generator=gen)) for s in p.shape)
                old = p[i].item()
                p[i] = old + h
                up = _bp_objective(model, x, y, cfg).item()
                p[i] = old - h
                down = _bp_objective(model, x, y, cfg).item()
                p[i] = old
                fd = (up - down) / (2 * h)
                assert abs(got[name][i].item() - fd) < 1e-6 + 1e-5 * abs(fd), (name, i, got[name][i].item(), fd)
    # The readout trains on its own CE at the detached top latent.
    with torch.no_grad():
        z, _ = infer(model, x, init_latents(model, x, init), cfg["T"], cfg["eta"])
    model.zero_grad(set_to_none=True)
    cross_entropy(model, z[-1].detach(), y).mean().backward()
    torch.testing.assert_close(got["C"], model.C.grad, rtol=1e-9, atol=1e-12)


def test_w0_ignores_labels_and_w1_ignores_energy(impl):
    pc_grads, bp_grads = impl["pc"], impl["bp"]
    for rule in (pc_grads, bp_grads):
        cfg = _cfg(ce_weight=0.0)
        model, x, y = _setup(cfg)
        rule(model, x, y, cfg)
        a = _grads(model)
        rule(model, x, (y + 3) % 10, cfg)
        b = _grads(model)
        for k in a:
            if not k.startswith(("C", "c")):  # only the readout probe sees the label at w = 0
                torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12)
    # bp at w = 1: the gradient is the CE's alone (checked against autograd of CE only).
    cfg = _cfg(ce_weight=1.0, rule="bp")
    model, x, y = _setup(cfg)
    bp_grads(model, x, y, cfg)
    got = _grads(model)
    model.zero_grad(set_to_none=True)
    z, _ = infer(model, x, init_latents(model, x, "amortised"), cfg["T"], cfg["eta"])
    cross_entropy(model, z[-1], y).mean().backward()
    for l in range(model.L):
        torch.testing.assert_close(got[f"W.{l}"], model.W[l].grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_ae_gradient_routing(w):
    torch.manual_seed(0)
    model = AE([12, 8, 4], "relu").double()
    x = torch.randn(6, 12, dtype=torch.float64).tanh()
    y = torch.randint(0, 10, (6,))
    ae_grads(model, x, y, {"ce_weight": w})
    got = _grads(model)
    # encoder: (1 - w) MSE + w CE; heads: their own loss only
    model.zero_grad(set_to_none=True)
    z, xh, logits = model(x)
    ((1 - w) * F.mse_loss(xh, x) + w * F.cross_entropy(logits, y)).backward()
    for n, p in model.encoder.named_parameters():
        torch.testing.assert_close(got[f"encoder.{n}"], p.grad, rtol=1e-9, atol=1e-12)
    model.zero_grad(set_to_none=True)
    z, xh, logits = model(x)
    (F.mse_loss(xh, x) + F.cross_entropy(logits, y)).backward()
    for n, p in model.decoder.named_parameters():
        torch.testing.assert_close(got[f"decoder.{n}"], p.grad, rtol=1e-9, atol=1e-12)
    for n, p in model.classifier.named_parameters():
        torch.testing.assert_close(got[f"classifier.{n}"], p.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("norm", ["sum", "pixel"])
def test_energy_norm_scales_the_energy_term(norm, impl):
    """bp's loss is (1 - w) s E + w CE and pc's update is s dE/dtheta at the latents nudged by
    E + (beta / s) CE, with s = 1 (sum) or 2 / d_0 (pixel)."""
    cfg = _cfg(ce_weight=0.4, energy_norm=norm, init="zeros")
    model, x, y = _setup(cfg)
    s = 1.0 if norm == "sum" else 2.0 / cfg["layers"][0]
    terms = impl["bp"](model, x, y, cfg)
    with torch.no_grad():
        z, eps = infer(model, x, init_latents(model, x, "zeros"), cfg["T"], cfg["eta"])
    E = s * layer_energies(eps).sum(0).mean()
    torch.testing.assert_close(terms["energy"], E, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(terms["loss"], 0.6 * E + 0.4 * cross_entropy(model, z[-1], y).mean(), rtol=1e-9, atol=1e-12)
    impl["pc"](model, x, y, cfg)
    got = _grads(model)
    with torch.no_grad():
        free, _ = infer(model, x, init_latents(model, x, "zeros"), cfg["T"], cfg["eta"])
        zn, _ = infer(model, x, free, cfg["T"], cfg["eta"], y=y, beta=(0.4 / 0.6) / s)
    model.zero_grad(set_to_none=True)
    (s * energy(model, x, [zl.detach() for zl in zn]).mean()).backward()
    torch.testing.assert_close(got["W.0"], model.W[0].grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fast_pc_ep_equals_the_reference(w, prior, momentum):
    """pc-ep's three inferences (free, +beta, -beta: the opposite nudge included) on the fast
    loop give the reference rule's gradients and terms."""
    cfg = _cfg(rule="pc-ep", ce_weight=w, prior=prior, momentum=momentum, init="zeros", ep_beta=0.3)
    model, x, y = _setup(cfg, seed=2)
    with torch.no_grad():
        model.C.mul_(3.0)          # a readout that moves the latents
    want_terms = reference_rules.RULES["pc-ep"](model, x, y, cfg)
    want = _grads(model)
    got_terms = fast_rules.RULES["pc-ep"](model, x, y, cfg)
    got = _grads(model)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-12, msg=k)
        if w > 0 and k.startswith("W"):
            assert float(got[k].abs().max()) > 0
    for k in ("loss", "energy", "ce", "settle", "nudge_gap"):
        torch.testing.assert_close(got_terms[k].double(), want_terms[k].double(), rtol=1e-9, atol=1e-12, msg=k)
