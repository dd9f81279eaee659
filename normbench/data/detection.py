"""Detection data: COCO-format train/val splits (:mod:`normbench.data.coco`) of the detection
datasets that :func:`normbench.data.list_detection_datasets` names.

- ``fashion_scenes``: the CPU mini's scenes of Fashion-MNIST items, which
  :func:`check_detection_dataset` writes once (:mod:`normbench.data.scenes`), in the parent
  process before any worker starts, into a folder named by their generation parameters;
- ``coco``: real COCO 2017 under dataset.root (default <data root>/coco).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from normbench.config import DatasetConfig
from normbench.data import DETECTION_DATASETS, data_root, dataset_dir
from normbench.data.memory import subsample
from normbench.errors import UserError

# The scenes are the same for every seed of a sweep (as the classification val set is), so
# paired differences over seeds are read on one data set; the cell's seed orders and flips them.
SCENES_SEED = 0


@dataclass
class DetectionBundle:
    """A detection train/val pair: COCO-format datasets whose items are (image, target), and
    the val split's pycocotools ground truth with the category id of each label (1..K)."""

    train: Dataset
    val: Dataset
    num_classes: int  # object categories K, without the background
    in_channels: int
    category_ids: list[int]
    coco_val: object  # pycocotools.coco.COCO
    collate_fn: Callable | None


def folder(dataset: DatasetConfig) -> Path:
    """Where the COCO-format files of ``dataset`` are: dataset.root when given; else for coco
    <data root>/coco, and for the scenes one folder per set of generation parameters under
    <data root>/fashion_scenes, so experiments of other sizes never rewrite each other's."""
    if dataset.name != "fashion_scenes" or dataset.root:
        return dataset_dir(dataset.name, dataset.root)
    size, items, item_size = dataset.image_size, dataset.items, dataset.item_size
    name = (
        f"{size}px-{dataset.train_size}+{dataset.val_size}-items{items[0]}-{items[1]}"
        f"-size{item_size[0]}-{item_size[1]}-seed{SCENES_SEED}"
    )
    return data_root() / "fashion_scenes" / name


def _check_scene_params(dataset: DatasetConfig) -> None:
    """Every generation parameter given, the ranges as pairs; else one UserError line (the
    values themselves are checked by the writer, normbench.data.scenes.check_params)."""
    for what in ("image_size", "train_size", "val_size", "items", "item_size"):
        if getattr(dataset, what) is None:
            raise UserError(
                f"dataset.{what}=null: fashion_scenes are generated to order: give it "
                "(configs/dataset/fashion_scenes.yaml has every one)"
            )
    for what in ("items", "item_size"):
        if len(getattr(dataset, what)) != 2:
            raise UserError(
                f"dataset.{what}={list(getattr(dataset, what))} must be [smallest, largest]"
            )


def check_detection_dataset(dataset: DatasetConfig) -> None:
    """Cheap checks of the data ``dataset`` configures, nothing written (validation): a known
    name; for fashion_scenes generation parameters that can be generated; for coco its files.
    Raises UserError."""
    from normbench.data import coco, scenes

    if dataset.name not in DETECTION_DATASETS:
        allowed = ", ".join(DETECTION_DATASETS)
        raise UserError(f"unknown detection dataset '{dataset.name}' (allowed: {allowed})")
    if dataset.name == "fashion_scenes":
        _check_scene_params(dataset)
        layout = scenes.Layout(dataset.image_size, tuple(dataset.items), tuple(dataset.item_size))
        scenes.check_params(dataset.train_size, dataset.val_size, layout)
    else:
        coco.check_layout(folder(dataset))


def prepare_detection_dataset(dataset: DatasetConfig) -> Path:
    """The folder of the data ``dataset`` configures, ready for the workers: the scenes written
    once (a folder holding the same parameters is reused), COCO's layout checked. Called by the
    job, in one process, before any worker starts."""
    from normbench.data import coco, scenes

    check_detection_dataset(dataset)
    if dataset.name == "fashion_scenes":
        scenes.write_scenes(
            folder(dataset), seed=SCENES_SEED, train_images=dataset.train_size,
            val_images=dataset.val_size, image_size=dataset.image_size,
            items=tuple(dataset.items), item_size=tuple(dataset.item_size),
        )  # fmt: skip
    coco.check_layout(folder(dataset))
    return folder(dataset)


def build_detection_datasets(
    dataset: DatasetConfig, *, seed: int, skipped_file: Path | None = None
) -> DetectionBundle:
    """The train and val splits ``dataset`` configures (flipped by seed and epoch where
    dataset.augment; unreadable images and boxes without area as dataset.bad_images says).
    fashion_scenes: the sizes are the scenes' generation parameters (the scenes are written by
    :func:`prepare_detection_dataset`); coco: train_size / val_size take seeded subsets of the
    images (None: all). Images keep their sizes: the detector resizes them."""
    from normbench.data import coco

    train, val = coco.build(
        folder(dataset), seed=seed, augment=dataset.augment, bad_images=dataset.bad_images,
        skipped_file=skipped_file,
    )  # fmt: skip
    coco_val = val.coco
    if dataset.name == "coco":
        train = _Subset.of(train, dataset.train_size, seed * 2, "dataset.train_size")
        val = _Subset.of(val, dataset.val_size, seed * 2 + 1, "dataset.val_size")
    return DetectionBundle(
        train, val, num_classes=len(val.category_ids),
        in_channels=1 if train.mode == "L" else 3, category_ids=list(val.category_ids),
        coco_val=coco_val, collate_fn=coco.collate,
    )  # fmt: skip


class _Subset(torch.utils.data.Subset):
    """A seeded subset of a COCO split that keeps what the trainer asks of the split."""

    @classmethod
    def of(cls, dataset: Dataset, size: int | None, seed: int, what: str) -> Dataset:
        idx = subsample(len(dataset), size, seed, what)
        return dataset if idx is None else cls(dataset, idx.tolist())

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getattr__(self, name: str):
        # mode, category_ids, coco: the whole split's (torch's Subset has only these two)
        if name in ("dataset", "indices"):
            raise AttributeError(name)
        return getattr(self.dataset, name)
