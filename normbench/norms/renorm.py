"""Batch Renormalization (Ioffe, NeurIPS 2017, arXiv:1702.03275).

Training: x_hat = (x - mu_B) / sigma_B * r + d with r = clip(sigma_B / sigma, 1/r_max, r_max)
and d = clip((mu_B - mu) / sigma, -d_max, d_max), both treated as constants by autograd, where
mu and sigma = sqrt(running_var + eps) are the moving statistics. Inference is BN.

Because r and d are constants, gamma * x_hat + beta is BN with weight gamma * r and bias
gamma * d + beta: one fused ``F.batch_norm`` call, sharing the emulated-GPU fold of
:class:`~normbench.norms.batch.BatchNorm2d`.

Schedule (by the layer's own ``num_batches_tracked``): plain BN (r_max = 1, d_max = 0) for
``warmup_steps`` training steps, then both limits grow linearly to ``r_max`` and ``d_max`` over
``relax_steps``. The defaults follow Ioffe's schedule, which keeps plain BN for the first 5k steps
and has d_max fully relaxed 20k steps later; the targets r_max = 1.5, d_max = 0.5 are the values
of the Group Normalization paper's comparison.
"""

from __future__ import annotations

import torch

from normbench.norms.batch import DEFAULT_EVAL_STATS, BatchNorm2d, fold_chunks, tile_chunks


class BatchRenorm2d(BatchNorm2d):
    """Batch Renormalization over (N, H, W) per channel, with per-emulated-GPU statistics."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        eval_stats: str = DEFAULT_EVAL_STATS,
        r_max: float = 1.5,
        d_max: float = 0.5,
        warmup_steps: int = 5000,
        relax_steps: int = 20000,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, eval_stats=eval_stats)
        if r_max < 1 or d_max < 0 or warmup_steps < 0 or relax_steps < 0:
            raise ValueError("need r_max >= 1, d_max >= 0 and non-negative step counts")
        self.r_max = float(r_max)
        self.d_max = float(d_max)
        self.warmup_steps = int(warmup_steps)
        self.relax_steps = int(relax_steps)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, "
            f"warmup_steps={self.warmup_steps}, relax_steps={self.relax_steps}"
        )

    def current_limits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_max, d_max) in force at the current step, as 0-d tensors on the buffers' device.

        Computed with tensor ops so a GPU never waits on a host read of the step counter.
        """
        step = self.num_batches_tracked.to(self.running_var.dtype)
        if self.relax_steps:
            progress = ((step - self.warmup_steps) / self.relax_steps).clamp(0, 1)
        else:
            progress = (step >= self.warmup_steps).to(step.dtype)
        return 1 + progress * (self.r_max - 1), progress * self.d_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        k = self.chunks
        with torch.no_grad():
            folded = fold_chunks(x, k)
            low_precision = folded.dtype in (torch.float16, torch.bfloat16)
            # BN's own statistics kernel, one pass and no output (torch.var_mean over (0, 2, 3)
            # was 2-3x a whole GN forward + backward on CPU); the running statistics are updated
            # once, by the batch norm below.
            mean_b, var_b = torch.batch_norm_update_stats(
                folded.float() if low_precision else folded, None, None, 0.0
            )
            sigma = tile_chunks((self.running_var + self.eps).sqrt(), k)
            mu = tile_chunks(self.running_mean, k)
            r_max, d_max = self.current_limits()
            r = torch.clamp((var_b + self.eps).sqrt() / sigma, min=1 / r_max, max=r_max)
            d = torch.clamp((mean_b - mu) / sigma, min=-d_max, max=d_max)
        weight = tile_chunks(self.weight, k)
        return self._folded_batch_norm(x, weight * r, weight * d + tile_chunks(self.bias, k))
