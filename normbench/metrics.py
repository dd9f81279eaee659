"""The numbers a cell is judged by: their names, labels and direction, and how each is computed
from the cell's per-epoch validation measurements (a classifier's val errors; a detector's COCO
APs).

One definition for the training loop (metrics.json), the report (its tables, and the metrics of
a cell recorded without them) and W&B (each metric's summary), so the headline cannot differ
between them. The paper's authors report the median val error of the last 5 epochs, which one
noisy evaluation cannot move; the final and the best error stand beside it.

One policy for missing values: a value that is not a finite number (NaN: an epoch without a
measurement, such as an unreadable history row) is left out, and a metric with no value left is
NaN.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

LAST_EPOCHS = 5  # the headline's median is over this many last epochs


def measured(values: Iterable[float]) -> list[float]:
    """The values that are measurements: finite numbers, in order (the one NaN policy)."""
    return [v for v in map(float, values) if math.isfinite(v)]


def median_last(values: Iterable[float], n: int = LAST_EPOCHS) -> float:
    """Median of the last ``n`` measured values (the paper's "median of the last 5 epochs")."""
    kept = measured(values)
    return statistics.median(kept[-n:]) if kept else math.nan


@dataclass(frozen=True)
class Metric:
    """One number of a cell and how it is computed from the cell's measured val errors."""

    name: str  # the key in metrics.json, the report's cells and W&B's summary
    label: str
    lower_is_better: bool
    compute: Callable[[Sequence[float]], float]  # from a non-empty list of measured values


# In the column order of the report's cells.
VAL_ERRORS = (
    Metric("val_error_final", "val error at the last epoch", True, lambda v: v[-1]),
    Metric("val_error_best", "best val error over epochs", True, min),
    Metric(
        "val_error_median5",
        f"val error, median of the last {LAST_EPOCHS} epochs",
        True,
        median_last,
    ),
)
NAMES = tuple(metric.name for metric in VAL_ERRORS)
LABELS = {metric.name: metric.label for metric in VAL_ERRORS}


def val_error_metrics(val_errors: Iterable[float]) -> dict[str, float]:
    """Every metric of :data:`VAL_ERRORS` from a cell's per-epoch val errors, in order."""
    kept = measured(val_errors)
    return {m.name: float(m.compute(kept)) if kept else math.nan for m in VAL_ERRORS}


def _final(values: Sequence[float]) -> float:
    return values[-1]


# Detection (Mask R-CNN on COCO-format data): pycocotools' AP in percent, higher is better. The
# paper reports the final model's, so each is the last epoch's measurement (the median of the
# last 5 belongs to the classification protocol's per-epoch noise, not to a decayed detector).
DETECTION = tuple(
    Metric(name, f"{label} of the final model (COCO)", False, _final)
    for name, label in (
        ("box_ap", "box AP"),
        ("box_ap50", "box AP50"),
        ("box_ap75", "box AP75"),
        ("mask_ap", "mask AP"),
        ("mask_ap50", "mask AP50"),
        ("mask_ap75", "mask AP75"),
    )
)
DETECTION_NAMES = tuple(metric.name for metric in DETECTION)
# Every metric of every task, by name: what `metric=` may say (each task allows its own).
ALL_LABELS = {metric.name: metric.label for metric in (*VAL_ERRORS, *DETECTION)}
TASK_METRICS = {"classification": NAMES, "detection": DETECTION_NAMES}


def detection_metrics(history: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Every metric of :data:`DETECTION` from a detection cell's per-epoch history rows."""
    rows = list(history)
    result = {}
    for metric in DETECTION:
        kept = measured(row.get(metric.name, math.nan) for row in rows)
        result[metric.name] = float(metric.compute(kept)) if kept else math.nan
    return result
