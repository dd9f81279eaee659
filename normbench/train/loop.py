"""One cell, one worker process: build everything from the resolved config, then train.

Read top to bottom it is the log of what is done: config -> process group -> data -> model ->
optimizer -> (resume) -> epochs of train + evaluate + checkpoint -> metrics. Rank 0 alone writes
files, logs and shows progress; every rank takes part in the reductions.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from normbench.config import (
    Config,
    as_config,
    gpus_per_device,
    learning_rate,
    total_batch,
)
from normbench.data import DatasetBundle, build_datasets
from normbench.errors import UserError
from normbench.logs import EpochProgress
from normbench.metrics import LAST_EPOCHS, val_error_metrics
from normbench.models import build_model
from normbench.norms import (
    DEFAULT_EVAL_STATS,
    alt_running_stats,
    get_norm_spec,
    load_alt_running_stats,
    set_emulated_gpus,
    sync_running_stats,
)
from normbench.track.rundir import HISTORY_COLUMNS, RunDir
from normbench.train.checkpoint import load_checkpoint, restore_rng_state, save_checkpoint
from normbench.train.diagnostics import bn_diagnostics, has_per_gpu_statistics
from normbench.train.distributed import (
    DistEnv,
    all_reduce_sum,
    first_step_over_ranks,
)
from normbench.train.loader import build_loaders, steps_per_epoch, to_device
from normbench.train.preempt import PreemptionGuard
from normbench.train.schedule import build_scheduler

log = logging.getLogger("normbench")


class Diverged(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(f"loss became NaN or inf at step {step}")
        self.step = step


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # batches of the current epoch already trained on
    step: int = 0  # optimizer steps done
    train_time: float = 0.0  # seconds spent training so far (resumes add up)
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    steps: list[dict[str, Any]] = field(default_factory=list)  # one row per log interval
    partial_sums: list[list[float]] | None = None  # per rank, when saved mid-epoch
    partial_window: list[list[float]] | None = None  # per rank: loss, count since the last log
    last_lr: float = 0.0


@dataclass
class EpochSums:
    """This rank's running statistics of an epoch, kept on the device (no host sync per step)."""

    sums: torch.Tensor  # loss sum, errors, count over the epoch
    window: torch.Tensor  # loss sum, count since the last log line
    first_bad: torch.Tensor  # the first step whose loss was NaN or inf; -1: none yet
    world_size: int
    images: int = 0  # over all ranks

    def add(self, loss: torch.Tensor, errors: torch.Tensor, count: int, step: int) -> None:
        """One step: its mean loss over `count` images, of which `errors` were misclassified."""
        loss = loss.detach().float()
        bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, step, self.first_bad)
        n = loss.new_tensor(count)
        self.sums += torch.stack([loss * n, errors.to(n.dtype), n])
        self.window += torch.stack([loss * n, n])
        self.images += count * self.world_size


def load_config(run: RunDir) -> Config:
    return as_config(OmegaConf.load(run.config))


def _seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def build_optimizer(model: nn.Module, cfg: Config, lr: float) -> torch.optim.SGD:
    """SGD; weight decay on every weight layer, norm gamma/beta included (the paper's recipe)."""
    norm_decay = (
        cfg.optim.weight_decay
        if cfg.optim.norm_weight_decay is None
        else (cfg.optim.norm_weight_decay)
    )
    norm_params = [p for p in model.parameters() if p.ndim <= 1]  # gamma, beta, tau, biases
    other = [p for p in model.parameters() if p.ndim > 1]
    groups = [
        {"params": other, "weight_decay": cfg.optim.weight_decay},
        {"params": norm_params, "weight_decay": norm_decay},
    ]
    # foreach: one fused update over all parameters (torch enables it by default on CUDA only).
    return torch.optim.SGD(
        groups, lr=lr, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov, foreach=True
    )


def _autocast(cfg: Config, device: torch.device):
    if cfg.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: Config, env: DistEnv) -> tuple[float, float]:
    """Validation loss and top-1 error (percent) over the whole set, summed across ranks."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=env.device)  # loss sum, errors, count
    for batch in loader:
        images, labels = to_device(batch, env.device, cfg.channels_last)
        with _autocast(cfg, env.device):
            logits = model(images)
        totals[0] += F.cross_entropy(logits.float(), labels, reduction="sum")
        totals[1] += (logits.argmax(1) != labels).sum()
        totals[2] += labels.numel()
    loss_sum, errors, count = all_reduce_sum(totals, env).tolist()
    return loss_sum / count, 100.0 * errors / count


def is_evaluated(epoch: int, epochs: int, every: int) -> bool:
    """Whether 1-based ``epoch`` of ``epochs`` is validated: every ``every``-th, and each of the
    last LAST_EPOCHS, whose median is the headline."""
    return epoch % every == 0 or epoch > epochs - LAST_EPOCHS


def shown(value: float, unit: str = "") -> str:
    """A logged measurement; '-' for an epoch without validation."""
    return f"{value:.2f}{unit}" if math.isfinite(value) else "-"


def summarize(history: list[dict[str, Any]]) -> dict[str, float]:
    """The cell's metrics from its per-epoch history: the val errors' (normbench.metrics), and
    the last epoch's train error."""
    return {
        **val_error_metrics(row["val_error"] for row in history),
        "train_error_final": history[-1]["train_error"],
    }


class Trainer:
    """State of one worker's training run. `run()` is the whole loop.

    What is the task's own (classification here) sits in the hooks that a task's trainer
    overrides (normbench.train.detect.DetectTrainer): :meth:`build_data`, :meth:`build_model`,
    :meth:`train_loss` (one step's forward), :meth:`evaluate` (the val columns of an epoch's
    history row), :meth:`epoch_summary` (its log line) and :meth:`results` (the cell's
    metrics); the rest (emulated GPUs, DDP, checkpoints, resume, preemption, divergence,
    logging) is shared.
    """

    # The columns of history.csv; whether an epoch's row has a train error (a classifier's).
    history_columns: tuple[str, ...] = HISTORY_COLUMNS
    # The history columns :meth:`evaluate` fills; empty (NaN) in an epoch without validation.
    val_columns: tuple[str, ...] = ("val_loss", "val_error")
    has_train_error = True

    def __init__(self, run_dir: RunDir, cfg: Config, env: DistEnv) -> None:
        self.run_dir, self.cfg, self.env = run_dir, cfg, env
        self.chunks = gpus_per_device(cfg) if env.world_size == 1 else cfg.gpus // env.world_size
        self.lr = learning_rate(cfg)
        _seed_everything(cfg.seed, cfg.deterministic)

        self.data = self.build_data()
        self.train_loader, self.val_loader, self.sampler = build_loaders(
            self.data, batch_per_rank=cfg.batch * self.chunks,
            val_batch_per_rank=cfg.val_batch or cfg.batch * self.chunks,
            world_size=env.world_size, rank=env.rank, seed=cfg.seed, workers=cfg.dataset.workers,
            pin_memory=env.device.type == "cuda",
        )  # fmt: skip
        self.steps_per_epoch = steps_per_epoch(len(self.data.train), total_batch(cfg))
        if self.steps_per_epoch < 1:
            raise UserError(
                f"total batch {total_batch(cfg)} (gpus x batch) exceeds the {len(self.data.train)} "
                "training images: lower batch or gpus, or use more data"
            )

        model = self.build_model()
        memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model = model.to(env.device, memory_format=memory_format)
        self.optimizer = build_optimizer(self.model, cfg, self.lr)
        self.scheduler = build_scheduler(
            self.optimizer, steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs,
            optim=cfg.optim,
        )  # fmt: skip
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=cfg.amp == "fp16")
        self.progress = Progress()
        self.bar = EpochProgress(cfg.progress and env.is_main)
        self._resume()
        self.net = self._wrap_ddp(self.model)

    # ---- the task's hooks (classification) ----------------------------------------------

    def build_data(self) -> DatasetBundle:
        cfg = self.cfg
        return build_datasets(
            cfg.dataset.name, cfg.dataset.root, seed=cfg.seed, image_size=cfg.dataset.image_size,
            train_size=cfg.dataset.train_size, val_size=cfg.dataset.val_size,
            augment=cfg.dataset.augment, download=cfg.dataset.download,
            bad_images=cfg.dataset.bad_images, color_jitter=cfg.dataset.color_jitter,
            lighting=cfg.dataset.lighting, skipped_file=self.run_dir.skipped,
        )  # fmt: skip

    def build_model(self) -> nn.Module:
        """The network, its per-GPU norms told how many GPUs this process emulates (each
        computes statistics over every chunk of `batch` samples of one forward)."""
        cfg = self.cfg
        model = build_model(
            cfg.model.name, norm=cfg.norm.name, num_classes=self.data.num_classes,
            in_channels=self.data.in_channels, ws=cfg.model.ws,
            zero_init_last_norm=cfg.model.zero_init_last_norm, width=cfg.model.width,
            norm_options=cfg.norm.options(),
        )  # fmt: skip
        set_emulated_gpus(model, self.chunks)
        return model

    def train_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One step's forward: (mean loss, misclassified images, images) on this rank."""
        cfg = self.cfg
        x, y = to_device(batch, self.env.device, cfg.channels_last)
        with _autocast(cfg, self.env.device):
            logits = self.net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.optim.label_smoothing)
        return loss, (logits.detach().argmax(1) != y).sum(), y.numel()

    def evaluate(self) -> dict[str, float]:
        """The val columns of an epoch's history row."""
        val_loss, val_error = evaluate(self.model, self.val_loader, self.cfg, self.env)
        return {"val_loss": val_loss, "val_error": val_error}

    def epoch_summary(self, row: dict[str, Any]) -> str:
        """An epoch's numbers in its log line."""
        return (
            f"train loss {row['train_loss']:.4f}  train err {shown(row['train_error'], '%')}  "
            f"val err {shown(row['val_error'], '%')}"
        )

    def results(self) -> dict[str, Any]:
        """The cell's metrics (metrics.json) once every epoch is done."""
        return {**summarize(self.progress.history), **self.diagnose()}

    # ---- set-up helpers --------------------------------------------------------------------

    @property
    def bn_eval_stats(self) -> str:
        if not get_norm_spec(self.cfg.norm.name).batch_dependent:
            return "n/a (no batch statistics)"
        return self.cfg.norm.eval_stats or DEFAULT_EVAL_STATS

    def _wrap_ddp(self, model: nn.Module) -> nn.Module:
        if self.env.world_size == 1:
            return model
        # Every rank keeps its own BN moving averages, as separate GPUs do; sync_running_stats
        # combines them before each evaluation ("first": GPU 0's, "average": the mean), so
        # real and emulated GPUs evaluate alike in both modes.
        device_ids = [self.env.local_rank] if self.env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)

    def _resume(self) -> None:
        state = load_checkpoint(self.run_dir.checkpoint)
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        load_alt_running_stats(self.model, state.get("bn_alt_stats"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        restore_rng_state(state["rng"])
        if self.env.is_main:
            log.info(
                "resuming from checkpoint: epoch %d, batch %d, step %d",
                self.progress.epoch + 1, self.progress.batch_in_epoch, self.progress.step,
            )  # fmt: skip

    def save(self) -> None:
        if not self.env.is_main:
            return
        save_checkpoint(
            self.run_dir.checkpoint,
            {
                "model": self.model.state_dict(),
                "bn_alt_stats": alt_running_stats(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "progress": self.progress.__dict__,
            },
        )

    # ---- the loop --------------------------------------------------------------------------

    def train_epoch(self, tracker, guard: PreemptionGuard) -> dict[str, float]:
        """One epoch, or the rest of one after a mid-epoch resume."""
        p = self.progress
        sums = self._begin_epoch()
        for batch in self.train_loader:
            loss, errors, count = self.train_loss(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used
            self.scheduler.step()
            p.step += 1
            p.batch_in_epoch += 1
            sums.add(loss, errors, count, p.step)
            last_batch = p.batch_in_epoch == self.steps_per_epoch
            self._after_step(sums, lr, last_batch, tracker, guard)
            if last_batch:
                break
        return self._end_epoch(sums, lr)

    def _begin_epoch(self) -> EpochSums:
        p = self.progress
        self.net.train()
        self.sampler.set_position(p.epoch, p.batch_in_epoch * self.train_loader.batch_size)
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(p.epoch)
        self._lap_start = time.perf_counter()
        # Carried over from a checkpoint taken mid-epoch, so a resumed epoch reports (and logs)
        # exactly what an uninterrupted one would.
        return EpochSums(
            sums=self._carried(p.partial_sums, 3),
            window=self._carried(p.partial_window, 2),
            first_bad=torch.full((), -1, dtype=torch.long, device=self.env.device),
            world_size=self.env.world_size,
        )

    def _after_step(
        self, sums: EpochSums, lr: float, last_batch: bool, tracker, guard: PreemptionGuard
    ) -> None:
        """At intervals: a log line every log_every_steps (after the divergence check, with the
        ranks' agreement on preemption), a mid-epoch checkpoint every checkpoint_every_steps or
        on preemption. Every rank takes the same branches at the same step (the collectives
        inside need it)."""
        cfg, p = self.cfg, self.progress
        stop = False
        if p.step % cfg.log_every_steps == 0 or last_batch:
            self._check_divergence(sums.first_bad)
            stop = self._preempted(guard)
            self._log_window(sums, lr, tracker)
        if self.env.world_size == 1:
            stop = guard.requested  # alone: no need to agree with anyone, stop at once
        periodic = cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0
        if (periodic or stop) and not last_batch:
            self._check_divergence(sums.first_bad)  # a diverged state is a result, not a resume
            self._sync_time()
            gathered = self._gather(torch.cat([sums.sums, sums.window]))
            p.partial_sums = [row[:3] for row in gathered]
            p.partial_window = [row[3:] for row in gathered]
            self.save()
            if stop:
                self._exit_preempted(guard)

    def _log_window(self, sums: EpochSums, lr: float, tracker) -> None:
        """The mean train loss over all ranks since the last log line: steps.csv, W&B, the bar."""
        p = self.progress
        loss_sum, count = all_reduce_sum(sums.window, self.env).tolist()
        sums.window.zero_()
        epoch = p.epoch + p.batch_in_epoch / self.steps_per_epoch
        p.steps.append({"step": p.step, "epoch": epoch, "train_loss": loss_sum / count, "lr": lr})
        tracker.log({"train/loss": loss_sum / count, "lr": lr, "epoch": epoch}, p.step)
        self.bar.update(p.batch_in_epoch, loss_sum / count)

    def _end_epoch(self, sums: EpochSums, lr: float) -> dict[str, float]:
        p = self.progress
        self._sync_time()
        p.partial_sums = p.partial_window = None
        p.last_lr = lr
        loss_sum, errors, count = all_reduce_sum(sums.sums, self.env).tolist()
        return {
            "train_loss": loss_sum / count,
            "train_error": 100.0 * errors / count,
            "images": sums.images,
        }

    def _carried(self, saved: list[list[float]] | None, size: int) -> torch.Tensor:
        """This rank's running sums saved by a mid-epoch checkpoint, or zeros."""
        values = saved[self.env.rank] if saved else [0.0] * size
        return torch.tensor(values, dtype=torch.float64, device=self.env.device)

    def _preempted(self, guard: PreemptionGuard) -> bool:
        """Whether any rank received a preemption signal. A collective: every rank calls it at
        the same step, so all stop together (one rank alone in a collective would hang)."""
        flag = torch.tensor(float(guard.requested), dtype=torch.float64, device=self.env.device)
        return all_reduce_sum(flag, self.env).item() > 0

    def _exit_preempted(self, guard: PreemptionGuard) -> None:
        """The checkpoint is written: leave, handing the signal on (see PreemptionGuard)."""
        if self.env.is_main:
            log.warning(
                "preempted: checkpoint saved at epoch %d, step %d; rerun the same command to "
                "resume", self.progress.epoch + 1, self.progress.step,
            )  # fmt: skip
        guard.exit()

    def _gather(self, sums: torch.Tensor) -> list[list[float]]:
        """Every rank's partial sums, for rank 0 to save."""
        if self.env.world_size == 1:
            return [sums.tolist()]
        gathered = [torch.empty_like(sums) for _ in range(self.env.world_size)]
        torch.distributed.all_gather(gathered, sums)
        return [t.tolist() for t in gathered]

    def _sync_time(self) -> None:
        """Add the time since the epoch began, or since the last call, to the training time."""
        now = time.perf_counter()
        self.progress.train_time += now - self._lap_start
        self._lap_start = now

    def _check_divergence(self, first_bad: torch.Tensor) -> None:
        """Stop every rank at the first step any rank's loss was NaN or inf (a collective)."""
        step = first_step_over_ranks(first_bad, self.env)
        if step is not None:
            raise Diverged(step)

    def run(self, tracker, guard: PreemptionGuard) -> dict[str, Any]:
        cfg, env, p = self.cfg, self.env, self.progress
        while p.epoch < cfg.epochs:
            epoch_start = time.perf_counter()
            time_before = p.train_time
            self.bar.start(p.epoch + 1, cfg.epochs, self.steps_per_epoch, p.batch_in_epoch)
            try:
                train = self.train_epoch(tracker, guard)
            finally:
                self.bar.stop()
            sync_running_stats(self.model)
            evaluated = is_evaluated(p.epoch + 1, cfg.epochs, cfg.eval_every)
            row = {
                "epoch": p.epoch + 1,
                "step": p.step,
                "train_loss": train["train_loss"],
                **({"train_error": train["train_error"]} if self.has_train_error else {}),
                **(self.evaluate() if evaluated else dict.fromkeys(self.val_columns, math.nan)),
                "lr": p.last_lr,
                "images_per_s": train["images"] / max(p.train_time - time_before, 1e-9),
                "peak_mem_mb": peak_memory_mb(env.device),
                "time_s": time.perf_counter() - epoch_start,
            }
            p.history.append(row)
            p.epoch += 1
            p.batch_in_epoch = 0
            logged = {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            tracker.log({f"epoch/{k}": v for k, v in logged.items()}, step=p.step)
            if env.is_main:
                log.info(
                    "epoch %d/%d  %s  lr %.4g  %.0f img/s", row["epoch"], cfg.epochs,
                    self.epoch_summary(row), row["lr"], row["images_per_s"],
                )  # fmt: skip
                self.run_dir.write_history(p.history, self.history_columns)
                self.run_dir.write_steps(p.steps)
            self.save()
            if self._preempted(guard):
                self._exit_preempted(guard)
        return self.results()

    def diagnose(self) -> dict[str, Any]:
        """Val error of the final network under every BN evaluation mode (cells with per-GPU
        batch statistics, unless diagnostics.enabled=false); see normbench.train.diagnostics."""
        cfg = self.cfg
        if not (cfg.diagnostics.enabled and has_per_gpu_statistics(self.model)):
            return {}
        # The training loader gives this rank's batches; rounded down to whole steps.
        steps = max(1, min(cfg.diagnostics.precise_images // total_batch(cfg),
                           self.steps_per_epoch))  # fmt: skip
        self.sampler.set_position(cfg.epochs, 0)  # a fresh permutation, past the last epoch
        errors = bn_diagnostics(
            self.model, train_loader=self.train_loader, val_loader=self.val_loader,
            evaluate=lambda model, loader: evaluate(model, loader, cfg, self.env)[1],
            batch=cfg.batch, chunks=self.chunks, precise_batches=steps, env=self.env,
            headline=(self.bn_eval_stats, self.progress.history[-1]["val_error"]),
            seed=cfg.seed,
        )  # fmt: skip
        seconds = errors.pop("seconds")
        if self.env.is_main:
            log.info(
                "BN diagnostics (val error with the final weights): %s; %.0f s (%.1f%% of "
                "training)", ", ".join(f"{mode} {error:.2f}%" for mode, error in errors.items()),
                seconds, 100 * seconds / max(self.progress.train_time, 1e-9),
            )  # fmt: skip
        return {
            **{f"val_error_{mode}": error for mode, error in errors.items()},
            "diagnostics_images": steps * total_batch(cfg),
            "diagnostics_time_s": seconds,
        }
