"""Speed switches of the fast paths.  None changes the mathematics, only the rounding;
environment variables PCN_GRAM, PCN_ADJOINT, PCN_BP_MEMORY, PCN_COMPILE override the defaults.

``gram``  The data layer is clamped, so its back-projection needs no per-step pass over
          the d_0-wide data:  eps_0 W_0 = (x - b_0) W_0 - f(z_1) (W_0^T W_0).  With
          c_0 = (x - b_0) W_0 and G = W_0^T W_0 formed once per call, a step costs a
          d_1 x d_1 product for layer 0 instead of two d_0 x d_1 ones, and mu_0, eps_0 are
          formed only at the end (or when a callback asks for them).  ``"auto"`` (default)
          uses it when it saves multiply-adds (``pcn.fast.stacked.use_gram``); True/False force it.
``adjoint``  bp's backward pass by the hand-written adjoint (default True, ``pcn.fast.adjoint``)
          rather than autograd through the reference loop.
``bp_memory``  "fast" (default): the adjoint keeps f(z^t), eps^t, f'(z^t), f''(z^t) * back^t
          per step; "lean": it keeps z^t only and recomputes the rest in the backward pass
          (about a quarter of the memory for one more forward step per backward step).
``compile``  torch.compile the no-grad T-step loop: False (default), True, or "auto" = only
          on CUDA, where the compiled loop replays as CUDA graphs.  Falls back to eager if
          compiling fails.  Off by default: on CPU the 3-11 % it saves against the stacked
          eager loop does not repay a compile per (batch shape, T) (docs/performance.md); on
          GPU it is unmeasured.  (It compiles the reference loop.)
``reference``  run everything on the reference implementation (``pcn.core``): for checking
          and for timing the fast paths against it (``pcn bench --reference``).
"""
from __future__ import annotations

import os

OPTIONS: dict = {"gram": "auto", "adjoint": True, "bp_memory": "fast", "compile": False, "reference": False}


def _env_options() -> None:
    """PCN_GRAM=auto|0|1, PCN_ADJOINT=0|1, PCN_REFERENCE=0|1, PCN_BP_MEMORY=fast|lean, PCN_COMPILE=0|1|auto
    override the defaults."""
    mem = os.environ.get("PCN_BP_MEMORY", "").strip().lower()
    if mem:
        if mem not in ("fast", "lean"):
            raise ValueError(f"PCN_BP_MEMORY={mem!r}: expected fast or lean")
        OPTIONS["bp_memory"] = mem
    names = {"PCN_GRAM": "gram", "PCN_ADJOINT": "adjoint", "PCN_COMPILE": "compile", "PCN_REFERENCE": "reference"}
    for env, key in names.items():
        v = os.environ.get(env)
        if v is None or v == "":
            continue
        v = v.strip().lower()
        if v == "auto" and key in ("gram", "compile"):
            OPTIONS[key] = "auto"
        elif v in ("1", "true", "yes", "on"):
            OPTIONS[key] = True
        elif v in ("0", "false", "no", "off"):
            OPTIONS[key] = False
        else:
            raise ValueError(f"{env}={v!r}: expected 0, 1" + (" or auto" if key in ("gram", "compile") else ""))


_env_options()
