"""The worker process of one cell: read its run directory, train it with its task's trainer,
write its metrics. Every rank runs :func:`run_worker` (torchrun, srun, or the job's own process).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from normbench.config import Config, total_batch
from normbench.metrics import ALL_LABELS
from normbench.track.environment import run_record
from normbench.track.rundir import RunDir
from normbench.track.tracker import open_tracker
from normbench.train.distributed import close_process, init_process
from normbench.train.loop import Diverged, Trainer, load_config
from normbench.train.preempt import PreemptionGuard

log = logging.getLogger("normbench")


def trainer_class(cfg: Config) -> type[Trainer]:
    """The trainer of the cell's task, which its model implies."""
    from normbench.models import model_task

    if model_task(cfg.model.name) == "detection":
        from normbench.train.detect import DetectTrainer  # torchvision's detection code

        return DetectTrainer
    return Trainer


def run_worker(run_dir: str | Path) -> None:
    """Entry point of every worker process (torchrun, srun, or in-process): train one cell."""
    from normbench.logs import cell_label, in_sweep, setup_logging

    run = RunDir(Path(run_dir))
    cfg = load_config(run)
    cell = run.cell()
    env = init_process(cfg)
    if env.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    label = cell_label(cell) if in_sweep() else None  # in a sweep, other cells share the console
    setup_logging(run.log if env.is_main else None, rank=env.rank, cell=label)
    started = time.time()
    tracker = None
    outcome: dict[str, Any] = {"status": "failed", "error": None, "diverged_at_step": None}
    try:
        trainer = trainer_class(cfg)(run, cfg, env)
        tracker = open_tracker(
            cfg.logger.kind, run.path, OmegaConf.to_container(OmegaConf.structured(cfg)),
            cell=cell, rank=env.rank, logger_config=cfg.logger,
        )  # fmt: skip
        if env.is_main:
            log.info(
                "cell %s: %s + %s on %s | batch/GPU %d x %d GPUs = total %d | %d process(es) x "
                "%d emulated GPU(s) | lr %.4g | norm options %s | BN eval stats: %s",
                cell.name, cfg.model.name, cfg.norm.name, cfg.dataset.name, cfg.batch,
                cfg.gpus, total_batch(cfg), env.world_size, trainer.chunks, trainer.lr,
                cfg.norm.options() or "default", trainer.bn_eval_stats,
            )  # fmt: skip
        with PreemptionGuard() as guard:
            try:
                outcome = {**outcome, **trainer.run(tracker, guard), "status": "finished"}
            except Diverged as e:
                log.warning("cell %s diverged: %s", cell.name, e)
                outcome.update(status="diverged", diverged_at_step=e.step, error=str(e))
        if env.is_main:
            metrics = {**run_record(cfg, cell, run, env, trainer), **outcome}
            metrics["wall_time_s"] = time.time() - started
            run.write_metrics(metrics)
            tracker.summary(
                {k: v for k, v in metrics.items() if k.startswith("val_error") or k in ALL_LABELS}
            )
    finally:
        if tracker is not None:
            tracker.finish(0 if outcome["status"] != "failed" else 1)
        close_process()
