"""What a result needs beside its numbers to be trusted: the cell, the semantics it ran with
(per-GPU batch, total batch, processes, lr, BN statistics mode), the command, versions, commit.

The job records the command (:func:`command_line`) and the cell in job.json before its workers
start (:meth:`normbench.track.rundir.RunDir.write_job`); the workers read the cell from there.
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
from normbench.track.cell import Cell
from normbench.track.rundir import RunDir

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


def command_line() -> str:
    """The command that started this job, as the user typed it."""
    # The CLI records the user's command line for its workers and sweep jobs (whose own argv is
    # Hydra's or a launcher's); a direct Python call falls back to argv.
    return os.environ.get(COMMAND_ENV) or "normbench " + " ".join(sys.argv[1:])


def run_record(cfg: Config, cell: Cell, run: RunDir, env, trainer) -> dict[str, Any]:
    """Everything metrics.json holds besides the results themselves."""
    progress = trainer.progress
    images = progress.step * cell.total_batch
    return {
        **cell.as_dict(),
        "command": run.command(),
        "devices": env.world_size,
        "emulated_gpus_per_device": trainer.chunks,
        "device": str(env.device),
        "epochs": cfg.epochs,
        "steps": progress.step,
        "lr": learning_rate(cfg),
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "bn_eval_stats": trainer.bn_eval_stats,
        "skipped_images": run.skipped_images(),  # trained and evaluated without them
        "images_per_s": images / progress.train_time if progress.train_time else None,
        "peak_mem_mb": max((row["peak_mem_mb"] for row in progress.history), default=None),
        "versions": versions(),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
