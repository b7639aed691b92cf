"""Inference under corrupted inputs (issue 23 item 3): does iterative inference beat its own
first guess when the image it sees is damaged?

Each test image x (on the [-1, 1] pixel scale, d pixels) is corrupted into x~, and the run's
test-mode inference (x~ clamped, no label, the run's init, eta and momentum) starts from
z^0 = init(x~) and runs 10 T steps (T = the training T).  At steps 0, T and 10 T the table
records, against the CLEAN image x (the model is never shown it):

  acc        readout accuracy argmax(C z_L^t + c) == y (a non-finite readout counts as wrong);
  gen_mse    mean over images and pixels of (generate(z_L^t) - x)^2, the top-down image of the
             inferred top latent against the clean image;
  recon_mse  mean of (mu_0^t - x)^2, the model's prediction of the data layer (mu_0 = x~ - eps_0)
             against the clean image;
and once per corruption, at step 0, ``input_mse`` = mean (x~ - x)^2, the size of the corruption.

Corruptions (``CORRUPTIONS``: name, level), all drawn from one seeded generator per corruption
on the CPU (ROBUSTNESS_SEED + its position), so every run sees the same corrupted images:

  none      level 0: x~ = x (the reference; its step-0 and step-T rows are the trace's);
  noise     level sigma in {0.25, 0.5, 1.0}: x~ = x + sigma n, n ~ N(0, I) per pixel, NOT clipped
            (clipping to [-1, 1] would shrink the noise on the saturated background and give it
            a non-zero mean, so the noise would not be what its name says);
  pixels    level f in {0.25, 0.5}: in every image its own random round(f d) pixels (chosen
            uniformly without replacement) are set to OCCLUDED = 0;
  half      level 0.5: the bottom half (the last d - d // 2 pixels; rows 14-27 of 28 x 28; rows
            16-31 of each plane of CIFAR-10's 32 x 32 x 3; the part that clamp's completion hides) is set to OCCLUDED = 0.
OCCLUDED = 0 is the middle of the [-1, 1] scale (mid-grey): neither ink (+1) nor background
(-1).  Unlike clamp's completion, the model is not told which pixels are missing: the
occluded pixels stay clamped at 0 and enter the energy like any other pixel.
"""
from __future__ import annotations

from typing import Callable

import pandas as pd
import torch

from pcn.core.inference import init_latents
from pcn.core.model import PCN
from pcn.core.stepsize import inference_eta
from pcn.fast.dispatch import infer
from pcn.images import half_planes

COLUMNS = ["corruption", "level", "step", "metric", "value"]
METRICS = ("acc", "gen_mse", "recon_mse")
#: (corruption, level) in table order; see the module docstring.
CORRUPTIONS: tuple[tuple[str, float], ...] = (
    ("none", 0.0), ("noise", 0.25), ("noise", 0.5), ("noise", 1.0),
    ("pixels", 0.25), ("pixels", 0.5), ("half", 0.5),
)
OCCLUDED = 0.0          # the value an occluded pixel is set to (mid-grey on the [-1, 1] scale)
ROBUSTNESS_SEED = 2023  # seed of the corruptions (+ the corruption's position in CORRUPTIONS)


# ----------------------------------------------------------------------------- corruptions

def gaussian_noise(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """x + sigma n, n ~ N(0, I) drawn on the CPU from ``gen`` (unclipped)."""
    n = torch.randn(x.shape, generator=gen, dtype=torch.float32)
    return x + sigma * n.to(device=x.device, dtype=x.dtype)


def random_pixel_mask(n: int, d: int, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """Boolean (n, d) mask with exactly round(fraction d) True entries per row, at positions
    drawn uniformly without replacement (a random permutation per row, from ``gen``)."""
    k = int(round(fraction * d))
    order = torch.rand(n, d, generator=gen).argsort(dim=1)
    mask = torch.zeros(n, d, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    return mask


def occlude_pixels(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """x with round(fraction d) random pixels of each image set to OCCLUDED."""
    mask = random_pixel_mask(x.shape[0], x.shape[1], fraction, gen).to(x.device)
    return x.masked_fill(mask, OCCLUDED)


def bottom_half_mask(d: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean (d,) mask of the bottom half of a row-major image: grey pixels d // 2 .. d - 1,
    colour rows 16-31 of every plane (the complement of pcn.study.clamp.top_half_mask)."""
    c, per = half_planes(d)
    mask = torch.zeros(c, per, dtype=torch.bool, device=device)
    mask[:, per // 2:] = True
    return mask.reshape(d)


def occlude_half(x: torch.Tensor) -> torch.Tensor:
    """x with its bottom half (``bottom_half_mask``) set to OCCLUDED."""
    return x.masked_fill(bottom_half_mask(x.shape[1], x.device), OCCLUDED)


def corrupt(x: torch.Tensor, corruption: str, level: float, seed: int = ROBUSTNESS_SEED) -> torch.Tensor:
    """x~ for one (corruption, level) of the module docstring, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    if corruption == "none":
        return x.clone()
    if corruption == "noise":
        return gaussian_noise(x, level, gen)
    if corruption == "pixels":
        return occlude_pixels(x, level, gen)
    if corruption == "half":
        return occlude_half(x)
    raise ValueError(f"unknown corruption {corruption!r}; allowed: none, noise, pixels, half")


# ----------------------------------------------------------------------------- inference

class CleanRecorder:
    """Callback for ``infer``: at the recorded steps, sums of the correct readouts and of the
    squared errors of generate(z_L) and of mu_0 against the clean images (module docstring)."""

    def __init__(self, model: PCN, steps: list[int]):
        self.model, self.steps = model, set(steps)
        self.sums: dict[tuple[int, str], float] = {}
        self.n = 0
        self.clean = self.seen = self.y = None

    def batch(self, clean: torch.Tensor, seen: torch.Tensor, y: torch.Tensor) -> "CleanRecorder":
        """Set the batch: the clean images, the corrupted ones inference sees, the labels."""
        self.clean, self.seen, self.y = clean, seen, y
        self.n += len(y)
        return self

    def _add(self, t: int, metric: str, value: torch.Tensor) -> None:
        self.sums[(t, metric)] = self.sums.get((t, metric), 0.0) + float(value)

    def __call__(self, t: int, z: list, eps: list, dz: list | None) -> None:
        if t not in self.steps:
            return
        m, d = self.model, self.clean.shape[1]
        logits = m.readout(z[-1])
        right = (logits.argmax(1) == self.y) & torch.isfinite(logits).all(1)
        self._add(t, "acc", right.sum())
        self._add(t, "gen_mse", ((m.generate(z[-1]) - self.clean) ** 2).sum() / d)
        self._add(t, "recon_mse", (((self.seen - eps[0]) - self.clean) ** 2).sum() / d)

    def means(self) -> dict[tuple[int, str], float]:
        """{(step, metric): mean over the images}."""
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


def robustness_steps(T_train: int) -> list[int]:
    """Recorded steps: 0, T and 10 T (T = the training T, at least 1)."""
    T = max(int(T_train), 1)
    return sorted({0, T, 10 * T})


@torch.no_grad()
def corrupted_inference(model: PCN, x: torch.Tensor, xc: torch.Tensor, y: torch.Tensor, cfg: dict,
                        steps: list[int], batch: int = 1000) -> dict[tuple[int, str], float]:
    """Test-mode inference from the corrupted images ``xc`` (clamped), scored against the clean
    ``x`` at ``steps``: {(step, metric): mean}."""
    rec, eta = CleanRecorder(model, steps), inference_eta(model, cfg)
    for i in range(0, len(y), batch):
        xb, cb, yb = x[i:i + batch], xc[i:i + batch], y[i:i + batch]
        infer(model, cb, init_latents(model, cb, cfg["init"]), max(steps), eta, momentum=cfg["momentum"],
              callback=rec.batch(xb, cb, yb))
    return rec.means()


def robustness_table(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: dict, batch: int = 1000,
                     corruptions: tuple[tuple[str, float], ...] = CORRUPTIONS,
                     log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """The robustness table (COLUMNS): for every corruption, acc / gen_mse / recon_mse at steps
    0, T, 10 T and input_mse at step 0.  Empty (same columns) for a model without inference."""
    if not isinstance(model, PCN):
        return pd.DataFrame(columns=COLUMNS)
    steps, rows = robustness_steps(cfg["T"]), []
    for i, (name, level) in enumerate(corruptions):
        xc = corrupt(x, name, level, ROBUSTNESS_SEED + i)
        rows.append(dict(corruption=name, level=float(level), step=0, metric="input_mse",
                         value=float(((xc - x) ** 2).mean())))
        means = corrupted_inference(model, x, xc, y, cfg, steps, batch)
        rows += [dict(corruption=name, level=float(level), step=t, metric=m, value=means[(t, m)])
                 for t in steps for m in METRICS]
        if log:
            log(f"robustness {name} {level:g}: acc {means[(0, 'acc')]:.3f} (step 0) -> "
                f"{means[(steps[-1], 'acc')]:.3f} (step {steps[-1]})")
    return pd.DataFrame(rows, columns=COLUMNS)

