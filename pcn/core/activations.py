"""Activations f and their derivatives f', written out so inference needs no autograd."""
from __future__ import annotations

import math
from typing import Callable

import torch

Fn = Callable[[torch.Tensor], torch.Tensor]

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _tanh_prime(z: torch.Tensor) -> torch.Tensor:
    """f'(z) = 1 - tanh(z)^2."""
    t = torch.tanh(z)
    return 1.0 - t * t


def _relu_prime(z: torch.Tensor) -> torch.Tensor:
    """f'(z) = 1[z > 0]."""
    return (z > 0).to(z.dtype)


def _gelu(z: torch.Tensor) -> torch.Tensor:
    """Exact GELU, f(z) = z Phi(z)."""
    return torch.nn.functional.gelu(z)


def _gelu_prime(z: torch.Tensor) -> torch.Tensor:
    """f'(z) = Phi(z) + z phi(z)."""
    cdf = 0.5 * (1.0 + torch.erf(z * _SQRT1_2))
    pdf = torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return cdf + z * pdf


def _identity(z: torch.Tensor) -> torch.Tensor:
    return z


def _ones(z: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(z)


ACTIVATIONS: dict[str, tuple[Fn, Fn]] = {
    "tanh": (torch.tanh, _tanh_prime),
    "relu": (torch.relu, _relu_prime),
    "gelu": (_gelu, _gelu_prime),
    "linear": (_identity, _ones),
}


def get(name: str) -> tuple[Fn, Fn]:
    """Return (f, f') for an activation name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(ACTIVATIONS)}") from None
