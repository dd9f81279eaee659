"""Learning-rate schedule, per optimizer step: linear warmup, then step decays or cosine.

The peak lr comes from the paper's linear scaling rule (:func:`normbench.config.learning_rate`);
the schedule only multiplies it, so every batch size follows the same curve over its epochs.
"""

from __future__ import annotations

import math

import torch

from normbench.config import OptimConfig


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, optim: OptimConfig) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    total = steps_per_epoch * epochs
    warmup = round(optim.warmup_epochs * steps_per_epoch)
    if step < warmup:
        # Warmup ends exactly at the peak; it starts at one step's worth above warmup_start
        # (0 by default), never at 0.
        start = optim.warmup_start
        return start + (1.0 - start) * (step + 1) / warmup
    if optim.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    epoch = step / steps_per_epoch
    passed = sum(1 for m in optim.milestones if epoch >= round(m * epochs))
    return optim.decay**passed


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int, optim: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, steps_per_epoch=steps_per_epoch, epochs=epochs, optim=optim),
    )
