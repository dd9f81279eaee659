"""Read the run directories of one sweep (runs/<experiment>/<cell>/) into a pandas DataFrame.

Reading only: nothing under a run directory is ever written. A cell is a directory holding at
least one of config.yaml, history.csv or metrics.json; metrics.json (written last, atomically by
the trainer) means the cell is done, so a cell without it is "unfinished" (still running, or
killed). A cell is identified by its record (normbench.track.cell.Cell): from metrics.json, else
the one job.json stores, else (a directory written before job.json held it) from config.yaml,
with no overrides known. The directory's name is never read for what the cell is; it only
labels a cell that has no record.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from normbench.errors import UserError
from normbench.metrics import NAMES, val_error_metrics
from normbench.track.environment import JOB, JOB_CELL

CELL_FILES = ("metrics.json", "config.yaml", "history.csv")
STATUSES = ("finished", "diverged", "failed", "unfinished")
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
    path = Path(cell_dir) / "history.csv"
    if not path.is_file():
        return None
    try:
        history = pd.read_csv(path, on_bad_lines="skip")
    except pd.errors.EmptyDataError:
        return None
    return history if "epoch" in history.columns else None


def is_cell_dir(path: Path) -> bool:
    """Whether a directory looks like one cell of a sweep."""
    return path.is_dir() and any((path / name).is_file() for name in CELL_FILES)


def identity_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Fields of a cell taken from its resolved config.yaml: the settings an unfinished cell
    reports (epochs, metric), and its identity where no cell record says it."""
    model = config.get("model") or {}
    norm = config.get("norm") or {}
    dataset = config.get("dataset") or {}
    fields = {
        "experiment": config.get("name"),
        "model": model.get("name"),
        "dataset": dataset.get("name"),
        "norm": norm.get("name"),
        "groups": norm.get("groups"),
        "group_size": norm.get("group_size"),
        "batch": config.get("batch"),
        "gpus": config.get("gpus"),
        "devices": config.get("devices"),
        "seed": config.get("seed"),
        "epochs": config.get("epochs"),
        "metric": config.get("metric"),  # what the experiment's report shows
    }
    if fields["norm"] is not None:
        fields["norm_label"] = fields["norm"] + ("+ws" if model.get("ws") else "")
    if fields["batch"] is not None and fields["gpus"] is not None:
        fields["total_batch"] = fields["batch"] * fields["gpus"]
    return {key: value for key, value in fields.items() if value is not None}


def _read_json(path: Path, what: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"unreadable {what} file '{path}': {exc} (expected JSON)") from exc


def _read_metrics(cell_dir: Path) -> dict[str, Any] | None:
    path = cell_dir / "metrics.json"
    metrics = _read_json(path, "metrics")
    if metrics is None:
        return None
    if metrics.get("status") not in STATUSES[:3]:
        raise UserError(
            f"unknown status {metrics.get('status')!r} in '{path}' "
            f"(allowed: {', '.join(STATUSES[:3])})"
        )
    return metrics


def _read_config(cell_dir: Path) -> dict[str, Any] | None:
    path = cell_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"unreadable config file '{path}': {exc}") from exc
    return config if isinstance(config, dict) else None


def read_cell(cell_dir: Path) -> dict[str, Any]:
    """One record (CELL_COLUMNS) describing a cell directory."""
    cell_dir = Path(cell_dir)
    record: dict[str, Any] = dict.fromkeys(CELL_COLUMNS)
    config = _read_config(cell_dir)
    if config is not None:
        record.update(identity_from_config(config))
    stored = (_read_json(cell_dir / JOB, "job") or {}).get(JOB_CELL) or {}
    metrics = _read_metrics(cell_dir)
    # Later sources win: metrics.json holds the cell's fields as the trainer saw them.
    for source in (stored, metrics or {}):
        record.update({k: v for k, v in source.items() if k in record and v is not None})
    for column in ("overrides", "versions"):
        if isinstance(record[column], dict):
            record[column] = json.dumps(record[column], sort_keys=True)
    history = read_history(cell_dir)
    record["status"] = metrics["status"] if metrics is not None else "unfinished"
    record["epochs_done"] = 0 if history is None else len(history)
    missing = [f for f in ERROR_FIELDS if record[f] is None]
    # The stored fields are what we report; history only fills a field an older run lacks.
    if record["status"] == "finished" and missing and history is not None:
        computed = val_error_metrics(history["val_error"])
        record.update({field: computed[field] for field in missing})
    record["cell"] = record["cell"] or cell_dir.name  # a label only: no record says the name
    record["path"] = str(cell_dir)
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
        if not p.name.startswith(".") and p.resolve() not in skip and is_cell_dir(p)
    ]


def collect_runs(sweep_dir: Path, exclude: Iterable[Path] = ()) -> pd.DataFrame:
    """One row per cell of a sweep folder (columns CELL_COLUMNS), in natural cell-name order."""
    cells = find_cells(sweep_dir, exclude)
    if not cells:
        raise UserError(
            f"no run directories in '{sweep_dir}' "
            f"(expected <cell>/ folders holding {' or '.join(CELL_FILES)})"
        )
    frame = pd.DataFrame.from_records([read_cell(c) for c in cells], columns=CELL_COLUMNS)
    for column in INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame
