"""The run directory: the record of one cell.

    <out_dir>/<experiment>/<cell>/config.yaml    resolved config, written before training
                                   job.json       the command and the cell's record (cell.py)
                                   history.csv    one row per epoch
                                   steps.csv      train loss and lr every log_every_steps
                                   metrics.json   written last; its presence means "done"
                                   checkpoint.pt  latest state, for exact resume
                                   train.log      rank 0's log
                                   skipped_images.txt  unreadable files skipped (if any)

Every file is replaced atomically (temporary file, fsync, rename) so a crash never leaves a
half-written record, and the report can read a directory while a sweep is writing it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from normbench.errors import UserError

CONFIG = "config.yaml"
HISTORY = "history.csv"
STEPS = "steps.csv"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
LOG = "train.log"
SKIPPED = "skipped_images.txt"  # appended to by every worker process of every rank
LOCK = ".lock"
LOCK_HOLDER = ".lock.holder"  # who holds LOCK: the lock file itself is truncated by each try

HISTORY_COLUMNS = (
    "epoch", "step", "train_loss", "train_error", "val_loss", "val_error",
    "lr", "images_per_s", "peak_mem_mb", "time_s",
)  # fmt: skip
STEP_COLUMNS = ("step", "epoch", "train_loss", "lr")
# Statuses that are results: a rerun of the sweep skips them. "failed" cells are retried.
DONE_STATUSES = ("finished", "diverged")

# Keys that never change the science of a cell, so they stay out of its directory name.
NON_SCIENCE_KEYS = frozenset({
    "name", "out_dir", "rerun", "devices", "progress", "experiment", "launcher", "logger",
    "accelerator", "backend", "log_every_steps", "checkpoint_every_steps", "cpu_threads",
    "metric",
})  # fmt: skip
NON_SCIENCE_PREFIXES = (
    "logger.", "hydra.", "dataset.root", "dataset.workers", "dataset.download", "diagnostics.",
)  # fmt: skip


def _is_science_key(key: str) -> bool:
    key = key.lstrip("+~")
    return key not in NON_SCIENCE_KEYS and not key.startswith(NON_SCIENCE_PREFIXES)


def cell_overrides(overrides: Iterable[str], norm: str, batch: int) -> dict[str, str]:
    """The overrides that name a cell, always with its norm and batch, sorted by key."""
    pairs: dict[str, str] = {}
    for item in overrides:
        if not item or "=" not in item:
            continue
        key, value = item.split("=", 1)
        if _is_science_key(key):
            pairs[key.lstrip("+~")] = _canonical(value)
    pairs.setdefault("norm", norm)
    pairs.setdefault("batch", str(batch))
    return dict(sorted(pairs.items()))


def _canonical(value: str) -> str:
    """One spelling per number: Hydra rewrites swept floats (1e30 -> 1e+30, 1e-3 -> 0.001), so
    `train` and `sweep` name the same cell alike only if both go through float()."""
    try:
        int(value)
        return value
    except ValueError:
        pass
    try:
        return str(float(value))
    except ValueError:
        return value


def cell_name(overrides: Iterable[str], norm: str, batch: int) -> str:
    """Directory name of a cell, e.g. ``batch=4,norm=gn``: stable whatever the override order."""
    return ",".join(f"{k}={v}" for k, v in cell_overrides(overrides, norm, batch).items())


TEMP_SUFFIX = ".tmp"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it.

    Readers see the old file or the new one, never a part. An OSError (a full disk, a read-only
    file system) names `path`, and the old file stays as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as e:
        raise _naming(e, path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # make the rename itself survive a power cut
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise


def _naming(error: OSError, path: Path) -> OSError:
    """`error`, or the same error naming `path` when it names no file (ENOSPC from write())."""
    if error.filename is not None:
        return error
    return OSError(error.errno, error.strerror or str(error), str(path))


def _fsync_dir(directory: Path) -> None:
    """Best effort: some systems (Windows, a few network file systems) cannot fsync a folder,
    and by now the new file is in place either way."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete what a crash in the middle of :func:`atomic_write_bytes` left behind.

    Call only while holding the cell's lock: then no other process is writing in `run_dir`.
    Returns the files removed.
    """
    leftovers = [p for p in run_dir.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a parent is a file
        return None


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def finished_status(run_dir: Path) -> str | None:
    """The status of a cell that has a result ("finished"/"diverged"), else None."""
    metrics = read_json(run_dir / METRICS)
    if metrics and metrics.get("status") in DONE_STATUSES:
        return metrics["status"]
    return None


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(run_dir: Path, config: dict[str, Any]) -> list[str]:
    """The science settings in which ``config`` differs from the run directory's config.yaml,
    as "key: old -> new"; empty when the directory has no config yet.

    Keys that only one side has are left out, so a run recorded before the schema gained a key
    stays reusable.
    """
    if not (run_dir / CONFIG).is_file():
        return []
    try:
        stored = yaml.safe_load((run_dir / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"unreadable config file '{run_dir / CONFIG}': {e}") from None
    if not isinstance(stored, dict):
        return []
    old, new = _flatten(stored), _flatten(config)
    return [
        f"{key}: {old[key]} -> {new[key]}"
        for key in sorted(old.keys() & new.keys())
        if old[key] != new[key] and _is_science_key(key)
    ]


def archive_result(run_dir: Path) -> Path | None:
    """Move a previous result aside (``archive/<time>/``) before a forced rerun: never delete it."""
    record = (METRICS, HISTORY, CONFIG, CHECKPOINT, LOG, SKIPPED)
    names = [n for n in record if (run_dir / n).exists()]
    if not names:
        return None
    target = run_dir / "archive" / time.strftime("%Y%m%d-%H%M%S")
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.move(str(run_dir / name), str(target / name))
    return target


def skipped_images(run_dir: Path) -> int:
    """How many distinct unreadable images the cell's processes skipped (dataset.bad_images)."""
    try:
        return len(set((run_dir / SKIPPED).read_text().splitlines()))
    except FileNotFoundError:
        return 0


def write_lock_holder(run_dir: Path) -> None:
    """Say which process holds the cell's lock (call right after taking it)."""
    since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(run_dir / LOCK_HOLDER, {"pid": os.getpid(), "host": socket.gethostname(),
                                        "since": since})  # fmt: skip


def lock_holder(run_dir: Path) -> str:
    """The process that holds the cell's lock, in words, as it wrote it."""
    try:
        holder = read_json(run_dir / LOCK_HOLDER)
    except (OSError, ValueError):  # being replaced, or torn by a crash: say nothing wrong
        holder = None
    if not holder:
        return "a process that has not said which"
    return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"


def ensure_writable(directory: Path) -> None:
    """Fail fast, naming the path, when the output directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output directory {directory}: {e.strerror}") from None
