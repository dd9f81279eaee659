"""One cell as a job: the unit Hydra launches (in this process, a subprocess or a SLURM job).

The job resolves the config once, decides whether the cell has to run at all (a finished cell is
skipped, an unfinished one resumes), takes the cell's lock so two sweeps never run it at once,
writes config.yaml, and starts the workers, which read that file and never run Hydra.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from normbench.config import Config, as_config, norm_label, resolve_devices, validate
from normbench.errors import UserError
from normbench.track import rundir
from normbench.track.environment import write_job

log = logging.getLogger("normbench")


def cell_dir(cfg: Config, overrides: list[str]) -> Path:
    return Path(cfg.out_dir) / cfg.name / rundir.cell_name(overrides, cfg.norm.name, cfg.batch)


def check_reusable(run_dir: Path, config: Config) -> None:
    """Refuse to skip or resume a cell whose directory holds a run of another config.

    Without this, a changed default or an override that does not name the cell (say a new
    base_lr) would be answered by the old result, or resumed under the old settings.
    """
    if config.rerun:
        return
    changes = rundir.config_changes(run_dir, OmegaConf.to_container(OmegaConf.structured(config)))
    if changes:
        shown = "; ".join(changes[:3]) + (f"; {len(changes) - 3} more" if len(changes) > 3 else "")
        raise UserError(
            f"{run_dir} holds a run with another config ({shown}): rerun=true archives it and "
            "recomputes the cell, or choose another out_dir"
        )


def busy_message(run_dir: Path) -> str:
    return f"another process is running this cell ({rundir.lock_holder(run_dir)})"


def _under_slurm_tasks() -> bool:
    """True in each task of a multi-task SLURM job (submitit launcher, one task per GPU)."""
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ


def _record_failure(run_dir: Path, cfg: Config, overrides: dict[str, str], error: str) -> None:
    """A failed cell keeps its checkpoint (the next run resumes) and says why it stopped."""
    try:
        rundir.write_json(
            run_dir / rundir.METRICS,
            {"status": "failed", "error": error, "cell": run_dir.name, "overrides": overrides,
             "experiment": cfg.name, "model": cfg.model.name, "norm": cfg.norm.name,
             "norm_label": norm_label(cfg),
             "dataset": cfg.dataset.name, "batch": cfg.batch, "gpus": cfg.gpus, "seed": cfg.seed,
             "groups": cfg.norm.groups, "group_size": cfg.norm.group_size},
        )  # fmt: skip
    except OSError as e:  # e.g. the full disk that failed the cell: the log line must do
        log.error("could not record the failure of %s: %s", run_dir.name, e)


def _start_workers(run_dir: Path, cfg: Config) -> None:
    from normbench.train.distributed import launch_workers
    from normbench.train.loop import run_worker

    devices = resolve_devices(cfg)
    if devices == 1 or _under_slurm_tasks() or "RANK" in os.environ:
        run_worker(run_dir)  # this process is the (only, or this rank's) worker
    else:
        launch_workers(run_worker, str(run_dir), devices, run_id=run_dir.name)


def run_cell(cfg: DictConfig | Config, overrides: list[str], *, start: bool = True) -> str:
    """Run (or skip, or resume) one cell. Returns its status: finished, diverged, failed, busy,
    or skipped-<status>. User errors propagate as UserError before anything is written.

    ``start=False`` prepares the cell's directory as for a run (archive on rerun, config.yaml,
    job.json) and returns "prepared" instead of starting workers: for workers launched by hand
    (``torchrun ... -m normbench worker <run_dir>``)."""
    config = as_config(cfg)
    validate(config)
    cell = rundir.cell_overrides(overrides, config.norm.name, config.batch)
    run_dir = cell_dir(config, overrides)
    check_reusable(run_dir, config)
    done = rundir.finished_status(run_dir)
    if done and not config.rerun:
        log.info("skip %s: already %s (rerun=true recomputes it)", run_dir, done)
        return f"skipped-{done}"
    rundir.ensure_writable(run_dir)
    lock = FileLock(str(run_dir / rundir.LOCK))
    is_rank0 = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) == 0
    try:
        if is_rank0:
            lock.acquire(timeout=0)
            rundir.write_lock_holder(run_dir)
    except Timeout:
        # Info, not a warning: a sweep shows it, `train` turns it into its own error line.
        log.info("skip %s: %s", run_dir, busy_message(run_dir))
        return "busy"
    try:
        done = rundir.finished_status(run_dir)  # finished by someone else while we waited?
        if done and not config.rerun:
            log.info("skip %s: already %s", run_dir, done)
            return f"skipped-{done}"
        if is_rank0 and done and config.rerun:
            archived = rundir.archive_result(run_dir)
            log.info("rerun=true: previous result of %s moved to %s", run_dir.name, archived)
        if is_rank0:
            for leftover in rundir.remove_temp_files(run_dir):
                log.info("removed %s, left by a write that was interrupted", leftover.name)
        if is_rank0 and not (run_dir / rundir.CHECKPOINT).exists():
            plain = OmegaConf.to_yaml(OmegaConf.structured(config))
            rundir.atomic_write_text(run_dir / rundir.CONFIG, plain)
        if is_rank0:
            write_job(run_dir, cell)
        if not start:
            return "prepared"
        try:
            _start_workers(run_dir, config)
        except UserError:
            raise
        except Exception as e:  # the cell failed; the sweep goes on with the next one
            message = f"{type(e).__name__}: {e}".strip().splitlines()[0]
            log.error("cell %s failed: %s", run_dir.name, message)
            if is_rank0:
                _record_failure(run_dir, config, cell, message)
            return "failed"
        status = (rundir.read_json(run_dir / rundir.METRICS) or {}).get("status", "failed")
        return status
    finally:
        if lock.is_locked:
            (run_dir / rundir.LOCK_HOLDER).unlink(missing_ok=True)  # before the next one writes
            lock.release()
