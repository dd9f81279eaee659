"""What a result needs beside its numbers to be trusted: the cell, the semantics it ran with
(per-GPU batch, total batch, processes, lr, BN statistics mode), the command, versions, commit."""

from __future__ import annotations

import json
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
from normbench.config import Config, learning_rate, norm_label, total_batch
from normbench.track.rundir import skipped_images

JOB = "job.json"  # written by the parent: the command and overrides that created the cell
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


def write_job(run_dir: Path, overrides: dict[str, str]) -> None:
    from normbench.track.rundir import write_json

    # The CLI records the user's command line for its workers and sweep jobs (whose own argv is
    # Hydra's or a launcher's); a direct Python call falls back to argv.
    command = os.environ.get(COMMAND_ENV) or "normbench " + " ".join(sys.argv[1:])
    write_json(run_dir / JOB, {"command": command, "overrides": overrides})


def run_record(cfg: Config, run_dir: Path, env, trainer) -> dict[str, Any]:
    """Everything metrics.json holds besides the results themselves."""
    job = json.loads((run_dir / JOB).read_text()) if (run_dir / JOB).exists() else {}
    progress = trainer.progress
    images = progress.step * total_batch(cfg)
    return {
        "cell": run_dir.name,
        "overrides": job.get("overrides", {}),
        "command": job.get("command"),
        "experiment": cfg.name,
        "model": cfg.model.name,
        "norm": cfg.norm.name,
        "norm_label": norm_label(cfg),
        "groups": cfg.norm.groups,
        "group_size": cfg.norm.group_size,
        "dataset": cfg.dataset.name,
        "batch": cfg.batch,
        "gpus": cfg.gpus,
        "total_batch": total_batch(cfg),
        "devices": env.world_size,
        "emulated_gpus_per_device": trainer.chunks,
        "device": str(env.device),
        "seed": cfg.seed,
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
