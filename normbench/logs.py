"""Rank-aware logging: rank 0 logs to the console and to the cell's train.log, others only warn."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(log_file: Path | None = None, *, rank: int = 0) -> logging.Logger:
    logger = logging.getLogger("normbench")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(
        logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s")
    )
    logger.addHandler(console)
    if log_file is not None:
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(file_handler)
    return logger


class EpochProgress:
    """A progress bar over the steps of one epoch, on rank 0 in a terminal only.

    Updated at log intervals (where the loop synchronises anyway), never per step; in logs and
    CI (no terminal) the per-epoch lines are the progress.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stdout.isatty()
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
