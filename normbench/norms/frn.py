"""Filter Response Normalization and the Thresholded Linear Unit (Singh & Krishnan, CVPR 2020).

FRN: nu2 = mean over (H, W) of x^2 per sample and channel (no mean subtraction),
y = gamma * x / sqrt(nu2 + eps) + beta. TLU: z = max(y, tau) with a learned per-channel tau.
FRN + TLU replaces a norm + ReLU pair; where a block adds a residual after its last norm, use
FRN without TLU there and a standalone :class:`TLU` after the addition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _per_channel(p: torch.Tensor) -> torch.Tensor:
    """Shape a (C,) parameter to broadcast over (N, C, H, W)."""
    return p.view(1, -1, 1, 1)


class TLU(nn.Module):
    """Thresholded linear unit max(x, tau), tau learned per channel (initialised to 0)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.tau = nn.Parameter(torch.zeros(num_channels))

    def extra_repr(self) -> str:
        return str(self.num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # max(x, tau) = relu(x - tau) + tau: same values, and ReLU's backward is several times
        # faster than maximum's on CPU (gradients differ only at exact ties x == tau).
        tau = _per_channel(self.tau).to(x.dtype)
        return F.relu(x - tau) + tau


class FilterResponseNorm2d(nn.Module):
    """FRN with a per-channel affine, followed by a TLU unless ``tlu=False``.

    ``learned_eps`` makes eps = eps + |eps_l| with eps_l learned (initialised to 1e-4), the
    paper's remedy for 1x1 feature maps where nu2 is a single squared value.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        learned_eps: bool = False,
        tlu: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps_l = nn.Parameter(torch.full((num_channels,), 1e-4)) if learned_eps else None
        self.tlu = TLU(num_channels) if tlu else None

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, learned_eps={self.eps_l is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Squares overflow in half precision: compute nu2 in at least float32.
        acc = x if x.dtype == torch.float64 else x.float()
        nu2 = acc.square().mean(dim=(2, 3), keepdim=True)
        eps = self.eps if self.eps_l is None else self.eps + _per_channel(self.eps_l.abs())
        y = acc * torch.rsqrt(nu2 + eps)
        y = (y * _per_channel(self.weight) + _per_channel(self.bias)).to(x.dtype)
        return y if self.tlu is None else self.tlu(y)
