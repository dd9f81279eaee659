"""One cell as a job: the unit Hydra launches (in this process, a subprocess or a SLURM job).

The job resolves the config once, computes the cell (:class:`~normbench.track.cell.Cell`), decides
whether the cell has to run at all (a finished cell is skipped, an unfinished one resumes), takes
the cell's lock so two sweeps never run it at once, writes config.yaml and job.json (the command
and the cell), and starts the workers, which read those files and never run Hydra.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from normbench.checks import validate
from normbench.config import Config, as_config, resolve_devices
from normbench.errors import UserError
from normbench.track import rundir
from normbench.track.cell import Cell
from normbench.track.environment import write_job

log = logging.getLogger("normbench")


def cell_dir(cfg: Config, overrides: list[str]) -> Path:
    return Cell.of(cfg, overrides).directory(cfg.out_dir)


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


def _started_as_ranks() -> bool:
    """True in each process of a cell started by SLURM (one task per GPU) or torchrun."""
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ
    return slurm_tasks or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _record_failure(run_dir: Path, cell: Cell, error: str) -> None:
    """A failed cell keeps its checkpoint (the next run resumes) and says why it stopped."""
    try:
        rundir.write_json(
            run_dir / rundir.METRICS, {"status": "failed", "error": error, **cell.as_dict()}
        )
    except OSError as e:  # e.g. the full disk that failed the cell: the log line must do
        log.error("could not record the failure of %s: %s", cell.name, e)


def _start_workers(run_dir: Path, cfg: Config) -> None:
    from normbench.train.distributed import launch_workers
    from normbench.train.loop import run_worker

    devices = resolve_devices(cfg)
    if devices == 1 or _started_as_ranks() or "RANK" in os.environ:
        run_worker(run_dir)  # this process is the (only, or this rank's) worker
    else:
        launch_workers(run_worker, str(run_dir), devices, run_id=run_dir.name)


def _claim(run_dir: Path, config: Config, cell: Cell) -> tuple[FileLock | None, str]:
    """Take the cell's lock and prepare its directory for the workers: (the held lock, "run"),
    or (None, the status to stop with) when another process has the cell or it is done."""
    rundir.ensure_writable(run_dir)
    lock = FileLock(str(run_dir / rundir.LOCK))
    try:
        lock.acquire(timeout=0)
        rundir.write_lock_holder(run_dir)
    except Timeout:
        # Info, not a warning: a sweep shows it, `train` turns it into its own error line.
        log.info("skip %s: %s", run_dir, busy_message(run_dir))
        return None, "busy"
    try:
        done = rundir.finished_status(run_dir)  # finished by someone else while we waited?
        if done and not config.rerun:
            log.info("skip %s: already %s", run_dir, done)
            _release(run_dir, lock)
            return None, f"skipped-{done}"
        if done:
            archived = rundir.archive_result(run_dir)
            log.info("rerun=true: previous result of %s moved to %s", cell.name, archived)
        for leftover in rundir.remove_temp_files(run_dir):
            log.info("removed %s, left by a write that was interrupted", leftover.name)
        if not (run_dir / rundir.CHECKPOINT).exists():
            plain = OmegaConf.to_yaml(OmegaConf.structured(config))
            rundir.atomic_write_text(run_dir / rundir.CONFIG, plain)
        write_job(run_dir, cell)
    except BaseException:
        _release(run_dir, lock)
        raise
    return lock, "run"


def _release(run_dir: Path, lock: FileLock) -> None:
    (run_dir / rundir.LOCK_HOLDER).unlink(missing_ok=True)  # before the next holder writes it
    lock.release()


def _train(run_dir: Path, config: Config, cell: Cell, is_main: bool) -> str:
    """Start the workers on the prepared directory; returns the cell's status."""
    try:
        _start_workers(run_dir, config)
    except UserError:
        raise
    except Exception as e:  # the cell failed; the sweep goes on with the next one
        message = f"{type(e).__name__}: {e}".strip().splitlines()[0]
        log.error("cell %s failed: %s", cell.name, message)
        if is_main:
            _record_failure(run_dir, cell, message)
        return "failed"
    return (rundir.read_json(run_dir / rundir.METRICS) or {}).get("status", "failed")


def _run_as_rank(run_dir: Path, config: Config, cell: Cell) -> str:
    """This process is one rank of the cell. Rank 0 alone claims and prepares the directory
    (archive, config.yaml) while the others wait for its decision on the process group, so no
    rank reads config.yaml before rank 0 has written it, and all stop when rank 0 stops."""
    import torch.distributed as dist

    from normbench.train.distributed import close_process, init_process

    env = init_process(config)
    lock, decision, error = None, ["run"], None
    if env.is_main:
        try:
            lock, decision[0] = _claim(run_dir, config, cell)
        except Exception as e:  # the other ranks must not wait for a rank 0 that has stopped
            decision[0], error = "failed", e
    dist.broadcast_object_list(decision, src=0)
    try:
        if error is not None:
            raise error
        if decision[0] != "run":
            return decision[0]
        return _train(run_dir, config, cell, env.is_main)
    finally:
        close_process()
        if lock is not None:
            _release(run_dir, lock)


def run_cell(cfg: DictConfig | Config, overrides: list[str], *, start: bool = True) -> str:
    """Run (or skip, or resume) one cell. Returns its status: finished, diverged, failed, busy,
    or skipped-<status>. User errors propagate as UserError before anything is written.

    ``start=False`` prepares the cell's directory as for a run (archive on rerun, config.yaml,
    job.json) and returns "prepared" instead of starting workers: for workers launched by hand
    (``torchrun ... -m normbench worker <run_dir>``)."""
    config = as_config(cfg)
    validate(config)
    cell = Cell.of(config, overrides)
    run_dir = cell.directory(config.out_dir)
    check_reusable(run_dir, config)
    if start and _started_as_ranks():
        return _run_as_rank(run_dir, config, cell)
    done = rundir.finished_status(run_dir)
    if done and not config.rerun:
        log.info("skip %s: already %s (rerun=true recomputes it)", run_dir, done)
        return f"skipped-{done}"
    lock, decision = _claim(run_dir, config, cell)
    if lock is None:
        return decision
    try:
        return _train(run_dir, config, cell, is_main=True) if start else "prepared"
    finally:
        _release(run_dir, lock)
