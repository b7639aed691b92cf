"""Speed benchmark of pc, bp and inference against a plain PyTorch MLP and the sgemm peak.

All cases are measured in one run on one device (docs/performance.md).

Networks (matrix sizes as PCX's MLP benchmark, Pinchetti et al. 2024):

    ref   layers [784, 128, 128, 128, 10], batch 128, GELU, T = 5 and 20
    wide  layers [784, 1024, 1024, 10],    batch 512, GELU, T = 5 (T = 20 with --full)

Mapping to PCX.  PCX's MLP is a *discriminative* PCN: x (784) is clamped at the source and each
layer predicts the next one up, x -> 128 -> 128 -> 128 -> 10 (label).  Ours is *generative*:
layer l+1 predicts layer l, mu_l = W_l f(z_{l+1}) + b_l, with W_0: 784 x 128, ..., W_3: 128 x 10,
the same four matrices.  Per inference step PCX multiplies by each matrix once forward
(prediction) and by three of them backward (the error back-projection stops at the clamped
input); ours back-projects all four, including the data error through W_0 (784 x 128), since
z_1 is inferred from eps_0.  Nominal matmul work per step is therefore 4 + 4 matrix products
here against 4 + 3 in PCX (68.8 vs 43.0 MFLOP at batch 128).  Our loop does not execute the
nominal count: the Gram form (pcn.fast.stacked, OPTIONS["gram"]) replaces the two per-step
784 x 128 products of the clamped layer by one 128 x 128 product.

FLOP counts (2 per multiply-add, matmuls only; d_l = layers[l], B = batch; "nominal" is the
textbook algorithm, "executed" what this code runs):

    step (nominal)    sum_l 2 * 2 B d_l d_{l+1}          prediction + back-projection, every layer
    step (executed)   as nominal, but layer 0: 2 B d_1^2 (f(z_1) G) under the Gram form
    nudge (pc)        + 2 * 2 B d_L 10 per step          readout logits and CE gradient
    pc                errors at z^0 + T steps + weight update (sum_l 2 B d_l d_{l+1}) + readout
                      (+ Gram setup (x - b_0) W_0, W_0^T W_0 and the final mu_0)
                      (+ amortiser: its forward pass, and its local regression: forward for
                    layers >= 1 (layer 0 reuses the guess) + gradient)
    bp                the T forward steps (no nudge) + their backward pass: nominal 2 products
                      per forward product; executed (adjoint in pcn.fast.adjoint) 4 per layer and
                      step, layer 0 under the Gram form 2 d_1 x d_1 ones; + final loss fwd/bwd
    infer             errors at z^0 + T steps (test mode, no label)
    baseline MLP      forward sum_i 2 B d_i d_{i+1}, backward 2x (no input gradient at layer 0)

Throughput: median over repetitions (after warm-up) of seconds per batch, cases interleaved
round-robin so that background load hits all alike; "epoch" = 60,000 samples.  Peak: torch
sgemm in the same run, a large square product and one of the batch x layer shape.  Memory:
peak bytes of tensors alive during one training step beyond what existed before it (a dispatch
mode that tracks storages; on CUDA torch.cuda.max_memory_allocated), and the process' peak RSS.
"""
# The package:
#   cases    the networks, one Case per timed step, the sgemm peaks and the variants
#   flops    the FLOP counts of each case (the formulas above)
#   timing   round-robin timing, peak memory of a step, the profiler breakdown
#   report   the summary of the timings and the text table
#   pcx      PCX's figures: stored or same-session, the ratios and their lines
#   command  the `pcn bench` options and run
from __future__ import annotations

from pcn.bench.cases import NETS, Case, make_cases, make_peaks  # noqa: F401
from pcn.bench.command import add_arguments, run  # noqa: F401
from pcn.bench.flops import flop_counts  # noqa: F401
from pcn.bench.pcx import PCX_JSON_HELP, PCX_KEYS, PCX_PAST, compare_pcx, format_pcx, read_pcx_json  # noqa: F401
from pcn.bench.report import EPOCH, format_profile, format_reference, format_table, summarise  # noqa: F401
from pcn.bench.timing import PROFILE_GROUPS, peak_step_memory, profile_cases, run_cases  # noqa: F401

__all__ = ["NETS", "Case", "make_cases", "make_peaks", "add_arguments", "run", "flop_counts", "PCX_JSON_HELP",
           "PCX_KEYS", "PCX_PAST", "compare_pcx", "format_pcx", "read_pcx_json", "EPOCH", "format_profile",
           "format_reference", "format_table", "summarise", "PROFILE_GROUPS", "peak_step_memory", "profile_cases",
           "run_cases"]
