"""What a result needs beside its numbers to be trusted: the cell, the semantics it ran with
(per-GPU batch, total batch, processes, lr, BN statistics mode), the command, versions, commit.

job.json, written by the job before its workers start, holds the command and the cell
(:class:`~normbench.track.cell.Cell`); the workers read the cell from there.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import normbench
from normbench.config import Config, learning_rate
from normbench.errors import UserError
from normbench.track.cell import Cell
from normbench.track.rundir import read_json, skipped_images, write_json

JOB = "job.json"  # written by the parent: the command that created the cell, and the cell
JOB_CELL = "cell"  # the key of the cell's record in job.json
COMMAND_ENV = "NORMBENCH_COMMAND"


def versions() -> dict[str, str]:
    import torchvision

    return {
        "normbench": normbench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda or "none",
    }


def git_commit() -> str | None:
    """The commit of the normbench checkout in use (None for an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(normbench.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_job(run_dir: Path, cell: Cell) -> None:
    # The CLI records the user's command line for its workers and sweep jobs (whose own argv is
    # Hydra's or a launcher's); a direct Python call falls back to argv.
    command = os.environ.get(COMMAND_ENV) or "normbench " + " ".join(sys.argv[1:])
    write_json(run_dir / JOB, {"command": command, JOB_CELL: cell.as_dict()})


def stored_cell(run_dir: Path) -> Cell:
    """The cell the job stored in `run_dir`'s job.json."""
    record = (read_json(run_dir / JOB) or {}).get(JOB_CELL)
    if record is None:  # a directory prepared before job.json held the cell
        raise UserError(
            f"{run_dir / JOB} does not say which cell this is: prepare the directory again "
            "(normbench prepare with the cell's overrides)"
        )
    return Cell.from_dict(record)


def run_record(cfg: Config, cell: Cell, run_dir: Path, env, trainer) -> dict[str, Any]:
    """Everything metrics.json holds besides the results themselves."""
    progress = trainer.progress
    images = progress.step * cell.total_batch
    return {
        **cell.as_dict(),
        "command": (read_json(run_dir / JOB) or {}).get("command"),
        "devices": env.world_size,
        "emulated_gpus_per_device": trainer.chunks,
        "device": str(env.device),
        "epochs": cfg.epochs,
        "steps": progress.step,
        "lr": learning_rate(cfg),
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "bn_eval_stats": trainer.bn_eval_stats,
        "skipped_images": skipped_images(run_dir),  # trained and evaluated without them
        "images_per_s": images / progress.train_time if progress.train_time else None,
        "peak_mem_mb": max((row["peak_mem_mb"] for row in progress.history), default=None),
        "versions": versions(),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
