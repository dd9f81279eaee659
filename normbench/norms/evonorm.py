"""EvoNorm-B0 and EvoNorm-S0 (Liu, Brock, Simonyan & Le, NeurIPS 2020, arXiv:2004.02967).

Normalization-activation layers: each replaces a norm + ReLU pair, like FRN + TLU.

B0 (batch-dependent): y = x / max(sqrt(batch_var + eps), v * x + sqrt(instance_var + eps))
* gamma + beta, with batch_var per channel over (N, H, W) of each GPU's batch (a moving average
of it at evaluation) and instance_var per sample and channel over (H, W).

S0 (batch-independent): y = x * sigmoid(v * x) / sqrt(group_var + eps) * gamma + beta, with
group_var per sample over each group of C/G channels and (H, W), as in GN (G as GN's by default).

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
    DEFAULT_EVAL_STATS,
    EVAL_STATS,
    PerGPUStatistics,
    combine_chunks,
    fold_chunks,
    tile_chunks,
    unfold_chunks,
)
from normbench.norms.group import DEFAULT_GROUPS


def _per_channel(p: torch.Tensor) -> torch.Tensor:
    """Shape a (C,) or (N, C) tensor to broadcast over (N, C, H, W)."""
    return p.view(*p.shape[:-1], -1, 1, 1) if p.dim() > 1 else p.view(1, -1, 1, 1)


def _check_4d(x: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4-d input (N, C, H, W), got shape {tuple(x.shape)}")


def _moments(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over the last dimension from its sum and its norm.

    Two of torch's fastest reductions: ``torch.var_mean`` over the same dimensions took 15-30x
    as long on CPU (2.5x a whole GroupNorm forward). E[x^2] - mean^2 loses digits only when the
    mean dwarfs the spread, which a conv output followed by a norm does not do in float32.
    """
    m = flat.shape[-1]
    mean = flat.sum(-1) / m
    var = torch.linalg.vector_norm(flat, dim=-1).square_().div_(m).sub_(mean.square())
    return mean, var.clamp_min_(0)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over (H, W) of a * b, per (sample, channel), without an (N, C, H, W) temporary."""
    n, c = a.shape[:2]
    return torch.bmm(a.reshape(n * c, 1, -1), b.reshape(n * c, -1, 1)).view(n, c)


def _keep_where_positive(t: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """t where sign > 0, else 0, in place: ReLU's backward kernel (a boolean mask and
    masked_fill_ took 10x as long on CPU)."""
    return torch.ops.aten.threshold_backward.grad_input(t, sign, 0, grad_input=t)


class _B0(torch.autograd.Function):
    """EvoNorm-B0 on a (folded) batch with a hand-written backward; also returns the batch
    variance (not differentiable), or uses ``running_var`` in evaluation.

    Autograd of the same ops made about thirty passes over the activation and a dozen
    allocations (on CPU a fresh activation-sized tensor costs as much as four elementwise
    passes: page faults); here four tensors are allocated in all. The forward keeps
    e = relu(v x + s_i - s_b), so den = max(s_b, v x + s_i) = e + s_b and e > 0 marks where the
    right side wins (r). With q = x / den, w = grad * gamma / den and t = w q:
    dL/dx = w - v t r + (x - mu_i) a_i + (x - mu_b) b, dL/dv = -sum(t r x), with
    a_i = -sum_HW(t r) / (s_i HW) and b = -sum(t (1 - r)) / (s_b N HW) (b = 0 in evaluation).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, v, eps, running_var):  # noqa: ANN001, ANN205 (autograd's)
        n, c, h, w = x.shape
        mean_i, var_i = _moments(x.reshape(n, c, h * w))
        s_i = torch.sqrt(var_i + eps)
        if running_var is None:
            # Law of total variance: the batch statistics from the per-instance moments.
            mean_b = mean_i.mean(0)
            var_b = var_i.mean(0) + (mean_i - mean_b).square().mean(0)
        else:
            mean_b, var_b = None, running_var.to(x.dtype)
        s_b = _per_channel(torch.sqrt(var_b + eps))
        excess = torch.addcmul(_per_channel(s_i) - s_b, x, _per_channel(v)).relu_()
        y = torch.add(excess, s_b).reciprocal_().mul_(x)
        y.mul_(_per_channel(weight)).add_(_per_channel(bias))
        ctx.save_for_backward(x, excess, weight, v, mean_i, s_i, mean_b, s_b)
        ctx.mark_non_differentiable(var_b)
        return y, var_b

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, _):  # noqa: ANN001, ANN205
        x, excess, weight, v, mean_i, s_i, mean_b, s_b = ctx.saved_tensors
        n, c, h, w = x.shape
        dx = torch.add(excess, s_b).reciprocal_()  # 1 / den, becomes w, then dL/dx
        q = torch.mul(x, dx)
        grad_weight = _dot(grad, q).sum(0)
        grad_bias = grad.sum((0, 2, 3))
        dx.mul_(grad).mul_(_per_channel(weight))
        t = q.mul_(dx)
        sum_t = t.sum((2, 3))
        t = _keep_where_positive(t, excess)  # t r
        sum_tr = t.sum((2, 3))
        grad_v = -_dot(t, x).sum(0)
        dx.addcmul_(t, _per_channel(v), value=-1)
        a = -sum_tr / (s_i * (h * w))  # (N, C)
        shift = a * mean_i
        if mean_b is not None:  # training: the batch std depends on x too
            b = -(sum_t - sum_tr).sum(0) / (s_b.view(-1) * (n * h * w))  # (C,)
            a = a + b
            shift = shift + b * mean_b
        dx.addcmul_(x, _per_channel(a)).sub_(_per_channel(shift))
        return dx, grad_weight, grad_bias, grad_v, None, None


class _S0(torch.autograd.Function):
    """EvoNorm-S0 with a hand-written backward: four activation-sized allocations in all
    (autograd's made about a dozen and twenty-five passes).

    With num = x sigmoid(v x), scale = gamma / s_g per (sample, channel):
    dL/dx = grad scale (sig + v x sig (1 - sig)) + (x - mu_g) d_g,
    dL/dv = sum(grad scale x^2 sig (1 - sig)),
    d_g = -sum_(c in g) gamma_c sum_HW(grad num) / (s_g^3 (C/G) HW).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, v, groups, eps):  # noqa: ANN001, ANN205 (autograd's)
        n, c = x.shape[:2]
        mean_g, var_g = _moments(x.reshape(n, groups, -1))  # (N, G)
        inv = torch.rsqrt(var_g + eps)
        per_group = c // groups
        scale = inv.repeat_interleave(per_group, dim=1) * weight  # (N, C)
        sig = torch.mul(x, _per_channel(v)).sigmoid_()
        y = torch.mul(x, sig).mul_(_per_channel(scale)).add_(_per_channel(bias))
        ctx.save_for_backward(x, sig, weight, v, mean_g, inv, scale)
        ctx.groups = groups
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, sig, weight, v, mean_g, inv, scale = ctx.saved_tensors
        n, c, h, w = x.shape
        groups = ctx.groups
        per_group = c // groups
        r = torch.mul(x, sig)  # num, then x sig (1 - sig), then grad x sig (1 - sig)
        s = _dot(grad, r)  # (N, C): sum over H, W of grad * num
        grad_weight = (s * inv.repeat_interleave(per_group, dim=1)).sum(0)
        grad_bias = grad.sum((0, 2, 3))
        r.addcmul_(r, sig, value=-1)
        dx = torch.addcmul(sig, r, _per_channel(v)).mul_(grad).mul_(_per_channel(scale))
        grad_v = (_dot(r.mul_(grad), x) * scale).sum(0)
        # d inv / d var = -inv^3 / 2, d var / dx = 2 (x - mean) / (C/G H W)
        d_var = (s * weight).view(n, groups, per_group).sum(-1) * (-0.5 * inv.pow(3))
        coef = (2 * d_var / (per_group * h * w)).repeat_interleave(per_group, dim=1)
        shift = coef * mean_g.repeat_interleave(per_group, dim=1)
        dx.addcmul_(x, _per_channel(coef)).sub_(_per_channel(shift))
        return dx, grad_weight, grad_bias, grad_v, None, None


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
        eval_stats: str = DEFAULT_EVAL_STATS,
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
        v, weight, bias = (tile_chunks(p, k) for p in (self.v, self.weight, self.bias))
        running = None if self.training else self.running_var
        y, batch_var = _B0.apply(acc, weight, bias, v, self.eps, running)
        if self.training:
            with torch.no_grad():
                stats = tile_chunks(self.running_var, k)
                stats.lerp_(batch_var.to(stats.dtype), self.momentum)
                self.running_var.copy_(combine_chunks(stats, k, self.eval_stats))
        return unfold_chunks(y.to(x.dtype), x)


class EvoNormS0(_EvoNorm):
    """EvoNorm-S0: no batch statistics, so a sample's output never depends on the rest."""

    def __init__(
        self, num_channels: int, groups: int = DEFAULT_GROUPS, eps: float = 1e-5, act: bool = True
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
        return _S0.apply(acc, self.weight, self.bias, self.v, self.groups, self.eps).to(x.dtype)
