"""BN diagnostics: where a small-batch penalty comes from, measured on the finished network.

BN normalizes with the statistics of each GPU's batch while training and with fixed estimates
at test time. EvalNorm (Singh & Shrivastava 2019) and "Rethinking 'Batch' in BatchNorm" (Wu &
Johnson 2021) show that much of BN's small-batch error is this train/test inconsistency rather
than a worse network. After training, a cell with per-GPU batch statistics measures its val error
with the same weights under four ways of normalizing:

- ``ema_average``: the moving averages, averaged over GPUs;
- ``ema_first``: GPU 0's moving averages (what the paper's Caffe2 code evaluated with);
- ``precise``: population statistics recomputed with the final weights over many training
  images (PreciseBN), every batch split per (emulated) GPU exactly as in training, so each layer's
  statistics describe the inputs it saw while training;
- ``batch``: the val set normalized in batches of ``batch`` images by their own statistics
  (train-mode normalization, nothing updated): exactly what the network saw while training.
  The batches are cut from a seeded permutation of the val set, as training's are from a
  shuffled train set: a val set stored class by class (ImageNet's val folder) cut in order
  would give batches of a single class, which no training batch is.

If ``batch`` is much better than the moving averages, the penalty is in the evaluation
statistics; if ``batch`` itself is bad, it is in what training at that batch size learned.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import islice

import torch
from torch import nn
from torch.utils.data import DataLoader

from normbench.norms import BatchNorm2d, running_stats_of, set_emulated_gpus
from normbench.norms.batch import other_mode
from normbench.train.distributed import DistEnv, all_reduce_sum
from normbench.train.loader import ValSampler

MODES = ("ema_average", "ema_first", "precise", "batch")

# evaluate(model, loader) -> val error in percent over the whole val set (all ranks)
Evaluate = Callable[[nn.Module, DataLoader], float]


def has_per_gpu_statistics(model: nn.Module) -> bool:
    """Whether any layer normalizes with per-GPU batch statistics (bn, brn)."""
    return any(isinstance(m, BatchNorm2d) for m in model.modules())


def bn_diagnostics(
    model: nn.Module,
    *,
    train_loader: DataLoader,
    val_loader: DataLoader,
    evaluate: Evaluate,
    batch: int,
    chunks: int,
    precise_batches: int,
    env: DistEnv,
    headline: tuple[str, float],
    seed: int,
) -> dict[str, float]:
    """Val error (%) of ``model`` under every mode of :data:`MODES`, plus the seconds it took.

    ``model`` must hold moving averages already combined over ranks (the loop's
    ``sync_running_stats``); it is left exactly as it came, buffers and chunks included.
    ``precise_batches`` batches of ``train_loader`` (its batches are this rank's training
    batches, ``batch x chunks`` images) give the population statistics. ``headline`` is the
    model's own mode and the val error the loop measured with it after the last epoch (the
    same weights and statistics): that one is taken, not measured again. ``seed`` permutes the
    val set before the ``batch`` mode cuts it into batches.
    """
    started = time.perf_counter()
    own_mode, own_error = headline
    errors = {f"ema_{own_mode}": own_error}
    with running_stats_of(model, other_mode(own_mode)):
        errors[f"ema_{other_mode(own_mode)}"] = evaluate(model, val_loader)
    with _precise_statistics(model, islice(train_loader, precise_batches), env):
        errors["precise"] = evaluate(model, val_loader)
    errors["batch"] = _batch_statistics_error(model, val_loader, batch, chunks, env, seed)
    return {**{mode: errors[mode] for mode in MODES}, "seconds": time.perf_counter() - started}


@contextmanager
def _kept_buffers(model: nn.Module) -> Iterator[None]:
    """Whatever a forward pass in train mode changes in the buffers is undone on exit."""
    saved = [(b, b.clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextmanager
def _precise_statistics(model: nn.Module, batches, env: DistEnv) -> Iterator[None]:
    """Evaluate with population statistics of every per-GPU BN's input (PreciseBN).

    The batches run through the network in train mode, so each layer normalizes per emulated
    GPU as in training and the next layer's inputs are those training produced; each layer's
    mean and variance are accumulated over every pixel of every image, summed over ranks.
    """
    layers = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    sums = {m: torch.zeros(3, m.num_features, dtype=torch.float64, device=env.device)
            for m in layers}  # fmt: skip

    def accumulate(module: BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        x = inputs[0].detach().to(torch.float64)
        sums[module] += torch.stack([
            x.sum((0, 2, 3)), x.square().sum((0, 2, 3)),
            torch.full_like(x[0, :, 0, 0], x.numel() / x.shape[1]),
        ])  # fmt: skip

    with _kept_buffers(model):
        handles = [m.register_forward_pre_hook(accumulate) for m in layers]
        was_training = model.training
        model.train()
        try:
            with torch.no_grad():
                for images, _ in batches:
                    model(images.to(env.device, non_blocking=True))
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        with torch.no_grad():
            for module in layers:
                total, total_sq, count = all_reduce_sum(sums[module], env)
                mean = total / count
                variance = (total_sq / count - mean.square()).clamp_min(0) * count / (count - 1)
                module.running_mean.copy_(mean)
                module.running_var.copy_(variance)
        yield


def _batch_statistics_error(
    model: nn.Module, val_loader: DataLoader, batch: int, chunks: int, env: DistEnv, seed: int
) -> float:
    """Val error with every batch of ``batch`` val images normalized by its own statistics."""
    sampler = val_loader.sampler
    assert isinstance(sampler, ValSampler)
    indices = permuted(sampler.indices, len(val_loader.dataset), seed)
    loader = DataLoader(
        val_loader.dataset, batch_sampler=per_gpu_batches(indices, batch, chunks),
        collate_fn=val_loader.collate_fn,
    )  # fmt: skip
    totals = torch.zeros(2, dtype=torch.float64, device=env.device)
    with _kept_buffers(model), torch.no_grad():
        set_emulated_gpus(model, 1)  # each forward is one GPU's batch
        model.train()
        try:
            for images, labels in loader:
                logits = model(images.to(env.device))
                labels = labels.to(env.device)
                wrong = (logits.argmax(1) != labels).sum().to(torch.float64)
                totals += torch.stack([wrong, wrong.new_tensor(labels.numel())])
        finally:
            set_emulated_gpus(model, chunks)
            model.eval()
    errors, count = all_reduce_sum(totals, env).tolist()
    return 100.0 * errors / count


def permuted(positions: list[int], size: int, seed: int) -> list[int]:
    """The images at ``positions`` of a ``seed``-permuted order of all ``size`` val images.

    Every rank draws the same permutation and takes its sampler's positions in it, so the ranks
    still share the val set out exactly once, and their batches are those one process emulating
    every GPU cuts (see :func:`per_gpu_batches`).
    """
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return [order[position] for position in positions]


def per_gpu_batches(indices: list[int], batch: int, chunks: int) -> list[list[int]]:
    """This rank's val indices as the batches its ``chunks`` GPUs would see.

    The rank's share interleaves its GPUs as training does (GPU j takes positions j, j + chunks,
    ...), and each GPU's share is cut into batches of ``batch`` (its last one may be smaller):
    one process emulating every GPU and several real ones form the very same batches.
    """
    return [
        share[start : start + batch]
        for share in (indices[j::chunks] for j in range(chunks))
        for start in range(0, len(share), batch)
    ]
