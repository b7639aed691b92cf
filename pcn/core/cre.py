"""Reference model ``cre``: Rathjens & Wiskott's fully connected classification-reconstruction
encoder (CRE), as in their reference code, beside our improved ``ae`` (spec 3 and 7).

``cre_size: medium`` (the reference code's default, "FC Medium"):
    encoder     784 -616-> ReLU -latent-> ReLU       (the latent is ReLU too)
    decoder     latent -616-> ReLU -784-> tanh       (mirrored; pixels live in [-1, 1])
    classifier  latent -12-> ReLU -10                (logits)
``cre_size: small`` (the reference code's "FC Small", one layer per part):
    encoder 784 -latent-> ReLU,  decoder latent -784-> tanh,  classifier latent -10.
784 is MNIST's image size (``n_pixels``; CIFAR-10 runs use 3072, the same parts otherwise).

It is an :class:`~pcn.core.ae.AE` (same three parts, same ``forward`` -> (z, x_hat, logits)),
so it trains with ``ae_grads`` (encoder on (1 - w) MSE + w CE, decoder on MSE alone,
classifier on CE alone) and evaluates, probes and loads like an ``ae``; only the parts differ.
Weights keep PyTorch's default ``nn.Linear`` initialisation, drawn after ``torch.manual_seed(seed)``
in the reference code's order (encoder, decoder, classifier).
"""
from __future__ import annotations

import torch
from torch import nn

from pcn.core.ae import AE, _mlp
from pcn.core.model import N_CLASSES

N_PIXELS = 784
# Hidden layers between the image and the latent (encoder; the decoder mirrors them) and the
# classifier's hidden layers, per size.
CRE_SIZES: dict[str, dict[str, list[int]]] = {
    "small": {"hidden": [], "classifier": []},
    "medium": {"hidden": [616], "classifier": [12]},
}


class CRE(AE):
    def __init__(self, size: str = "medium", latent: int = 32, seed: int = 0, n_pixels: int = N_PIXELS):
        if size not in CRE_SIZES:
            raise ValueError(f"cre_size must be one of {sorted(CRE_SIZES)}, got {size!r}")
        nn.Module.__init__(self)  # the parts are built here, not by AE.__init__
        torch.manual_seed(seed)
        spec = CRE_SIZES[size]
        self.size = size
        self.layers = [n_pixels, *spec["hidden"], latent]
        self.encoder = _mlp(self.layers, "relu", nn.ReLU())
        self.decoder = _mlp(self.layers[::-1], "relu", nn.Tanh())
        self.classifier = _mlp([latent, *spec["classifier"], N_CLASSES], "relu", None)
