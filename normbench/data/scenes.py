"""The CPU mini detection dataset: scenes of Fashion-MNIST items, written in COCO format.

Each scene is a black square canvas holding 1 to N items. An item is a Fashion-MNIST image
(train split for train scenes, test split for val scenes) resized to a random size with the same
resampling the classification data use (:func:`normbench.data.memory.resize_uint8`), so a
backbone pretrained on small Fashion-MNIST images sees the same kind of pixels here. Items are
placed at random where their squares overlap earlier ones by at most MAX_OVERLAP; a later item
occludes an earlier one. An item's silhouette is its pixels above MASK_THRESHOLD; its mask is
the part of the silhouette that no later silhouette covers, its box the tight box of that mask;
an item left with less than MIN_VISIBLE of its silhouette is dropped (it is not drawn at all).
Inside its mask an item's pixels are exactly its resized pixels: later items overwrite only
where their silhouette is, elsewhere the brighter faint edge pixel wins.

Every scene is drawn from its own generator, seeded by (seed, split, scene index), so the files
are a pure function of the parameters (same bytes for the same parameters) and fewer scenes are
a prefix of more. Without Fashion-MNIST's files the items are synthetic filled shapes, one class
per shape family (:data:`SHAPES`), and one warning line says so.

Layout (as real COCO 2017): ``<out>/annotations/instances_{train,val}2017.json`` and grey PNGs
under ``<out>/{train,val}2017/``; category id = class + 1. ``<out>/scenes.json`` holds the
generation parameters: a folder whose parameters match is reused, otherwise rebuilt. A folder is
built under a temporary name beside ``<out>`` and renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from normbench.data import fashion_mnist
from normbench.data.memory import resize_uint8
from normbench.errors import UserError

CHANNELS = 1
NUM_CLASSES = 10
PARAMS_FILE = "scenes.json"
FORMAT = 1  # bump when the generator changes what it writes: older folders are then rebuilt
MASK_THRESHOLD = 32  # a resized item's pixel belongs to its silhouette above this (of 255)
MAX_OVERLAP = 0.3  # at most this fraction of the smaller item's square may overlap another's
MIN_VISIBLE = 0.5  # an item keeping less of its silhouette than this is dropped
PLACEMENT_TRIES = 10  # random positions tried for an item before it is left out
SYNTHETIC_POOL = 1000  # synthetic items generated per split
SHAPES = ("disc", "square", "triangle", "plus", "ring", "diamond", "hbar", "vbar", "x", "frame")
_SPLITS = {"train": 1, "val": 2}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemPool:
    """Source items: uint8 images (N, 28, 28), int labels (N,), and the class names."""

    images: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]


@dataclass(frozen=True)
class Layout:
    """How a scene is laid out: canvas side, (fewest, most) items drawn, (smallest, largest)
    item side, in pixels."""

    image_size: int
    items: tuple[int, int]
    item_size: tuple[int, int]


@dataclass(frozen=True)
class Item:
    """One placed item: its pool index, class, top-left corner, size, and resized pixels."""

    index: int
    label: int
    x: int
    y: int
    size: int
    pixels: np.ndarray  # uint8 (size, size)

    def silhouette(self, image_size: int) -> np.ndarray:
        """Its silhouette on the whole canvas (bool, image_size x image_size)."""
        out = np.zeros((image_size, image_size), dtype=bool)
        out[self.y : self.y + self.size, self.x : self.x + self.size] = self.pixels > MASK_THRESHOLD
        return out


def write_scenes(
    out_dir: Path,
    *,
    seed: int,
    train_images: int,
    val_images: int,
    image_size: int = 64,
    items: tuple[int, int] = (1, 4),
    item_size: tuple[int, int] = (12, 28),
    source: Path | None = None,
) -> Path:
    """The scenes folder ``out_dir``, written unless it already holds these parameters' scenes.

    ``items``: (fewest, most) items drawn per scene (fewer remain where no place is free or an
    item is occluded). ``item_size``: (smallest, largest) side of an item in pixels.
    ``source``: Fashion-MNIST's folder, searched as the classification data do
    (:func:`normbench.data.fashion_mnist.candidate_dirs`); None: its default folder. Where the
    files are in none of those places, synthetic shapes stand in (said in one warning line).
    Returns ``out_dir``.
    """
    layout = Layout(image_size, tuple(items), tuple(item_size))
    check_params(train_images, val_images, layout)
    if source is None:
        from normbench.data import dataset_dir

        source = dataset_dir("fashion_mnist", None)
    kind = "fashion_mnist" if fashion_mnist.available(source) else "synthetic"
    if kind == "synthetic":
        looked = ", ".join(str(d) for d in fashion_mnist.candidate_dirs(source))
        log.warning(
            "Fashion-MNIST not found in %s: the detection scenes are made of synthetic shapes "
            "(%s), whose numbers test the machinery only", looked, ", ".join(SHAPES),
        )  # fmt: skip
    params = {
        "format": FORMAT,
        "seed": seed,
        "train_images": train_images,
        "val_images": val_images,
        "image_size": image_size,
        "items": list(items),
        "item_size": list(item_size),
        "mask_threshold": MASK_THRESHOLD,
        "max_overlap": MAX_OVERLAP,
        "min_visible": MIN_VISIBLE,
        "item_source": kind,
    }
    out_dir = Path(out_dir)
    if read_params(out_dir) == params:
        return out_dir
    _check_replaceable(out_dir)
    pools = _load_pools(source) if kind == "fashion_mnist" else _synthetic_pools(seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        for split, count in (("train", train_images), ("val", val_images)):
            _write_split(tmp, split, count, pools[split], seed, layout)
        (tmp / PARAMS_FILE).write_text(json.dumps(params, indent=1) + "\n")
        publish(tmp, out_dir, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def check_params(train_images: int, val_images: int, layout: Layout) -> None:
    """Scene parameters that can be generated; each fault is one UserError line."""
    image_size, items, item_size = layout.image_size, layout.items, layout.item_size
    for what, value in (("train_images", train_images), ("val_images", val_images)):
        if value < 1:
            raise UserError(f"scenes: {what}={value} must be >= 1")
    if image_size < 8:
        raise UserError(f"scenes: image_size={image_size} must be >= 8")
    if not 1 <= items[0] <= items[1]:
        raise UserError(
            f"scenes: items={list(items)} must be [fewest, most] with 1 <= fewest <= most"
        )
    if not 1 <= item_size[0] <= item_size[1] <= image_size:
        raise UserError(
            f"scenes: item_size={list(item_size)} must be [smallest, largest] with "
            f"1 <= smallest <= largest <= image_size={image_size}"
        )


def read_params(folder: Path) -> dict[str, Any] | None:
    """The generation parameters stored in a scenes folder, or None where there are none."""
    try:
        return json.loads((Path(folder) / PARAMS_FILE).read_text())
    except (OSError, ValueError):
        return None


def _check_replaceable(out_dir: Path) -> None:
    """Only a scenes folder (or an empty one) is ever replaced: never someone's other files."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UserError(f"scenes folder {out_dir} is a file: choose another folder")
    if (out_dir / PARAMS_FILE).is_file() or not any(out_dir.iterdir()):
        return
    raise UserError(
        f"{out_dir} is not empty and holds no {PARAMS_FILE}: it is not a scenes folder, so it "
        "is not overwritten; choose another folder"
    )


def publish(tmp: Path, out_dir: Path, params: dict[str, Any]) -> None:
    """Move the complete folder ``tmp`` to ``out_dir`` by renames, so readers see either the old
    folder or the new one. Where another writer has meanwhile published the same parameters,
    its folder stays and ``tmp`` is removed; an older scenes folder is replaced."""
    try:
        os.rename(tmp, out_dir)  # atomic; fails where out_dir is a non-empty folder
        return
    except OSError:
        if not out_dir.is_dir():
            raise
    if read_params(out_dir) == params:
        shutil.rmtree(tmp)
        return
    old = tmp.with_name(tmp.name + "-old")
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old)


def _load_pools(source: Path) -> dict[str, ItemPool]:
    from torchvision.datasets import FashionMNIST

    (train_x, train_y), (val_x, val_y) = fashion_mnist.load(source)
    names = tuple(FashionMNIST.classes)
    return {
        "train": ItemPool(train_x[:, 0].numpy(), train_y.numpy(), names),
        "val": ItemPool(val_x[:, 0].numpy(), val_y.numpy(), names),
    }


def _synthetic_pools(seed: int) -> dict[str, ItemPool]:
    return {split: synthetic_items(SYNTHETIC_POOL, seed, split) for split in _SPLITS}


def synthetic_items(count: int, seed: int, split: str) -> ItemPool:
    """``count`` 28 x 28 filled shapes, class i % 10 of :data:`SHAPES` for item i, each with its
    own centre, radius and grey level; symmetric under a horizontal flip, as the training
    augmentation needs."""
    rng = np.random.default_rng([seed, _SPLITS[split], 0])
    grid = np.arange(fashion_mnist.IMAGE_SIZE, dtype=np.float64)
    images = np.zeros((count, len(grid), len(grid)), dtype=np.uint8)
    labels = np.arange(count) % len(SHAPES)
    for i, label in enumerate(labels):
        cy, cx = 13.5 + rng.uniform(-2, 2, size=2)
        radius = rng.uniform(9, 13)
        v, u = (grid[:, None] - cy) / radius, (grid[None, :] - cx) / radius
        images[i][_shape(int(label), u, v)] = rng.integers(100, 256)
    return ItemPool(images, labels, SHAPES)


def _shape(label: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The filled shape of class ``label`` in coordinates scaled by the radius (v downwards)."""
    au, av = np.abs(u), np.abs(v)
    r, box = np.hypot(u, v), np.maximum(au, av)
    shapes = (
        r <= 1,
        box <= 0.8,
        (av <= 0.8) & (au <= (v + 0.8) / 1.6),
        ((au <= 0.25) & (av <= 0.9)) | ((av <= 0.25) & (au <= 0.9)),
        (r >= 0.55) & (r <= 1),
        au + av <= 1,
        (au <= 0.95) & (av <= 0.3),
        (av <= 0.95) & (au <= 0.3),
        (np.abs(au - av) <= 0.25) & (box <= 0.9),
        (box >= 0.5) & (box <= 0.85),
    )
    return shapes[label]


def compose(
    rng: np.random.Generator, pool: ItemPool, layout: Layout
) -> tuple[np.ndarray, list[Item], list[np.ndarray]]:
    """One scene: the uint8 canvas (image_size, image_size), its items bottom to top, and each
    item's visible mask (bool). At least one item remains (scenes are redrawn until one does)."""
    while True:
        kept = _visible(_draw(rng, pool, layout), layout.image_size)
        if kept:
            break
    canvas = np.zeros((layout.image_size, layout.image_size), dtype=np.uint8)
    for item, _ in kept:
        region = canvas[item.y : item.y + item.size, item.x : item.x + item.size]
        silhouette = item.pixels > MASK_THRESHOLD
        region[silhouette] = item.pixels[silhouette]
        np.maximum(region, np.where(silhouette, 0, item.pixels), out=region)
    return canvas, [item for item, _ in kept], [mask for _, mask in kept]


def _draw(rng: np.random.Generator, pool: ItemPool, layout: Layout) -> list[Item]:
    """Items drawn and placed bottom to top; one finding no place with limited overlap is left
    out."""
    image_size, items, item_size = layout.image_size, layout.items, layout.item_size
    placed: list[Item] = []
    for _ in range(int(rng.integers(items[0], items[1] + 1))):
        index = int(rng.integers(len(pool.labels)))
        size = int(rng.integers(item_size[0], item_size[1] + 1))
        for _ in range(PLACEMENT_TRIES):
            y, x = (int(v) for v in rng.integers(0, image_size - size + 1, size=2))
            if all(_overlap(x, y, size, other) <= MAX_OVERLAP for other in placed):
                pixels = resize_uint8(torch.from_numpy(pool.images[index])[None, None], size)
                label = int(pool.labels[index])
                placed.append(Item(index, label, x, y, size, pixels[0, 0].numpy()))
                break
    return placed


def _overlap(x: int, y: int, size: int, other: Item) -> float:
    """The intersection of two items' squares over the smaller square's area."""
    dx = min(x + size, other.x + other.size) - max(x, other.x)
    dy = min(y + size, other.y + other.size) - max(y, other.y)
    return max(dx, 0) * max(dy, 0) / min(size, other.size) ** 2


def _visible(placed: list[Item], image_size: int) -> list[tuple[Item, np.ndarray]]:
    """The items kept, bottom to top, each with its visible mask.

    An item is occluded only by those above it, so one pass from the top down decides: each
    item keeps what the kept items above leave of its silhouette, and is dropped when that is
    less than MIN_VISIBLE of it (a dropped item hides nothing, being never drawn).
    """
    covered = np.zeros((image_size, image_size), dtype=bool)
    kept = []
    for item in reversed(placed):
        silhouette = item.silhouette(image_size)
        visible = silhouette & ~covered
        if visible.any() and visible.sum() >= MIN_VISIBLE * silhouette.sum():
            kept.append((item, visible))
            covered |= silhouette
    return kept[::-1]


def _write_split(
    root: Path, split: str, count: int, pool: ItemPool, seed: int, layout: Layout
) -> None:
    """``count`` scenes as PNGs under root/<split>2017 and their COCO instances JSON."""
    folder = root / f"{split}2017"
    folder.mkdir()
    images, annotations = [], []
    for image_id in range(1, count + 1):
        rng = np.random.default_rng([seed, _SPLITS[split], image_id])
        canvas, placed, masks = compose(rng, pool, layout)
        file_name = f"{image_id:012d}.png"
        Image.fromarray(canvas).save(folder / file_name, format="PNG")
        side = layout.image_size
        images.append({"id": image_id, "file_name": file_name, "width": side, "height": side})
        for item, mask in zip(placed, masks, strict=True):
            annotations.append(_annotation(len(annotations) + 1, image_id, item, mask))
    categories = [
        {"id": label + 1, "name": name, "supercategory": "item"}
        for label, name in enumerate(pool.names)
    ]
    (root / "annotations").mkdir(exist_ok=True)
    instances = {"images": images, "annotations": annotations, "categories": categories}
    path = root / "annotations" / f"instances_{split}2017.json"
    path.write_text(json.dumps(instances, separators=(",", ":")))


def _annotation(ann_id: int, image_id: int, item: Item, mask: np.ndarray) -> dict[str, Any]:
    """A COCO annotation (compressed RLE mask; box and area as pycocotools measure the mask),
    plus where the item came from: its index in the source split and its placed square."""
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": item.label + 1,
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "area": float(mask_util.area(rle)),
        "iscrowd": 0,
        "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
        "source_index": item.index,
        "item_box": [item.x, item.y, item.size, item.size],
    }
