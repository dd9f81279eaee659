"""CIFAR-10 and CIFAR-100 in torchvision's format, loaded whole into uint8 tensors.

torchvision reads (and with ``download`` fetches and checks) the pickled batches under
root/cifar-10-batches-py or root/cifar-100-python; the images then go to memory as one
(N, 3, 32, 32) uint8 tensor for :class:`~normbench.data.memory.InMemoryImageDataset`.
CIFAR-100 uses its 100 fine labels.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from filelock import FileLock
from torchvision import datasets

from normbench.data.memory import resize_uint8
from normbench.errors import UserError

IMAGE_SIZE = 32

# Per-channel mean and std of the training images / 255 (std over all pixels, not the
# often-quoted mean of per-image stds), and the number of classes.
STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], int]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
}

_CLASSES: dict[str, type[datasets.CIFAR10]] = {
    "cifar10": datasets.CIFAR10,
    "cifar100": datasets.CIFAR100,
}
_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

Split = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, 3, 32, 32), int64 labels (N,)


def folder(variant: str, root: str | Path) -> Path:
    """The folder torchvision keeps ``variant``'s files in under ``root``."""
    return Path(root) / _CLASSES[variant].base_folder


def load(variant: str, root: str | Path, *, download: bool = False) -> tuple[Split, Split]:
    """((train images, labels), (test images, labels)) of ``variant`` ("cifar10"/"cifar100").

    Missing files raise UserError unless ``download``, which fetches them into ``root`` first.
    """
    if variant not in _CLASSES:
        raise UserError(f"unknown CIFAR variant '{variant}' (allowed: {', '.join(_CLASSES)})")
    where = folder(variant, root)
    if not download and not where.is_dir():
        raise UserError(
            f"{_LABELS[variant]} not found: no folder {where} (dataset.download=true fetches it "
            f"when online, or copy the extracted {where.name} folder there)"
        )
    lock = nullcontext()
    if download:
        # Every rank of a run builds its datasets: one downloads, the others wait and reuse it.
        Path(root).mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(Path(root) / f".{variant}-download.lock"))
    with lock:
        train = _read_split(variant, root, train=True, download=download)
    return train, _read_split(variant, root, train=False, download=False)


def _read_split(variant: str, root: str | Path, *, train: bool, download: bool) -> Split:
    name, where = _LABELS[variant], folder(variant, root)
    try:
        ds = _CLASSES[variant](str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision: a file is missing or fails its checksum
        raise UserError(
            f"{name} files in {where} are incomplete or corrupt (a file is missing or fails its "
            "checksum); delete the folder and set dataset.download=true to fetch them again"
        ) from err
    except OSError as err:  # no network, no permission, disk full
        action = "download" if download else "read"
        raise UserError(f"could not {action} {name} in {where}: {err}") from err
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # stored as N, H, W, C
    return images, torch.tensor(ds.targets, dtype=torch.int64)


__all__ = ["IMAGE_SIZE", "STATS", "folder", "load", "resize_uint8"]
