"""Processes and devices: who am I (rank), on which device, and how workers are started.

Workers are started three ways, and all three meet in :func:`init_process`:
- from a Hydra job, through torchrun's elastic agent (:func:`launch_workers`);
- by the user under ``torchrun`` / ``srun`` running ``normbench worker <run_dir>``;
- by submitit under SLURM, one task per GPU (the task's environment names its rank).
The process group reads RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT from the environment.

Emulated GPUs: each process holds ``gpus / devices`` of the experiment's GPUs; the batch-dependent
norms compute statistics per chunk of ``batch`` samples (see normbench.norms.set_emulated_gpus).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from normbench.config import Config, resolve_accelerator
from normbench.errors import UserError
from normbench.train.preempt import hand_on

log = logging.getLogger("normbench")
# torch's launcher logs a failed worker's traceback itself: the failure is raised from here
# instead, and shown once (a user error as one line, any other error with its traceback).
_LAUNCHER_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _export_slurm_env() -> None:
    """Under srun with several tasks, name rank and world from SLURM's variables."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    import submitit

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def init_process(cfg: Config) -> DistEnv:
    """Join the process group (when there are several processes) and pick this rank's device."""
    _export_slurm_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    accelerator = resolve_accelerator(cfg)
    if accelerator == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = None
    if world_size > 1:
        backend = (
            cfg.backend if cfg.backend != "auto" else ("nccl" if accelerator == "cuda" else "gloo")
        )
        if not dist.is_initialized():
            dist.init_process_group(
                backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(minutes=30)
            )
    return DistEnv(rank, world_size, local_rank, device, backend)


def close_process() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def first_step_over_ranks(first_bad: torch.Tensor, env: DistEnv) -> int | None:
    """The earliest of the ranks' steps (a 0-d integer tensor each, -1: none on this rank), or
    None when no rank has one. A collective: every rank calls it at the same step."""
    none = torch.iinfo(torch.long).max  # a rank without a step must not win the minimum
    step = torch.where(first_bad < 0, none, first_bad.to(torch.long))
    if env.world_size > 1:
        dist.all_reduce(step, op=dist.ReduceOp.MIN)
    return None if step.item() == none else int(step.item())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerFailed(RuntimeError):
    """A worker process died; the message names its rank and its error."""


def launch_workers(entrypoint: Callable[[str], object], arg: str, nprocs: int, run_id: str) -> None:
    """Start `nprocs` local workers through torchrun's elastic agent and wait for them."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nprocs,
        run_id=run_id,
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    try:
        with _quiet(_LAUNCHER_LOGGERS), _kept_signal_handlers():
            elastic_launch(config, entrypoint)(arg)
    except SignalException as e:
        # The agent was stopped (a sweep stopping, a preemption) and stopped the workers with the
        # same signal, on which they wrote a checkpoint: the cell is unfinished, not failed.
        hand_on(e.sigval)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message
        if isinstance(message, dict):  # the child's error file: {"message": ..., "extraInfo": ...}
            message = message.get("message", message)
        reason = (
            str(message).strip().splitlines()[-1] if message else f"exit code {failure.exitcode}"
        )
        if reason.startswith(f"{UserError.__name__}: "):  # e.g. an unreadable image: one line
            raise UserError(reason.split(": ", 1)[1]) from None
        log.error("worker rank %d failed:\n%s", rank, _callstack(failure) or reason)
        raise WorkerFailed(f"worker rank {rank} failed: {reason}") from None


@contextlib.contextmanager
def _kept_signal_handlers():
    """torch's agent replaces the handlers of SIGTERM, SIGINT, SIGHUP and SIGQUIT (each raises
    SignalException) and never puts them back: this process's own come back after it."""
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():  # where torch sets them
            for sig, handler in previous.items():
                if handler is not None:  # None: set outside Python, cannot be put back
                    signal.signal(sig, handler)


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _callstack(failure) -> str | None:
    """The worker's traceback, as torch's error file recorded it."""
    message = failure.error_file_data.get("message")
    return message.get("extraInfo", {}).get("py_callstack") if isinstance(message, dict) else None
