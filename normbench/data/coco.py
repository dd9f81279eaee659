"""COCO-style instance data (real COCO 2017, or the scenes of :mod:`normbench.data.scenes`).

Layout: ``<root>/annotations/instances_{train,val}2017.json`` and the images under
``<root>/{train,val}2017/``, read through pycocotools. A sample is what torchvision's detection
models take: a float image (C, H, W) in [0, 1] (the model normalizes it) and a target dict with
``boxes`` float32 (N, 4) xyxy in pixels, ``labels`` int64 (N,) in 1..K, ``masks`` uint8
(N, H, W) and ``image_id``. Labels number the categories in order of their ids (identity for the
scenes, whose ids are 1..10; real COCO's 80 ids run up to 90): :attr:`CocoDataset.category_ids`
maps a label back to its category id for the evaluator. Crowd annotations are left out of
targets (as torchvision's and Detectron's references do; the evaluator reads them from
:attr:`CocoDataset.coco`).

Faults in the data, each counted on the dataset and logged once:
- a box reaching outside its image is clipped to it (real COCO has some);
- a box with no area (w or h <= 0, or nothing left inside the image) fails with one line under
  ``bad_images="fail"``, or is dropped under ``"skip"``;
- a training image left without objects is skipped (validation keeps every image: COCO's AP is
  over all of them);
- an unreadable image (or one whose size is not the annotated one) fails with one line, or under
  ``"skip"`` the next readable sample in index order stands in, as for ImageFolder data.

Train augmentation is a horizontal flip with probability 1/2, fixed by (seed, epoch, index) as
for the classification datasets; call ``set_epoch`` before each epoch.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision.transforms.functional import pil_to_tensor

from normbench.config import BAD_IMAGE_POLICIES
from normbench.data.files import UNREADABLE, record_skipped
from normbench.data.memory import EpochCounter, sample_hash
from normbench.errors import UserError

SPLITS = ("train", "val")
_MODES = {1: "L", 3: "RGB"}
log = logging.getLogger(__name__)

Target = dict[str, Any]


def annotations_file(root: Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def images_dir(root: Path, split: str) -> Path:
    return Path(root) / f"{split}2017"


def check_layout(root: Path) -> None:
    """Both splits' annotation files and image folders exist; else one UserError line naming
    the missing path and the layout expected. Nothing is read."""
    for split in SPLITS:
        for path, is_there in (
            (annotations_file(root, split), Path.is_file),
            (images_dir(root, split), Path.is_dir),
        ):
            if not is_there(path):
                raise UserError(
                    f"no {path} (COCO data need {root}/annotations/instances_{{train,val}}2017"
                    f".json and the images in {root}/{{train,val}}2017/)"
                )


def load_coco(path: Path) -> COCO:
    """The annotations file read by pycocotools (its progress prints silenced); UserError when
    it is missing or not a COCO instances file."""
    if not Path(path).is_file():
        raise UserError(
            f"no annotations file {path} (expected COCO instances JSON: images, annotations, "
            "categories)"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise UserError(
            f"{path} is not a COCO instances file ({type(err).__name__}: {err})"
        ) from err


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """DataLoader collate_fn for detection: images and targets as lists (sizes may differ)."""
    return [image for image, _ in batch], [target for _, target in batch]


class CocoDataset(Dataset):
    """One split of COCO-style data; items are (image, target) (see the module docstring).

    ``channels``: 1 (grey) or 3 (RGB) image channels, every image converted to it; None: that
    of the first image's mode (grey "L" -> 1, anything else -> 3). ``drop_empty``: skip images
    without objects (training). ``augment``: seeded horizontal flips. ``bad_images``: one of
    BAD_IMAGE_POLICIES. ``skipped_file``: where skipped unreadable images are appended (shared
    by the run's workers and ranks, as for ImageFolder data).

    Counts: :attr:`skipped_empty` images without objects, :attr:`clipped_boxes` boxes clipped
    to their image, :attr:`dropped_boxes` boxes without area, :attr:`skipped` unreadable
    image paths met by this process.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        augment: bool,
        drop_empty: bool,
        bad_images: str = "fail",
        seed: int = 0,
        channels: int | None = None,
        skipped_file: Path | None = None,
    ) -> None:
        if bad_images not in BAD_IMAGE_POLICIES:
            raise UserError(
                f"unknown bad_images '{bad_images}' (allowed: {', '.join(BAD_IMAGE_POLICIES)})"
            )
        if channels not in (None, *_MODES):
            raise UserError(f"channels={channels} (allowed: 1 for grey, 3 for RGB)")
        self.folder = images_dir(root, split)
        if not self.folder.is_dir():
            raise UserError(f"no images folder {self.folder} (expected the {split} images there)")
        self.ann_file = annotations_file(root, split)
        self.coco = load_coco(self.ann_file)
        self.category_ids = sorted(self.coco.getCatIds())
        self.augment, self.bad_images, self.seed = augment, bad_images, seed
        self.skipped_file = skipped_file
        self.skipped: set[str] = set()
        self.epoch = EpochCounter()
        self.skipped_empty = self.clipped_boxes = self.dropped_boxes = 0
        self.ids: list[int] = []
        self._objects: dict[int, list[tuple[list[float], int, dict]]] = {}
        labels = {cat: label for label, cat in enumerate(self.category_ids, start=1)}
        for image_id in sorted(self.coco.getImgIds()):
            objects = self._valid_objects(image_id, labels)
            if drop_empty and not objects:
                self.skipped_empty += 1
                continue
            self.ids.append(image_id)
            self._objects[image_id] = objects
        self._log_counts()
        self.mode = _MODES[channels] if channels else self._first_mode()

    @property
    def num_categories(self) -> int:
        return len(self.category_ids)

    def set_epoch(self, epoch: int) -> None:
        """Select the flips of this epoch (seen by DataLoader workers too)."""
        self.epoch.set(epoch)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        n = len(self.ids)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        for offset in range(n):
            image_id = self.ids[(index + offset) % n]
            image = self._read(image_id)
            if image is not None:
                sample = self._sample(image_id, image)
                return _flip(*sample) if self._flips(index % n) else sample
        raise UserError(f"no readable image among the {n} images of {self.folder}")

    def _valid_objects(
        self, image_id: int, labels: dict[int, int]
    ) -> list[tuple[list[float], int, dict]]:
        """(xyxy box clipped to the image, label, annotation) of each usable non-crowd object."""
        info = self.coco.imgs[image_id]
        width, height = info["width"], info["height"]
        objects = []
        for ann in self.coco.imgToAnns[image_id]:
            if ann.get("iscrowd", 0):
                continue
            x, y, w, h = ann["bbox"]
            box = [max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)]
            if w <= 0 or h <= 0 or box[2] <= box[0] or box[3] <= box[1]:
                self._bad_box(ann, info)
                continue
            if ann["category_id"] not in labels:
                raise UserError(
                    f"annotation {ann['id']} in {self.ann_file} has category_id "
                    f"{ann['category_id']}, not one of its categories"
                )
            self.clipped_boxes += box != [x, y, x + w, y + h]
            objects.append((box, labels[ann["category_id"]], ann))
        return objects

    def _bad_box(self, ann: dict, info: dict) -> None:
        if self.bad_images == "fail":
            raise UserError(
                f"annotation {ann['id']} of image {info['file_name']} in {self.ann_file}: box "
                f"{ann['bbox']} (x, y, w, h) has no area inside the {info['width']}x"
                f"{info['height']} image (dataset.bad_images=skip drops such boxes)"
            )
        self.dropped_boxes += 1

    def _log_counts(self) -> None:
        if self.skipped_empty or self.clipped_boxes:
            log.info(
                "%s: %d images without objects skipped, %d boxes clipped to their image",
                self.ann_file, self.skipped_empty, self.clipped_boxes,
            )  # fmt: skip
        if self.dropped_boxes:
            log.warning(
                "%s: dropped %d boxes without area (dataset.bad_images=skip)",
                self.ann_file, self.dropped_boxes,
            )  # fmt: skip

    def _first_mode(self) -> str:
        """The mode every image is converted to: grey where the first readable image is grey
        (only headers are read; an unreadable one is met again, and dealt with, when loaded)."""
        for image_id in self.ids:
            path = self.folder / self.coco.imgs[image_id]["file_name"]
            try:
                with Image.open(path) as image:
                    return "L" if image.mode == "L" else "RGB"
            except UNREADABLE as err:
                if self.bad_images == "fail":
                    raise _unreadable(path, err) from err
        return "RGB"

    def _read(self, image_id: int) -> Image.Image | None:
        """The decoded image, or None when it is unreadable and the policy is "skip"."""
        info = self.coco.imgs[image_id]
        path = str(self.folder / info["file_name"])
        try:
            with Image.open(path) as file:
                image = file.convert(self.mode)  # convert() decodes the whole file
            if image.size != (info["width"], info["height"]):
                raise ValueError(
                    f"it is {image.size[0]}x{image.size[1]}, the annotations say "
                    f"{info['width']}x{info['height']}"
                )
            return image
        except UNREADABLE as err:
            if self.bad_images == "fail":
                raise _unreadable(path, err) from err
            record_skipped(self.skipped, path, err, self.skipped_file)
            return None

    def _sample(self, image_id: int, image: Image.Image) -> tuple[torch.Tensor, Target]:
        objects = self._objects[image_id]
        height, width = image.height, image.width
        if objects:
            masks = np.stack([self.coco.annToMask(ann) for _, _, ann in objects])
        else:
            masks = np.zeros((0, height, width), dtype=np.uint8)
        target = {
            "boxes": torch.tensor([box for box, _, _ in objects], dtype=torch.float32).view(-1, 4),
            "labels": torch.tensor([label for _, label, _ in objects], dtype=torch.int64),
            "masks": torch.from_numpy(masks),
            "image_id": image_id,
        }
        return pil_to_tensor(image).float().div_(255), target

    def _flips(self, index: int) -> bool:
        if not self.augment:
            return False
        return bool(sample_hash(self.seed, self.epoch.get(), np.array([index]))[0] & 1)


def _unreadable(path: Path | str, err: Exception) -> UserError:
    return UserError(f"unreadable image {path}: {err} (dataset.bad_images=skip skips such files)")


def _flip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror the image, its masks and boxes left to right."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    flipped = {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}
    return image.flip(-1), flipped


def build(
    root: Path,
    *,
    seed: int,
    augment: bool,
    bad_images: str,
    channels: int | None = None,
    skipped_file: Path | None = None,
) -> tuple[CocoDataset, CocoDataset]:
    """(train, val) of the COCO-style data under ``root``: train without images that have no
    objects, flipped when ``augment``; val with every image, never flipped. The layout is
    checked first (:func:`check_layout`)."""
    check_layout(Path(root))
    common = {
        "bad_images": bad_images,
        "seed": seed,
        "channels": channels,
        "skipped_file": skipped_file,
    }
    train = CocoDataset(root, "train", augment=augment, drop_empty=True, **common)
    val = CocoDataset(root, "val", augment=False, drop_empty=False, **common)
    return train, val
