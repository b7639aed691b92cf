"""Issue 26 item 1: many runs in one process.  A pack's batched gradients equal each run's
reference rule; a run trained in a pack equals the same run trained alone (every rule, both
inits) within float rounding; a diverged run is frozen while the others go on; a killed pack
resumes each run from its own checkpoint; refusals write nothing; the CLI builds grids."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from pcn.core import rules
from pcn.core.model import PCN
from pcn.errors import UsageError
from pcn.fast.pack import pack_grads, pack_key, why_alone
from pcn.study import config, store
from pcn.study.packs import _vary, group, train_pack
from pcn.study.train import RefusedError, train

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = (ROOT / ".." / "shared" / "data" / "mnist").resolve()
TINY = dict(train_subset=192, test_subset=128, val_size=64, eval_train_size=64, layers=[784, 16, 8],
            epochs=2, batch_size=64, T=4, eta=0.1)
INITS = {"pc": ["zeros", "amortised"], "pc-ep": ["zeros", "amortised"], "bpc": ["zeros", "amortised"],
         "bpc-ep": ["zeros", "amortised"], "bp": ["zeros", "amortised"]}
CASES = [(r, i) for r, inits in INITS.items() for i in inits]
# Three runs of one pack: they differ in seed, learning rate and the objective's hyper-parameters.
VARIANTS = [dict(seed=0, lr=1e-3, ce_weight=0.5, eta=0.1, ep_beta=0.1),
            dict(seed=1, lr=2e-3, ce_weight=0.25, eta=0.05, ep_beta=0.05),
            dict(seed=2, lr=5e-4, ce_weight=0.75, eta=0.1, ep_beta=0.1)]


def _quiet(s: str) -> None:
    pass


def _cfg(**kw) -> dict:
    return config.resolve(dict(TINY, data_dir=str(MNIST_DIR), **kw), for_run=True)


def _state(run: Path) -> dict:
    return torch.load(run / "model.pt")["state"]


def _close_runs(a: Path, b: Path, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Same weights within float rounding (Adam turns a rounding-level gradient difference into
    up to about 1 % of an lr step where a gradient is near 0: atol 1e-5 at lr <= 2e-3); the same
    metrics (accuracy within one image)."""
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], rtol=rtol, atol=atol), (k, (sa[k] - sb[k]).abs().max())
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    assert list(ma.columns) == list(mb.columns) and len(ma) == len(mb)
    for col in ("train_loss", "train_energy", "train_ce", "recon_mse", "gen_mse", "energy"):
        assert ma[col].tolist() == pytest.approx(mb[col].tolist(), rel=1e-4, abs=1e-6, nan_ok=True), col
    for col in ("test_acc", "val_acc", "train_acc"):
        assert (ma[col] - mb[col]).abs().max() <= 1 / 64 + 1e-9, col
    fa, fb = json.loads((a / "final.json").read_text()), json.loads((b / "final.json").read_text())
    for k in ("diverged", "epochs_done", "diverged_epoch", "diverged_batch", "seed", "lr", "ce_weight"):
        assert fa[k] == fb[k], k


@pytest.mark.parametrize("rule,init", CASES + [("pc", "prior")])
def test_pack_grads_equal_the_reference_rule(rule, init):
    """One batch: the pack's gradients per run = the reference rule's p.grad and terms."""
    torch.manual_seed(0)
    bu = 0.5 if rule.startswith("bpc") else 0.0
    cfgs = [dict(rule=rule, model="pcn", init=init, T=5, momentum=0.5, energy_norm="pixel", eta_mode="fixed",
                 bu_weight=bu or 1.0, **v) for v in VARIANTS]
    models = [PCN([20, 16, 12, 6], amortised=init == "amortised" or bu > 0, seed=r, bottom_up=bu, prior=init == "prior")
              for r in range(3)]
    x, y = torch.randn(3, 8, 20), torch.randint(0, 10, (3, 8))
    terms = pack_grads(models, x, y, cfgs)
    packed = [{n: p.grad.clone() for n, p in m.named_parameters()} for m in models]
    for r, m in enumerate(models):
        ref = rules.RULES[rule](m, x[r], y[r], cfgs[r])
        for n, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().max() > 0, n
            assert torch.allclose(packed[r][n], p.grad, rtol=1e-5, atol=1e-7), (n, (packed[r][n] - p.grad).abs().max())
        assert ref.keys() <= terms[r].keys()
        for k in ref:
            assert torch.allclose(ref[k].double(), terms[r][k].double(), rtol=1e-5, atol=1e-7, equal_nan=True), k


@pytest.mark.parametrize("options", [{"gram": True}, {"gram": False}, {"reference": True}])
@pytest.mark.parametrize("rule", ["pc", "pc-ep"])
def test_the_batched_inference_path_equals_the_reference(rule, options, monkeypatch):
    """pc and pc-ep run their phases in the hand-batched loop (with and without the Gram form);
    under OPTIONS["reference"] the whole objective is vmapped instead: all equal the rule alone."""
    from pcn.fast import pack
    from pcn.fast.options import OPTIONS

    monkeypatch.setitem(OPTIONS, list(options)[0], list(options.values())[0])
    cfgs = [dict(rule=rule, model="pcn", init="zeros", T=6, momentum=0.4, energy_norm="pixel", eta_mode="fixed",
                 **v) for v in VARIANTS]
    assert pack.fast_applies(cfgs[0]) == (not options.get("reference"))
    models = [PCN([30, 12, 10, 5], seed=r, prior=True) for r in range(3)]
    x, y = torch.randn(3, 16, 30), torch.randint(0, 10, (3, 16))
    pack_grads(models, x, y, cfgs)
    packed = [{n: p.grad.clone() for n, p in m.named_parameters()} for m in models]
    for r, m in enumerate(models):
        rules.RULES[rule](m, x[r], y[r], cfgs[r])
        for n, p in m.named_parameters():
            assert torch.allclose(packed[r][n], p.grad, rtol=1e-4, atol=1e-6), (n, (packed[r][n] - p.grad).abs().max())


@pytest.mark.parametrize("rule,init", CASES)
def test_a_run_in_a_pack_equals_it_alone(rule, init, tmp_path, one_thread):
    """Three runs (differing seed, lr, w, eta, ep_beta) in one pack = each trained by pcn train."""
    extra = dict(rule=rule, init=init, momentum=0.3)
    if rule.startswith("bpc"):
        extra["bu_weight"] = 0.5
    cfgs = [_cfg(**extra, **v) for v in VARIANTS]
    assert len(group(cfgs)) == 1
    outs = [tmp_path / "pack" / f"r{i}" for i in range(3)]
    finals = train_pack(cfgs, outs, device="cpu", log=_quiet)
    assert [f["seed"] for f in finals] == [0, 1, 2]
    for i, c in enumerate(cfgs):
        alone = tmp_path / "alone" / f"r{i}"
        train(c, alone, device="cpu", log=_quiet)
        _close_runs(outs[i], alone)
    # the runs really differ (a pack that trained one run three times would pass the above only by chance)
    assert not torch.allclose(_state(outs[0])["W.0"], _state(outs[1])["W.0"])


def test_ipc_and_baselines_train_in_packs_of_one(tmp_path, one_thread):
    """What cannot be batched falls back to packs of one: exactly pcn train's computation."""
    cfgs = [_cfg(rule="ipc", init="zeros", T=3), _cfg(model="ae")]
    assert why_alone(cfgs[0]) and why_alone(cfgs[1])
    assert group(cfgs + [_cfg(rule="ipc", init="zeros", T=3, seed=1)]) == [[0], [1], [2]]
    outs = [tmp_path / "p0", tmp_path / "p1"]
    train_pack(cfgs, outs, device="cpu", log=_quiet)
    for i, c in enumerate(cfgs):
        train(c, tmp_path / f"a{i}", device="cpu", log=_quiet)
        _close_runs(outs[i], tmp_path / f"a{i}", rtol=0, atol=0)


@pytest.mark.parametrize("rule", ["pc", "bpc-ep"])
def test_safe_steps_are_each_runs_own_in_a_pack(rule, tmp_path, one_thread):
    """eta_mode safe: each run's step from its own weights, per batch, as alone."""
    extra = dict(rule=rule, init="amortised", eta_mode="safe", weight_cap=3.0) | (
        {"bu_weight": 2.0} if rule.startswith("bpc") else {})
    cfgs = [_cfg(**extra, **v) for v in VARIANTS[:2]]
    assert len(group(cfgs)) == 1
    outs = [tmp_path / "pack" / f"r{i}" for i in range(2)]
    train_pack(cfgs, outs, device="cpu", log=_quiet)
    for i, c in enumerate(cfgs):
        train(c, tmp_path / "alone" / f"r{i}", device="cpu", log=_quiet)
        _close_runs(outs[i], tmp_path / "alone" / f"r{i}")


def test_packs_group_by_shape():
    a, b = _cfg(seed=0), _cfg(seed=1, lr=0.01, ce_weight=0.9, eta=0.05)
    assert pack_key(a) == pack_key(b)
    for other in (_cfg(T=5), _cfg(layers=[784, 8, 8]), _cfg(rule="bp"), _cfg(ce_weight=0.0), _cfg(epochs=3)):
        assert pack_key(other) != pack_key(a)
    cfgs = [a, _cfg(T=5), b, _cfg(T=5, seed=3), _cfg(seed=4)]
    assert group(cfgs) == [[0, 2, 4], [1, 3]]
    assert group(cfgs, max_size=2) == [[0, 2], [4], [1, 3]]
    models = [PCN([784, 16, 8], amortised=True, seed=s) for s in range(2)]
    with pytest.raises(ValueError, match="differ in more than"):
        pack_grads(models, torch.zeros(2, 4, 784), torch.zeros(2, 4, dtype=torch.long), [a, _cfg(T=5)])


def test_a_diverged_run_is_frozen_and_the_others_go_on(tmp_path, one_thread):
    """Run 1 diverges (a learning rate of 1e30: its energy overflows after one step); runs 0 and
    2 end as they do alone, and run 1 is recorded as diverged where it diverges alone."""
    cfgs = [_cfg(rule="pc-ep", init="zeros", seed=0), _cfg(rule="pc-ep", init="zeros", seed=1, lr=1e30),
            _cfg(rule="pc-ep", init="zeros", seed=2)]
    outs = [tmp_path / "pack" / f"r{i}" for i in range(3)]
    finals = train_pack(cfgs, outs, device="cpu", log=_quiet)
    assert [f["diverged"] for f in finals] == [False, True, False]
    assert finals[0]["epochs_done"] == finals[2]["epochs_done"] == 2
    alone = [train(cfgs[i], tmp_path / "alone" / f"r{i}", device="cpu", log=_quiet) for i in range(3)]
    for i in (0, 2):
        _close_runs(outs[i], tmp_path / "alone" / f"r{i}")
    for k in ("diverged", "diverged_epoch", "diverged_batch", "epochs_done"):  # its weights are ~1e30
        assert finals[1][k] == alone[1][k], k
    assert finals[1]["diverged_epoch"] == 1 and finals[1]["diverged_batch"] == 1
    assert not (outs[1] / "ckpt.pt").exists() or store.read_checkpoint(outs[1] / "ckpt.pt")["epoch"] < 2


def test_a_killed_pack_resumes_each_run_from_its_checkpoint(tmp_path, monkeypatch, one_thread):
    cfgs = [_cfg(rule="pc", init="zeros", epochs=3, **v) for v in VARIANTS[:2]]
    ref = [tmp_path / "ref" / f"r{i}" for i in range(2)]
    train_pack(cfgs, ref, device="cpu", log=_quiet)
    outs = [tmp_path / "run" / f"r{i}" for i in range(2)]
    monkeypatch.setenv("PCN_FAIL_ONCE_AFTER_EPOCH", "2")
    monkeypatch.setenv("PCN_FAIL_ONCE_MARKER", str(tmp_path / "marker"))
    with pytest.raises(SystemExit):
        train_pack(cfgs, outs, device="cpu", log=_quiet)
    # killed at the first run's epoch-2 checkpoint: run 0 is at epoch 2, run 1 at epoch 1
    assert store.read_checkpoint(outs[0] / "ckpt.pt")["epoch"] == 2
    assert store.read_checkpoint(outs[1] / "ckpt.pt")["epoch"] == 1
    msgs: list[str] = []
    train_pack(cfgs, outs, device="cpu", log=msgs.append)
    assert sum("resuming from" in m for m in msgs) == 2
    # run 1's epoch 2 ran as a pack of one (run 0 had it already): its rounding is pcn train's
    for a, b in zip(outs, ref):
        _close_runs(a, b)


def test_a_refused_run_refuses_the_pack_before_anything_is_written(tmp_path):
    other = tmp_path / "r1"
    train(_cfg(epochs=1, T=2), other, device="cpu", log=_quiet)
    before = sorted(p.name for p in other.iterdir())
    with pytest.raises(RefusedError, match="another config"):
        train_pack([_cfg(), _cfg(seed=1)], [tmp_path / "r0", other], device="cpu", log=_quiet)
    assert not (tmp_path / "r0").exists()
    assert sorted(p.name for p in other.iterdir()) == before
    with pytest.raises(UsageError, match="more than one run"):
        train_pack([_cfg(), _cfg(seed=1)], [tmp_path / "x", tmp_path / "x"], device="cpu", log=_quiet)
    with pytest.raises(UsageError, match="2 configs but 1"):
        train_pack([_cfg(), _cfg(seed=1)], [tmp_path / "x"], device="cpu", log=_quiet)


def test_vary_builds_the_grid_and_names_bad_input():
    assert _vary(["seed=0,1", "ce_weight=0.5"]) == [{"seed": "0", "ce_weight": "0.5"}, {"seed": "1", "ce_weight": "0.5"}]
    for bad in (["seed"], ["seed="], ["=1,2"]):
        with pytest.raises(UsageError, match="KEY=VALUE1"):
            _vary(bad)
    with pytest.raises(UsageError, match="given twice"):
        _vary(["seed=0", "seed=1"])


def test_pcn_pack_cli(tmp_path, capsys):
    from pcn.cli import main

    sets = [f"--set={k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in TINY.items()]
    rc = main(["pack", *sets, f"--set=data_dir={MNIST_DIR}", "--set=epochs=1", "--vary", "seed=0,1",
               "--out-root", str(tmp_path / "grid"), "--device", "cpu", "--threads", "1"])
    assert rc == 0
    for s in (0, 1):
        final = json.loads((tmp_path / "grid" / f"seed={s}" / "final.json").read_text())
        assert final["seed"] == s and final["epochs_done"] == 1
    assert "done: test_acc" in capsys.readouterr().out
    assert main(["pack", "--vary", "seed=0,1", "--device", "cpu"]) == 2
    assert "--out-root" in capsys.readouterr().err


def test_checkpoints_go_to_their_own_folders(tmp_path):
    cfgs = [_cfg(epochs=1, T=2), _cfg(epochs=1, T=2, seed=1)]
    outs, cks = [tmp_path / "o0", tmp_path / "o1"], [tmp_path / "c0", tmp_path / "c1"]
    train_pack(cfgs, outs, device="cpu", log=_quiet, ckpt_dirs=cks)
    for o, c in zip(outs, cks):
        assert (o / "final.json").exists() and not (o / "ckpt.pt").exists()
        assert store.read_checkpoint(c / "ckpt.pt")["epoch"] == 1
    with pytest.raises(UsageError, match="1 --ckpt-dir for 2 runs"):
        train_pack(cfgs, outs, device="cpu", log=_quiet, ckpt_dirs=cks[:1])
