"""Batch normalization with per-GPU statistics, synchronized BN, and running-stat syncing.

Emulated GPUs: a process that stands in for ``chunks`` GPUs receives ``chunks * b`` samples, and
emulated GPU ``j`` holds samples ``j, j + chunks, j + 2 * chunks, ...`` -- the same interleaving
``DistributedSampler`` uses to split a global batch between ranks, so an emulated run and a real
multi-GPU run normalize the same samples together.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

EVAL_STATS = ("average", "first")
# How the GPUs' running statistics are combined for evaluation, the default of every norm with
# per-GPU statistics and of the trainer: "first", GPU 0's, as the paper's Caffe2 code copies them
# to every GPU and the author's TF reproduction keeps moving averages on tower 0 only (what DDP's
# default buffer broadcast gives); "average" is the mean over GPUs.
DEFAULT_EVAL_STATS = "first"


def other_mode(eval_stats: str) -> str:
    """The evaluation-statistics mode that is not ``eval_stats``."""
    return EVAL_STATS[1 - EVAL_STATS.index(eval_stats)]


def _distributed() -> bool:
    """True when a default process group with more than one rank exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def fold_chunks(x: torch.Tensor, chunks: int) -> torch.Tensor:
    """View (N, C, H, W) as (N / chunks, chunks * C, H, W).

    For a contiguous tensor this is a free view in which channel ``j * C + c`` is channel ``c`` of
    samples ``j, j + chunks, ...``: batch statistics of the folded tensor are the per-emulated-GPU
    statistics. Other layouts (channels_last, slices) are copied to contiguous first; with
    ``chunks == 1`` the input is returned as it is.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a 4-d input (N, C, H, W), got shape {tuple(x.shape)}")
    if chunks == 1:
        return x
    n, c, h, w = x.shape
    if n % chunks:
        raise ValueError(
            f"batch of {n} samples cannot be split between {chunks} emulated GPUs "
            f"(the batch must be a multiple of {chunks}; drop the last partial batch)"
        )
    return x.contiguous().view(n // chunks, chunks * c, h, w)


def unfold_chunks(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fold_chunks`, restoring the shape and memory format of ``like``."""
    # _unsafe_view: the same free reshape, but not an autograd view of the norm's output, so the
    # in-place ReLU that follows takes the fast path (a view costs extra copies in backward).
    y = torch.ops.aten._unsafe_view(y, like.shape)
    if like.is_contiguous() or not like.is_contiguous(memory_format=torch.channels_last):
        return y
    return y.contiguous(memory_format=torch.channels_last)


def tile_chunks(t: torch.Tensor, chunks: int) -> torch.Tensor:
    """(..., C) -> (..., chunks * C) with entry ``j * C + c`` = ``t[..., c]``; differentiable."""
    return t.unsqueeze(-2).expand(*t.shape[:-1], chunks, t.shape[-1]).flatten(-2)


def combine_chunks(per_chunk: torch.Tensor, chunks: int, eval_stats: str) -> torch.Tensor:
    """(..., chunks * C) -> (..., C): the mean over chunks ("average") or chunk 0's ("first")."""
    per_chunk = per_chunk.unflatten(-1, (chunks, -1))
    return per_chunk.mean(-2) if eval_stats == "average" else per_chunk[..., 0, :]


class PerGPUStatistics:
    """Marks a norm whose training statistics are per GPU (and so per emulated GPU).

    Such a norm has ``chunks`` (emulated GPUs in this process, set by
    :func:`set_emulated_gpus`), ``eval_stats`` ("average" or "first": how the per-GPU running
    statistics are combined, over emulated GPUs and over ranks) and names its running-statistics
    buffers in ``running_stats`` (what :func:`sync_running_stats` makes agree across ranks).
    """

    chunks: int
    eval_stats: str
    running_stats: tuple[str, ...] = ()


class BatchNorm2d(PerGPUStatistics, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics are computed per emulated GPU.

    With ``chunks == 1`` (the default) this is exactly ``nn.BatchNorm2d``. With ``chunks = k``
    each of the k interleaved sub-batches is normalized with its own mean and variance, and the
    running statistics become the mean over sub-batches (``eval_stats="average"``) or those of
    sub-batch 0 (``"first"``), each sub-batch updating its own EMA from the same starting point.
    Evaluation always uses the running statistics, like BN.

    The moving averages of the other mode are kept beside them (``alt_running_mean``,
    ``alt_running_var``), so that a finished run can be evaluated both ways (the BN diagnostics
    of :mod:`normbench.train.diagnostics`) at the cost of a few vector operations per step. With
    one chunk both are the same chain, and :func:`sync_running_stats` copies it across.
    """

    running_stats = ("running_mean", "running_var")

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        eval_stats: str = DEFAULT_EVAL_STATS,
    ) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)
        if eval_stats not in EVAL_STATS:
            raise ValueError(f"eval_stats must be one of {EVAL_STATS}, got {eval_stats!r}")
        self.eval_stats = eval_stats
        self.chunks = 1
        # Not in the state dict, which stays nn.BatchNorm2d's (torchvision's ResNet weights load
        # both ways); checkpoints carry them through :func:`alt_running_stats`.
        self.register_buffer("alt_running_mean", torch.zeros(num_features), persistent=False)
        self.register_buffer("alt_running_var", torch.ones(num_features), persistent=False)

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "alt_running_mean"):  # nn.BatchNorm2d calls this before they exist
            self.alt_running_mean.zero_()
            self.alt_running_var.fill_(1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eval_stats={self.eval_stats}, chunks={self.chunks}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One chunk: both modes are this GPU's own chain, so only running_* is updated (torch's
        # kernel alone); sync_running_stats copies it to the alt buffers when they are read.
        if self.chunks == 1 or not self.training:
            return super().forward(x)
        k = self.chunks
        return self._folded_batch_norm(x, tile_chunks(self.weight, k), tile_chunks(self.bias, k))

    def _folded_batch_norm(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
    ) -> torch.Tensor:
        """Train-mode BN per emulated GPU in one fused call, updating both moving averages.

        ``weight`` and ``bias`` have one entry per (chunk, channel), i.e. ``chunks * C``.
        """
        k = self.chunks
        # Every sub-batch starts its EMA from the shared running stats s (one copy holds all k
        # means and variances): u_j = (1 - m) s + m b_j. The EMA is linear, so the mean (or
        # chunk 0) of the k updated copies is the combined update.
        start = torch.stack([self.running_mean, self.running_var])
        stats = tile_chunks(start, k) if k > 1 else start.clone()
        y = F.batch_norm(
            fold_chunks(x, k), stats[0], stats[1], weight, bias, True, self.momentum, self.eps
        )
        with torch.no_grad():
            updated = stats.unflatten(-1, (k, -1))
            by_mode = {"average": updated.mean(1), "first": updated[:, 0]}
            # The other mode's chain t follows its own value: t' = (1 - m) t + m b, which is
            # u + (1 - m) (t - s) for the u of that mode.
            alt = torch.stack([self.alt_running_mean, self.alt_running_var])
            alt = by_mode[other_mode(self.eval_stats)] + (1 - self.momentum) * (alt - start)
            torch._foreach_copy_(
                [self.running_mean, self.running_var, self.alt_running_mean, self.alt_running_var],
                [*by_mode[self.eval_stats], *alt],
            )
            self.num_batches_tracked.add_(1)
        return unfold_chunks(y, x) if k > 1 else y


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BN whose training statistics cover the whole local batch on every rank.

    Without a process group (or with one rank) this is ``nn.BatchNorm2d``. Otherwise per-channel
    sums, sums of squares and the sample count are summed over ranks in one differentiable
    all-reduce; the running variance uses the unbiased estimate with the global count. It never
    splits the batch into emulated GPUs: synchronized BN means statistics over all GPUs.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not _distributed():
            return super().forward(x)
        self._check_input_dim(x)
        # Sums of squares lose precision in half precision: accumulate in at least float32.
        acc = x if x.dtype == torch.float64 else x.float()
        c = x.shape[1]
        count = torch.full((1,), x.numel() // c, dtype=acc.dtype, device=x.device)
        stats = torch.cat([acc.sum((0, 2, 3)), acc.square().sum((0, 2, 3)), count])
        stats = _AllReduceSum.apply(stats)
        total, total_sq, n = stats[:c], stats[c : 2 * c], stats[2 * c]
        mean = total / n
        var = (total_sq / n - mean.square()).clamp_min(0)
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            unbiased = var.detach() * (n / (n - 1).clamp_min(1))
            self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
            self.num_batches_tracked.add_(1)
        scale = torch.rsqrt(var + self.eps) * self.weight
        shift = self.bias - mean * scale
        y = acc * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)
        return y.to(x.dtype)


def set_emulated_gpus(model: nn.Module, chunks: int) -> None:
    """Make every norm with per-GPU statistics in ``model`` compute them per chunk of the batch.

    A process holding ``chunks`` emulated GPUs receives ``chunks * b`` samples; emulated GPU j
    gets samples j, j + chunks, ... Every :class:`PerGPUStatistics` norm (BN, BRN, EvoNorm-B0,
    the whitening norms) is reached; synchronized BN and batch-independent norms are unaffected.
    """
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks must be a positive integer, got {chunks!r}")
    for module in model.modules():
        if isinstance(module, PerGPUStatistics):
            module.chunks = chunks


def _chains(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """Every moving average of ``model``'s batch norms, by how ranks combine it.

    The chain of mode "first" is GPU 0's (rank 0 broadcasts it), that of "average" the mean
    over GPUs (an all-reduce): a BN's headline statistics follow its ``eval_stats`` (a BN
    without one, torch's or synchronized BN, the default mode), and :class:`BatchNorm2d` keeps
    the other mode too.
    """
    chains: dict[str, list[torch.Tensor]] = {mode: [] for mode in EVAL_STATS}
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            mode = getattr(module, "eval_stats", DEFAULT_EVAL_STATS)
            chains[mode] += [module.running_mean, module.running_var]
            if isinstance(module, BatchNorm2d):
                chains[other_mode(mode)] += [module.alt_running_mean, module.alt_running_var]
        elif isinstance(module, PerGPUStatistics):  # EvoNorm-B0, DBN, IterNorm
            chains[module.eval_stats] += [getattr(module, name) for name in module.running_stats]
    return chains


def sync_running_stats(model: nn.Module) -> None:
    """Make the moving averages of every batch norm in ``model`` agree across ranks.

    Each chain is combined as its mode says (see :func:`_chains`): the result is what one
    process emulating every GPU holds, so real and emulated runs evaluate alike. Every rank
    must call it (it is a collective); without a process group it only fills the alt buffers
    of one-chunk BNs (their two modes are one chain). Rank r's own chains are
    replaced, which changes nothing that is later read: the EMA is linear, so the mean of
    chains that restart from their mean stays the mean, and only GPU 0's "first" chain counts.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BatchNorm2d) and module.chunks == 1:
                module.alt_running_mean.copy_(module.running_mean)
                module.alt_running_var.copy_(module.running_var)
    if not _distributed():
        return
    chains = _chains(model)
    world = dist.get_world_size()
    for group in _by_device_and_dtype(chains["average"]):
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        _scatter_back(flat / world, group)
    for group in _by_device_and_dtype(chains["first"]):
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.broadcast(flat, src=0)
        _scatter_back(flat, group)


@contextmanager
def running_stats_of(model: nn.Module, mode: str) -> Iterator[None]:
    """Evaluate ``model``'s per-GPU batch norms with the moving averages of ``mode`` ("average"
    or "first") instead of their own ``eval_stats``; restored on exit. Other norms unchanged."""
    if mode not in EVAL_STATS:
        raise ValueError(f"mode must be one of {EVAL_STATS}, got {mode!r}")
    swapped = [m for m in model.modules() if isinstance(m, BatchNorm2d) and m.eval_stats != mode]
    for module in swapped:
        _swap_chains(module)
    try:
        yield
    finally:
        for module in swapped:
            _swap_chains(module)


def alt_running_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    """The other-mode moving averages of ``model``'s per-GPU batch norms, for a checkpoint."""
    return {
        f"{name}.{stat}": getattr(module, stat).clone()
        for name, module in model.named_modules()
        if isinstance(module, BatchNorm2d)
        for stat in ("alt_running_mean", "alt_running_var")
    }


def load_alt_running_stats(model: nn.Module, state: dict[str, torch.Tensor] | None) -> None:
    """Restore :func:`alt_running_stats`; a checkpoint without them (an older run) restarts the
    other chain from the headline one, the best estimate it has."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, BatchNorm2d):
                for stat in ("mean", "var"):
                    saved = (state or {}).get(f"{name}.alt_running_{stat}")
                    own = getattr(module, f"running_{stat}")
                    getattr(module, f"alt_running_{stat}").copy_(own if saved is None else saved)


def _swap_chains(module: BatchNorm2d) -> None:
    with torch.no_grad():
        for own, alt in ((module.running_mean, module.alt_running_mean),
                         (module.running_var, module.alt_running_var)):  # fmt: skip
            held = own.clone()
            own.copy_(alt)
            alt.copy_(held)


def _by_device_and_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Group tensors so each group can travel as one flat buffer (one collective per group)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def _scatter_back(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy consecutive slices of ``flat`` back into ``tensors`` in place."""
    offset = 0
    with torch.no_grad():
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()
