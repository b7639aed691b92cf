"""The hierarchical generative PCN (spec section 2): parameters only, no training logic.

Layers l = 0..L; z_0 = x is clamped, z_1..z_L are latents.  Layer l+1 predicts layer l:

    mu_l = W_l f(z_{l+1}) + b_l,     W_l: (d_l, d_{l+1}),   l = 0..L-1

A linear readout classifies from the top latent itself: logits = C z_L + c.
An optional amortiser (used by ``init: amortised``) maps bottom-up
z_{l+1}^0 = V_l g_l(z_l^0) + a_l with g_0 = identity (the data) and g_l = f above.
With ``bottom_up`` = alpha > 0 (rule ``bpc``) the same V_l, a_l are also part of the energy:
alpha/2 ||z_{l+1} - V_l g_l(z_l) - a_l||^2 per layer (``pcn.core.energy``).

Convolutional layers (``arch: conv``, ``ConvSpec``).  The bottom k latents may be feature maps
z_l of shape (c_l, h_l, w_l), stored flat (row-major, channel first, as the images are), so
every other part of the core sees vectors of d_l = c_l h_l w_l values.  Between two maps the
linear operator W_l is a transposed convolution and its adjoint W_l^T a convolution with the
same kernel (c_{l+1}, c_l, k, k), stride s and padding p:

    mu_l = conv_transpose(f(z_{l+1}); W_l, s, p) + b_l      (b_l: one bias per channel of l)
    W_l^T e = conv(e; W_l, s, p),    V_l g = conv(g; V_l, s, p) + a_l,    V_l^T d = conv_transpose(d; V_l)

with h_{l+1} = floor((h_l + 2p - k) / s) + 1 and the transposed convolution's output padding
chosen to give back h_l exactly.  Dense layers may sit above the maps.  The energy, inference
and rules only call the four layer operations below (``predict``, ``back``, ``bu_predict``,
``bu_back``), so a conv layer is one more layer type, not a second copy of the algorithm.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pcn.core import activations

N_CLASSES = 10


def _uniform(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> nn.Parameter:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) initialisation (PyTorch's Linear default scale)."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter((torch.rand(shape, generator=gen) * 2 - 1) * bound)


class ConvLayer(NamedTuple):
    """The geometry of one conv link between map l (``below``) and map l+1 (``above``)."""
    below: tuple[int, int, int]
    above: tuple[int, int, int]
    kernel: int
    stride: int
    padding: int
    output_padding: int


class ConvSpec(NamedTuple):
    """The conv maps of ``arch: conv``: the input's (c, h, w) and, per map above it, its channels,
    kernel size, stride and padding (lists of equal length)."""
    in_shape: tuple[int, int, int]
    channels: Sequence[int]
    kernels: Sequence[int]
    strides: Sequence[int]
    padding: Sequence[int]


def conv_geometry(spec: ConvSpec) -> list[ConvLayer]:
    """The conv links of ``spec``, bottom first; ValueError (naming the layer and its sizes) where
    a kernel does not fit its map or the lists differ in length."""
    n = len(spec.channels)
    for key, vals in (("kernels", spec.kernels), ("strides", spec.strides), ("padding", spec.padding)):
        if len(vals) != n:
            raise ValueError(f"{key} has {len(vals)} entries but conv_channels has {n}: give one per conv layer")
    links, (c, h, w) = [], tuple(spec.in_shape)
    for i, (co, k, st, p) in enumerate(zip(spec.channels, spec.kernels, spec.strides, spec.padding)):
        if k < 1 or st < 1 or p < 0 or co < 1:
            raise ValueError(f"conv layer {i + 1}: channels {co}, kernel {k}, stride {st}, padding {p}: "
                             f"needs channels, kernel and stride >= 1 and padding >= 0")
        if p >= k:
            raise ValueError(f"conv layer {i + 1}: padding {p} must be smaller than the kernel {k}")
        ho, wo = (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1
        if ho < 1 or wo < 1 or h + 2 * p < k or w + 2 * p < k:
            raise ValueError(f"conv layer {i + 1}: kernel {k} with padding {p} does not fit the {h} x {w} map below it")
        op = h - ((ho - 1) * st - 2 * p + k)
        if op != w - ((wo - 1) * st - 2 * p + k):
            raise ValueError(f"conv layer {i + 1}: non-square output padding for a {h} x {w} map")
        links.append(ConvLayer((c, h, w), (co, ho, wo), k, st, p, op))
        c, h, w = co, ho, wo
    return links


class PCN(nn.Module):
    """Parameters of a generative PCN with layer sizes ``layers`` = [d_0, ..., d_L] (dense), or,
    with ``conv``, conv maps above the input and then the dense sizes ``layers[1:]`` on top
    (``layers[0]`` is the input's size c h w)."""

    def __init__(self, layers: list[int], activation: str = "tanh", prior: bool = False,
                 amortised: bool = False, seed: int = 0, bottom_up: float = 0.0,
                 conv: Optional[ConvSpec] = None):
        super().__init__()
        self.conv: list[Optional[ConvLayer]] = []
        if conv is not None:
            c, h, w = conv.in_shape
            if c * h * w != layers[0]:
                raise ValueError(f"conv input shape {tuple(conv.in_shape)} has {c * h * w} values, layers[0] is {layers[0]}")
            self.conv = conv_geometry(conv)
            layers = [layers[0]] + [math.prod(g.above) for g in self.conv] + list(layers[1:])
        self.conv += [None] * (len(layers) - 1 - len(self.conv))
        self.layers = list(layers)
        self.activation = activation
        self.f, self.df = activations.get(activation)
        self.has_prior = prior
        if bottom_up < 0 or (bottom_up > 0 and not amortised):
            raise ValueError(f"bottom_up {bottom_up}: needs bottom_up >= 0, and bottom-up weights (amortised=True) when > 0")
        self.bottom_up = float(bottom_up)
        gen = torch.Generator().manual_seed(seed)
        L = len(layers) - 1
        # Xavier-like scale for the generative weights: fan_in = d_{l+1} (dense); for a conv
        # link the inputs of one output unit, c_{l+1} ceil(k / s)^2.
        self.W = nn.ParameterList([self._weight(l, gen) for l in range(L)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(self._units(l))) for l in range(L)])
        self.prior_mean = nn.Parameter(torch.zeros(layers[L])) if prior else None
        self.C = _uniform((N_CLASSES, layers[L]), layers[L], gen)
        self.c = nn.Parameter(torch.zeros(N_CLASSES))
        if amortised:
            self.V = nn.ParameterList([self._weight(l, gen, bottom_up=True) for l in range(L)])
            self.a = nn.ParameterList([nn.Parameter(torch.zeros(self._units(l + 1, below=l)))
                                       for l in range(L)])
        else:
            self.V = self.a = None

    def _units(self, l: int, below: Optional[int] = None) -> int:
        """Bias size of layer l: d_l, or its channels where l is a conv map (as the top of link
        ``below`` or the bottom of link l)."""
        g = self.conv[below] if below is not None else (self.conv[l] if l < len(self.conv) else None)
        if g is None:
            return self.layers[l]
        return (g.above if below is not None else g.below)[0]

    def _weight(self, l: int, gen: torch.Generator, bottom_up: bool = False) -> nn.Parameter:
        """W_l (d_l, d_{l+1}) or V_l (d_{l+1}, d_l); a conv kernel (c_{l+1}, c_l, k, k) for both."""
        g, d = self.conv[l], self.layers
        if g is not None:
            fan = (g.below[0] * g.kernel ** 2) if bottom_up else g.above[0] * math.ceil(g.kernel / g.stride) ** 2
            return _uniform((g.above[0], g.below[0], g.kernel, g.kernel), fan, gen)
        if bottom_up:
            return _uniform((d[l + 1], d[l]), d[l], gen)
        return _uniform((d[l], d[l + 1]), d[l + 1], gen)

    @property
    def is_conv(self) -> bool:
        """Whether any link is a convolution."""
        return any(g is not None for g in self.conv)

    # The four layer operations: all of the core reaches the weights W, b, V, a through them.
    def predict(self, l: int, fz: torch.Tensor) -> torch.Tensor:
        """mu_l = W_l f(z_{l+1}) + b_l from fz = f(z_{l+1}), (B, d_{l+1}) -> (B, d_l)."""
        g = self.conv[l]
        if g is None:
            return torch.addmm(self.b[l], fz, self.W[l].t())
        out = F.conv_transpose2d(fz.reshape(-1, *g.above), self.W[l], self.b[l], g.stride, g.padding, g.output_padding)
        return out.flatten(1)

    def back(self, l: int, e: torch.Tensor) -> torch.Tensor:
        """W_l^T e, (B, d_l) -> (B, d_{l+1}): the adjoint of ``predict``'s linear part."""
        g = self.conv[l]
        if g is None:
            return e @ self.W[l]
        return F.conv2d(e.reshape(-1, *g.below), self.W[l], None, g.stride, g.padding).flatten(1)

    def bu_predict(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """V_l h + a_l, (B, d_l) -> (B, d_{l+1}) (h = g_l(z_l))."""
        g = self.conv[l]
        if g is None:
            return torch.addmm(self.a[l], h, self.V[l].t())
        return F.conv2d(h.reshape(-1, *g.below), self.V[l], self.a[l], g.stride, g.padding).flatten(1)

    def bu_back(self, l: int, d: torch.Tensor) -> torch.Tensor:
        """V_l^T d, (B, d_{l+1}) -> (B, d_l): the adjoint of ``bu_predict``'s linear part."""
        g = self.conv[l]
        if g is None:
            return d @ self.V[l]
        return F.conv_transpose2d(d.reshape(-1, *g.above), self.V[l], None, g.stride, g.padding,
                                  g.output_padding).flatten(1)

    @property
    def L(self) -> int:
        """Number of latent layers."""
        return len(self.layers) - 1

    def generative_parameters(self) -> list[nn.Parameter]:
        """theta of the energy: W_l, b_l (and the prior mean)."""
        ps = list(self.W) + list(self.b)
        return ps + ([self.prior_mean] if self.prior_mean is not None else [])

    def readout(self, zL: torch.Tensor) -> torch.Tensor:
        """logits = C z_L + c."""
        return torch.addmm(self.c, zL, self.C.t())

    def amortise(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Bottom-up guess z_{l+1}^0 = V_l g_l(z_l^0) + a_l (g_0 = identity, g_l = f)."""
        z, h = [], x
        for l in range(self.L):
            h = self.bu_predict(l, h if l == 0 else self.f(h))
            z.append(h)
        return z

    def generate(self, zL: torch.Tensor) -> torch.Tensor:
        """Pure top-down pass x_hat = mu_0(mu_1(...mu_{L-1}(z_L)))."""
        h = zL
        for l in reversed(range(self.L)):
            h = self.predict(l, self.f(h))
        return h
