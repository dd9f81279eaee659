"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le, NeurIPS 2020, arXiv:2004.02967).

Normalization-activation layers: each replaces a norm + ReLU pair, like FRN + TLU.

B0 (batch-dependent): y = x / max(sqrt(batch_var + eps), v * x + sqrt(instance_var + eps))
* gamma + beta, with batch_var per channel over (N, H, W) of each GPU's batch (a moving average
of it at evaluation) and instance_var per sample and channel over (H, W).

S0 (batch-independent): y = x * sigmoid(v * x) / sqrt(group_var + eps) * gamma + beta, with
group_var per sample over each group of C/G channels and (H, W), as in GN (G = 32 by default).

v is learned per channel (init 1), eps = 1e-5; variances are the biased ones of the authors'
code (tf.nn.moments), whose moving variance decays by 0.9 (momentum 0.1 here).

Where no activation follows (a block's last norm before the residual addition, a shortcut's
norm) the authors' code applies "an affine transform only" (``nonlinearity=False`` in
tensorflow/tpu's resnet_model.py): ``act=False`` builds exactly that, gamma * x + beta.
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.norms.batch import (
    EVAL_STATS,
    PerGPUStatistics,
    combine_chunks,
    fold_chunks,
    tile_chunks,
    unfold_chunks,
)


def _per_channel(p: torch.Tensor) -> torch.Tensor:
    """Shape a (C,) or (N, C) tensor to broadcast over (N, C, H, W)."""
    return p.view(*p.shape[:-1], -1, 1, 1) if p.dim() > 1 else p.view(1, -1, 1, 1)


def _check_4d(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4-d input (N, C, H, W), got shape {tuple(x.shape)}")


class _EvoNorm(nn.Module):
    """gamma, beta and v per channel; without ``act`` only the affine map is kept."""

    def __init__(self, num_channels: int, eps: float, act: bool) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.act = act
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.v = nn.Parameter(torch.ones(num_channels)) if act else None

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, act={self.act}"

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(_per_channel(self.bias), x, _per_channel(self.weight))


class EvoNormB0(PerGPUStatistics, _EvoNorm):
    """EvoNorm-B0 with per-emulated-GPU batch variance (see :mod:`normbench.norms.batch`).

    With ``chunks = k`` each of the k interleaved sub-batches has its own batch variance, and the
    running variance becomes the mean over sub-batches (``eval_stats="average"``) or that of
    sub-batch 0 (``"first"``), as for :class:`~normbench.norms.batch.BatchNorm2d`.
    """

    running_stats = ("running_var",)

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        eval_stats: str = "average",
        act: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, act)
        if eval_stats not in EVAL_STATS:
            raise ValueError(f"eval_stats must be one of {EVAL_STATS}, got {eval_stats!r}")
        self.momentum = momentum
        self.eval_stats = eval_stats
        self.chunks = 1
        # The authors initialise the moving variance to 1 (tf.initializers.ones).
        self.register_buffer("running_var", torch.ones(num_channels) if act else None)

    def extra_repr(self) -> str:
        extra = f", momentum={self.momentum}, eval_stats={self.eval_stats}, chunks={self.chunks}"
        return super().extra_repr() + (extra if self.act else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d(x)
        if not self.act:
            return self._affine(x)
        k = self.chunks if self.training else 1
        folded = fold_chunks(x, k)
        acc = folded if folded.dtype == torch.float64 else folded.float()
        instance_var, instance_mean = torch.var_mean(acc, dim=(2, 3), unbiased=False)
        if self.training:
            # Law of total variance: the batch variance from the per-instance moments, so x is
            # read once for both statistics.
            batch_mean = instance_mean.mean(0)
            batch_var = instance_var.mean(0) + (instance_mean - batch_mean).square().mean(0)
            with torch.no_grad():
                stats = tile_chunks(self.running_var, k)
                stats.lerp_(batch_var.detach().to(stats.dtype), self.momentum)
                self.running_var.copy_(combine_chunks(stats, k, self.eval_stats))
        else:
            batch_var = self.running_var.to(acc.dtype)
        v, weight, bias = (tile_chunks(p, k) for p in (self.v, self.weight, self.bias))
        left = _per_channel(torch.sqrt(batch_var + self.eps))
        instance_std = _per_channel(torch.sqrt(instance_var + self.eps))
        right = torch.addcmul(instance_std, acc, _per_channel(v))
        y = torch.addcmul(
            _per_channel(bias), acc / torch.maximum(left, right), _per_channel(weight)
        )
        return unfold_chunks(y.to(x.dtype), x)


class EvoNormS0(_EvoNorm):
    """EvoNorm-S0: no batch statistics, so a sample's output never depends on the rest."""

    def __init__(
        self, num_channels: int, groups: int = 32, eps: float = 1e-5, act: bool = True
    ) -> None:
        super().__init__(num_channels, eps, act)
        if num_channels % groups:
            raise ValueError(f"groups={groups} does not divide {num_channels} channels")
        self.groups = groups

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", groups={self.groups}" if self.act else "")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_4d(x)
        if not self.act:
            return self._affine(x)
        acc = x if x.dtype == torch.float64 else x.float()
        n, c = acc.shape[:2]
        var = torch.var(acc.reshape(n, self.groups, -1), dim=-1, unbiased=False)  # (N, G)
        inv_std = torch.rsqrt(var + self.eps).repeat_interleave(c // self.groups, dim=1)
        # The per-(sample, channel) scale 1/std * gamma is applied once, in the final addcmul.
        scale = _per_channel(inv_std * self.weight)
        swish = acc * torch.sigmoid(acc * _per_channel(self.v))
        return torch.addcmul(_per_channel(self.bias), swish, scale).to(x.dtype)
