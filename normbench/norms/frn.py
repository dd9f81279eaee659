"""Filter Response Normalization and the Thresholded Linear Unit (Singh & Krishnan, CVPR 2020).

FRN: nu2 = mean over (H, W) of x^2 per sample and channel (no mean subtraction),
y = gamma * x / sqrt(nu2 + eps) + beta. TLU: z = max(y, tau) with a learned per-channel tau.
FRN + TLU replaces a norm + ReLU pair.

One meaning of ``tlu`` everywhere: FRN's nonlinearity is a TLU (true, the paper's FRN + TLU) or a
ReLU (false, the paper's "FRN without TLU" ablation). ``act`` says where the nonlinearity goes:
a layer with ``act=True`` (the default, and what a model trains wherever a norm + ReLU pair
stood) applies it fused with the norm; ``act=False`` is a bare FRN, for a block's last norm
before the residual addition, after which a model places a standalone :class:`TLU` (or ReLU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEARNED_EPS_INIT = 1e-4  # the paper's initial eps_l (learned_eps=true)


def _per_channel(p: torch.Tensor) -> torch.Tensor:
    """Shape a (C,) or (N, C) tensor to broadcast over (N, C, H, W)."""
    return p.view(*p.shape[:-1], -1, 1, 1) if p.dim() > 1 else p.view(1, -1, 1, 1)


class _FRN(torch.autograd.Function):
    """FRN, with ``act`` followed by max(y, tau) (TLU) or max(y, 0) (ReLU, ``tau`` None), with a
    hand-written backward.

    Autograd of the five elementwise ops costs about ten full passes over the activation per
    direction on CPU; here the forward is one norm reduction, a scale and shift and, with TLU, an
    in-place ReLU and an add (max(y, tau) = relu(y - tau) + tau, so TLU folds into the shift);
    the backward ReLU's own backward kernel, two channel sums, one (sample, channel) sum of
    grad * x and two elementwise passes. (linalg.vecdot is no help: on CPU it is a mul + sum.)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, tau, eps, act):  # noqa: ANN001, ANN205 (autograd's)
        # Squares overflow in half precision: compute in at least float32.
        acc = x if x.dtype == torch.float64 else x.float()
        flat = acc.flatten(2)
        nu2 = torch.linalg.vector_norm(flat, dim=-1).square_().div_(flat.shape[-1])  # (N, C)
        inv = torch.rsqrt(nu2 + eps)
        shift = bias if tau is None else bias - tau
        y = (acc * _per_channel(inv * weight)).add_(_per_channel(shift))
        relu_out = None
        if act:
            relu_out = y.relu_()
            if tau is not None:
                y = relu_out + _per_channel(tau)
        ctx.save_for_backward(acc, inv, weight, relu_out)
        ctx.has_tau = tau is not None
        ctx.eps_is_tensor = torch.is_tensor(eps)
        ctx.input_dtype = x.dtype
        return y.to(x.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        acc, inv, weight, relu_out = ctx.saved_tensors
        grad = grad.to(acc.dtype)
        if relu_out is None:
            grad_shift = grad
        else:
            grad_shift = torch.ops.aten.threshold_backward(grad, relu_out, 0)
        grad_bias = grad_shift.sum((0, 2, 3))
        grad_tau = grad.sum((0, 2, 3)) - grad_bias if ctx.has_tau else None
        # s = sum over H, W of grad * x, per (sample, channel): every other gradient follows.
        s = (grad_shift * acc).sum((2, 3))
        grad_weight = (s * inv).sum(0)
        inv3_s = weight * inv.pow(3) * s  # (N, C)
        grad_x = grad_shift * _per_channel(inv * weight)
        grad_x.addcmul_(acc, _per_channel(inv3_s / acc[0, 0].numel()), value=-1)
        grad_eps = (-0.5 * inv3_s).sum(0) if ctx.eps_is_tensor else None
        return grad_x.to(ctx.input_dtype), grad_weight, grad_bias, grad_tau, grad_eps, None


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
    """FRN with a per-channel affine, followed (``act``) by its nonlinearity: TLU, or ReLU
    with ``tlu=False``.

    ``learned_eps`` makes eps = eps + |eps_l| with eps_l learned (from LEARNED_EPS_INIT), the
    paper's remedy for 1x1 feature maps where nu2 is a single squared value.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        learned_eps: bool = False,
        tlu: bool = True,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.act = act
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps_l = (
            nn.Parameter(torch.full((num_channels,), LEARNED_EPS_INIT)) if learned_eps else None
        )
        self.tlu = TLU(num_channels) if act and tlu else None

    def extra_repr(self) -> str:
        nonlinearity = ("tlu" if self.tlu is not None else "relu") if self.act else "none"
        return (
            f"{self.num_channels}, eps={self.eps}, learned_eps={self.eps_l is not None}, "
            f"nonlinearity={nonlinearity}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected a 4-d input (N, C, H, W), got shape {tuple(x.shape)}")
        eps = self.eps if self.eps_l is None else self.eps + self.eps_l.abs()
        tau = None if self.tlu is None else self.tlu.tau
        return _FRN.apply(x, self.weight, self.bias, tau, eps, self.act)


def frn_activation(num_channels: int, tlu: bool = True, **_: object) -> nn.Module:
    """The activation after a residual addition in an FRN model: TLU, or ReLU with ``tlu=False``."""
    return TLU(num_channels) if tlu else nn.ReLU(inplace=True)
