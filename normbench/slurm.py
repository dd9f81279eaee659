"""SLURM through Hydra's submitit launcher: what a cell asks for, and how a sweep waits for it.

`launcher=slurm` (configs/launcher/slurm.yaml) runs :class:`Launcher`, which extends the
submitit launcher in four ways:
- each cell asks for what it uses (:func:`resource`): one task per process, GPUs only when it
  runs on GPUs, CPUs and memory from its threads and data-loader workers; cells with the same
  needs share one job array;
- a finished cell is skipped without submitting a job;
- a job that ends without a result (cancelled, killed, out of requeues) is named with its cell
  and the sweep goes on waiting for the others; the cell keeps its checkpoint for the next sweep;
- sbatch refusing the jobs, or missing, is a UserError: one line, exit 2.

Preemption: SLURM sends SIGUSR1 `signal_delay_s` seconds before a job's time limit (and
`scancel --signal=USR1` does at any time); the cell writes a checkpoint
(normbench.train.preempt), then submitit's own handler requeues the job, which resumes.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import DictConfig, OmegaConf

from normbench.config import as_config
from normbench.errors import UserError
from normbench.track.cell import Cell
from normbench.track.rundir import RunDir

# submitit's preemption signal (its default is SIGUSR2): the one PreemptionGuard checkpoints on.
# submitit reads it when imported, in this process for sbatch's --signal and in the job (which
# inherits this environment) for its requeue handler.
PREEMPT_SIGNAL = "USR1"
GB_PER_PROCESS = 2  # a CPU cell of the mini reproduction peaks below 1 GB (results/*/cells.csv)
GB_PER_LOADER_WORKER = 1
POLL_S = 2.0
# Job states after which no result will come (squeue's long names); GONE: the controller no
# longer lists the job, which ended a while ago.
GONE = "GONE"
ENDED = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
         "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", GONE)  # fmt: skip


@functools.lru_cache
def partition_has_gpus(partition: str | None) -> bool:
    """Whether the partition's nodes (the default partition's when None) have GPUs (sinfo)."""
    try:
        listing = subprocess.run(
            ["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):  # no SLURM here: submitting will say so
        return False
    wanted = set(partition.split(",")) if partition else None
    for line in listing.splitlines():
        name, _, gres = line.partition(" ")
        chosen = name.rstrip("*") in wanted if wanted else name.endswith("*")
        if chosen and "gpu" in gres:
            return True
    return False


def cell_resources(root: DictConfig) -> dict[str, int | None]:
    """What one cell asks SLURM for, from its config and hydra.launcher's nodes and partition.

    Processes: `devices`, else one per GPU of the experiment on GPUs, else one (emulating the
    GPUs). The cell runs on GPUs when accelerator=cuda, or accelerator=auto and the partition
    has GPUs (the machine submitting, often a login node, may have none).
    """
    cfg = as_config(root)
    launcher = root.hydra.launcher
    if cfg.accelerator == "auto":
        on_gpus = partition_has_gpus(launcher.partition)
    else:
        on_gpus = cfg.accelerator == "cuda"
    processes = cfg.devices or (cfg.gpus if on_gpus else 1)
    per_node = max(1, processes // launcher.nodes)
    return {
        "tasks_per_node": per_node,
        "gpus_per_node": per_node if on_gpus else None,
        "cpus_per_task": cfg.cpu_threads + cfg.dataset.workers,
        "mem_gb": per_node * (GB_PER_PROCESS + GB_PER_LOADER_WORKER * cfg.dataset.workers),
    }


def resource(name: str, *, _root_: DictConfig) -> int | None:
    """The resolver ${slurm:<name>} of configs/launcher/slurm.yaml: one of cell_resources."""
    return cell_resources(_root_)[name]


def _one_line(text: str) -> str:
    lines = [ln.strip().removeprefix("sbatch: error: ") for ln in text.strip().splitlines()]
    return "; ".join(ln for ln in lines if ln) or "no message"


def _job_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """SLURM's state of each job (array tasks as 123_4), or None when squeue cannot answer.

    squeue asks the controller, which needs no accounting database (submitit's own watcher asks
    sacct, and waits forever for a cancelled job where there is none).
    """
    try:
        listing = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-o", "%i %T", "-u", getpass.getuser()],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    known = dict(line.split() for line in listing.splitlines() if line.strip())
    return {job_id: known.get(job_id, GONE) for job_id in job_ids}


class Launcher(SubmititSlurmLauncher):
    """Hydra's submitit SLURM launcher with per-cell resources, skips and one-line errors."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> list[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        missing = [tool for tool in ("sbatch", "srun", "squeue") if shutil.which(tool) is None]
        if missing:
            raise UserError(
                f"launcher=slurm submits from a machine with SLURM's commands: {', '.join(missing)}"
                " not found on the PATH (or use launcher=parallel to run here)"
            )
        os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        returns: list[JobReturn | None] = [None] * len(job_overrides)
        arrays: dict[str, list[int]] = {}  # cells with the same launcher parameters
        params: dict[str, dict[str, Any]] = {}
        for index, overrides in enumerate(job_overrides):
            cell_cfg = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            config = as_config(cell_cfg)
            run = RunDir(Cell.of(config, list(overrides)).directory(config.out_dir))
            done = run.result()
            if done and not config.rerun:
                print(f"skip {run.path}: already {done} (rerun=true recomputes it)", flush=True)
                returns[index] = _returned(overrides, f"skipped-{done}")
                continue
            launcher = OmegaConf.to_container(cell_cfg.hydra.launcher, resolve=True)
            key = repr(sorted(launcher.items()))
            arrays.setdefault(key, []).append(index)
            params[key] = launcher
        submitted = []
        for key, indices in arrays.items():
            cells = {initial_job_idx + i: job_overrides[i] for i in indices}
            submitted += zip(indices, self._submit(params[key], cells), strict=True)
        for index, status in self._wait(submitted, job_overrides):
            returns[index] = _returned(job_overrides[index], status)
        return returns  # type: ignore[return-value]

    def _submit(self, launcher: dict[str, Any], cells: dict[int, Sequence[str]]) -> list[Any]:
        """Submit cells (by job number) that ask for the same as one job array. Refused: a
        UserError."""
        import submitit

        init = {"folder": launcher.pop("submitit_folder"),
                "slurm_max_num_timeout": launcher.pop("max_num_timeout")}  # fmt: skip
        launcher.pop("_target_")
        common = set(OmegaConf.structured(BaseQueueConf).keys())
        executor = submitit.AutoExecutor(cluster="slurm", **init)
        executor.update_parameters(
            **{k if k in common else f"slurm_{k}": v for k, v in launcher.items()}
        )
        state = Singleton.get_state()
        # The arguments of the submitit launcher's __call__, which runs the cell in the job.
        args = [(list(o), "hydra.sweep.dir", num, f"job_id_for_{num}", state)
                for num, o in cells.items()]  # fmt: skip
        echoed = io.StringIO()  # submitit prints sbatch's error, then raises it: say it once
        try:
            with contextlib.redirect_stderr(echoed):
                jobs = executor.map_array(self, *zip(*args, strict=True))
        except submitit.core.utils.FailedJobError as e:
            raise UserError(f"SLURM refused the jobs: {_one_line(str(e))}") from None
        sys.stderr.write(echoed.getvalue())
        shown = ("partition", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb")
        resources = ", ".join(f"{k}={launcher[k]}" for k in shown if launcher.get(k) is not None)
        array_id = jobs[0].job_id.split("_")[0]
        print(f"submitted {len(jobs)} cell(s) as SLURM job {array_id} ({resources})", flush=True)
        return jobs

    def _wait(self, submitted: list[tuple[int, Any]], job_overrides: Sequence[Sequence[str]]):
        """Yield (index, status) for every job as it ends; the others keep being waited for."""
        pending = dict(submitted)
        try:
            while pending:
                states = _job_states([job.job_id for job in pending.values()])
                for index, job in list(pending.items()):
                    if job.paths.result_pickle.exists():
                        del pending[index]
                        yield index, self._result(job, job_overrides[index])
                    elif states is not None and states[job.job_id] in ENDED:
                        del pending[index]
                        yield index, self._lost(job, states[job.job_id], job_overrides[index])
                if pending:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            ids = " ".join(job.job_id for job in pending.values())
            print(f"normbench: the SLURM jobs keep running (scancel {ids} stops them)",
                  file=sys.stderr)  # fmt: skip
            raise

    @staticmethod
    def _result(job: Any, overrides: Sequence[str]) -> str:
        """The cell's status from the job's result; a cell that raised is named with its error."""
        try:
            returned = job.results()[0]
        except Exception as e:  # submitit's FailedJobError, holding the job's traceback
            trace = str(e).split("-" * 22)[1] if "-" * 22 in str(e) else str(e)
            lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
            _say(overrides, f"job {job.job_id} failed: {lines[-1] if lines else e}")
            return "failed"
        if returned.status != JobStatus.COMPLETED:
            error = returned._return_value  # the exception (.return_value would raise it)
            _say(overrides, f"job {job.job_id} failed: {error}")
            return "failed"
        return returned.return_value

    @staticmethod
    def _lost(job: Any, state: str, overrides: Sequence[str]) -> str:
        """A job that ended without a result: the cell is unfinished and keeps its checkpoint."""
        for _ in range(5):  # the result may still be on its way through a shared file system
            if job.paths.result_pickle.exists():
                return Launcher._result(job, overrides)
            time.sleep(1)
        ended = "ended" if state == GONE else f"ended {state}"
        _say(overrides, f"SLURM job {job.job_id} {ended} before the cell finished; it is "
                        "unfinished and the next sweep resumes it")  # fmt: skip
        return "unfinished"


def _say(overrides: Sequence[str], message: str) -> None:
    cell = " ".join(filter_overrides(overrides)) or "(defaults)"
    print(f"normbench: cell {cell}: {message}", file=sys.stderr, flush=True)


def _returned(overrides: Sequence[str], status: str) -> JobReturn:
    """What Hydra expects back for a cell; the status is what run_cell returned."""
    returned = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    returned.return_value = status
    return returned
