"""Read the run directories of one sweep (runs/<experiment>/<cell>/) into a pandas DataFrame.

Reading only, through :class:`~normbench.track.rundir.RunDir`: nothing under a run directory is
ever written. A cell is a directory holding at least one of config.yaml, history.csv or
metrics.json; metrics.json (written last, atomically) means the cell stopped, so a cell without it
is "unfinished" (still running, or killed). A cell is identified by its record
(normbench.track.cell.Cell): from metrics.json, else the one job.json stores (the job writes it
before config.yaml). The directory's name is never read for what the cell is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.errors import UserError
from normbench.metrics import DETECTION_NAMES, NAMES, val_error_metrics
from normbench.track.rundir import CELL_FILES, RunDir, Status

ERROR_FIELDS = NAMES  # the val errors of normbench.metrics
# The BN diagnostics (normbench.train.diagnostics): final weights, four evaluation modes.
DIAGNOSTIC_FIELDS = (
    "val_error_ema_average", "val_error_ema_first", "val_error_precise", "val_error_batch",
    "diagnostics_time_s",
)  # fmt: skip

# One row per cell, in this column order (metrics.json fields, plus epochs_done and path).
# `overrides` (the science overrides that name the cell) and `versions` are JSON text.
CELL_COLUMNS = [
    "cell", "overrides", "status", "experiment", "model", "dataset", "norm", "norm_label", "groups",
    "group_size", "batch", "gpus", "total_batch", "devices", "seed", "epochs", "epochs_done",
    "steps", "lr", "bn_eval_stats", "metric", *ERROR_FIELDS, "train_error_final", "wall_time_s",
    "images_per_s", "peak_mem_mb", *DIAGNOSTIC_FIELDS, "skipped_images", "diverged_at_step",
    "error", "command",
    "host", "git_commit",
    "versions", "finished_at", "path",
]  # fmt: skip
# A detection cell's own columns: its COCO APs (normbench.metrics.DETECTION) and where its
# backbone started (None: from scratch). Collected only from a folder of detection cells, so a
# classification report's cells.csv keeps its columns.
DETECTION_COLUMNS = [*DETECTION_NAMES, "pretrained"]
INT_COLUMNS = [
    "groups", "group_size", "batch", "gpus", "total_batch", "devices", "seed", "epochs",
    "epochs_done", "steps", "skipped_images", "diverged_at_step",
]  # fmt: skip
FLOAT_COLUMNS = [
    "lr", *ERROR_FIELDS, "train_error_final", "wall_time_s", "images_per_s", "peak_mem_mb",
    *DIAGNOSTIC_FIELDS,
]  # fmt: skip


def read_history(cell_dir: Path) -> pd.DataFrame | None:
    """The per-epoch history of a cell, or None when it has none yet.

    A running trainer appends to history.csv, so a torn last line is skipped rather than fatal.
    """
    path = RunDir(Path(cell_dir)).history
    if not path.is_file():
        return None
    try:
        history = pd.read_csv(path, on_bad_lines="skip")
    except pd.errors.EmptyDataError:
        return None
    return history if "epoch" in history.columns else None


# The settings of a run that no record of its cell holds, from its config.yaml: an unfinished
# cell's epochs and devices, and the metric its experiment's report shows.
CONFIG_SETTINGS = ("epochs", "devices", "metric")


def read_cell(cell_dir: Path) -> dict[str, Any]:
    """One record (CELL_COLUMNS, then DETECTION_COLUMNS) describing a cell directory."""
    run = RunDir(Path(cell_dir))
    record: dict[str, Any] = dict.fromkeys([*CELL_COLUMNS, *DETECTION_COLUMNS])
    config = run.read_config() or {}
    metrics = run.read_metrics()
    # metrics.json holds the cell's fields beside its results (and the run's devices and
    # epochs, which win over the config's); before it exists, job.json holds the cell.
    cell = metrics if metrics is not None else run.cell().as_dict()
    for source in ({key: config.get(key) for key in CONFIG_SETTINGS}, cell):
        record.update({k: v for k, v in source.items() if k in record and v is not None})
    for column in ("overrides", "versions"):
        if isinstance(record[column], dict):
            record[column] = json.dumps(record[column], sort_keys=True)
    if metrics is None:  # a detection cell's backbone, before metrics.json records it
        record["pretrained"] = (config.get("model") or {}).get("pretrained")
    history = read_history(run.path)
    status = Status.UNFINISHED if metrics is None else metrics["status"]
    record["status"] = status.value
    record["epochs_done"] = 0 if history is None else len(history)
    missing = [f for f in ERROR_FIELDS if record[f] is None]
    is_classifier = not is_detection_record(record)
    # The stored fields are what we report; history only fills a field an older run lacks.
    if status is Status.FINISHED and missing and history is not None and is_classifier:
        computed = val_error_metrics(history["val_error"])
        record.update({field: computed[field] for field in missing})
    record["path"] = str(run.path)
    return record


def natural_key(name: str) -> list[Any]:
    """Sort key reading digit runs as numbers: "batch=2" before "batch=16"."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_cells(sweep_dir: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """The cell directories directly under a sweep folder, in natural order of their names."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"sweep folder '{sweep_dir}' does not exist (expected runs/<experiment>)")
    skip = {Path(p).resolve() for p in exclude}
    return [
        p
        for p in sorted(sweep_dir.iterdir(), key=lambda p: natural_key(p.name))
        if not p.name.startswith(".") and p.resolve() not in skip and RunDir(p).is_cell()
    ]


def collect_runs(sweep_dir: Path, exclude: Iterable[Path] = ()) -> pd.DataFrame:
    """One row per cell of a sweep folder (columns CELL_COLUMNS, then DETECTION_COLUMNS where
    the folder holds detection cells), in natural cell-name order."""
    cells = find_cells(sweep_dir, exclude)
    if not cells:
        raise UserError(
            f"no run directories in '{sweep_dir}' "
            f"(expected <cell>/ folders holding {' or '.join(CELL_FILES)})"
        )
    records = [read_cell(c) for c in cells]
    detection = any(is_detection_record(record) for record in records)
    columns = CELL_COLUMNS + (DETECTION_COLUMNS if detection else [])
    frame = pd.DataFrame.from_records(records, columns=columns)
    for column in INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in FLOAT_COLUMNS + (list(DETECTION_NAMES) if detection else []):
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    if detection:  # None, not a missing string (NaN, which reads as true), means from scratch
        pretrained = frame["pretrained"].astype(object)
        frame["pretrained"] = pretrained.where(pretrained.notna(), None)
    return frame


def is_detection_record(record: dict[str, Any]) -> bool:
    """Whether a cell's record is a detection cell's: its metric is a detection metric (the
    detectors' configs say box_ap; validation allows each task only its own metrics)."""
    return record.get("metric") in DETECTION_NAMES
