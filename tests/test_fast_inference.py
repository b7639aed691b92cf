"""The fast inference paths (pcn.fast) agree with the reference (pcn.core.inference): the
stacked no-grad loop (in preallocated buffers), the layer-0 Gram form, and the hand-written
adjoint of ``bp`` (against autograd through the reference loop)."""
import os

import pytest
import torch

from pcn.core import inference as reference
from pcn.core.energy import cross_entropy, layer_energies
from pcn.core.inference import init_latents
from pcn.core.model import PCN
from pcn.fast import compiled
from pcn.fast.dispatch import infer, infer_state
from pcn.fast.options import OPTIONS
from pcn.fast.stacked import use_gram


@pytest.fixture(autouse=True)
def _restore_options():
    saved = dict(OPTIONS)
    yield
    OPTIONS.clear()
    OPTIONS.update(saved)


def _setup(act="tanh", prior=False, seed=0, B=5, layers=(12, 9, 7, 4), amortised=True):
    torch.manual_seed(seed)
    model = PCN(list(layers), act, prior=prior, amortised=amortised, seed=seed).double()
    x = torch.randn(B, layers[0], dtype=torch.float64).tanh()
    y = torch.randint(0, 10, (B,))
    return model, x, y


def _loss_grads(model, x, y, T, eta, momentum, init, w=0.4):
    """Gradients of (1 - w) E(z^T) + w CE(z^T_L) w.r.t. all parameters (grad mode)."""
    model.zero_grad(set_to_none=True)
    z, eps = infer(model, x, init_latents(model, x, init), T, eta, momentum=momentum)
    loss = (1 - w) * layer_energies(eps).sum(0).mean() + w * cross_entropy(model, z[-1], y).mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, [zl.detach() for zl in z]


@pytest.mark.parametrize("act", ["tanh", "gelu", "relu", "linear"])
@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("gram", [True, False])
def test_adjoint_matches_autograd_through_the_loop(act, prior, momentum, gram):
    model, x, y = _setup(act, prior)
    init = "prior" if prior else "amortised"
    OPTIONS["gram"] = gram
    OPTIONS["adjoint"] = False
    ref, zr = _loss_grads(model, x, y, 6, 0.1, momentum, init)
    OPTIONS["adjoint"] = True
    for mem in ("fast", "lean"):
        OPTIONS["bp_memory"] = mem
        fast, zf = _loss_grads(model, x, y, 6, 0.1, momentum, init)
        assert set(fast) == set(ref)
        for k in ref:
            torch.testing.assert_close(fast[k], ref[k], rtol=1e-9, atol=1e-11, msg=f"{mem} {k}")
        for a, b in zip(zf, zr):   # the stacked loop and autograd's loop round differently
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("act", ["tanh", "gelu", "relu"])
@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.3])
@pytest.mark.parametrize("beta", [0.0, 1.5, -1.5])
def test_stacked_loop_and_gram_match_the_reference_loop(act, prior, momentum, beta):
    model, x, y = _setup(act, prior)
    z0 = init_latents(model, x, "zeros")
    with torch.no_grad():
        ref = reference.infer_state(model, x, z0, 9, 0.1, y, beta, momentum)
        for gram in (False, True):
            OPTIONS["gram"] = gram
            s = infer_state(model, x, z0, 9, 0.1, y=y, beta=beta, momentum=momentum)
            for got, want in zip(s.z + s.eps + s.fz, ref.z + ref.eps + ref.fz):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_loop_leaves_z0_alone_and_callback_gets_copies():
    model, x, y = _setup()
    z0 = init_latents(model, x, "amortised")
    keep = [zl.clone() for zl in z0]
    seen = []
    OPTIONS["gram"] = True  # the same arithmetic at every T (auto may pick by T)
    with torch.no_grad():
        zT, _ = infer(model, x, z0, 5, 0.1, y=y, beta=0.3, callback=lambda t, z, e, dz: seen.append((z, e, dz)))
        for a, b in zip(z0, keep):
            assert torch.equal(a, b)
        for t in (0, 2, 5):  # what the callback kept at step t is still the state z^t
            zt, et = infer(model, x, z0, t, 0.1, y=y, beta=0.3)
            for a, b in zip(seen[t][0] + seen[t][1], zt + et):
                assert torch.equal(a, b)
        for t in range(1, 6):
            for dz, z1, z2 in zip(seen[t][2], seen[t][0], seen[t - 1][0]):
                torch.testing.assert_close(dz, z1 - z2, rtol=1e-12, atol=1e-14)


def test_gram_auto_rule():
    model, _, _ = _setup(layers=(784, 128, 128, 10))
    assert use_gram(model, 128, 20) and use_gram(model, 128, 5)
    assert not use_gram(model, 128, 0)
    wide, _, _ = _setup(layers=(100, 400, 10))
    assert not use_gram(wide, 64, 20)
    w2, _, _ = _setup(layers=(784, 1024, 1024, 10))
    assert use_gram(w2, 512, 20) and not use_gram(w2, 512, 5)  # saves 27 % vs 5 %


def test_compile_failure_falls_back_to_eager(monkeypatch):
    model, x, y = _setup()
    z0 = init_latents(model, x, "zeros")
    with torch.no_grad():
        want, _ = infer(model, x, z0, 4, 0.1)

        def broken(*a, **k):
            raise RuntimeError("no compiler here")

        monkeypatch.setattr(torch, "compile", broken)
        monkeypatch.setattr(compiled, "_COMPILED", {})
        OPTIONS["compile"] = True
        with pytest.warns(RuntimeWarning, match="torch.compile unavailable"):
            got, _ = infer(model, x, z0, 4, 0.1)
    assert OPTIONS["compile"] is False
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("act", ["tanh", "gelu", "relu", "linear"])
@pytest.mark.parametrize("momentum", [0.0, 0.4])
@pytest.mark.parametrize("prior", [False, True])
def test_adjoint_forward_agrees_with_the_traced_loop(act, momentum, prior):
    """Under grad mode a callback selects the autograd loop; without one the adjoint runs (its
    forward is the stacked no-grad loop).  All three give the same latents up to rounding."""
    model, x, _ = _setup(act, prior=prior, B=6)
    z0 = init_latents(model, x, "amortised")
    a, _ = infer(model, x, z0, 7, 0.1, momentum=momentum)
    b, _ = infer(model, x, z0, 7, 0.1, momentum=momentum, callback=lambda *args: None)
    with torch.no_grad():
        c, _ = infer(model, x, z0, 7, 0.1, momentum=momentum)
    assert a[0].grad_fn is not None and b[0].grad_fn is not None
    for u, v, w in zip(a, b, c):
        torch.testing.assert_close(u.detach(), v.detach(), rtol=1e-12, atol=1e-14)
        assert torch.equal(u.detach(), w)


@pytest.mark.skipif(not os.environ.get("PCN_TEST_COMPILE"),
                    reason="compiles C++ (~40 s); set PCN_TEST_COMPILE=1 (compile is off by default)")
def test_compiled_loop_matches_eager():
    """torch.compile of the loop (OPTIONS["compile"]) gives the eager result, label nudge and
    momentum included (guards against compiler bugs such as a dropped add alpha)."""
    model, x, y = _setup("gelu", prior=True, B=8, layers=(16, 8, 4))
    model = model.float()
    x = x.float()
    z0 = [zl.float() for zl in init_latents(model, x, "amortised")]
    with torch.no_grad():
        want = infer_state(model, x, z0, 3, 0.1, y=y, beta=0.5, momentum=0.3)
        OPTIONS["compile"] = True
        try:
            got = infer_state(model, x, z0, 3, 0.1, y=y, beta=0.5, momentum=0.3)
        except Exception as e:  # noqa: BLE001 - no compiler toolchain: the fallback is tested above
            pytest.skip(f"torch.compile unavailable: {e}")
    if OPTIONS["compile"] is False:
        pytest.skip("torch.compile unavailable here (fell back to eager)")
    for a, b in zip(got.z + got.eps + got.fz, want.z + want.eps + want.fz):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _per_step_ops(model, x, z0, T, y, w):
    """(ops, allocating ops) dispatched by the no-grad loop for T steps.  An op allocates when it
    is neither in place, nor an ``out=`` variant, nor a view."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = [0, 0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            schema = func._schema
            writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
            view = any(r.alias_info is not None for r in schema.returns)
            counts[0] += 1
            counts[1] += not writes and not view
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Count():
        infer_state(model, x, z0, T, 0.1, y=y, beta=w)
    return counts


@pytest.mark.parametrize("w", [0.0, 0.5])
def test_no_grad_loop_allocates_nothing_per_step(w):
    """Issue 5: the inference loop works in preallocated buffers.  The ops of one more step are a
    fixed, small number, none of them allocates (with a label: only the two (classes x batch)
    tensors of the nudge's softmax)."""
    model, x, y = _setup("gelu", layers=(12, 9, 7, 4))
    z0 = init_latents(model, x, "zeros")
    OPTIONS["gram"] = True
    n3, a3 = _per_step_ops(model, x, z0, 3, y, w)
    n6, a6 = _per_step_ops(model, x, z0, 6, y, w)
    n7, a7 = _per_step_ops(model, x, z0, 7, y, w)
    assert n7 - n6 == (n6 - n3) / 3 <= 30          # the same ops every step, a few dozen at most
    assert a7 - a6 == (2 if w > 0 else 0)


def _rule_grads(rule, model, x, y, cfg):
    model.zero_grad(set_to_none=True)
    terms = rule(model, x, y, cfg)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, terms


@pytest.mark.parametrize("name", ["pc", "bp"])
@pytest.mark.parametrize("act", ["tanh", "gelu", "relu", "linear"])
@pytest.mark.parametrize("init", ["zeros", "prior", "amortised"])
@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_fast_rules_equal_the_reference_rules(name, act, init, prior, momentum):
    """pcn.fast.rules (written-out gradients, stacked loop, adjoint) == pcn.core.rules
    (autograd at the reference loop's latents / through the reference loop), to rounding."""
    from pcn.core import rules as reference_rules
    from pcn.fast import rules as fast_rules
    from pcn.study import config

    model, x, y = _setup(act, prior, amortised=init == "amortised")
    cfg = config.resolve(dict(layers=[12, 9, 7, 4], T=6, eta=0.1, init=init, ce_weight=0.3,
                              momentum=momentum, activation=act, prior=prior))
    ref, ref_terms = _rule_grads(reference_rules.RULES[name], model, x, y, cfg)
    fast, fast_terms = _rule_grads(fast_rules.RULES[name], model, x, y, cfg)
    assert set(ref) == set(fast) and {"W.0", "C"} <= set(ref)
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-9, atol=1e-12, msg=k)
    for k in ref_terms:
        torch.testing.assert_close(fast_terms[k], ref_terms[k], rtol=1e-9, atol=1e-12, equal_nan=True, msg=k)


def test_no_fast_path_runs_the_reference_and_says_so(capsys, monkeypatch):
    """A rule without a fast version runs its reference rule, with a one-line note (once)."""
    from pcn.core import rules as reference_rules
    from pcn.fast import dispatch
    from pcn.fast import rules as fast_rules

    monkeypatch.setitem(reference_rules.RULES, "toy", reference_rules.pc_grads)
    monkeypatch.setattr(dispatch, "_NOTED", set())
    assert fast_rules.rule("toy") is reference_rules.pc_grads
    assert fast_rules.rule("toy") is reference_rules.pc_grads
    err = capsys.readouterr().err
    assert err.count("rule 'toy': no fast path; running the reference implementation") == 1
    assert fast_rules.rule("pc") is fast_rules.pc_grads
    with pytest.raises(ValueError, match="unknown rule 'nope'"):
        fast_rules.rule("nope")
    # Differentiable inference with a label nudge has no fast path: reference, equal results.
    model, x, y = _setup()
    z0 = init_latents(model, x, "zeros")
    got = infer_state(model, x, z0, 4, 0.1, y=y, beta=0.5)
    want = reference.infer_state(model, x, z0, 4, 0.1, y=y, beta=0.5)
    assert "label nudge or a callback: no fast path" in capsys.readouterr().err
    for a, b in zip(got.z, want.z):
        assert torch.equal(a, b) and a.grad_fn is not None
    OPTIONS["reference"] = True
    assert fast_rules.rule("pc") is reference_rules.pc_grads
