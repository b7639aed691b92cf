"""The hierarchical generative PCN (spec section 2): parameters only, no training logic.

Layers l = 0..L; z_0 = x is clamped, z_1..z_L are latents.  Layer l+1 predicts layer l:

    mu_l = W_l f(z_{l+1}) + b_l,     W_l: (d_l, d_{l+1}),   l = 0..L-1

A linear readout classifies from the top latent itself: logits = C z_L + c.
An optional amortiser (used by ``init: amortised``) maps bottom-up
z_{l+1}^0 = V_l g_l(z_l^0) + a_l with g_0 = identity (the data) and g_l = f above.
With ``bottom_up`` = alpha > 0 (rule ``bpc``) the same V_l, a_l are also part of the energy:
alpha/2 ||z_{l+1} - V_l g_l(z_l) - a_l||^2 per layer (``pcn.core.energy``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pcn.core import activations

N_CLASSES = 10


def _uniform(shape: tuple[int, ...], fan_in: int, gen: torch.Generator) -> nn.Parameter:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) initialisation (PyTorch's Linear default scale)."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter((torch.rand(shape, generator=gen) * 2 - 1) * bound)


class PCN(nn.Module):
    """Parameters of a generative PCN with layer sizes ``layers`` = [d_0, ..., d_L]."""

    def __init__(self, layers: list[int], activation: str = "tanh", prior: bool = False,
                 amortised: bool = False, seed: int = 0, bottom_up: float = 0.0):
        super().__init__()
        self.layers = list(layers)
        self.activation = activation
        self.f, self.df = activations.get(activation)
        self.has_prior = prior
        if bottom_up < 0 or (bottom_up > 0 and not amortised):
            raise ValueError(f"bottom_up {bottom_up}: needs bottom_up >= 0, and bottom-up weights (amortised=True) when > 0")
        self.bottom_up = float(bottom_up)
        gen = torch.Generator().manual_seed(seed)
        L = len(layers) - 1
        # Xavier-like scale for the generative weights: fan_in = d_{l+1}.
        self.W = nn.ParameterList([_uniform((layers[l], layers[l + 1]), layers[l + 1], gen) for l in range(L)])
        self.b = nn.ParameterList([nn.Parameter(torch.zeros(layers[l])) for l in range(L)])
        self.prior_mean = nn.Parameter(torch.zeros(layers[L])) if prior else None
        self.C = _uniform((N_CLASSES, layers[L]), layers[L], gen)
        self.c = nn.Parameter(torch.zeros(N_CLASSES))
        if amortised:
            self.V = nn.ParameterList([_uniform((layers[l + 1], layers[l]), layers[l], gen) for l in range(L)])
            self.a = nn.ParameterList([nn.Parameter(torch.zeros(layers[l + 1])) for l in range(L)])
        else:
            self.V = self.a = None

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
            h = torch.addmm(self.a[l], h if l == 0 else self.f(h), self.V[l].t())
            z.append(h)
        return z

    def generate(self, zL: torch.Tensor) -> torch.Tensor:
        """Pure top-down pass x_hat = mu_0(mu_1(...mu_{L-1}(z_L)))."""
        h = zL
        for l in reversed(range(self.L)):
            h = torch.addmm(self.b[l], self.f(h), self.W[l].t())
        return h
