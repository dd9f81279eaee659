"""normbench.train.coco_eval: COCO results from Mask R-CNN outputs, and COCOeval's AP on cases
small enough to compute by hand."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from normbench.train.coco_eval import (
    METRICS,
    CocoEvaluator,
    coco_metrics,
    encode_masks,
    to_coco_results,
    xyxy_to_xywh,
)

SIZE = 100  # every test image is SIZE x SIZE pixels


def rectangle(x: int, y: int, w: int, h: int) -> np.ndarray:
    """A binary (SIZE, SIZE) mask holding the box (x, y, w, h), in COCO's xywh."""
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    return mask


def ground_truth(objects: dict[int, list[tuple[int, tuple[int, int, int, int]]]]) -> COCO:
    """A COCO ground truth: image id -> [(category id, xywh box)], each object's mask the box."""
    annotations = []
    for image_id, found in objects.items():
        for category, box in found:
            rle = mask_utils.encode(np.asfortranarray(rectangle(*box)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                 "bbox": list(box), "area": box[2] * box[3], "iscrowd": 0, "segmentation": rle}
            )  # fmt: skip
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": SIZE, "height": SIZE} for i in objects],
        "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2)],
        "annotations": annotations,
    }
    coco.createIndex()
    return coco


def output(detections: list[tuple[int, float, tuple[int, int, int, int]]]) -> dict:
    """Mask R-CNN's eval output for [(label, score, xywh box)], each mask the box's rectangle
    (probability 0.9 inside, 0.2 outside: the 0.5 threshold keeps exactly the rectangle)."""
    boxes = torch.tensor(
        [[x, y, x + w, y + h] for _, _, (x, y, w, h) in detections], dtype=torch.float32
    )
    masks = [torch.from_numpy(rectangle(*box)).float() * 0.7 + 0.2 for _, _, box in detections]
    masks = torch.stack(masks) if masks else torch.zeros(0, SIZE, SIZE)
    return {
        "boxes": boxes.reshape(-1, 4),
        "scores": torch.tensor([s for _, s, _ in detections], dtype=torch.float32),
        "labels": torch.tensor([c for c, _, _ in detections], dtype=torch.int64),
        "masks": masks[:, None],
    }


# Two objects of category 1; detections by score: a hit (IoU 1), a false positive (IoU 0 with
# both), and a hit on B of IoU 100 / 160 = 0.625 (its box is 6 pixels taller than B's).
GT_A, GT_B = (0, 0, 10, 10), (50, 50, 10, 10)
HIT_A = (1, 0.9, GT_A)
MISS = (1, 0.8, (80, 20, 10, 10))
HIT_B = (1, 0.7, (50, 50, 10, 16))

# By hand, COCO's AP: at each IoU threshold t, precision p and recall r after each detection in
# score order; precision interpolated as the best precision at any recall >= r; read at the 101
# recall levels 0, 0.01, ..., 1 (a level no detection reaches reads 0); averaged.
# - t in {0.50, 0.55, 0.60} (<= 0.625): hit, miss, hit -> r = .5, .5, 1; p = 1, 1/2, 2/3;
#   interpolated 1, 2/3, 2/3: levels 0..0.50 (51 of them) read 1, levels 0.51..1 (50) read 2/3:
#   AP = (51 + 50 * 2/3) / 101.
# - t in {0.65, ..., 0.95} (7 thresholds): hit, miss, miss -> r = .5, .5, .5; p = 1, 1/2, 1/3:
#   levels 0..0.50 read 1, levels above 0.5 are never reached and read 0: AP = 51 / 101.
AP_LOOSE = (51 + 50 * 2 / 3) / 101
AP_STRICT = 51 / 101
HAND = {
    "ap": 100 * (3 * AP_LOOSE + 7 * AP_STRICT) / 10,  # mean over the 10 thresholds: 60.40
    "ap50": 100 * AP_LOOSE,  # 83.50
    "ap75": 100 * AP_STRICT,  # 50.50
}


def hand_case() -> tuple[COCO, dict]:
    coco = ground_truth({1: [(1, GT_A), (1, GT_B)]})
    return coco, output([HIT_A, MISS, HIT_B])


def test_box_and_mask_ap_match_the_hand_computation():
    coco, found = hand_case()
    evaluator = CocoEvaluator(coco)
    evaluator.update([1], [found])
    metrics = evaluator.result()
    assert list(metrics) == list(METRICS)
    # The masks are the boxes' rectangles, so mask IoUs (and APs) equal the boxes'.
    for prefix in ("box", "mask"):
        for suffix, expected in HAND.items():
            assert metrics[f"{prefix}_{suffix}"] == pytest.approx(expected, abs=1e-6), suffix


def test_the_false_positive_ranked_between_the_hits_lowers_ap50():
    coco, _ = hand_case()
    last = (1, 0.6, MISS[2])  # the same false positive, scored below both hits
    results = to_coco_results(1, output([HIT_A, MISS, HIT_B]))
    assert coco_metrics(coco, results)["box_ap50"] == pytest.approx(HAND["ap50"])
    results = to_coco_results(1, output([HIT_A, last, HIT_B]))
    assert coco_metrics(coco, results)["box_ap50"] == pytest.approx(100.0)


def test_a_perfect_prediction_scores_100_and_wrong_labels_score_0():
    coco = ground_truth({1: [(1, GT_A), (2, GT_B)]})
    perfect = to_coco_results(1, output([(1, 0.9, GT_A), (2, 0.8, GT_B)]))
    assert coco_metrics(coco, perfect) == pytest.approx(dict.fromkeys(METRICS, 100.0))
    swapped = to_coco_results(1, output([(2, 0.9, GT_A), (1, 0.8, GT_B)]))
    assert coco_metrics(coco, swapped) == pytest.approx(dict.fromkeys(METRICS, 0.0))


def test_no_predictions_score_0_instead_of_crashing():
    coco, _ = hand_case()
    evaluator = CocoEvaluator(coco)
    assert evaluator.result() == dict.fromkeys(METRICS, 0.0)  # nothing seen at all
    evaluator.update([1], [output([])])  # an image without detections
    assert evaluator.result() == dict.fromkeys(METRICS, 0.0)


def test_images_without_detections_count_their_objects_as_missed():
    coco = ground_truth({1: [(1, GT_A)], 2: [(1, GT_B)]})
    evaluator = CocoEvaluator(coco)
    evaluator.update([1, 2], [output([(1, 0.9, GT_A)]), output([])])
    # recall reaches 0.5 only: levels 0..0.5 read precision 1, the rest 0
    assert evaluator.result()["box_ap"] == pytest.approx(100 * 51 / 101)


def test_only_the_images_seen_are_evaluated():
    coco = ground_truth({1: [(1, GT_A)], 2: [(1, GT_B)]})
    evaluator = CocoEvaluator(coco)
    evaluator.update([1], [output([(1, 0.9, GT_A)])])
    assert evaluator.result()["box_ap"] == pytest.approx(100.0)


def test_an_image_seen_twice_is_an_error():
    coco, found = hand_case()
    evaluator = CocoEvaluator(coco)
    evaluator.update([1], [found])
    evaluator.update([1], [found])  # as a padding sampler would repeat it
    with pytest.raises(RuntimeError, match=r"more than once: \[1\].*without padding"):
        evaluator.result()


def test_scoring_twice_gives_the_same_numbers():
    """pycocotools writes into the result records it loads; ours must survive that."""
    coco, found = hand_case()
    results = to_coco_results(1, found)
    assert coco_metrics(coco, results) == coco_metrics(coco, results)
    assert set(results["segm"][0]) == {"image_id", "category_id", "score", "segmentation"}


def test_no_ground_truth_in_the_images_reads_nan():
    coco = ground_truth({1: [(1, GT_A)], 2: []})
    results = to_coco_results(2, output([(1, 0.9, GT_A)]))
    assert all(math.isnan(v) for v in coco_metrics(coco, results, image_ids=[2]).values())


def test_the_summary_is_not_printed_but_logged_at_debug(capsys, caplog):
    coco, found = hand_case()
    capsys.readouterr()  # building the ground truth prints pycocotools' own lines
    with caplog.at_level(logging.DEBUG, logger="normbench"):
        coco_metrics(coco, to_coco_results(1, found))
    assert capsys.readouterr().out == ""
    assert "Average Precision  (AP) @[ IoU=0.50      | area=   all" in caplog.text


def test_box_corners_become_coco_xywh():
    boxes = torch.tensor([[1.0, 2.0, 4.0, 6.0], [0.5, 0.0, 10.5, 3.0]])
    assert xyxy_to_xywh(boxes).tolist() == [[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, 10.0, 3.0]]


def test_masks_are_thresholded_above_one_half_and_round_trip_through_rle():
    generator = torch.Generator().manual_seed(0)
    probabilities = torch.rand(3, 1, 7, 5, generator=generator)
    probabilities[0, 0, 0, 0] = 0.5  # exactly one half is background
    rles = encode_masks(probabilities)
    json.dumps(rles)  # counts are text, ready for a JSON results file
    assert [rle["size"] for rle in rles] == [[7, 5]] * 3
    decoded = mask_utils.decode(rles)  # (H, W, N)
    expected = (probabilities[:, 0] > 0.5).numpy().transpose(1, 2, 0)
    assert decoded.shape == (7, 5, 3)
    assert np.array_equal(decoded, expected)
    assert decoded[0, 0, 0] == 0


def test_results_name_the_image_category_and_score():
    results = to_coco_results(np.int64(7), output([(2, 0.25, (3, 4, 5, 6))]))
    (box,), (segm,) = results["bbox"], results["segm"]
    assert box == {"image_id": 7, "category_id": 2, "score": 0.25, "bbox": [3.0, 4.0, 5.0, 6.0]}
    assert type(box["image_id"]) is int
    assert mask_utils.area(segm["segmentation"]) == 30
    assert "bbox" not in segm  # pycocotools derives a mask result's box and area from its mask


# ----------------------------------------------------------------------------- two processes


def _evaluate_half_on_each_rank(out_dir: str) -> None:
    """The hand case split over two images: rank 0 holds image 1 (object A, the hit on it and
    the false positive), rank 1 image 2 (object B and the 0.625 hit). COCO pools a category's
    detections over images, so the AP is the hand case's."""
    import os

    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        coco = ground_truth({1: [(1, GT_A)], 2: [(1, GT_B)]})
        evaluator = CocoEvaluator(coco)
        if rank == 0:
            evaluator.update([1], [output([HIT_A, MISS])])
        else:
            evaluator.update([2], [output([HIT_B])])
        metrics = evaluator.result()
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(metrics))


@pytest.mark.slow
def test_two_ranks_are_gathered_and_every_rank_gets_the_metrics(tmp_path):
    from normbench.train.distributed import launch_workers

    launch_workers(_evaluate_half_on_each_rank, str(tmp_path), nprocs=2, run_id="test-coco-eval")
    for rank in (0, 1):
        metrics = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for suffix, expected in HAND.items():
            assert metrics[f"box_{suffix}"] == pytest.approx(expected, abs=1e-6)
            assert metrics[f"mask_{suffix}"] == pytest.approx(expected, abs=1e-6)
