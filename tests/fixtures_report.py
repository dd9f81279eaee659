"""Fake run directories (runs/<experiment>/<cell>/) in the contract's format, for report tests.

A cell's identity (the fields of normbench.track.cell.Cell) is written as the job writes it, into
job.json, and, once the cell is done, into metrics.json beside its results.

Each finished cell gets a 6-epoch history whose val errors are
``[e + 20, e + 2, e + 1, e, e - 1, e - 0.5]`` for a target ``e``: the median of the last 5 is
``e``, the final ``e - 0.5`` and the best ``e - 1``, so the three metrics are told apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

EPOCHS = 6
COMMAND = "normbench sweep experiment={name}"


def history_errors(target: float) -> list[float]:
    """Six epochs of val error whose median of the last 5 is ``target``."""
    return [target + 20, target + 2, target + 1, target, target - 1, target - 0.5]


def cell_name(overrides: dict[str, Any]) -> str:
    """The contract's cell name: overrides joined, keys sorted."""
    return ",".join(f"{key}={overrides[key]}" for key in sorted(overrides))


def write_cell(
    sweep_dir: Path,
    overrides: dict[str, Any],
    target: float | None = None,
    *,
    status: str = "finished",
    groups: int | None = None,
    group_size: int | None = None,
    ws: bool = False,
    stored_median5: float | None = None,
    record: bool = True,
) -> Path:
    """Write one cell; ``status`` "unfinished" leaves out metrics.json and half the history.

    ``stored_median5`` stores a val_error_median5 field that differs from the history, to show
    which of the two the report reads. ``record=False`` writes a job.json without the cell's
    record, as jobs did before they stored it.
    """
    norm = overrides["norm"]
    batch = overrides.get("batch", 32)
    seed = overrides.get("seed", 0)
    if norm == "gn" and groups is None and group_size is None:
        groups = 32
    name = sweep_dir.name
    cell = sweep_dir / cell_name(overrides)
    cell.mkdir(parents=True)
    config = {
        "name": name, "batch": batch, "gpus": 8, "devices": 1, "seed": seed, "epochs": EPOCHS,
        "model": {"name": "resnet8", "width": 16, "ws": ws},
        "norm": {"name": norm, "groups": groups, "group_size": group_size},
        "dataset": {"name": "synthetic"}, "optim": {"base_lr": 0.1}, "logger": {"name": "none"},
    }  # fmt: skip
    (cell / "config.yaml").write_text(yaml.safe_dump(config))
    identity = {
        "cell": cell.name, "overrides": {key: str(value) for key, value in overrides.items()},
        "experiment": name, "model": "resnet8", "dataset": "synthetic", "norm": norm,
        "norm_label": norm + ("+ws" if ws else ""), "batch": batch, "gpus": 8,
        "total_batch": 8 * batch, "seed": seed, "groups": groups, "group_size": group_size,
    }  # fmt: skip
    job = {"command": COMMAND.format(name=name)}
    (cell / "job.json").write_text(json.dumps({**job, "cell": identity} if record else job))
    errors = history_errors(target if target is not None else 50.0)
    if status == "diverged":
        errors = errors[:2] + [float("nan")]
    if status == "unfinished":
        errors = errors[:3]
    lines = [
        "epoch,step,train_loss,train_error,val_loss,val_error,lr,images_per_s,peak_mem_mb,time_s"
    ]
    for epoch, err in enumerate(errors, start=1):
        lines.append(f"{epoch},{epoch * 10},1.0,{err - 5},1.1,{err},0.1,1000.0,100.0,{epoch}.0")
    (cell / "history.csv").write_text("\n".join(lines) + "\n")
    if status == "unfinished":
        return cell
    finished = status == "finished"
    metrics = {
        "status": status, **identity, "devices": 1, "epochs": EPOCHS, "steps": 60,
        "lr": 0.1 * 8 * batch / 256, "bn_eval_stats": "average",
        "val_error_final": errors[-1] if finished else None,
        "val_error_best": min(errors) if finished else None,
        "val_error_median5": (stored_median5 or target) if finished else None,
        "train_error_final": errors[-1] - 5 if finished else None,
        "wall_time_s": 10.0, "images_per_s": 1000.0, "peak_mem_mb": 100.0,
        "diverged_at_step": 25 if status == "diverged" else None,
        "error": "RuntimeError: boom" if status == "failed" else None,
        "versions": {"python": "3.11.0", "torch": "2.5.0"}, "git_commit": "abc1234",
        "command": COMMAND.format(name=name), "host": "testhost",
        "finished_at": "2025-01-01T00:00:00",
    }  # fmt: skip
    (cell / "metrics.json").write_text(json.dumps(metrics))
    return cell


# BN and GN median-of-last-5 targets per batch per GPU; two values = two seeds.
BATCH_TARGETS = {
    "bn": {32: [10.0, 12.0], 16: [10.5], 8: [11.0], 4: [14.0]},
    "gn": {32: [13.0, 13.4], 16: [13.1], 8: [12.9], 4: [13.0]},
}


def make_batch_sweep(root: Path) -> Path:
    """bn, gn x 32..2; 2 seeds at 32; bn at 2 diverged; gn at 2 unfinished."""
    sweep = root / "batch_sweep"
    for norm, targets in BATCH_TARGETS.items():
        for batch, values in targets.items():
            for seed, target in enumerate(values):
                write_cell(sweep, {"norm": norm, "batch": batch, "seed": seed}, target)
    write_cell(sweep, {"norm": "bn", "batch": 2, "seed": 0}, status="diverged")
    write_cell(sweep, {"norm": "gn", "batch": 2, "seed": 0}, status="unfinished")
    return sweep


def make_ablation_sweep(root: Path) -> Path:
    """GN groups 64, 32 and LN (G=1); channels per group 16, 4 and 1 (written as gn)."""
    sweep = root / "ablation"
    for groups, target in ((64, 20.4), (32, 20.0)):
        write_cell(sweep, {"norm": "gn", "norm.groups": groups}, target, groups=groups)
    write_cell(sweep, {"norm": "ln"}, 22.0)
    for size, target in ((16, 20.2), (4, 20.6), (1, 26.0)):
        write_cell(sweep, {"norm": "gn", "norm.group_size": size}, target, group_size=size)
    return sweep


def make_norms_sweep(root: Path) -> Path:
    """BN, LN, IN, GN and GN+WS at 32 images per GPU; IN failed."""
    sweep = root / "norms"
    for norm, target in (("bn", 10.0), ("ln", 12.0), ("gn", 11.0)):
        write_cell(sweep, {"norm": norm}, target)
    write_cell(sweep, {"norm": "in"}, status="failed")
    write_cell(sweep, {"model.ws": True, "norm": "gn"}, 10.5, ws=True)
    return sweep


# The zoo: every norm at 32, 8 and 2 images per GPU (gn+ws through model.ws, as norm=gn_ws
# sets it); evonorm_b0 at 2 diverged.
ZOO_TARGETS = {
    "bn": (10.0, 11.0, 14.0), "gn": (11.0, 11.2, 11.1), "ln": (12.0, 12.1, 12.3),
    "in": (13.0, 13.2, 13.1), "frn": (10.5, 10.9, 11.5), "evonorm_b0": (10.2, 10.8, None),
    "iternorm": (9.8, 10.5, 13.0),
}  # fmt: skip


def make_zoo_sweep(root: Path) -> Path:
    sweep = root / "zoo"
    for norm, targets in ZOO_TARGETS.items():
        for batch, target in zip((32, 8, 2), targets, strict=True):
            if target is None:
                write_cell(sweep, {"norm": norm, "batch": batch}, status="diverged")
            else:
                write_cell(sweep, {"norm": norm, "batch": batch}, target)
    for batch, target in ((32, 10.8), (8, 10.9), (2, 11.0)):
        cell = write_cell(sweep, {"batch": batch, "norm": "gn_ws"}, target, ws=True, groups=32)
        # The cell is named after the override norm=gn_ws; the run itself is GN with model.ws.
        config = yaml.safe_load((cell / "config.yaml").read_text())
        config["norm"]["name"] = "gn"
        (cell / "config.yaml").write_text(yaml.safe_dump(config))
        metrics, job = (json.loads((cell / f).read_text()) for f in ("metrics.json", "job.json"))
        for identity in (metrics, job["cell"]):
            identity.update(norm="gn", norm_label="gn+ws")
        (cell / "metrics.json").write_text(json.dumps(metrics))
        (cell / "job.json").write_text(json.dumps(job))
    return sweep


# One folder holding Tables 1-3, as the converged experiment writes them: BN and GN over batch
# sizes, LN and IN at 32, GN's groups and channels per group at 32; 3 seeds; GN's default is 8
# groups (no group override), as ResNet-8's. Seed s adds s / 10 to every cell but GN at 2,
# which it lowers by s / 10: paired by seed, GN 2 - GN 32 spreads, BN 2 - BN 32 does not.
CONVERGED_SEEDS = (0, 1, 2)
CONVERGED_TARGETS = {"bn": {32: 10.0, 8: 11.0, 2: 14.0}, "gn": {32: 11.0, 8: 11.1, 2: 11.2}}


def make_converged_sweep(root: Path) -> Path:
    sweep = root / "converged"
    for seed in CONVERGED_SEEDS:
        shift = seed / 10
        for norm, targets in CONVERGED_TARGETS.items():
            for batch, target in targets.items():
                value = target - shift if (norm, batch) == ("gn", 2) else target + shift
                overrides = {"norm": norm, "batch": batch, "seed": seed}
                write_cell(sweep, overrides, value, groups=8 if norm == "gn" else None)
        for norm, target in (("ln", 12.0), ("in", 13.0)):
            write_cell(sweep, {"norm": norm, "seed": seed}, target + shift)
        for groups, target in ((16, 11.5), (4, 11.8)):
            overrides = {"norm": "gn", "norm.groups": groups, "seed": seed}
            write_cell(sweep, overrides, target + shift, groups=groups)
        for size, target in ((16, 12.5), (4, 11.6)):
            overrides = {"norm": "gn", "norm.group_size": size, "seed": seed}
            write_cell(sweep, overrides, target + shift, group_size=size)
    return sweep
