"""One cell as a job: the unit Hydra launches (in this process, a subprocess or a SLURM job).

The caller composes the config and the cell (:class:`~normbench.track.cell.Cell`) once and hands
both to :func:`run_cell`, which decides whether the cell has to run at all (a finished cell is
skipped, an unfinished one resumes), claims its run directory
(:class:`~normbench.track.rundir.RunDir`) so two sweeps never run it at once, writes job.json
(the command and the cell) and config.yaml, and starts the workers, which read those files and
never run Hydra.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import Enum

from omegaconf import OmegaConf

from normbench.checks import validate
from normbench.config import Config, resolve_devices
from normbench.errors import UserError
from normbench.track.cell import Cell
from normbench.track.environment import command_line
from normbench.track.rundir import Claim, RunDir, Status

log = logging.getLogger("normbench")


class Decision(Enum):
    """What a job did with its cell."""

    RAN = "ran"  # started the workers (a resumed cell too): the status says how it went
    SKIPPED = "skipped"  # the cell had a result already (rerun=false): nothing was done
    BUSY = "busy"  # another process holds the cell: nothing was done
    PREPARED = "prepared"  # start=False: the directory is ready for workers started by hand


@dataclass(frozen=True)
class Outcome:
    """What came of a job: what it did, and the cell's status then."""

    decision: Decision
    status: Status = Status.UNFINISHED


def check_reusable(run: RunDir, config: Config) -> None:
    """Refuse to skip or resume a cell whose directory holds a run of another config.

    Without this, a changed default or an override that does not name the cell (say a new
    base_lr) would be answered by the old result, or resumed under the old settings.
    """
    if config.rerun:
        return
    changes = run.config_changes(OmegaConf.to_container(OmegaConf.structured(config)))
    if changes:
        shown = "; ".join(changes[:3]) + (f"; {len(changes) - 3} more" if len(changes) > 3 else "")
        raise UserError(
            f"{run.path} holds a run with another config ({shown}): rerun=true archives it and "
            "recomputes the cell, or choose another out_dir"
        )


def skip_message(run: RunDir, result: Status) -> str:
    """The line a cell that already has a result is skipped with (rerun=false)."""
    return f"skip {run.path}: already {result}"


def busy_message(run: RunDir) -> str:
    return f"another process is running this cell ({run.holder()})"


def _started_as_ranks() -> bool:
    """True in each process of a cell started by SLURM (one task per GPU) or torchrun."""
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ
    return slurm_tasks or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _record_failure(run: RunDir, cell: Cell, error: str) -> None:
    """A failed cell keeps its checkpoint (the next run resumes) and says why it stopped."""
    try:
        run.write_metrics({"status": Status.FAILED, "error": error, **cell.as_dict()})
    except OSError as e:  # e.g. the full disk that failed the cell: the log line must do
        log.error("could not record the failure of %s: %s", cell.name, e)


def _start_workers(run: RunDir, cfg: Config) -> None:
    from normbench.train.distributed import launch_workers
    from normbench.train.worker import run_worker

    devices = resolve_devices(cfg)
    if devices == 1 or _started_as_ranks() or "RANK" in os.environ:
        run_worker(run.path)  # this process is the (only, or this rank's) worker
    else:
        launch_workers(run_worker, str(run.path), devices, run_id=run.path.name)


@contextmanager
def _claimed(run: RunDir, config: Config, cell: Cell) -> Iterator[Outcome | None]:
    """Hold the cell for the block, its directory prepared for the workers (yields None), or
    yield the outcome to stop with: another process holds the cell, or it has a result."""
    with run.claim() as claim:
        if claim is Claim.BUSY:
            # Info, not a warning: a sweep shows it, `train` turns it into its own error line.
            log.info("skip %s: %s", run.path, busy_message(run))
            yield Outcome(Decision.BUSY)
            return
        result = run.result()  # finished by someone else while we waited?
        if result and not config.rerun:
            log.info(skip_message(run, result))
            yield Outcome(Decision.SKIPPED, result)
            return
        if result:
            archived = run.archive_result()
            log.info("rerun=true: previous result of %s moved to %s", cell.name, archived)
        for leftover in run.remove_temp_files():
            log.info("removed %s, left by a write that was interrupted", leftover.name)
        # job.json first: a directory that holds config.yaml always says which cell it is.
        run.write_job(cell, command_line())
        if not run.checkpoint.exists():
            run.write_config(config)
        _prepare_data(config)
        yield None


def _prepare_data(config: Config) -> None:
    """Data the workers read but no worker should make: the detection scenes, written once by
    the process that holds the cell (validation only checks their parameters)."""
    from normbench.data import dataset_task

    if dataset_task(config.dataset.name) == "detection":
        from normbench.data.detection import prepare_detection_dataset

        prepare_detection_dataset(config.dataset)


def _train(run: RunDir, config: Config, cell: Cell, is_main: bool) -> Outcome:
    """Start the workers on the prepared directory."""
    try:
        _start_workers(run, config)
    except UserError:
        raise
    except Exception as e:  # the cell failed; the sweep goes on with the next one
        message = f"{type(e).__name__}: {e}".strip().splitlines()[0]
        log.error("cell %s failed: %s", cell.name, message)
        if is_main:
            _record_failure(run, cell, message)
        return Outcome(Decision.RAN, Status.FAILED)
    status = run.status()  # workers that stopped without a record failed
    return Outcome(Decision.RAN, Status.FAILED if status is Status.UNFINISHED else status)


def _run_as_rank(run: RunDir, config: Config, cell: Cell) -> Outcome:
    """This process is one rank of the cell. Rank 0 alone claims and prepares the directory
    (archive, config.yaml) while the others wait for its decision on the process group, so no
    rank reads config.yaml before rank 0 has written it, and all stop when rank 0 stops."""
    import torch.distributed as dist

    from normbench.train.distributed import close_process, init_process

    env = init_process(config)
    with ExitStack() as held:  # rank 0's hold on the cell, released after the process group
        try:
            stop: list[Outcome | None] = [None]
            error = None
            if env.is_main:
                try:
                    stop[0] = held.enter_context(_claimed(run, config, cell))
                except Exception as e:  # the other ranks must not wait for a rank 0 that stopped
                    stop[0], error = Outcome(Decision.RAN, Status.FAILED), e
            dist.broadcast_object_list(stop, src=0)
            if error is not None:
                raise error
            if stop[0] is not None:
                return stop[0]
            return _train(run, config, cell, env.is_main)
        finally:
            close_process()


def run_cell(config: Config, cell: Cell, *, start: bool = True) -> Outcome:
    """Run (or skip, or resume) `cell`, which `config` composes: the caller computes the cell
    once (:meth:`Cell.of`) and every part of the job uses that one. User errors propagate as
    UserError before anything is written.

    ``start=False`` prepares the cell's directory as for a run (archive on rerun, config.yaml,
    job.json) and returns PREPARED instead of starting workers: for workers launched by hand
    (``torchrun ... -m normbench worker <run_dir>``)."""
    validate(config)
    run = RunDir(cell.directory(config.out_dir))
    check_reusable(run, config)
    if start and _started_as_ranks():
        return _run_as_rank(run, config, cell)
    result = run.result()
    if result and not config.rerun:
        log.info("%s (rerun=true recomputes it)", skip_message(run, result))
        return Outcome(Decision.SKIPPED, result)
    with _claimed(run, config, cell) as stop:
        if stop is not None:
            return stop
        return _train(run, config, cell, is_main=True) if start else Outcome(Decision.PREPARED)
