"""Which path runs: the fast path where one applies, else the reference (``pcn.core``).

``infer_state`` / ``infer`` have the signature and the result of the reference functions in
``pcn.core.inference``:
  - no grad:   the compiled loop if OPTIONS["compile"] asks for it, else the stacked loop;
  - with grad: the adjoint (``bp``: no label nudge, no callback), else autograd through the
    reference loop (with a one-line note that no fast path applies).
(``pcn.fast.rules.rule`` does the same for the learning rules.)  OPTIONS["reference"] = True (PCN_REFERENCE=1) runs
everything on the reference.
"""
from __future__ import annotations

import sys
from typing import Optional

import torch

from pcn.core import inference as reference
from pcn.core.inference import State, StepCallback
from pcn.core.model import PCN
from pcn.fast import adjoint, compiled
from pcn.fast.options import OPTIONS
from pcn.fast.stacked import stacked_loop

_NOTED: set = set()


def note_reference(what: str) -> None:
    """Say once per process that ``what`` has no fast path and runs on the reference."""
    if what not in _NOTED and not OPTIONS.get("reference"):
        _NOTED.add(what)
        print(f"pcn: {what}: no fast path; running the reference implementation (pcn.core)",
              file=sys.stderr, flush=True)


def unsupported(model: PCN, beta: float) -> str | None:
    """What of an inference no fast path covers (None if they all apply): the bottom-up energy
    (``bpc``) and conv layers (``arch: conv``).  A negative nudge (the opposite phase of ``pc-ep``) runs on the stacked loop."""
    if getattr(model, "bottom_up", 0.0) > 0:
        return "inference with a bottom-up energy (bpc)"
    if getattr(model, "is_conv", False):
        return "inference of a conv PCN (arch conv)"
    return None


def infer_state(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
                y: Optional[torch.Tensor] = None, beta: float = 0.0, momentum: float = 0.0,
                callback: Optional[StepCallback] = None) -> State:
    """``pcn.core.inference.infer_state`` on the fastest path that applies."""
    if OPTIONS.get("reference"):
        return reference.infer_state(model, x, z0, T, eta, y, beta, momentum, callback)
    why = unsupported(model, beta)
    if why:
        note_reference(why)
        return reference.infer_state(model, x, z0, T, eta, y, beta, momentum, callback)
    if torch.is_grad_enabled():
        if adjoint.applies(model, x, T, y, beta, callback):
            return adjoint.infer_state(model, x, z0, T, eta, momentum)
        if OPTIONS.get("adjoint", True):
            note_reference("differentiable inference with a label nudge or a callback")
        return reference.infer_state(model, x, z0, T, eta, y, beta, momentum, callback)
    if callback is None and compiled.wanted(x):
        fn = compiled.compiled()
        if fn is not None:
            try:
                return compiled.run(fn, model, x, z0, T, eta, y, beta, momentum)
            except Exception as e:  # noqa: BLE001 - any compiler failure: fall back to eager
                compiled.disable(e)
    return stacked_loop(model, x, z0, T, eta, y, beta, momentum, callback)[0]


def infer(model: PCN, x: torch.Tensor, z0: list[torch.Tensor], T: int, eta: float,
          y: Optional[torch.Tensor] = None, beta: float = 0.0, momentum: float = 0.0,
          callback: Optional[StepCallback] = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``infer_state`` returning only (z^T, eps(z^T))."""
    s = infer_state(model, x, z0, T, eta, y, beta, momentum, callback)
    return s.z, s.eps
