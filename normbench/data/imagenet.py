"""ImageNet-style image folders: root/train/<class>/<image> and root/val/<class>/<image>.

Images are decoded from disk per sample (torchvision's ImageFolder), so unlike the in-memory
datasets augmentation is NOT a function of (seed, epoch, sample index): RandomResizedCrop and
RandomHorizontalFlip draw from torch's global random generator of whichever process (DataLoader
worker) loads the sample. A run is reproducible for the same seed, number of processes and
number of workers, but runs that split the same experiment differently (8 real GPUs vs 8
emulated ones, another ``dataset.workers``) see different crops of the same images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision import datasets, transforms

from normbench.data import check_dataset
from normbench.data.memory import subsample
from normbench.errors import UserError

IMAGE_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 256 / 224  # resize the short side to 256, then centre-crop 224

# What PIL raises for a file that is not a readable image (truncated, garbage, unsupported,
# too large to decode safely); OSError also covers a file that cannot be opened at all.
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

log = logging.getLogger(__name__)


def train_transform(size: int) -> Callable:
    """Random-size crop (8-100 % of the area, aspect 3/4-4/3) to size x size, flip, normalize."""
    return transforms.Compose([
        transforms.RandomResizedCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])  # fmt: skip


def eval_transform(size: int) -> Callable:
    """Resize the short side to size * 256/224, centre-crop size x size, normalize."""
    return transforms.Compose([
        transforms.Resize(round(size * EVAL_RESIZE_RATIO)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])  # fmt: skip


class ImageFolderDataset(datasets.ImageFolder):
    """ImageFolder with a policy for unreadable images and an optional seeded subset.

    ``bad_images="fail"``: loading an unreadable file raises UserError naming it. ``"skip"``:
    the next readable sample in index order (wrapping round) is returned instead and the file's
    path is added to :attr:`skipped` (its size is the count). Each DataLoader worker keeps its
    own :attr:`skipped`; every skipped file is also logged as a warning.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable,
        *,
        bad_images: str = "fail",
    ) -> None:
        try:
            super().__init__(str(root), transform=transform)
        except FileNotFoundError as err:  # a class folder without any image file
            raise UserError(f"no images in a class folder of {root}: {err}") from err
        self.bad_images = bad_images
        self.skipped: set[str] = set()

    def keep_only(self, indices: Sequence[int]) -> None:
        """Keep only the samples at ``indices`` (in that order), e.g. a seeded subset."""
        self.samples = [self.samples[i] for i in indices]
        self.targets = [target for _, target in self.samples]
        self.imgs = self.samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        for offset in range(n):
            path, target = self.samples[(index + offset) % n]
            image = self._read(path)
            if image is not None:
                return self.transform(image), target
        raise UserError(f"no readable image among the {n} files of {self.root}")

    def _read(self, path: str) -> Image.Image | None:
        """The image as RGB, or None when it is unreadable and the policy is "skip"."""
        try:
            with open(path, "rb") as file:
                return Image.open(file).convert("RGB")  # convert() decodes the whole file
        except _UNREADABLE as err:
            if self.bad_images == "fail":
                raise UserError(
                    f"unreadable image {path}: {err} (dataset.bad_images=skip skips such files)"
                ) from err
            if path not in self.skipped:
                self.skipped.add(path)
                log.warning(
                    "skipped unreadable image %s: %s (%d skipped in this process)",
                    path, err, len(self.skipped),
                )  # fmt: skip
            return None


def build(
    root: str | Path,
    size: int,
    *,
    seed: int,
    augment: bool,
    bad_images: str,
    train_size: int | None = None,
    val_size: int | None = None,
) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(train, val) datasets of the image folders under ``root``, images size x size.

    The folders are checked first (present, not empty, the same classes) by
    :func:`normbench.data.check_dataset`. ``train_size``/``val_size`` keep a subset chosen by
    ``seed`` (None keeps all). Without ``augment`` the train images get the eval transform.
    """
    check_dataset("imagenet", str(root))
    # The same subset seeds as the in-memory datasets (normbench.data._subsample_pair).
    train = _split(
        Path(root) / "train", train_transform(size) if augment else eval_transform(size),
        bad_images, train_size, seed * 2, "train_size",
    )  # fmt: skip
    val = _split(
        Path(root) / "val", eval_transform(size), bad_images, val_size, seed * 2 + 1, "val_size"
    )
    return train, val


def _split(
    folder: Path, transform: Callable, bad_images: str, keep: int | None, seed: int, what: str
) -> ImageFolderDataset:
    ds = ImageFolderDataset(folder, transform, bad_images=bad_images)
    idx = subsample(len(ds), keep, seed, what)
    if idx is not None:
        ds.keep_only(idx.tolist())
    return ds
