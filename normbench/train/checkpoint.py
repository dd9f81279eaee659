"""Checkpoints for exact resume: everything the next step depends on, written atomically.

A checkpoint holds the model, optimizer, lr scheduler and grad scaler states, every RNG state
(python, numpy, torch CPU and CUDA), the position in the epoch (the sampler skips the batches
already seen) and the history so far. It is serialised to memory first and then replaces the
previous file through :func:`~normbench.track.rundir.atomic_write_bytes`, so a crash in the
middle of a write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from normbench.track.rundir import atomic_write_bytes


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({**state, "rng": rng_state()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none. RNG states are restored by the caller."""
    if not path.exists():
        return None
    # weights_only=False: the file is our own (numpy RNG state is not a tensor).
    return torch.load(path, map_location="cpu", weights_only=False)
