"""The run directory: the record of one cell, and the one owner of its files.

    <out_dir>/<experiment>/<cell>/config.yaml    resolved config, written before training
                                   job.json       the command and the cell's record (cell.py)
                                   history.csv    one row per epoch
                                   steps.csv      train loss and lr every log_every_steps
                                   metrics.json   written last: the cell's status and results
                                   checkpoint.pt  latest state, for exact resume
                                   train.log      rank 0's log
                                   skipped_images.txt  unreadable files skipped (if any)
                                   .lock, .lock.holder  held by the process running the cell

:class:`RunDir` names these files, claims and releases the cell, tells its :class:`Status` and
reads and writes its records; nothing else spells a file name. Every file is replaced
atomically (temporary file, fsync, rename) so a crash never leaves a half-written record, and the
report can read a directory while a sweep is writing it.
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, overload

import yaml
from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from normbench.config import Config
from normbench.errors import UserError
from normbench.track.cell import Cell, is_science_key

# The layout: file names are the on-disk format, read back by every older record too.
CONFIG = "config.yaml"
JOB = "job.json"
HISTORY = "history.csv"
STEPS = "steps.csv"
METRICS = "metrics.json"
CHECKPOINT = "checkpoint.pt"
LOG = "train.log"
SKIPPED = "skipped_images.txt"  # appended to by every worker process of every rank
LOCK = ".lock"
LOCK_HOLDER = ".lock.holder"  # who holds LOCK: the lock file itself is truncated by each try
ARCHIVE = "archive"
# What makes a directory a cell of a sweep, for the report.
CELL_FILES = (METRICS, CONFIG, HISTORY)
# What a forced rerun moves aside: everything a run wrote (job.json is written again at once).
RESULT_FILES = (METRICS, HISTORY, STEPS, CONFIG, JOB, CHECKPOINT, LOG, SKIPPED)
JOB_CELL = "cell"  # the key of the cell's record in job.json

HISTORY_COLUMNS = (
    "epoch", "step", "train_loss", "train_error", "val_loss", "val_error",
    "lr", "images_per_s", "peak_mem_mb", "time_s",
)  # fmt: skip
STEP_COLUMNS = ("step", "epoch", "train_loss", "lr")


class Status(str, Enum):
    """A cell's status. metrics.json records the first three; a cell without it is unfinished
    (waiting, running, or killed). A str, so JSON, CSV and tables hold the same text as ever."""

    FINISHED = "finished"
    DIVERGED = "diverged"  # a result too: the loss became NaN or inf, and the cell stopped
    FAILED = "failed"  # an error stopped it: the next run retries it from its checkpoint
    UNFINISHED = "unfinished"

    def __str__(self) -> str:
        return self.value

    @property
    def is_result(self) -> bool:
        """A result: a rerun skips the cell unless asked (rerun=true). A failure is retried."""
        return self in (Status.FINISHED, Status.DIVERGED)


RECORDED = (Status.FINISHED, Status.DIVERGED, Status.FAILED)  # what metrics.json may say


class Claim(Enum):
    """What :meth:`RunDir.claim` got."""

    HELD = "held"  # this process holds the cell until the block ends
    BUSY = "busy"  # another process holds it: nothing was written


class _File:
    """A file of the layout: ``run.metrics`` is the path of metrics.json in ``run``."""

    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, run: None, owner: type) -> _File: ...
    @overload
    def __get__(self, run: RunDir, owner: type) -> Path: ...
    def __get__(self, run: RunDir | None, owner: type) -> Path | _File:
        return self if run is None else run.path / self.name


@dataclass(frozen=True)
class RunDir:
    """One cell's run directory: its files, its lock and its records."""

    path: Path

    config = _File(CONFIG)
    job = _File(JOB)
    history = _File(HISTORY)
    steps = _File(STEPS)
    metrics = _File(METRICS)
    checkpoint = _File(CHECKPOINT)
    log = _File(LOG)
    skipped = _File(SKIPPED)
    lock = _File(LOCK)

    def is_cell(self) -> bool:
        """Whether the directory holds a cell (what the report lists)."""
        return self.path.is_dir() and any((self.path / name).is_file() for name in CELL_FILES)

    # ---- claim and release

    @contextmanager
    def claim(self) -> Iterator[Claim]:
        """Hold the cell for the block (HELD), or learn at once that another process holds it
        (BUSY: then nothing is written). Leaving the block releases it. Creates the directory."""
        ensure_writable(self.path)
        lock = FileLock(str(self.lock))
        if not _acquired(lock):
            yield Claim.BUSY
            return
        try:
            since = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_json(self.path / LOCK_HOLDER, {"pid": os.getpid(), "host": socket.gethostname(),
                                                 "since": since})  # fmt: skip
            yield Claim.HELD
        finally:
            (self.path / LOCK_HOLDER).unlink(missing_ok=True)  # before the next holder writes it
            lock.release()

    def holder(self) -> str:
        """The process that holds the cell, in words, as it wrote it."""
        try:
            holder = _read_json(self.path / LOCK_HOLDER)
        except (OSError, UserError):  # being replaced, or torn by a crash: say nothing wrong
            holder = None
        if not holder:
            return "a process that has not said which"
        return f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"

    # ---- status and the records

    def read_metrics(self) -> dict[str, Any] | None:
        """metrics.json (its ``status`` a :class:`Status`), or None: the cell is unfinished."""
        metrics = _read_json(self.metrics)
        if metrics is not None:
            metrics["status"] = _recorded(metrics.get("status"), self.metrics)
        return metrics

    def write_metrics(self, record: dict[str, Any]) -> None:
        """metrics.json: a result (finished, diverged) or a failure, beside the cell's fields."""
        write_json(self.metrics, {**record, "status": Status(record["status"]).value})

    def status(self) -> Status:
        """What metrics.json says, or UNFINISHED without it."""
        metrics = self.read_metrics()
        return Status.UNFINISHED if metrics is None else metrics["status"]

    def result(self) -> Status | None:
        """The status of a cell that has a result (finished, diverged), else None."""
        status = self.status()
        return status if status.is_result else None

    def write_config(self, config: Config) -> None:
        atomic_write_text(self.config, OmegaConf.to_yaml(OmegaConf.structured(config)))

    def read_config(self) -> dict[str, Any] | None:
        """config.yaml as plain data; None when the directory has none (yet)."""
        try:
            config = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, yaml.YAMLError) as e:  # ValueError: not UTF-8
            raise UserError(f"unreadable config file '{self.config}': {e}") from None
        return config if isinstance(config, dict) else None

    def write_job(self, cell: Cell, command: str) -> None:
        """job.json: the command that made the cell, and the cell, which the workers read."""
        write_json(self.job, {"command": command, JOB_CELL: cell.as_dict()})

    def command(self) -> str | None:
        """The command job.json recorded."""
        return (_read_json(self.job) or {}).get("command")

    def cell(self) -> Cell:
        """The cell job.json stores."""
        record = (_read_json(self.job) or {}).get(JOB_CELL)
        if record is None:  # a directory prepared before job.json held the cell
            raise UserError(
                f"{self.job} does not say which cell this is: prepare the directory again "
                "(normbench prepare with the cell's overrides)"
            )
        return Cell.from_dict(record)

    def write_history(
        self, rows: Sequence[dict[str, Any]], columns: Sequence[str] = HISTORY_COLUMNS
    ) -> None:
        """The per-epoch rows; ``columns``: a task's own (detection's AP metrics)."""
        _write_csv(self.history, rows, columns)

    def write_steps(self, rows: Sequence[dict[str, Any]]) -> None:
        _write_csv(self.steps, rows, STEP_COLUMNS)

    def skipped_images(self) -> int:
        """How many distinct unreadable images the cell's processes skipped (dataset.bad_images)."""
        try:
            return len(set(self.skipped.read_text().splitlines()))
        except FileNotFoundError:
            return 0

    # ---- reuse: is the directory's run this config's, and moving a result aside

    def config_changes(self, config: dict[str, Any]) -> list[str]:
        """The science settings in which ``config`` differs from the directory's config.yaml,
        as "key: old -> new"; empty when the directory has no config yet.

        Keys that only one side has are left out, so a run recorded before the schema gained a
        key stays reusable.
        """
        stored = self.read_config()
        if stored is None:
            return []
        old, new = _flatten(stored), _flatten(config)
        return [
            f"{key}: {old[key]} -> {new[key]}"
            for key in sorted(old.keys() & new.keys())
            if old[key] != new[key] and is_science_key(key)
        ]

    def archive_result(self) -> Path | None:
        """Move a previous result aside (``archive/<time>/``) before a forced rerun: never
        delete it. Returns the folder, or None when there was nothing to move."""
        names = [name for name in RESULT_FILES if (self.path / name).exists()]
        if not names:
            return None
        target = self.path / ARCHIVE / time.strftime("%Y%m%d-%H%M%S")
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.move(str(self.path / name), str(target / name))
        return target

    def remove_temp_files(self) -> list[Path]:
        """Delete what a crash in the middle of :func:`atomic_write_bytes` left behind.

        Call only while holding the cell (:meth:`claim`): then no other process is writing
        here. Returns the files removed.
        """
        leftovers = [p for p in self.path.glob(f".*{TEMP_SUFFIX}") if p.is_file()]
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return leftovers


def _acquired(lock: FileLock) -> bool:
    """Take `lock` if it is free, without waiting."""
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    return True


def _recorded(status: Any, path: Path) -> Status:
    """`status` as metrics.json may hold it; anything else is a UserError naming the file."""
    if status not in RECORDED:
        raise UserError(f"unknown status {status!r} in '{path}' (allowed: {', '.join(RECORDED)})")
    return Status(status)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# ---- atomic files

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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when there is no such file. Unreadable: a UserError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):  # NotADirectory: a parent is a file
        return None
    except ValueError as e:  # not JSON, or not UTF-8
        raise UserError(f"unreadable file '{path}': {e} (expected JSON)") from None


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def ensure_writable(directory: Path) -> None:
    """Fail fast, naming the path, when the output directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output directory {directory}: {e.strerror}") from None
