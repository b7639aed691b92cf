"""The analytic latent gradient against autograd; energy falls during inference."""
import pytest
import torch

from pcn.core.energy import ce_latent_grad, cross_entropy, energy, errors, latent_grad
from pcn.core.inference import infer, init_latents
from pcn.core.model import PCN


def _setup(act="tanh", prior=False, seed=0, B=5, layers=(12, 9, 7, 4)):
    torch.manual_seed(seed)
    model = PCN(list(layers), act, prior=prior, amortised=True, seed=seed).double()
    x = torch.randn(B, layers[0], dtype=torch.float64)
    z = [torch.randn(B, d, dtype=torch.float64) for d in layers[1:]]
    return model, x, z


@pytest.mark.parametrize("act", ["tanh", "relu", "gelu", "linear"])
@pytest.mark.parametrize("prior", [False, True])
def test_latent_grad_matches_autograd(act, prior):
    model, x, z = _setup(act, prior)
    zr = [zl.clone().requires_grad_(True) for zl in z]
    energy(model, x, zr).sum().backward()
    analytic = latent_grad(model, z, errors(model, x, z))
    for g, zl in zip(analytic, zr):
        torch.testing.assert_close(g, zl.grad, rtol=1e-10, atol=1e-10)


def test_ce_latent_grad_matches_autograd():
    model, x, z = _setup()
    y = torch.randint(0, 10, (5,))
    zL = z[-1].clone().requires_grad_(True)
    cross_entropy(model, zL, y).sum().backward()
    torch.testing.assert_close(ce_latent_grad(model, z[-1], y), zL.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("init", ["zeros", "prior", "amortised"])
def test_energy_non_increasing_at_small_eta(init):
    model, x, _ = _setup(prior=True)
    energies = []
    infer(model, x, init_latents(model, x, init), T=60, eta=0.05,
          callback=lambda t, z, eps, dz: energies.append(energy(model, x, z).sum().item()))
    assert len(energies) == 61
    diffs = torch.tensor(energies).diff()
    assert (diffs <= 1e-9).all(), diffs
    assert energies[-1] < 0.8 * energies[0]


def test_nudged_inference_lowers_F_and_moves_toward_label():
    model, x, z = _setup()
    y = torch.randint(0, 10, (5,))
    beta = 0.7 / 0.3      # w = 0.7

    def F(zz):
        return (energy(model, x, zz) + beta * cross_entropy(model, zz[-1], y)).sum().item()

    z0 = init_latents(model, x, "zeros")
    zT, _ = infer(model, x, z0, T=40, eta=0.05, y=y, beta=beta)
    free, _ = infer(model, x, z0, T=40, eta=0.05)
    assert F(zT) < F(z0)
    assert cross_entropy(model, zT[-1], y).mean() < cross_entropy(model, free[-1], y).mean()


def test_momentum_inference_converges():
    model, x, _ = _setup(prior=True)
    z0 = init_latents(model, x, "zeros")

    def gnorm(z):
        return sum(gl.norm() ** 2 for gl in latent_grad(model, z, errors(model, x, z))).sqrt().item()

    zT, _ = infer(model, x, z0, T=300, eta=0.05, momentum=0.5)
    plain, _ = infer(model, x, z0, T=300, eta=0.05)
    assert gnorm(zT) < 1e-3 * gnorm(z0)
    assert energy(model, x, zT).sum() <= energy(model, x, plain).sum() + 1e-9


def test_trace_callback_does_not_change_result():
    model, x, _ = _setup()
    z0 = init_latents(model, x, "amortised")
    a, _ = infer(model, x, z0, T=7, eta=0.1)
    seen = []
    b, _ = infer(model, x, z0, T=7, eta=0.1, callback=lambda t, z, e, dz: seen.append(t))
    assert seen == list(range(8))
    for u, v in zip(a, b):   # grad mode: the adjoint vs autograd's loop (rounding only)
        torch.testing.assert_close(u.detach(), v.detach(), rtol=1e-12, atol=1e-14)
    with torch.no_grad():    # no-grad: the same loop with or without the callback, bit for bit
        c, _ = infer(model, x, z0, T=7, eta=0.1)
        d, _ = infer(model, x, z0, T=7, eta=0.1, callback=lambda t, z, e, dz: None)
    for u, v in zip(c, d):
        assert torch.equal(u, v)
