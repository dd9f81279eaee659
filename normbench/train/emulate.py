"""Emulated GPUs in detection: one training forward per emulated GPU.

In classification a process that emulates k GPUs folds its batch, so that every norm with
per-GPU statistics normalizes each GPU's images apart (:mod:`normbench.norms.batch`). A
detector cannot fold: its box and mask heads see RoIs, not images, whose order does not follow
the images' (and whose count need not divide by k), so folding there would mix GPUs. Instead
:func:`emulated_forward` runs the detector's training forward once per emulated GPU j, on
images j, j + k, j + 2k, ... (the assignment of :func:`~normbench.norms.batch.fold_chunks` and
of DistributedSampler), and averages the k loss dicts: the gradient of the average is the
average of the k GPUs' gradients, which DDP all-reduces.

Each forward sees exactly what one GPU sees, so everything per GPU is exact, not only the
norms' statistics: torchvision's losses are means over the sampled anchors and RoIs of one
forward's images (the mask loss over its positive RoIs, so one forward over every GPU's images
would weigh the GPUs by their RoI counts), and images are padded to the largest of one forward
(which GN's and BN's statistics include). Batch-independent norms (GN, frozen BN) therefore run
one forward per GPU too.

Norms with per-GPU statistics (:class:`~normbench.norms.batch.PerGPUStatistics`) run with
``chunks = 1`` during those forwards, each starting its moving averages from the same values;
afterwards they hold the mean over GPUs (``eval_stats="average"``) or GPU 0's (``"first"``), and
BN's second chain (the other mode, ``alt_running_*``) is advanced likewise: what k GPUs followed
by :func:`~normbench.norms.batch.sync_running_stats` hold. Batch Renorm is refused (one line):
its training forward reads the moving averages, which k GPUs keep apart between syncs.

Synchronized BN is the exception: its statistics cover every GPU's images, which sequential
forwards cannot share, so a SyncBN detector runs ONE forward over the process's k * b images.
Its BN statistics are then exactly those of k synchronized GPUs (across processes,
:class:`~normbench.norms.batch.SyncBatchNorm2d` all-reduces them); its loss normalization and
padding are the process's instead of each GPU's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from normbench.errors import UserError
from normbench.norms import BatchNorm2d, BatchRenorm2d, PerGPUStatistics, SyncBatchNorm2d
from normbench.norms.batch import other_mode

__all__ = ["emulated_forward"]

Target = dict[str, Any]


def emulated_forward(
    model: nn.Module, images: Sequence[torch.Tensor], targets: Sequence[Target], chunks: int
) -> dict[str, torch.Tensor]:
    """The training losses of ``model`` (a torchvision detector) on ``images`` and ``targets``
    as ``chunks`` GPUs would compute them under DDP: each loss averaged over the GPUs.

    ``chunks`` emulated GPUs hold ``len(images) / chunks`` images each, GPU j images j,
    j + chunks, ...; its norms with per-GPU statistics must have been told the same number
    (:func:`~normbench.norms.set_emulated_gpus`), so that running statistics are combined the
    same way in evaluation and checkpoints. See the module's docstring for what is exact.
    """
    if not model.training:
        raise ValueError("emulated_forward is a training forward: call model.train() first")
    if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
        raise ValueError(f"chunks must be a positive integer, got {chunks!r}")
    if len(images) != len(targets) or len(images) % chunks:
        raise ValueError(
            f"{len(images)} images and {len(targets)} targets cannot be split between "
            f"{chunks} emulated GPUs (need as many targets as images, a multiple of {chunks})"
        )
    norms = [m for m in model.modules() if isinstance(m, PerGPUStatistics)]
    told = {m.chunks for m in norms} - {chunks}
    if told:
        raise ValueError(
            f"the model's per-GPU norms emulate {sorted(told)} GPUs, not {chunks}: call "
            f"set_emulated_gpus(model, {chunks}) first"
        )
    synchronized = any(isinstance(m, SyncBatchNorm2d) for m in model.modules())
    if chunks == 1 or synchronized:
        return model(list(images), list(targets))
    _refuse_inexact(norms)
    own = {m: _state(m) for m in norms}
    per_gpu: list[dict[str, torch.Tensor]] = []
    after: list[dict[nn.Module, list[torch.Tensor]]] = []
    with _one_chunk(norms):
        try:
            for j in range(chunks):
                # Each GPU updates its own copy of the moving averages: fresh tensors, as the
                # kernels save the ones they update for backward (an in-place reset between
                # forwards would invalidate the earlier GPUs' graphs).
                _set_state({m: [t.clone() for t in values] for m, values in own.items()})
                per_gpu.append(model(list(images[j::chunks]), list(targets[j::chunks])))
                after.append({m: _state(m) for m in norms})
        finally:
            _set_state(own)
    _combine(own, after)
    return {key: torch.stack([losses[key] for losses in per_gpu]).mean() for key in per_gpu[0]}


def _refuse_inexact(norms: list[nn.Module]) -> None:
    for module in norms:
        if isinstance(module, BatchRenorm2d):
            raise UserError(
                "brn cannot emulate several GPUs in one process in detection: Batch Renorm's "
                "training forward reads moving averages that each GPU keeps apart (allowed: "
                "devices=gpus, one process per GPU, or another norm)"
            )


@contextmanager
def _one_chunk(norms: list[nn.Module]) -> Iterator[None]:
    """Each forward is one GPU's: per-GPU norms see one chunk; restored on exit."""
    told = [m.chunks for m in norms]
    for module in norms:
        module.chunks = 1
    try:
        yield
    finally:
        for module, chunks in zip(norms, told, strict=True):
            module.chunks = chunks


def _buffers(module: nn.Module) -> list[str]:
    """The buffers one GPU's forward changes: the moving averages (and BN's batch counter)."""
    names = [name for name in module.running_stats if getattr(module, name) is not None]
    return names + ["num_batches_tracked"] if isinstance(module, BatchNorm2d) else names


def _state(module: nn.Module) -> list[torch.Tensor]:
    """The tensors now held as ``module``'s per-GPU buffers (not copies)."""
    return [getattr(module, name) for name in _buffers(module)]


def _set_state(state: dict[nn.Module, list[torch.Tensor]]) -> None:
    """Make ``state``'s tensors the modules' buffers (the tensors themselves, not copies)."""
    for module, values in state.items():
        for name, value in zip(_buffers(module), values, strict=True):
            setattr(module, name, value)


def _pick(values: list[torch.Tensor], mode: str) -> torch.Tensor:
    """The GPUs' values combined as ``mode`` says: their mean ("average") or GPU 0's."""
    return torch.stack(values).mean(0) if mode == "average" else values[0]


def _combine(
    own: dict[nn.Module, list[torch.Tensor]], after: list[dict[nn.Module, list[torch.Tensor]]]
) -> None:
    """Set every per-GPU norm's moving averages (``own``, the values every GPU started from)
    to the combination of its k GPUs' updates, in place."""
    with torch.no_grad():
        for module, before in own.items():
            gpus = [state[module] for state in after]
            if isinstance(module, BatchNorm2d):
                _combine_batch_norm(module, before, gpus)
            else:
                for i, name in enumerate(_buffers(module)):
                    getattr(module, name).copy_(_pick([g[i] for g in gpus], module.eval_stats))


def _combine_batch_norm(
    bn: BatchNorm2d, before: list[torch.Tensor], gpus: list[list[torch.Tensor]]
) -> None:
    """BN's headline chain, its other-mode chain and its batch counter after k GPUs' updates.

    GPU j moved the headline values s to u_j = (1 - m) s + m b_j (its batch statistics b_j) if
    the module ran in its forward, else left them at s. The other chain t moves the same way
    from its own value: (1 - m) t + m b_j = u_j + (1 - m) (t - s), or stays t.
    """
    *shared, count = before
    alt = [bn.alt_running_mean, bn.alt_running_var]
    ran = [bool(g[2] != count) for g in gpus]
    alt_per_gpu = [
        [u + (1 - bn.momentum) * (t - s) for u, s, t in zip(g[:2], shared, alt, strict=True)]
        if r
        else alt
        for g, r in zip(gpus, ran, strict=True)
    ]
    for i, own in enumerate((bn.running_mean, bn.running_var)):
        own.copy_(_pick([g[i] for g in gpus], bn.eval_stats))
    other = other_mode(bn.eval_stats)
    for i, chain in enumerate(alt):
        chain.copy_(_pick([g[i] for g in alt_per_gpu], other))
    bn.num_batches_tracked.copy_(count + any(ran))
