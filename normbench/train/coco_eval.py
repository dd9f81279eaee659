"""COCO box and mask AP of a detector's predictions, computed by pycocotools' COCOeval.

COCOeval is the community's evaluator: our numbers are computed as every COCO number is (IoU
thresholds 0.50:0.05:0.95, 101-point interpolated precision, at most 100 detections per image),
not by a hand-written AP that could differ in a corner case.

Each rank converts its images' predictions to COCO results as they come (:meth:`update`), so
it keeps run-length-encoded masks instead of dense probability maps. :meth:`result` gathers the
results of every rank on rank 0, which runs COCOeval once for boxes and once for masks, and
hands the six numbers to every rank. The val loader must give each image to exactly one rank
(normbench.train.loader.ValSampler; a padding DistributedSampler repeats images, which counts
their detections twice): an image seen twice is an error.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

log = logging.getLogger("normbench")

# The six numbers a detection cell reports, in percent (0-100).
METRICS = ("box_ap", "box_ap50", "box_ap75", "mask_ap", "mask_ap50", "mask_ap75")
# COCOeval's iouType -> the prefix of our metric names.
IOU_TYPES = {"bbox": "box", "segm": "mask"}
# Suffix -> position in COCOeval.stats: AP at IoU 0.50:0.95, at 0.50 and at 0.75 (all areas).
STATS = {"ap": 0, "ap50": 1, "ap75": 2}
# A mask pixel belongs to the object where its probability exceeds this (Mask R-CNN's rule).
MASK_THRESHOLD = 0.5

Results = dict[str, list[dict[str, Any]]]  # iouType -> COCO result records


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4) as corners (x1, y1, x2, y2) -> COCO's (x, y, width, height)."""
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """Mask probabilities (N, 1, H, W) -> one COCO RLE per mask, counts as text (JSON-ready).

    pycocotools encodes (H, W, N) uint8 arrays in Fortran (column-major) order.
    """
    binary = (masks[:, 0] > MASK_THRESHOLD).to(torch.uint8).cpu().numpy()
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    return [{"size": rle["size"], "counts": rle["counts"].decode("ascii")} for rle in rles]


def to_coco_results(image_id: int, output: Mapping[str, torch.Tensor]) -> Results:
    """One image's predictions (torchvision Mask R-CNN's eval output: ``boxes`` xyxy, ``scores``,
    ``labels`` = COCO category ids, ``masks`` probabilities (N, 1, H, W)) as COCO results.

    Boxes and masks are separate lists: pycocotools reads a record with a ``bbox`` as a box
    result and would give a mask result the area of its box.
    """
    scores = output["scores"].tolist()
    labels = output["labels"].tolist()
    if not scores:
        return {"bbox": [], "segm": []}
    boxes = xyxy_to_xywh(output["boxes"].float()).tolist()
    rles = encode_masks(output["masks"])
    image_id = int(image_id)

    def record(category: int, score: float, **found: Any) -> dict[str, Any]:
        return {"image_id": image_id, "category_id": int(category), "score": score, **found}

    found = list(zip(labels, scores, boxes, rles, strict=True))
    return {
        "bbox": [record(c, s, bbox=b) for c, s, b, _ in found],
        "segm": [record(c, s, segmentation=r) for c, s, _, r in found],
    }


def _summary_stats(
    coco_gt: COCO, results: list[dict[str, Any]], iou_type: str, image_ids: list[int] | None
) -> np.ndarray:
    """COCOeval's 12 summary numbers (fractions) for one iouType; its printout goes to the log
    at debug level."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # loadRes writes into the records it reads (id, area, a bbox for a mask): give it copies
        detections = coco_gt.loadRes([dict(r) for r in results])
        evaluation = COCOeval(coco_gt, detections, iou_type)
        if image_ids is not None:
            evaluation.params.imgIds = image_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    log.debug("COCOeval %s:\n%s", iou_type, printed.getvalue())
    return evaluation.stats


def coco_metrics(
    coco_gt: COCO,
    results: Mapping[str, list[dict[str, Any]]],
    image_ids: Iterable[int] | None = None,
) -> dict[str, float]:
    """Box and mask AP, AP50, AP75 in percent (:data:`METRICS`) of COCO ``results`` against the
    ground truth ``coco_gt``, over ``image_ids`` (default: every image of ``coco_gt``).

    No detection at all scores 0 (pycocotools cannot load an empty result list). COCOeval's -1
    (no ground-truth object in the images evaluated) becomes NaN.
    """
    ids = None if image_ids is None else sorted(set(image_ids))
    metrics: dict[str, float] = {}
    for iou_type, prefix in IOU_TYPES.items():
        found = results.get(iou_type, [])
        stats = _summary_stats(coco_gt, found, iou_type, ids) if found else None
        for suffix, index in STATS.items():
            value = 0.0 if stats is None else float(stats[index])
            metrics[f"{prefix}_{suffix}"] = math.nan if value < 0 else 100.0 * value
    return metrics


def _gather_on_main(value: Any) -> list[Any] | None:
    """Every rank's ``value`` on rank 0 (None elsewhere); ``[value]`` without a process group.

    A collective: every rank calls it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [value]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def _share_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a collective where a process group exists)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _repeated(image_ids: Iterable[int]) -> list[int]:
    return sorted(i for i, count in Counter(image_ids).items() if count > 1)


class CocoEvaluator:
    """Collects one evaluation pass's predictions; :meth:`result` scores them with COCOeval."""

    def __init__(self, coco_gt: COCO) -> None:
        self.coco_gt = coco_gt
        self.image_ids: list[int] = []
        self.results: Results = {iou_type: [] for iou_type in IOU_TYPES}

    def update(
        self, image_ids: Sequence[int], outputs: Sequence[Mapping[str, torch.Tensor]]
    ) -> None:
        """Add a batch: the COCO image ids and the model's eval outputs, in the same order."""
        for image_id, output in zip(image_ids, outputs, strict=True):
            self.image_ids.append(int(image_id))
            for iou_type, found in to_coco_results(image_id, output).items():
                self.results[iou_type].extend(found)

    def result(self) -> dict[str, float]:
        """The :data:`METRICS` over the images every rank saw, the same dict on every rank.

        A collective where a process group of several ranks exists: every rank calls it.
        Images no rank saw are left out of the evaluation (a partial val set scores the images
        it holds); an image seen twice raises.
        """
        gathered = _gather_on_main((self.image_ids, self.results))
        outcome: dict[str, float] | Exception | None = None
        if gathered is not None:
            try:
                outcome = self._score(gathered)
            except Exception as error:  # the other ranks wait in the broadcast: tell them
                _share_from_main(error)
                raise
        outcome = _share_from_main(outcome)
        if isinstance(outcome, Exception):
            raise RuntimeError(f"rank 0 could not score the evaluation: {outcome}")
        return outcome

    def _score(self, gathered: list[tuple[list[int], Results]]) -> dict[str, float]:
        """COCOeval over every rank's (image ids, results)."""
        image_ids = [i for ids, _ in gathered for i in ids]
        repeated = _repeated(image_ids)
        if repeated:
            raise RuntimeError(
                f"images evaluated more than once: {repeated[:10]} "
                "(the val sampler must give each image to one rank, without padding)"
            )
        results = {t: [r for _, found in gathered for r in found[t]] for t in IOU_TYPES}
        return coco_metrics(self.coco_gt, results, image_ids)
