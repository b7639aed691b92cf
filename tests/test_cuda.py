"""The same maths on CUDA as on the CPU: the reference and fast rules, inference, and a short real
MNIST training that reloads and scores the same on the CPU.  Skipped where torch sees no GPU
(CI, this project's laptops); run on a GPU machine with `python -m pytest -q tests/test_cuda.py`
(docs/performance.md, "On a GPU")."""
import copy
import os

import pytest
import torch

from pcn.core import rules as reference_rules
from pcn.core.inference import init_latents
from pcn.fast import rules as fast_rules
from pcn.fast.dispatch import infer_state
from pcn.study import config, data
from pcn.study.evaluate import evaluate
from pcn.study.store import build_model, load_model
from pcn.study.train import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and "PCN_TEST_CUDA_AS" not in os.environ,
                                reason="torch sees no CUDA device")
CUDA = torch.device(os.environ.get("PCN_TEST_CUDA_AS", "cuda"))   # "cpu": checks this file's logic off a GPU
LAYERS = [12, 9, 7, 4]


def _model_and_batch(cfg: dict, seed: int = 0):
    model = build_model(cfg).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, cfg["layers"][0], generator=g, dtype=torch.float64).tanh()
    y = torch.randint(0, 10, (6,), generator=g)
    return model, x, y


def _grads(rule, model, x, y, cfg) -> tuple[dict, dict]:
    model.zero_grad(set_to_none=True)
    terms = rule(model, x, y, cfg)
    return ({n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None},
            {k: torch.as_tensor(v).detach().cpu() for k, v in terms.items()})


@pytest.mark.parametrize("name, fast", [(n, False) for n in reference_rules.RULES] + [(n, True) for n in fast_rules.RULES])
@pytest.mark.parametrize("init", ["zeros", "amortised"])
def test_rules_on_cuda_equal_the_reference_on_cpu(name, fast, init):
    """Every rule's gradients and reported terms (float64) on CUDA, in its reference and (where it
    has one) its fast version, == the reference rule on the CPU, to rounding."""
    cfg = config.resolve(dict(layers=LAYERS, T=6, eta=0.1, init=init, ce_weight=0.3, activation="tanh", rule=name))
    model, x, y = _model_and_batch(cfg)
    want, want_terms = _grads(reference_rules.RULES[name], model, x, y, cfg)
    gpu = copy.deepcopy(model).to(CUDA)
    rule = fast_rules.RULES[name] if fast else reference_rules.RULES[name]
    got, got_terms = _grads(rule, gpu, x.to(CUDA), y.to(CUDA), cfg)
    assert set(got) == set(want) and want
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-9, atol=1e-11, msg=k)
    for k in want_terms:
        torch.testing.assert_close(got_terms[k], want_terms[k], rtol=1e-9, atol=1e-11, equal_nan=True, msg=k)


@pytest.mark.parametrize("beta", [0.0, 1.5])
def test_fast_inference_on_cuda_equals_the_cpu(beta):
    model, x, y = _model_and_batch(config.resolve(dict(layers=LAYERS, init="zeros", activation="gelu")))
    z0 = init_latents(model, x, "zeros")
    with torch.no_grad():
        want = infer_state(model, x, z0, 9, 0.1, y=y, beta=beta)
        gpu = copy.deepcopy(model).to(CUDA)
        got = infer_state(gpu, x.to(CUDA), [z.to(CUDA) for z in z0], 9, 0.1, y=y.to(CUDA), beta=beta)
    for a, b in zip(got.z + got.eps, want.z + want.eps):
        assert a.device.type == CUDA.type
        torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rule", ["pc", "bp"])
def test_short_mnist_training_on_cuda_learns_and_reloads_on_cpu(tmp_path, mnist_dir, rule):
    """A short real-MNIST run on CUDA learns as on the CPU (same config, same seed: test accuracy
    within 3 points; float32 rounding differs), and its saved model scores the same on the CPU."""
    cfg = config.resolve(dict(data_dir=str(mnist_dir), rule=rule, ce_weight=0.5, train_subset=4000,
                              test_subset=1000, val_size=200, eval_train_size=200, layers=[784, 64, 16],
                              epochs=2, batch_size=32, T=10, lr=5e-3))
    on_gpu = train(cfg, tmp_path / "gpu", device=CUDA.type)
    on_cpu = train(cfg, tmp_path / "cpu", device="cpu")
    assert on_gpu["test_acc"] > 0.6 and not on_gpu["diverged"], on_gpu["test_acc"]
    assert abs(on_gpu["test_acc"] - on_cpu["test_acc"]) < 0.03, (on_gpu["test_acc"], on_cpu["test_acc"])
    model, saved = load_model(tmp_path / "gpu" / "model.pt")
    assert next(model.parameters()).device.type == "cpu"
    ds = data.load(saved)
    again = evaluate(model, ds.test.x, ds.test.y, saved, torch.device("cpu"))
    assert abs(again["acc"] - on_gpu["test_acc"]) <= 0.002
    assert again["gen_mse"] == pytest.approx(on_gpu["gen_mse"], rel=1e-3)
