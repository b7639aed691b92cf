"""Matmul FLOP counts of one batch of each case, nominal and executed (the formulas: the
docstring of ``pcn.bench``)."""
from __future__ import annotations


def _mm(B: int, a: int, b: int) -> int:
    return 2 * B * a * b


def flop_counts(kind: str, layers: list[int], B: int, T: int, gram: bool, amortised: bool,
                nudge: bool, n_classes: int = 10) -> tuple[int, int]:
    """(nominal, executed) matmul FLOPs of one batch of ``kind`` (see the module docstring)."""
    L = len(layers) - 1
    d = layers
    pred = [_mm(B, d[l], d[l + 1]) for l in range(L)]
    if kind == "baseline":
        fwd = sum(pred)
        return 3 * fwd - pred[0], 3 * fwd - pred[0]
    step_nom = 2 * sum(pred)
    step_exe = step_nom - (2 * pred[0] - _mm(B, d[1], d[1]) if gram else 0)
    readout = _mm(B, d[L], n_classes)
    setup_exe = (pred[0] + 2 * d[0] * d[1] * d[1] + pred[0]) if gram else 0   # c0, G, final mu_0
    init_nom = sum(pred)                          # errors at z^0
    init_exe = sum(pred) - (pred[0] if gram else 0)
    amort = sum(_mm(B, d[l], d[l + 1]) for l in range(L)) if amortised else 0
    if kind == "infer":
        return init_nom + T * step_nom + amort, init_exe + T * step_exe + setup_exe + amort
    if kind == "pc":
        per_step_nudge = 2 * readout if nudge else 0
        tail = sum(pred) + 2 * readout            # weight update, readout logits + its gradient
        # amortiser: the initial guess, and its local regression (forward again, except layer 0
        # whose guess is reused, + gradient)
        am = 3 * amort - (pred[0] if amortised else 0)
        nom = init_nom + T * (step_nom + per_step_nudge) + tail + am
        exe = init_exe + T * (step_exe + per_step_nudge) + setup_exe + tail + am
        return nom, exe
    if kind in ("bp", "bp_autograd"):
        final = 3 * sum(pred) + 4 * readout       # final errors + their backward, CE and probe
        amort_bp = 3 * amort - (_mm(B, d[0], d[1]) if amortised else 0)
        nom = 3 * (init_nom + T * step_nom) + final + amort_bp
        if kind == "bp_autograd":                 # autograd's graph: 2 backward products per product
            return nom, 3 * (init_exe + T * step_exe + setup_exe) + final + amort_bp
        if gram:
            bwd_step = 4 * sum(pred[1:]) + 2 * _mm(B, d[1], d[1])
            bwd_tail = _mm(d[0], d[1], d[1]) + _mm(B, d[0], d[1]) + 2 * d[0] * d[1] * d[1]
        else:
            bwd_step, bwd_tail = 4 * sum(pred), 0
        exe = (init_exe + T * step_exe + setup_exe) + T * bwd_step + bwd_tail + final + amort_bp
        return nom, exe
    raise ValueError(kind)
