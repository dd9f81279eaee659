"""Whitening norms: Decorrelated BN (Huang et al., CVPR 2018, arXiv:1804.08450) and Iterative
Normalization (Huang et al., CVPR 2019, arXiv:1904.03441), the survey's whitening branch.

Both split the C channels into groups of ``group_size`` channels and whiten each group over the
batch: for a group's centred data Xc (group_size x m, m = N * H * W samples of one GPU's batch),

    Sigma = Xc Xc^T / m + eps I,        x_hat = Sigma^(-1/2) Xc,        y = gamma * x_hat + beta

(per-channel gamma, beta), so the output of each group has identity covariance, not just unit
variances as in BN. They differ in how Sigma^(-1/2) is computed:

- DBN, ZCA whitening by eigendecomposition: Sigma = D Lambda D^T, Sigma^(-1/2) = D Lambda^(-1/2)
  D^T. The eigendecomposition runs in float64 (group_size x group_size matrices: cheap).
- IterNorm, Newton's iterations (T = ``iterations``): Sigma_N = Sigma / tr(Sigma), P_0 = I,
  P_k = 1.5 P_(k-1) - 0.5 P_(k-1)^3 Sigma_N, Sigma^(-1/2) ~ P_T / sqrt(tr(Sigma)). Stopping
  early whitens the directions of large eigenvalues fully and the small ones only partly,
  which the IterNorm paper argues is a feature at small batch.

Evaluation uses running statistics updated with ``momentum``: a moving average of the mean (per
channel) and, per group, either (``running="covariance"``) a moving average of Sigma, whitened at
evaluation as in training (Sigma + eps I, then Sigma^(-1/2) by the layer's own method), or
(``running="whitening"``) a moving average of the whitening matrix Sigma^(-1/2) itself, as the
DBN and IterNorm papers' code does. They differ where batch covariances are singular and their
null space moves while training (16 channels of a conv on 1-channel images span at most 9
dimensions): each batch's Sigma^(-1/2) scales its null directions by 1/sqrt(eps), harmless on
that batch, but an average of such matrices applies those scales to directions that other
images do have; the average of the covariances is singular only where every batch was, and its
whitening is the one training would compute from the population.
Per-GPU statistics, and emulated GPUs: a batch folded to (N / k, k * C, H, W) (see
:func:`~normbench.norms.batch.fold_chunks`) has the k emulated GPUs' channel groups as its own
groups, so one whitening of the folded batch is k independent per-GPU whitenings.
"""

from __future__ import annotations

import torch
from torch import nn

from normbench.norms.batch import (
    DEFAULT_EVAL_STATS,
    EVAL_STATS,
    PerGPUStatistics,
    fold_chunks,
    unfold_chunks,
)

# 16 channels per whitening group divides every width of the CPU ResNets (16, 32, 64, ...) and
# keeps the per-group matrices small; the IterNorm paper used 64 on ImageNet.
DEFAULT_GROUP_SIZE = 16

# What a whitening norm's running statistics estimate for evaluation: the covariance (whitened
# at evaluation) or the whitening matrix.
RUNNING_ESTIMATES = ("covariance", "whitening")


class _InverseSqrtSym(torch.autograd.Function):
    """Sigma^(-1/2) of symmetric positive-definite matrices (..., g, g), by eigendecomposition.

    Backward by the Daleckii-Krein formula for a matrix function f(Sigma) = D f(Lambda) D^T:
    dL/dSigma = D (K o (D^T sym(G) D)) D^T with K_ij = (f(l_i) - f(l_j)) / (l_i - l_j), and
    K_ii = f'(l_i). For f(l) = l^(-1/2), K_ij = -1 / (s_i s_j (s_i + s_j)) with s = sqrt(l)
    for every i, j, equal eigenvalues included: unlike autograd through ``eigh``, whose
    eigenvector gradient divides by l_i - l_j, this never blows up on close eigenvalues.
    """

    @staticmethod
    def forward(ctx, sigma):  # noqa: ANN001, ANN205 (autograd's signature)
        # float64: eigendecompositions of near-singular float32 matrices lose several digits.
        eigvals, vectors = torch.linalg.eigh(sigma.double())
        s = eigvals.clamp_min(torch.finfo(torch.float64).tiny).sqrt()
        ctx.save_for_backward(vectors, s)
        ctx.input_dtype = sigma.dtype
        return ((vectors / s.unsqueeze(-2)) @ vectors.mT).to(sigma.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        vectors, s = ctx.saved_tensors
        grad = grad.double()
        inner = vectors.mT @ ((grad + grad.mT) / 2) @ vectors
        s_i, s_j = s.unsqueeze(-1), s.unsqueeze(-2)
        kernel = -1 / (s_i * s_j * (s_i + s_j))
        return (vectors @ (kernel * inner) @ vectors.mT).to(ctx.input_dtype)


class _CentredCovariance(torch.autograd.Function):
    """(N, C, H, W) -> centred groups Xc (N, C/g, g, H W), Sigma = sum over samples of
    Xc Xc^T / m (C/g, g, g), and the channel means (not differentiable).

    Hand-written backward: dL/dXc_total = dL/dXc + (G + G^T) Xc / m for G = dL/dSigma, then
    minus its mean over (N, H, W) (the centring). Autograd of the same ops spent two more
    batched matmuls, a negation and an addition of the whole activation on it.
    """

    @staticmethod
    def forward(ctx, x, group_size):  # noqa: ANN001, ANN205 (autograd's signature)
        n, c, h, w = x.shape
        mean = x.sum((0, 2, 3)) / (n * h * w)
        centred = x.reshape(n, c // group_size, group_size, h * w) - mean.view(-1, group_size, 1)
        # Sum over samples of per-sample Xc Xc^T: batched matmuls on the (N, C, H, W) layout,
        # no transposed copy of the activation.
        sigma = (centred @ centred.mT).sum(0) / (n * h * w)
        ctx.save_for_backward(centred)
        ctx.spatial = (h, w)
        ctx.mark_non_differentiable(mean)
        return centred, sigma, mean

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_centred, grad_sigma, _):  # noqa: ANN001, ANN205
        (centred,) = ctx.saved_tensors
        n, groups, g, hw = centred.shape
        grad = ((grad_sigma + grad_sigma.mT) / (n * hw)) @ centred
        if grad_centred is not None:
            grad.add_(grad_centred)
        grad.sub_(grad.sum((0, 3), keepdim=True) / (n * hw))
        return grad.view(n, groups * g, *ctx.spatial), None


def inverse_sqrt_eigh(sigma: torch.Tensor) -> torch.Tensor:
    """Sigma^(-1/2) (ZCA) of a batch of SPD matrices, with a stable backward."""
    return _InverseSqrtSym.apply(sigma)


def inverse_sqrt_newton(sigma: torch.Tensor, iterations: int) -> torch.Tensor:
    """IterNorm's approximation P_T / sqrt(tr(Sigma)) of Sigma^(-1/2), differentiable."""
    trace = sigma.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    sigma_n = sigma / trace
    p = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device).expand_as(sigma)
    for _ in range(iterations):
        p = torch.baddbmm(p, torch.linalg.matrix_power(p, 3), sigma_n, beta=1.5, alpha=-0.5)
    return p / trace.sqrt()


class _GroupWhitening(PerGPUStatistics, nn.Module):
    """Group-wise whitening over each GPU's batch; subclasses compute Sigma^(-1/2).

    The running statistics are ``running_mean`` and, per group, ``running_cov``
    (``running="covariance"``) or ``running_wm`` (``running="whitening"``).
    """

    # Default "covariance", the estimator of the authors' later code: Huang et al., "An
    # Investigation into the Stochasticity of Batch Whitening" (CVPR 2020, arXiv:2003.12327,
    # github.com/huangleiBuaa/StochasticityBW) adds "Sigma" variants of both layers (DBNSigma,
    # ItNSigma) that keep a running covariance and whiten it at evaluation, and trains its
    # ImageNet ResNet-50s with ItNSigma. "whitening" is the DBN and IterNorm papers' own code.

    def __init__(
        self,
        num_channels: int,
        group_size: int = DEFAULT_GROUP_SIZE,
        eps: float = 1e-5,
        momentum: float = 0.1,
        eval_stats: str = DEFAULT_EVAL_STATS,
        running: str = "covariance",
    ) -> None:
        super().__init__()
        if num_channels % group_size:
            raise ValueError(f"group_size={group_size} does not divide {num_channels} channels")
        if eval_stats not in EVAL_STATS:
            raise ValueError(f"eval_stats must be one of {EVAL_STATS}, got {eval_stats!r}")
        if running not in RUNNING_ESTIMATES:
            raise ValueError(f"running must be one of {RUNNING_ESTIMATES}, got {running!r}")
        self.num_channels = num_channels
        self.group_size = group_size
        self.eps = eps
        self.momentum = momentum
        self.eval_stats = eval_stats
        self.running = running
        self.chunks = 1
        groups = num_channels // group_size
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        group_stat = "running_cov" if running == "covariance" else "running_wm"
        self.register_buffer(group_stat, torch.eye(group_size).repeat(groups, 1, 1))
        self.running_stats = ("running_mean", group_stat)

    def extra_repr(self) -> str:
        return (
            f"{self.num_channels}, group_size={self.group_size}, eps={self.eps}, "
            f"momentum={self.momentum}, eval_stats={self.eval_stats}, running={self.running}, "
            f"chunks={self.chunks}"
        )

    def whitening_matrix(self, sigma: torch.Tensor) -> torch.Tensor:
        """Sigma^(-1/2) for a batch of covariance matrices (..., g, g)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.chunks if self.training else 1
        folded = fold_chunks(x, k)
        acc = folded if folded.dtype == torch.float64 else folded.float()
        n, c, h, w = acc.shape
        g = self.group_size
        if self.training:
            # groups of every emulated GPU: (N, k C / g, g, H W)
            centred, sigma, mean = _CentredCovariance.apply(acc, g)
            wm = self._regularized_whitening(sigma)
            estimate = sigma if self.running == "covariance" else wm
            self._update_running(mean, estimate.detach(), k)
        else:
            groups = acc.view(n, c // g, g, h * w)
            centred = groups - self.running_mean.to(acc.dtype).view(c // g, g, 1)
            if self.running == "covariance":
                wm = self._regularized_whitening(self.running_cov.to(acc.dtype))
            else:
                wm = self.running_wm.to(acc.dtype)
        # gamma folded into the whitening matrix: one matmul gives gamma * Sigma^(-1/2) Xc.
        weight, bias = self.weight.repeat(k), self.bias.repeat(k)
        scaled = weight.view(c // g, g, 1).to(acc.dtype) * wm
        y = (scaled @ centred).add_(bias.view(c // g, g, 1).to(acc.dtype))
        return unfold_chunks(y.view(n, c, h, w).to(x.dtype), x)

    def _regularized_whitening(self, sigma: torch.Tensor) -> torch.Tensor:
        """(Sigma + eps I)^(-1/2) by the layer's method, for covariances (..., g, g)."""
        eye = torch.eye(self.group_size, dtype=sigma.dtype, device=sigma.device)
        return self.whitening_matrix(sigma + self.eps * eye)

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, estimate: torch.Tensor, chunks: int) -> None:
        """Each emulated GPU updates its own copy of the running mean and group statistic from
        the shared ones; keep the mean of the k copies ("average") or GPU 0's ("first"), as
        BatchNorm2d does."""
        m = self.momentum
        pick = (lambda t: t.mean(0)) if self.eval_stats == "average" else (lambda t: t[0])
        for name, value in zip(self.running_stats, (mean, estimate), strict=True):
            buffer = getattr(self, name)
            buffer.copy_(pick((1 - m) * buffer + m * value.view(chunks, *buffer.shape)))


class DecorrelatedBatchNorm2d(_GroupWhitening):
    """DBN: ZCA whitening of each group of channels by eigendecomposition (float64)."""

    def whitening_matrix(self, sigma: torch.Tensor) -> torch.Tensor:
        return inverse_sqrt_eigh(sigma)


class IterNorm2d(_GroupWhitening):
    """IterNorm: whitening of each group of channels by ``iterations`` Newton steps."""

    def __init__(
        self,
        num_channels: int,
        group_size: int = DEFAULT_GROUP_SIZE,
        iterations: int = 5,
        eps: float = 1e-5,
        momentum: float = 0.1,
        eval_stats: str = DEFAULT_EVAL_STATS,
        running: str = "covariance",
    ) -> None:
        super().__init__(num_channels, group_size, eps, momentum, eval_stats, running)
        self.iterations = iterations

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, iterations={self.iterations}"

    def whitening_matrix(self, sigma: torch.Tensor) -> torch.Tensor:
        return inverse_sqrt_newton(sigma, self.iterations)
