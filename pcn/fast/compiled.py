"""Optional torch.compile of the no-grad inference loop (OPTIONS["compile"]): compiles the
reference loop (``pcn.core.inference.infer_state``) for the compiler to fuse; on CUDA it
replays as CUDA graphs.  Any compiler failure falls back to eager with a warning.
"""
from __future__ import annotations

import warnings

import torch

from pcn.core import inference as reference
from pcn.core.inference import State
from pcn.core.model import PCN
from pcn.fast.options import OPTIONS

_COMPILED: dict = {}


def wanted(x: torch.Tensor) -> bool:
    opt = OPTIONS.get("compile", False)
    if opt == "auto":
        return x.is_cuda
    return bool(opt) and _COMPILED.get("fn", True) is not None


def compiled():
    """The compiled loop (built once), or None where torch.compile is unavailable."""
    if "fn" not in _COMPILED:
        try:
            _COMPILED["fn"] = torch.compile(_functional_loop, dynamic=False)
            _COMPILED["cuda"] = torch.compile(_functional_loop, dynamic=False, mode="reduce-overhead")
        except Exception as e:  # noqa: BLE001
            disable(e)
    return _COMPILED.get("fn")


def run(fn, model: PCN, x: torch.Tensor, z0: list, T: int, eta: float, y, beta: float,
        momentum: float) -> State:
    """On CUDA the compiled loop replays as CUDA graphs ("reduce-overhead"), whose outputs
    live in graph-owned memory that the next replay overwrites: hand back copies."""
    if not x.is_cuda:
        return fn(model, x, z0, T, eta, y, beta, momentum)
    torch.compiler.cudagraph_mark_step_begin()
    s = _COMPILED["cuda"](model, x, z0, T, eta, y, beta, momentum)
    return State(*([t.clone() for t in part] for part in s))


def disable(err: Exception) -> None:
    warnings.warn(f"pcn.fast.compiled: torch.compile unavailable ({type(err).__name__}: {err}); using eager",
                  RuntimeWarning, stacklevel=3)
    OPTIONS["compile"] = False
    _COMPILED["fn"] = None


def _functional_loop(model: PCN, x: torch.Tensor, z0: list, T: int, eta: float, y, beta: float,
                     momentum: float) -> State:
    """The reference loop without autograd, for the compiler to fuse (no callback)."""
    with torch.no_grad():
        return reference.infer_state(model, x, z0, T, eta, y, beta, momentum)
