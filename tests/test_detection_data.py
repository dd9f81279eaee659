"""The detection data: Fashion-MNIST scenes written in COCO format, and the COCO reader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from normbench.data import coco, fashion_mnist, scenes
from normbench.data.memory import resize_uint8
from normbench.errors import UserError

FMNIST = Path(fashion_mnist.SYSTEM_DIR)  # Debian's files: dataset-fashion-mnist
needs_fmnist = pytest.mark.skipif(
    not fashion_mnist.available(FMNIST), reason="needs Fashion-MNIST (dataset-fashion-mnist)"
)
TINY = {
    "train_images": 6,
    "val_images": 4,
    "image_size": 32,
    "items": (2, 4),
    "item_size": (10, 20),
}


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not fashion_mnist.available(FMNIST):
        pytest.skip("needs Fashion-MNIST (dataset-fashion-mnist)")
    return scenes.write_scenes(
        tmp_path_factory.mktemp("scenes") / "s", seed=0, source=FMNIST, **TINY
    )


@pytest.fixture(scope="module")
def source_items() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    (train_x, train_y), (val_x, val_y) = fashion_mnist.load(FMNIST)
    return {"train": (train_x, train_y), "val": (val_x, val_y)}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _load(root: Path, split: str) -> COCO:
    return coco.load_coco(coco.annotations_file(root, split))


def _pixels(root: Path, split: str, info: dict) -> np.ndarray:
    return np.array(Image.open(coco.images_dir(root, split) / info["file_name"]))


def _placed(ann: dict, items: torch.Tensor, image_size: int) -> np.ndarray:
    """The annotation's source item resized and placed on an empty canvas, as uint8."""
    x, y, size, _ = ann["item_box"]
    canvas = np.zeros((image_size, image_size), dtype=np.uint8)
    canvas[y : y + size, x : x + size] = resize_uint8(items[ann["source_index"]][None], size)[0, 0]
    return canvas


# ---- the scenes ----


@needs_fmnist
def test_scenes_are_a_function_of_the_seed(scene_dir: Path, tmp_path: Path) -> None:
    again = scenes.write_scenes(tmp_path / "again", seed=0, source=FMNIST, **TINY)
    other = scenes.write_scenes(tmp_path / "other", seed=1, source=FMNIST, **TINY)
    written = _files(scene_dir)
    assert len([name for name in written if name.endswith(".png")]) == 10
    assert _files(again) == written
    other_files = _files(other)
    assert other_files.keys() == written.keys()
    differing = [name for name in written if other_files[name] != written[name]]
    assert len(differing) >= 10  # every scene, and both JSON files (the parameters too)


def test_boxes_are_the_tight_boxes_of_disjoint_masks_inside_the_image(scene_dir: Path) -> None:
    for split in coco.SPLITS:
        data = _load(scene_dir, split)
        assert [c["id"] for c in data.loadCats(data.getCatIds())] == list(range(1, 11))
        for image_id in data.getImgIds():
            info = data.imgs[image_id]
            assert (info["width"], info["height"]) == (32, 32)
            anns = data.imgToAnns[image_id]
            assert 1 <= len(anns) <= 4
            union = np.zeros((32, 32), dtype=int)
            for ann in anns:
                mask = data.annToMask(ann)
                rows, cols = np.nonzero(mask)
                x, y = cols.min(), rows.min()
                tight = [x, y, cols.max() + 1 - x, rows.max() + 1 - y]
                assert ann["bbox"] == [float(v) for v in tight]
                assert (
                    ann["bbox"][0] + ann["bbox"][2] <= 32 and ann["bbox"][1] + ann["bbox"][3] <= 32
                )
                assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
                union += mask
            assert union.max() == 1  # no pixel belongs to two items


@needs_fmnist
def test_items_keep_their_pixels_and_later_items_occlude_earlier_ones(
    scene_dir: Path, source_items: dict
) -> None:
    occluded = 0
    for split in coco.SPLITS:
        items, labels = source_items[split]
        data = _load(scene_dir, split)
        for image_id in data.getImgIds():
            image = _pixels(scene_dir, split, data.imgs[image_id])
            anns = sorted(data.imgToAnns[image_id], key=lambda a: a["id"])  # bottom to top
            placed = [_placed(ann, items, 32) for ann in anns]
            silhouettes = [p > scenes.MASK_THRESHOLD for p in placed]
            for i, ann in enumerate(anns):
                mask = data.annToMask(ann).astype(bool)
                assert ann["category_id"] == labels[ann["source_index"]] + 1
                np.testing.assert_array_equal(image[mask], placed[i][mask])
                above = np.any(silhouettes[i + 1 :], axis=0) if i + 1 < len(anns) else False
                np.testing.assert_array_equal(mask, silhouettes[i] & ~above)
                assert mask.sum() >= scenes.MIN_VISIBLE * silhouettes[i].sum()
                occluded += bool((silhouettes[i] & ~mask).any())
    assert occluded >= 1  # the tiny scenes do have occlusions, so the check above bit


def test_scenes_round_trip_through_the_reader(scene_dir: Path) -> None:
    data = _load(scene_dir, "val")
    ds = coco.CocoDataset(scene_dir, "val", augment=False, drop_empty=False)
    assert len(ds) == 4 and ds.mode == "L" and ds.category_ids == list(range(1, 11))
    for image, target in ds:
        info = data.imgs[target["image_id"]]
        anns = data.imgToAnns[target["image_id"]]
        assert image.shape == (1, 32, 32) and image.dtype == torch.float32
        torch.testing.assert_close(
            image[0], torch.from_numpy(_pixels(scene_dir, "val", info)).float() / 255
        )
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        assert target["boxes"].tolist() == xyxy
        assert target["labels"].tolist() == [a["category_id"] for a in anns]
        assert target["masks"].dtype == torch.uint8
        np.testing.assert_array_equal(
            target["masks"].numpy(), np.stack([mask_util.decode(a["segmentation"]) for a in anns])
        )


def test_scenes_folder_is_reused_with_the_same_parameters_and_rebuilt_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_fashion_mnist(tmp_path, monkeypatch)
    out = tmp_path / "scenes"
    params = {**TINY, "train_images": 2, "val_images": 1}
    scenes.write_scenes(out, seed=0, source=tmp_path, **params)
    (out / "marker").write_text("kept while reused")
    scenes.write_scenes(out, seed=0, source=tmp_path, **params)
    assert (out / "marker").exists()
    scenes.write_scenes(out, seed=0, source=tmp_path, **{**params, "image_size": 40})
    assert not (out / "marker").exists()
    assert scenes.read_params(out)["image_size"] == 40
    assert Image.open(out / "train2017" / "000000000001.png").size == (40, 40)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_folder_that_is_not_a_scenes_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="not a scenes folder"):
        scenes.write_scenes(tmp_path / "mine", seed=0, source=tmp_path, **TINY)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_an_interrupted_write_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_fashion_mnist(tmp_path, monkeypatch)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(scenes, "_annotation", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scenes.write_scenes(tmp_path / "out" / "scenes", seed=0, source=tmp_path, **TINY)
    assert list((tmp_path / "out").iterdir()) == []


def test_publish_keeps_another_writers_equal_folder_and_replaces_an_older_one(
    tmp_path: Path,
) -> None:
    out, params = tmp_path / "scenes", {"format": 1, "seed": 0}
    out.mkdir()
    (out / scenes.PARAMS_FILE).write_text(json.dumps(params))
    (out / "first").write_text("")
    late = tmp_path / ".late"
    late.mkdir()
    (late / "second").write_text("")
    scenes.publish(late, out, params)  # the same parameters: another writer won the race
    assert not late.exists() and (out / "first").exists() and not (out / "second").exists()
    late.mkdir()
    (late / "second").write_text("")
    scenes.publish(late, out, {**params, "seed": 1})  # new parameters: the old folder goes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scenes"]
    assert [p.name for p in out.iterdir()] == ["second"]


def _no_fashion_mnist(empty: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fashion-MNIST is found nowhere: not in ``empty``, nor in Debian's folder."""
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIR", str(empty / "no-debian"))


def test_without_fashion_mnist_scenes_are_synthetic_shapes_said_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _no_fashion_mnist(tmp_path, monkeypatch)
    with caplog.at_level(logging.WARNING):
        out = scenes.write_scenes(tmp_path / "scenes", seed=0, source=tmp_path, **TINY)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "Fashion-MNIST not found" in warnings[0] and "synthetic shapes" in warnings[0]
    assert scenes.read_params(out)["item_source"] == "synthetic"
    data = _load(out, "train")
    assert [c["name"] for c in data.loadCats(data.getCatIds())] == list(scenes.SHAPES)
    pool = scenes.synthetic_items(scenes.SYNTHETIC_POOL, 0, "train")
    ann = data.anns[1]
    assert ann["category_id"] == pool.labels[ann["source_index"]] + 1
    mask = data.annToMask(ann).astype(bool)
    placed = _placed(ann, torch.from_numpy(pool.images)[:, None], 32)
    np.testing.assert_array_equal(_pixels(out, "train", data.imgs[1])[mask], placed[mask])
    train, val = coco.build(out, seed=0, augment=True, bad_images="fail")
    assert len(train) == 6 and len(val) == 4 and train[0][1]["masks"].shape[1:] == (32, 32)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train_images": 0}, "train_images=0 must be >= 1"),
        ({"items": (0, 2)}, r"items=\[0, 2\]"),
        ({"items": (3, 2)}, r"items=\[3, 2\]"),
        ({"item_size": (10, 40)}, "image_size=32"),
        ({"image_size": 4, "item_size": (1, 4)}, "image_size=4 must be >= 8"),
    ],
)
def test_impossible_scene_parameters_are_one_line_errors(
    tmp_path: Path, change: dict, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        scenes.write_scenes(tmp_path / "s", seed=0, source=tmp_path, **{**TINY, **change})
    assert not (tmp_path / "s").exists()


# ---- the reader: augmentation and batches ----


def test_train_flips_are_seeded_per_epoch_and_index_and_val_never_flips(scene_dir: Path) -> None:
    plain = coco.CocoDataset(scene_dir, "train", augment=False, drop_empty=True)
    aug = coco.CocoDataset(scene_dir, "train", augment=True, drop_empty=True, seed=3)
    flips = []
    for epoch in range(3):
        aug.set_epoch(epoch)
        for i in range(len(aug)):
            (image, target), (raw, raw_target) = aug[i], plain[i]
            torch.testing.assert_close(aug[i][0], image)  # the same sample: the same flip
            flipped = not torch.equal(image, raw)
            flips.append(flipped)
            masks = raw_target["masks"].flip(-1) if flipped else raw_target["masks"]
            assert torch.equal(image, raw.flip(-1) if flipped else raw)
            assert torch.equal(target["masks"], masks)
            for box, mask in zip(target["boxes"].tolist(), masks, strict=True):
                rows, cols = torch.nonzero(mask, as_tuple=True)
                tight = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
                assert box == [float(v) for v in tight]
    assert any(flips) and not all(flips)
    _, val = coco.build(scene_dir, seed=3, augment=True, bad_images="fail")
    data = _load(scene_dir, "val")
    for epoch in range(3):
        val.set_epoch(epoch)
        for image, target in val:
            pixels = _pixels(scene_dir, "val", data.imgs[target["image_id"]])
            assert torch.equal(image[0], torch.from_numpy(pixels).float() / 255)


def test_collate_keeps_images_and_targets_as_lists(scene_dir: Path) -> None:
    ds = coco.CocoDataset(scene_dir, "val", augment=False, drop_empty=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=coco.collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 3
    assert [t["image_id"] for t in targets] == ds.ids[:3]


# ---- the reader: bad input under each policy ----

POLICIES = ("fail", "skip")


def _tiny_coco(root: Path, boxes: list[list[list[float]]], split: str = "train") -> Path:
    """A 16 x 12 RGB image per entry of ``boxes``, each box (x, y, w, h) an annotation with the
    mask of its part inside the image; category 1 (and an unused 3)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    coco.images_dir(root, split).mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for image_id, image_boxes in enumerate(boxes, start=1):
        name = f"{image_id}.png"
        pixels = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(coco.images_dir(root, split) / name)
        images.append({"id": image_id, "file_name": name, "width": 16, "height": 12})
        for x, y, w, h in image_boxes:
            mask = np.zeros((12, 16), dtype=np.uint8, order="F")
            mask[max(int(y), 0) : max(int(y + h), 0), max(int(x), 0) : max(int(x + w), 0)] = 1
            rle = mask_util.encode(mask)
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
                "segmentation": {"size": [12, 16], "counts": rle["counts"].decode()},
            })  # fmt: skip
    cats = [{"id": 1, "name": "thing"}, {"id": 3, "name": "other"}]
    instances = {"images": images, "annotations": anns, "categories": cats}
    coco.annotations_file(root, split).write_text(json.dumps(instances))
    return root


@pytest.mark.parametrize("policy", POLICIES)
def test_missing_annotations_or_images_are_one_line_errors(tmp_path: Path, policy: str) -> None:
    root = _tiny_coco(tmp_path, [[[1, 1, 4, 4]]])
    coco.images_dir(root, "val").mkdir()
    with pytest.raises(UserError, match="no annotations file .*instances_val2017.json") as err:
        coco.CocoDataset(root, "val", augment=False, drop_empty=False, bad_images=policy)
    assert "\n" not in str(err.value)
    coco.annotations_file(root, "train").rename(tmp_path / "elsewhere.json")
    with pytest.raises(UserError, match=r"no .*instances_train2017.json \(COCO data need"):
        coco.build(root, seed=0, augment=False, bad_images=policy)
    (tmp_path / "elsewhere.json").rename(coco.annotations_file(root, "train"))
    coco.images_dir(root, "train").rename(tmp_path / "pictures")
    with pytest.raises(UserError, match=r"no images folder .*train2017"):
        coco.CocoDataset(root, "train", augment=False, drop_empty=True, bad_images=policy)


def test_a_file_that_is_not_coco_json_is_a_one_line_error(tmp_path: Path) -> None:
    root = _tiny_coco(tmp_path, [[[1, 1, 4, 4]]])
    coco.annotations_file(root, "train").write_text("{not json")
    with pytest.raises(UserError, match="is not a COCO instances file"):
        coco.CocoDataset(root, "train", augment=False, drop_empty=True)


@pytest.mark.parametrize("policy", POLICIES)
def test_images_without_objects_are_skipped_from_training_only(tmp_path: Path, policy: str) -> None:
    root = _tiny_coco(tmp_path, [[[1, 1, 4, 4]], [], [[2, 2, 3, 3]]])
    train = coco.CocoDataset(root, "train", augment=False, drop_empty=True, bad_images=policy)
    assert train.ids == [1, 3] and train.skipped_empty == 1
    every = coco.CocoDataset(root, "train", augment=False, drop_empty=False, bad_images=policy)
    image, target = every[1]
    assert every.skipped_empty == 0 and target["image_id"] == 2
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 12, 16)
    assert target["labels"].shape == (0,) and image.shape == (3, 12, 16)


@pytest.mark.parametrize("policy", POLICIES)
def test_boxes_reaching_outside_the_image_are_clipped(tmp_path: Path, policy: str) -> None:
    root = _tiny_coco(tmp_path, [[[10, -2, 20, 5], [1, 1, 4, 4]]])
    ds = coco.CocoDataset(root, "train", augment=False, drop_empty=True, bad_images=policy)
    _, target = ds[0]
    assert target["boxes"].tolist() == [[10, 0, 16, 3], [1, 1, 5, 5]]
    assert ds.clipped_boxes == 1 and ds.dropped_boxes == 0
    assert target["masks"][0].sum() == 6 * 3


@pytest.mark.parametrize("bbox", [[20, 2, 5, 5], [3, 3, 0, 4], [3, 3, 4, -1]])
def test_boxes_without_area_fail_or_are_dropped_per_policy(tmp_path: Path, bbox: list) -> None:
    root = _tiny_coco(tmp_path, [[[1, 1, 4, 4], bbox], [bbox]])
    with pytest.raises(UserError, match=r"annotation 2 of image 1.png .* has no area"):
        coco.CocoDataset(root, "train", augment=False, drop_empty=True, bad_images="fail")
    ds = coco.CocoDataset(root, "train", augment=False, drop_empty=True, bad_images="skip")
    assert ds.dropped_boxes == 2 and ds.skipped_empty == 1 and ds.ids == [1]
    assert ds[0][1]["boxes"].tolist() == [[1, 1, 5, 5]] and ds[0][1]["masks"].shape[0] == 1


@pytest.mark.parametrize("garbage", [b"not a png", b"\x89PNG\r\n\x1a\n truncated"])
def test_an_unreadable_image_fails_in_one_line_or_is_skipped_and_counted(
    tmp_path: Path, garbage: bytes
) -> None:
    root = _tiny_coco(tmp_path, [[[1, 1, 4, 4]], [[2, 2, 3, 3]]])
    (coco.images_dir(root, "train") / "1.png").write_bytes(garbage)
    failing = coco.CocoDataset(root, "train", augment=False, drop_empty=True, channels=3)
    with pytest.raises(UserError, match=r"unreadable image .*1\.png") as err:
        failing[0]
    assert "\n" not in str(err.value)
    record = tmp_path / "skipped.txt"
    ds = coco.CocoDataset(
        root, "train", augment=False, drop_empty=True, bad_images="skip", skipped_file=record
    )
    assert ds.mode == "RGB"  # from the first readable image
    image, target = ds[0]
    assert target["image_id"] == 2 and image.shape == (3, 12, 16)
    assert ds.skipped == {str(coco.images_dir(root, "train") / "1.png")}
    assert record.read_text().splitlines() == sorted(ds.skipped)


def test_an_image_of_another_size_than_annotated_counts_as_unreadable(tmp_path: Path) -> None:
    root = _tiny_coco(tmp_path, [[[1, 1, 4, 4]], [[2, 2, 3, 3]]])
    Image.new("RGB", (8, 8)).save(coco.images_dir(root, "train") / "2.png")
    ds = coco.CocoDataset(root, "train", augment=False, drop_empty=True)
    with pytest.raises(UserError, match="it is 8x8, the annotations say 16x12"):
        ds[1]
