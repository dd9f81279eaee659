"""Datasets: one builder per dataset, all behind :func:`build_datasets`.

Every builder returns a :class:`DatasetBundle` whose items are (normalized float image (C, H, W),
int label). In-memory datasets also fetch whole batches through ``__getitems__``; pass the
bundle's ``collate_fn`` to the DataLoader so those batches go through unchanged. Train datasets
have ``set_epoch(epoch)``: augmentation is a function of (seed, epoch, sample index).

Where files are: one rule for every dataset, :func:`dataset_dir`: dataset.root when given, else
<data root>/<dataset name>, the data root being $NORMBENCH_DATA, else the user's cache
(:func:`data_root`). Downloads go there too. Fashion-MNIST also reads the Debian package's
folder (see :mod:`normbench.data.fashion_mnist`).

Detection datasets (:func:`list_detection_datasets`) are COCO-format folders, built by
:mod:`normbench.data.detection`: real COCO 2017 (``coco``) and the CPU mini's scenes of
Fashion-MNIST items (``fashion_scenes``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from normbench.config import BAD_IMAGE_POLICIES
from normbench.data.memory import InMemoryImageDataset, collate, subsample
from normbench.errors import UserError


@dataclass
class DatasetBundle:
    """A train/val pair and what a model needs to know about it."""

    train: Dataset
    val: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    collate_fn: Callable | None


@dataclass(frozen=True)
class _Request:
    """build_datasets' arguments, passed whole to each builder."""

    root: str | None
    seed: int
    image_size: int | None
    train_size: int | None
    val_size: int | None
    augment: bool
    download: bool
    bad_images: str
    color_jitter: float
    lighting: float
    skipped_file: Path | None


def _build_synthetic(req: _Request) -> DatasetBundle:
    from normbench.data import synthetic

    size, n_train, n_val = req.image_size, req.train_size, req.val_size  # given: check_sizes
    train_x, train_y = synthetic.generate(n_train, size, req.seed, "train")
    val_x, val_y = synthetic.generate(n_val, size, req.seed, "val")
    pad = max(1, size // 8)
    return _in_memory_bundle(
        (train_x, train_y), (val_x, val_y), synthetic.MEAN, synthetic.STD, pad, req,
        num_classes=synthetic.NUM_CLASSES,
    )  # fmt: skip


def _build_fashion_mnist(req: _Request) -> DatasetBundle:
    from normbench.data import fashion_mnist

    (train_x, train_y), (val_x, val_y) = fashion_mnist.load(dataset_dir("fashion_mnist", req.root))
    size = req.image_size or fashion_mnist.IMAGE_SIZE
    train_x, val_x = fashion_mnist.fit_size(train_x, size), fashion_mnist.fit_size(val_x, size)
    pad = max(1, round(size / 14))  # 2 pixels at 28 x 28
    train, val = _subsample_pair((train_x, train_y), (val_x, val_y), req)
    return _in_memory_bundle(
        train, val, fashion_mnist.MEAN, fashion_mnist.STD, pad, req,
        num_classes=fashion_mnist.NUM_CLASSES,
    )  # fmt: skip


def _cifar_builder(variant: str) -> Callable[[_Request], DatasetBundle]:
    def build(req: _Request) -> DatasetBundle:
        from normbench.data import cifar

        root = dataset_dir(variant, req.root)
        (train_x, train_y), (val_x, val_y) = cifar.load(variant, root, download=req.download)
        size = req.image_size or cifar.IMAGE_SIZE
        train_x, val_x = cifar.resize_uint8(train_x, size), cifar.resize_uint8(val_x, size)
        mean, std, num_classes = cifar.STATS[variant]
        train, val = _subsample_pair((train_x, train_y), (val_x, val_y), req)
        pad = max(1, size // 8)  # 4 pixels at 32 x 32
        return _in_memory_bundle(train, val, mean, std, pad, req, num_classes=num_classes)

    return build


def _build_imagenet(req: _Request) -> DatasetBundle:
    from normbench.data import imagenet

    root = dataset_dir("imagenet", req.root)
    size = req.image_size or imagenet.IMAGE_SIZE
    train, val = imagenet.build(
        root, size, seed=req.seed, augment=req.augment, bad_images=req.bad_images,
        train_size=req.train_size, val_size=req.val_size, color_jitter=req.color_jitter,
        lighting=req.lighting, skipped_file=req.skipped_file,
    )  # fmt: skip
    return DatasetBundle(train, val, len(train.classes), 3, size, collate)


_BUILDERS: dict[str, tuple[Callable[[_Request], DatasetBundle], str]] = {
    "synthetic": (
        _build_synthetic,
        "generated 10-class textures under photometric nuisances, RGB, any size (no files)",
    ),
    "fashion_mnist": (
        _build_fashion_mnist,
        "Fashion-MNIST, 10 classes, 28x28 grey, 60k/10k (IDX files; downloaded, or Debian's)",
    ),
    "cifar10": (
        _cifar_builder("cifar10"),
        "CIFAR-10, 10 classes, 32x32 RGB, 50k/10k (torchvision)",
    ),
    "cifar100": (
        _cifar_builder("cifar100"),
        "CIFAR-100, 100 classes, 32x32 RGB, 50k/10k (torchvision)",
    ),
    "imagenet": (
        _build_imagenet,
        "ImageNet-style folders root/train/<class>/*, root/val/<class>/*, 224x224 crops",
    ),
}


def list_datasets() -> list[tuple[str, str]]:
    """(name, one-line description) of every dataset, sorted by name."""
    return sorted((name, desc) for name, (_, desc) in _BUILDERS.items())


def data_root() -> Path:
    """The folder that holds a folder per dataset when dataset.root is not given:
    $NORMBENCH_DATA, else normbench/data in the user's cache ($XDG_CACHE_HOME, else ~/.cache)."""
    if os.environ.get("NORMBENCH_DATA"):
        return Path(os.environ["NORMBENCH_DATA"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "normbench" / "data"


def dataset_dir(name: str, root: str | None) -> Path:
    """Where dataset ``name``'s files are read from and downloaded to: ``root`` (dataset.root)
    when given, else :func:`data_root`/``name``."""
    return Path(root) if root else data_root() / name


def build_datasets(
    name: str,
    root: str | None,
    *,
    seed: int,
    image_size: int | None,
    train_size: int | None,
    val_size: int | None,
    augment: bool,
    download: bool,
    bad_images: str,
    color_jitter: float = 0.0,
    lighting: float = 0.0,
    skipped_file: Path | None = None,
) -> DatasetBundle:
    """Build the train and validation datasets called ``name``.

    ``root``: where the files are (None: the dataset's default places). ``seed`` fixes synthetic
    data, subsets and augmentation. ``image_size``/``train_size``/``val_size``: None keeps the
    dataset's own (synthetic data have none: it needs all three, see :func:`check_sizes`).
    ``download``: fetch missing CIFAR files (Fashion-MNIST's are fetched by
    :func:`check_dataset`, before any worker starts). ``bad_images``: what ImageFolder data
    does with unreadable files, one of BAD_IMAGE_POLICIES. ``color_jitter``/``lighting``: the
    paper's extra ImageNet train augmentation, 0 = off (see :func:`check_augment_options`).
    ``skipped_file``: where ImageFolder data records each unreadable file it skips (a run's
    total over workers and ranks: its distinct lines).
    """
    if name not in _BUILDERS:
        raise UserError(f"unknown dataset '{name}' (allowed: {', '.join(sorted(_BUILDERS))})")
    if bad_images not in BAD_IMAGE_POLICIES:
        raise UserError(
            f"unknown bad_images '{bad_images}' (allowed: {', '.join(BAD_IMAGE_POLICIES)})"
        )
    check_augment_options(name, color_jitter, lighting)
    check_sizes(name, image_size, train_size, val_size)
    req = _Request(
        root, seed, image_size, train_size, val_size, augment, download, bad_images,
        color_jitter, lighting, skipped_file,
    )  # fmt: skip
    return _BUILDERS[name][0](req)


def check_sizes(
    name: str, image_size: int | None, train_size: int | None, val_size: int | None
) -> None:
    """Image size and numbers of images: >= 1 where given (None: the dataset's own); raises
    UserError. Synthetic images are generated to order, so they have no sizes of their own: the
    config gives all three (configs/dataset/synthetic.yaml, the schema's train_size, val_size).
    """
    for what, value in (("image_size", image_size), ("train_size", train_size),
                        ("val_size", val_size)):  # fmt: skip
        if value is None and name == "synthetic":
            raise UserError(
                f"dataset.{what}=null: synthetic images are generated to order: give it"
            )
        if value is not None and value < 1:
            raise UserError(f"dataset.{what}={value} must be >= 1")
    if name == "synthetic" and image_size < 8:
        raise UserError(
            f"dataset.image_size={image_size} is too small for synthetic (allowed: >= 8)"
        )


def check_augment_options(name: str, color_jitter: float, lighting: float) -> None:
    """Colour jitter and PCA lighting strengths: >= 0 (0 = off); raises UserError.

    They are the ImageNet recipe's (fb.resnet.torch's), so only imagenet takes them: other
    datasets refuse a non-zero value rather than train without what the config asks for.
    """
    for what, value in (("color_jitter", color_jitter), ("lighting", lighting)):
        if value < 0:
            raise UserError(f"dataset.{what}={value} must be >= 0 (0 turns it off)")
        if value > 0 and name != "imagenet":
            raise UserError(
                f"dataset.{what}={value} is an imagenet option (dataset.name={name}): set it to 0"
            )


def check_dataset(name: str, root: str | None, *, download: bool) -> None:
    """Cheap checks of a dataset's files, made before anything is written; raises UserError.

    A given root must be a folder, as must ImageNet's default one. ImageFolder data (imagenet)
    must have ``train/`` and ``val/`` with the same non-empty class folders (only folders are
    listed: reading the images is left to :func:`build_datasets`). Fashion-MNIST's files must
    be found, or with ``download`` downloaded (so here, in the parent, not by every rank). CIFAR's
    are checked, and downloaded, when built.
    """
    if name not in _BUILDERS:
        raise UserError(f"unknown dataset '{name}' (allowed: {', '.join(sorted(_BUILDERS))})")
    if name == "synthetic":
        return
    folder = dataset_dir(name, root)
    if (root is not None or name == "imagenet") and not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise UserError(f"dataset.root={folder} {what} (the {name} files are looked for there)")
    if name == "fashion_mnist":
        from normbench.data import fashion_mnist

        fashion_mnist.prepare(folder, download=download)
    elif name == "imagenet":
        from normbench.data import imagenet

        imagenet.check_folders(folder)


Arrays = tuple[torch.Tensor, torch.Tensor]  # uint8 images (N, C, H, W), int64 labels (N,)


def _subsample_pair(train: Arrays, val: Arrays, req: _Request) -> tuple[Arrays, Arrays]:
    """Seeded subsets of train and val of the requested sizes (None keeps everything)."""
    out = []
    for (x, y), size, what, offset in (
        (train, req.train_size, "train_size", 0),
        (val, req.val_size, "val_size", 1),
    ):
        idx = subsample(len(y), size, req.seed * 2 + offset, what)
        out.append((x, y) if idx is None else (x[idx], y[idx]))
    return out[0], out[1]


def _in_memory_bundle(
    train: Arrays,
    val: Arrays,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    pad: int,
    req: _Request,
    *,
    num_classes: int,
) -> DatasetBundle:
    train_ds = InMemoryImageDataset(*train, mean, std, augment=req.augment, pad=pad, seed=req.seed)
    val_ds = InMemoryImageDataset(*val, mean, std, augment=False, seed=req.seed)
    channels, size = train[0].shape[1], train[0].shape[-1]
    return DatasetBundle(train_ds, val_ds, num_classes, channels, size, collate)


# ---- detection: the datasets' names (their builders: normbench.data.detection) ------------

DETECTION_DATASETS = {
    "fashion_scenes": "scenes of 1-4 Fashion-MNIST items with boxes and masks, grey, written in "
    "COCO format from the dataset config's sizes (synthetic shapes without Fashion-MNIST)",
    "coco": "COCO 2017 instances: root/annotations/instances_{train,val}2017.json, "
    "root/{train,val}2017/ (pycocotools)",
}


def list_detection_datasets() -> list[tuple[str, str]]:
    """(name, one-line description) of every detection dataset, sorted by name."""
    return sorted(DETECTION_DATASETS.items())


def dataset_task(name: str) -> str:
    """The task dataset ``name`` serves: detection or classification (unknown: classification,
    refused where the config is validated)."""
    return "detection" if name in DETECTION_DATASETS else "classification"


__all__ = [
    "DatasetBundle",
    "build_datasets",
    "dataset_task",
    "list_detection_datasets",
    "check_augment_options",
    "check_dataset",
    "check_sizes",
    "data_root",
    "dataset_dir",
    "list_datasets",
]
