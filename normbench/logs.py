"""Rank-aware logging: rank 0 logs to the console and to the cell's train.log, others only warn.

In a sweep, cells run side by side and share one console, so every console line of a cell starts
with its name (``[batch=4,norm=gn] epoch 3/10 ...``); train.log is the cell's own and needs none.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from normbench.track.cell import Cell

FORMAT = "%(asctime)s %(levelname)s %(message)s"
# Set by `normbench sweep` for its cells, which launchers start with the parent's environment
# (and the cells' workers inherit): the number of cells, and the keys the sweep varies (what
# tells its cells apart).
SWEEP_ENV = "NORMBENCH_SWEEP_TOTAL"
SWEEP_KEYS_ENV = "NORMBENCH_SWEEP_KEYS"
# Set by a sweep that shows a live view of its cells on a terminal: their console then gets only
# warnings and errors (the view shows their progress; train.log keeps every line).
LIVE_ENV = "NORMBENCH_LIVE_VIEW"


def in_sweep() -> bool:
    """Whether this process runs a cell of a sweep (other cells may share its console)."""
    return SWEEP_ENV in os.environ


def cell_label(cell: Cell) -> str:
    """A cell's console label: its values of the keys the sweep varies (``batch=4,norm=gn``);
    its full name where the sweep varies none of them."""
    swept = set(filter(None, os.environ.get(SWEEP_KEYS_ENV, "").split(",")))
    return ",".join(f"{k}={v}" for k, v in cell.overrides.items() if k in swept) or cell.name


def setup_logging(
    log_file: Path | None = None, *, rank: int = 0, cell: str | None = None
) -> logging.Logger:
    """Log to the console (prefixed with `cell` and the rank when given) and to `log_file`."""
    logger = logging.getLogger("normbench")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    tags = " ".join(tag for tag in (cell, f"rank {rank}" if rank else None) if tag)
    console.setFormatter(logging.Formatter(f"[{tags}] %(message)s" if tags else "%(message)s"))
    if cell is not None and LIVE_ENV in os.environ:
        console.setLevel(logging.WARNING)
    logger.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(file_handler)
    return logger


class EpochProgress:
    """A progress bar over the steps of one epoch, on rank 0 in a terminal only.

    Updated at log intervals (where the loop synchronises anyway), never per step; in logs and
    CI (no terminal) the per-epoch lines are the progress. Cells of a sweep show none: several
    bars on one terminal overwrite each other, and the sweep shows its own progress.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stdout.isatty() and not in_sweep()
        self._bar = None

    def start(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if not self.enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self._bar = Progress(
            f"epoch {epoch}/{epochs}", BarColumn(), MofNCompleteColumn(), "{task.fields[loss]}",
            TimeRemainingColumn(), transient=True,
        )  # fmt: skip
        self._bar.start()
        self._task = self._bar.add_task("train", total=total, completed=done, loss="")

    def update(self, done: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, loss=f"loss {loss:.4f}")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
