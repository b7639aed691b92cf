"""How it is timed: the cases round-robin (run_cases), the peak memory of one step, the
process' peak RSS and the torch.profiler breakdown of the pc and bp cases."""
from __future__ import annotations

import resource
import sys
import time
import weakref
from typing import Callable

import torch

from pcn.bench.cases import Case

# ---- memory -----------------------------------------------------------------------------------

class _LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of tensor storages created inside the mode and still alive."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _free(self, key: int, nbytes: int) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        seen = {t.untyped_storage().data_ptr() for t in torch.utils._pytree.tree_leaves((args, kwargs))
                if isinstance(t, torch.Tensor)}
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key, n = st.data_ptr(), st.nbytes()
            if n == 0 or key in seen or key in self._refs:
                continue
            self._refs[key] = weakref.ref(st, lambda _r, k=key, m=n: self._free(k, m))
            self.live += n
            self.peak = max(self.peak, self.live)
        return out


def peak_step_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak extra bytes alive during one call of ``step``."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from pcn.fast import stacked

    stacked._POOL.clear()              # count the adjoint's stacks as fresh allocations
    with _LiveBytes() as m:
        step()
    return m.peak


def _rss_peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_cases(cases: list[Case], reps: int, warmup: int, device: torch.device, log) -> None:
    for c in cases:                         # warm-up (allocator, MKL, optimizer state)
        for _ in range(warmup * c.per_rep):
            c.step()
    _sync(device)
    for r in range(reps):                   # round-robin: background load hits every case alike
        for c in cases:
            c.step()                        # untimed: the case's caches and allocator warm again,
            _sync(device)                   # as in training, where one model runs batch after batch
            t0 = time.perf_counter()
            for _ in range(c.per_rep):
                c.step()
            _sync(device)
            c.times.append((time.perf_counter() - t0) / c.per_rep)
        log(f"  repetition {r + 1}/{reps} done")


# op groups of the profile (torch.profiler's self CPU time per aten op)
PROFILE_GROUPS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul", "aten::dot"),
    "activation": ("aten::gelu", "aten::gelu_backward", "aten::tanh", "aten::tanh_backward",
                   "aten::threshold_backward", "aten::clamp_min", "aten::exp_", "aten::exp"),
    "optimizer": ("aten::_fused_adam_", "aten::_fused_adamw_", "aten::_foreach_add_"),
    "copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
    "softmax/CE": ("aten::_softmax", "aten::_log_softmax", "aten::nll_loss_forward", "aten::gather"),
    "other elementwise": ("aten::add_", "aten::add", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_",
                          "aten::addcmul_", "aten::addcmul", "aten::neg_", "aten::div_", "aten::sum",
                          "aten::mean", "aten::fill_", "aten::zero_", "aten::linalg_vector_norm"),
}


def profile_cases(cases: list[Case], batches: int) -> dict:
    """Where the time of the pc and bp cases goes: torch.profiler's self CPU time per op,
    summed into PROFILE_GROUPS (the rest: dispatch, views, allocation, small ops), as shares
    of the profiled total.  The profiler adds a few microseconds per op, so small ops are
    over-represented; the shares are a guide, the timed table is the measurement."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for c in cases:
        if c.kind not in ("pc", "bp") or "variant" in c.extra:
            continue
        c.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(batches):
                c.step()
        totals: dict = {g: 0.0 for g in PROFILE_GROUPS}
        totals["rest"] = 0.0
        ops = {}
        for ev in prof.key_averages():
            t = ev.self_cpu_time_total
            ops[ev.key] = ops.get(ev.key, 0.0) + t
            group = next((g for g, names in PROFILE_GROUPS.items() if ev.key in names), "rest")
            totals[group] += t
        total = sum(totals.values()) or 1.0
        top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
        out[c.name] = {"shares": {g: v / total for g, v in totals.items()},
                       "top_ops": {k: v / total for k, v in top},
                       "profiled_us_per_batch": total / batches}
    return out
