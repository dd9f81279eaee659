"""Group Normalization and its two endpoints, Layer and Instance Normalization (Wu & He 2018).

All three normalize each sample over a set of channels and all of H, W, then apply a per-channel
affine (gamma, beta), exactly as the GN paper defines them; all run on ``F.group_norm``.
GN uses C/G channels per group, LN one group of all C channels, IN one channel per group.
"""

from __future__ import annotations

from torch import nn

DEFAULT_GROUPS = 32  # the paper's G, for GN and for the norms grouped like it (EvoNorm-S0)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with the channel count first, so every norm builds as ``norm(C, ...)``,
    and its groups named as every grouped norm names them."""

    def __init__(self, num_channels: int, groups: int = DEFAULT_GROUPS, eps: float = 1e-5) -> None:
        super().__init__(groups, num_channels, eps=eps)


class LayerNorm2d(GroupNorm):
    """LN as in the GN paper: statistics over (C, H, W) per sample, per-channel affine."""

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_channels, groups=1, eps=eps)


class InstanceNorm2d(GroupNorm):
    """IN with a per-channel affine: statistics over (H, W) per sample and channel.

    Unlike ``nn.InstanceNorm2d`` it keeps no running statistics, so train and eval agree.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_channels, groups=num_channels, eps=eps)
