"""Frozen Batch Normalization: the Group Normalization paper's BN* for detection.

A BN checkpoint's statistics and affine parameters, fixed: y = (x - mean) / sqrt(var + eps) *
gamma + beta with every term a buffer, so nothing trains, nothing is updated and each sample's
output ignores the batch. The paper fine-tunes detectors from BN-pretrained backbones this way
(Detectron's default) as the baseline that BN, SyncBN and GN are compared with. The layer is
torchvision's ``FrozenBatchNorm2d``, whose state dict is BN's without the batch counter (a BN
checkpoint loads into it as it is).
"""

from __future__ import annotations

from torch import nn


def frozen_batch_norm(num_features: int, eps: float = 1e-5) -> nn.Module:
    """torchvision's FrozenBatchNorm2d over ``num_features`` channels (identity until a BN
    checkpoint is loaded). Imported here, not above: torchvision costs every import of the norm
    zoo (``normbench norms`` included) about 1.3 s of CPU, and only detection needs it."""
    from torchvision.ops import FrozenBatchNorm2d

    return FrozenBatchNorm2d(num_features, eps=eps)
