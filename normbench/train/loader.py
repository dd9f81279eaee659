"""Data loaders that keep the paper's per-GPU semantics on any number of processes.

Training: one seeded permutation per epoch, shared by every rank; rank r takes every
``world_size``-th index from position r (DistributedSampler's split), and its batch holds
``batch x gpus/world_size`` samples, so emulated GPU j of rank r sees exactly what real GPU
``r + world_size*j`` would. A resumed epoch skips the batches already trained on.

Validation: every sample exactly once over all ranks, no padding (a padding sampler counts some
images twice and biases the error).
"""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from normbench.data import DatasetBundle
from normbench.errors import UserError


class TrainSampler(DistributedSampler):
    """DistributedSampler (drop_last, shuffled by seed + epoch) that can start mid-epoch."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.skip = 0

    def set_position(self, epoch: int, skip_samples: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class ValSampler(Sampler[int]):
    """This rank's share of the validation set, without padding."""

    def __init__(self, size: int, *, num_replicas: int, rank: int) -> None:
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Loader(DataLoader):
    """A DataLoader whose user errors read the same with or without worker processes.

    torch re-raises an error from a worker process with the worker's whole traceback as its
    message ("Caught UserError in DataLoader worker process 0. Original Traceback ..."); the
    command line would print all of it. The message the dataset raised is the traceback's
    last line, and it is what the caller gets here.
    """

    def __iter__(self) -> Iterator:
        return _UnwrappedErrors(super().__iter__())


class _UnwrappedErrors:
    def __init__(self, batches: Iterator) -> None:
        self._batches = batches

    def __iter__(self) -> Iterator:
        return self

    def __next__(self):
        try:
            return next(self._batches)
        except UserError as e:
            raise type(e)(worker_error_message(str(e))) from None


_RAISED_LINE = re.compile(r"^[\w.]+: (.*)$")  # "normbench.errors.UserError: <message>"


def worker_error_message(text: str) -> str:
    """The message a worker process raised, from torch's re-raised text (else `text` itself)."""
    if not text.startswith("Caught "):
        return text
    last = _RAISED_LINE.match(text.rstrip().splitlines()[-1])
    return last.group(1) if last else text


def build_loaders(
    data: DatasetBundle, *, batch_per_rank: int, val_batch_per_rank: int, world_size: int,
    rank: int, seed: int, workers: int, pin_memory: bool,
) -> tuple[Loader, Loader, TrainSampler]:  # fmt: skip
    train_sampler = TrainSampler(data.train, num_replicas=world_size, rank=rank, seed=seed)
    common = {
        "num_workers": workers,
        "pin_memory": pin_memory,
        "collate_fn": data.collate_fn,
        "persistent_workers": workers > 0,
        "multiprocessing_context": worker_context(data.train) if workers > 0 else None,
    }
    train = Loader(
        data.train, batch_size=batch_per_rank, sampler=train_sampler, drop_last=True, **common
    )
    val_sampler = ValSampler(len(data.val), num_replicas=world_size, rank=rank)
    val = Loader(data.val, batch_size=val_batch_per_rank, sampler=val_sampler, **common)
    return train, val, train_sampler


def worker_context(dataset: Dataset) -> multiprocessing.context.BaseContext | None:
    """How loader workers start where this process would spawn them: from a fork server that
    has torch and the dataset's module imported. Ranks started by torchrun's elastic agent are
    spawned, and spawn is what they hand on, so each loader worker would import torch anew
    (seconds each); a fork server does that once per rank, and unlike forking the rank itself
    (which holds the process group's threads) it forks a process that runs no threads. None
    (the default start method) everywhere else; asking does not fix the process's method."""
    if multiprocessing.get_start_method(allow_none=True) != "spawn":
        return None
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", type(dataset).__module__])
    return context


def steps_per_epoch(train_size: int, total_batch: int) -> int:
    """Optimizer steps per epoch: the same for any split of the experiment's GPUs into processes."""
    return train_size // total_batch


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, channels_last: bool):
    images, labels = batch
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    return images, labels.to(device, non_blocking=True)
