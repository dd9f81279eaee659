"""Experiment trackers: where the training loop sends live metrics besides the run directory.

The run directory stays the record; a tracker only mirrors it (W&B today). The loop calls the
three methods of :class:`Tracker` on every rank and never asks which tracker it has: ranks other
than 0 and ``logger=none`` get a :class:`NullTracker`, so there is one code path.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from normbench.config import LOGGERS
from normbench.errors import UserError
from normbench.track.cell import Cell


class Tracker(Protocol):
    """What the training loop needs from an experiment tracker."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record metrics at a global optimizer step (per-step and per-epoch dicts alike)."""

    def summary(self, values: dict[str, object]) -> None:
        """Record the run's final numbers (final / best / median-of-5 error, ...)."""

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; always called, also after a failure (exit_code != 0). Never raises."""


class NullTracker:
    """A tracker that records nothing: ``logger=none`` and every rank but 0."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Ignore the metrics."""

    def summary(self, values: dict[str, object]) -> None:
        """Ignore the values."""

    def finish(self, exit_code: int = 0) -> None:
        """Nothing to close."""


def open_tracker(
    kind: str,
    run_dir: Path,
    config: dict[str, Any],
    *,
    cell: Cell,
    rank: int,
    logger_config: Mapping[str, Any] | object | None = None,
) -> Tracker:
    """The tracker of `cell`: a W&B run on rank 0 for ``kind="wandb"``, else a NullTracker.

    `config` is the resolved config as plain containers; its ``logger`` section (or
    `logger_config`, a mapping or dataclass, when given) holds project, entity and mode.
    """
    if kind not in LOGGERS:
        raise UserError(f"unknown logger {kind!r} (allowed: {', '.join(LOGGERS)})")
    if kind == "none" or rank != 0:  # one W&B run per cell: only rank 0 reports
        return NullTracker()
    # Imported here: the W&B module imports wandb lazily, but keep logger=none free of it too.
    from normbench.track.wandb_tracker import open_wandb_tracker

    tracker = open_wandb_tracker(Path(run_dir), config, cell=cell, logger_config=logger_config)
    return NullTracker() if tracker is None else tracker  # None: W&B off or unavailable
