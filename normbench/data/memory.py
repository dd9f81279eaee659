"""In-memory image datasets with batched, deterministic augmentation.

Small datasets (synthetic, Fashion-MNIST, CIFAR) live in memory as one uint8 tensor. Fetching a
batch through ``__getitems__`` crops, flips and normalizes the whole batch with a few tensor ops,
so a 2-core laptop spends its time training rather than in per-image Python.

Augmentation randomness is a pure function of (seed, epoch, sample index): the same sample gets
the same crop and flip whichever process, worker or batch loads it. This is what makes a run on
8 real processes and a run with 8 emulated GPUs in one process see exactly the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from normbench.errors import UserError

_U64 = np.uint64


class Batch(NamedTuple):
    """A batch that is already stacked: images (B, C, H, W) float, labels (B,) int64."""

    images: torch.Tensor
    labels: torch.Tensor


def collate(batch: Any) -> Any:
    """DataLoader collate_fn: pass pre-stacked batches through, stack per-item samples otherwise."""
    if isinstance(batch, Batch):
        return batch.images, batch.labels
    return tuple(default_collate(batch))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Scramble uint64 values (SplitMix64 finalizer): a cheap counter-based hash."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def sample_hash(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """A 64-bit random-looking value per sample, fixed by (seed, epoch, index)."""
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=_U64))
    key = _splitmix64(key ^ np.array([epoch & 0xFFFFFFFFFFFFFFFF], dtype=_U64))
    return _splitmix64(key ^ indices.astype(_U64))


class EpochCounter:
    """The current epoch, held in shared memory.

    DataLoader workers get a copy of the dataset when they start and persistent workers keep it
    for the whole run, so a plain attribute set by ``set_epoch`` in the main process would never
    reach them; a shared-memory tensor does (under fork and spawn alike).
    """

    def __init__(self) -> None:
        self._value = torch.zeros((), dtype=torch.int64).share_memory_()

    def get(self) -> int:
        return int(self._value)

    def set(self, epoch: int) -> None:
        self._value.fill_(epoch)


def crop_flip_params(
    seed: int, epoch: int, indices: np.ndarray, pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample crop offsets in [0, 2*pad] (dy, dx) and a flip flag, from (seed, epoch, index)."""
    h = sample_hash(seed, epoch, indices)
    span = _U64(2 * pad + 1)
    dy = (h % span).astype(np.int64)
    dx = ((h >> _U64(21)) % span).astype(np.int64)
    flip = ((h >> _U64(42)) & _U64(1)).astype(bool)
    return torch.from_numpy(dy), torch.from_numpy(dx), torch.from_numpy(flip)


def crop_flip(
    images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Zero-pad each image by ``pad``, take the crop at (dy, dx), mirror where ``flip``.

    One gather for the whole batch: row and column indices per sample, with the column order
    reversed for flipped samples.
    """
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = dy[:, None] + torch.arange(h)
    cols = torch.arange(w).expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]
    batch = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


class InMemoryImageDataset(Dataset):
    """uint8 images (N, C, H, W) and int64 labels (N,) held in memory.

    Items are (normalized float image (C, H, W), int label). ``__getitems__`` returns a
    :class:`Batch` (already stacked and augmented); use :func:`collate` as the loader's collate_fn.
    With ``augment``, each sample is zero-padded by ``pad`` pixels, randomly cropped back to its
    size and mirrored with probability 1/2, the randomness fixed by (seed, epoch, index); call
    :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: bool = False,
        pad: int = 4,
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {tuple(labels.shape)} != ({images.shape[0]},)")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.augment = augment
        self.pad = pad
        self.seed = seed
        self.epoch = EpochCounter()
        # x_normalized = x_uint8 * scale + shift, per channel.
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def __len__(self) -> int:
        return self.images.shape[0]

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of this epoch (same role as DistributedSampler.set_epoch)."""
        self.epoch.set(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.__getitems__([index])
        return images[0], int(labels[0])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        images = self.images[idx]
        if self.augment and self.pad > 0:
            dy, dx, flip = crop_flip_params(self.seed, self.epoch.get(), idx.numpy(), self.pad)
            images = crop_flip(images, dy, dx, flip, self.pad)
        images = images.float().mul_(self._scale).add_(self._shift)
        return Batch(images, self.labels[idx])


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a uint8 (N, C, H, W) tensor to size x size (bilinear, antialiased), in chunks."""
    if images.shape[-2:] == (size, size):
        return images
    chunks = [
        torch.nn.functional.interpolate(
            part.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for part in images.split(4096)
    ]
    return torch.cat(chunks)


def subsample(n: int, size: int | None, seed: int, what: str) -> torch.Tensor | None:
    """Indices of a seeded random subset of ``size`` out of ``n`` (sorted), or None for all."""
    if size is None or size == n:
        return None
    if size <= 0 or size > n:
        raise UserError(f"{what} {size} out of range (allowed: 1..{n})")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:size].sort().values
