"""ImageNet-style image folders: root/train/<class>/<image> and root/val/<class>/<image>.

Images are decoded from disk per sample (torchvision's ImageFolder) with torchvision's
transforms. As for the in-memory datasets, augmentation is a function of (seed, epoch, sample
index): each sample's transform runs with torch's CPU generator seeded from that triple (and the
generator's state restored afterwards), so 8 real GPUs, 8 emulated ones and any number of
DataLoader workers see the same crops of the same images. Call ``set_epoch`` before each epoch.

The train transform is the paper's (fb.resnet.torch's): random-size crop and flip, plus, when
asked, colour jitter (torchvision's ColorJitter) and AlexNet's PCA lighting noise
(:class:`Lighting`, which torchvision lacks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms

from normbench.data.files import UNREADABLE, record_skipped
from normbench.data.memory import EpochCounter, sample_hash, subsample
from normbench.errors import UserError

IMAGE_SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EVAL_RESIZE_RATIO = 256 / 224  # resize the short side to 256, then centre-crop 224
# AlexNet's principal components of ImageNet's RGB pixels in [0, 1] (as fb.resnet.torch has them):
# eigenvalues, and eigenvectors as the columns of the matrix.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

log = logging.getLogger(__name__)


class Lighting:
    """AlexNet's PCA lighting noise on an RGB tensor in [0, 1]: one colour shift per image.

    rgb = eigvec @ (alpha * eigval) with alpha ~ N(0, alphastd^2) per component, added to every
    pixel, so the shift's covariance is eigvec diag((alphastd * eigval)^2) eigvec^T. Unclamped,
    as in fb.resnet.torch. Draws from torch's default generator (seeded per sample by the dataset).
    """

    def __init__(self, alphastd: float) -> None:
        self.alphastd = alphastd
        self.eigval = torch.tensor(PCA_EIGVAL)
        self.eigvec = torch.tensor(PCA_EIGVEC)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        alpha = torch.randn(3) * self.alphastd
        rgb = self.eigvec @ (alpha * self.eigval)
        return image + rgb.view(3, 1, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alphastd={self.alphastd})"


def train_transform(size: int, color_jitter: float = 0.0, lighting: float = 0.0) -> Callable:
    """Random-size crop (8-100 % of the area, aspect 3/4-4/3) to size x size, flip, normalize.

    ``color_jitter`` > 0: brightness, contrast and saturation factors each drawn from
    [1 - color_jitter, 1 + color_jitter], applied in random order (ColorJitter does both, as
    fb.resnet.torch). ``lighting`` > 0: :class:`Lighting` with that alphastd, on the [0, 1]
    tensor before normalization. 0 leaves a step out.
    """
    steps: list[Callable] = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()]
    if color_jitter:
        strength = {key: color_jitter for key in ("brightness", "contrast", "saturation")}
        steps.append(transforms.ColorJitter(**strength))
    steps.append(transforms.ToTensor())
    if lighting:
        steps.append(Lighting(lighting))
    steps.append(transforms.Normalize(MEAN, STD))
    return transforms.Compose(steps)


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
    own :attr:`skipped`; every skipped file is also logged as a warning and appended to
    ``skipped_file`` when given, which every worker and rank of a run share: its distinct lines
    are the images the run went without.
    The random transform of sample ``index`` is fixed by (``seed``, epoch, ``index``).
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable,
        *,
        bad_images: str = "fail",
        seed: int = 0,
        skipped_file: Path | None = None,
    ) -> None:
        try:
            super().__init__(str(root), transform=transform)
        except FileNotFoundError as err:  # a class folder without any image file
            raise UserError(f"no images in a class folder of {root}: {err}") from err
        self.bad_images = bad_images
        self.skipped: set[str] = set()
        self.skipped_file = skipped_file
        self.seed = seed
        self.epoch = EpochCounter()

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of this epoch (seen by DataLoader workers too)."""
        self.epoch.set(epoch)

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
                return self._transform(image, index), target
        raise UserError(f"no readable image among the {n} files of {self.root}")

    def _transform(self, image: Image.Image, index: int) -> torch.Tensor:
        """The transform, drawing its randomness from a generator seeded by the sample."""
        key = sample_hash(self.seed, self.epoch.get(), np.array([index % len(self.samples)]))
        with torch.random.fork_rng(devices=[]):  # restores the CPU generator afterwards
            torch.default_generator.manual_seed(int(key[0] >> 1))
            return self.transform(image)

    def _read(self, path: str) -> Image.Image | None:
        """The image as RGB, or None when it is unreadable and the policy is "skip"."""
        try:
            with open(path, "rb") as file:
                return Image.open(file).convert("RGB")  # convert() decodes the whole file
        except UNREADABLE as err:
            if self.bad_images == "fail":
                raise UserError(
                    f"unreadable image {path}: {err} (dataset.bad_images=skip skips such files)"
                ) from err
            record_skipped(self.skipped, path, err, self.skipped_file)
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
    color_jitter: float = 0.0,
    lighting: float = 0.0,
    skipped_file: Path | None = None,
) -> tuple[ImageFolderDataset, ImageFolderDataset]:
    """(train, val) datasets of the image folders under ``root``, images size x size.

    The folders are checked first (:func:`check_folders`). ``train_size``/``val_size`` keep a
    subset chosen by ``seed`` (None keeps all). Without ``augment`` the train images get the
    eval transform (neither colour jitter nor lighting); with it, :func:`train_transform`'s
    options apply.
    ``skipped_file``: where skipped unreadable files are recorded (see ImageFolderDataset).
    """
    check_folders(Path(root))
    train_tf = train_transform(size, color_jitter, lighting) if augment else eval_transform(size)
    # Subset seeds as for the in-memory datasets (normbench.data._subsample_pair).
    policy = {"bad_images": bad_images, "skipped_file": skipped_file}
    train = _split(Path(root) / "train", train_tf, seed, train_size, seed * 2, **policy)
    val = _split(Path(root) / "val", eval_transform(size), seed, val_size, seed * 2 + 1, **policy)
    return train, val


def check_folders(root: Path) -> None:
    """root/train/<class>/ and root/val/<class>/: present, not empty, the same classes; each
    fault is one UserError line. Only folders are listed: no image is read."""
    classes: dict[str, list[str]] = {}
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir():
            raise UserError(
                f"no folder {folder} (ImageFolder data needs {root}/train/<class>/<image> "
                f"and {root}/val/<class>/<image>)"
            )
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
        if not names:
            raise UserError(f"{folder} holds no class folders (expected {folder}/<class>/<image>)")
        empty = [n for n in names if not _has_entries(folder / n)]
        if empty:
            raise UserError(
                f"class folder {folder / empty[0]} is empty ({len(empty)} of {len(names)} "
                f"class folders in {folder} hold no images)"
            )
        classes[split] = names
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise UserError(
            f"train and val classes differ in {root}: only in train: "
            f"{', '.join(only_train[:5]) or '-'}; only in val: {', '.join(only_val[:5]) or '-'}"
        )


def _has_entries(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(not entry.name.startswith(".") for entry in entries)


def _split(
    folder: Path,
    transform: Callable,
    seed: int,
    keep: int | None,
    subset_seed: int,
    *,
    bad_images: str,
    skipped_file: Path | None,
) -> ImageFolderDataset:
    ds = ImageFolderDataset(
        folder, transform, bad_images=bad_images, seed=seed, skipped_file=skipped_file
    )
    what = f"{folder.name}_size"
    idx = subsample(len(ds), keep, subset_seed, what)
    if idx is not None:
        ds.keep_only(idx.tolist())
    return ds
