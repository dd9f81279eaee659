"""The checks of a whole config that need more than its types: everything a user can get wrong,
refused in one line (:class:`~normbench.errors.UserError`) before anything is written.

It sits above what it asks (the datasets, models, norms and the report's metrics), so the
schema, :mod:`normbench.config`, stays a leaf that any module may import.
"""

from __future__ import annotations

import os

import torch

from normbench.config import (
    ACCELERATORS,
    AMP_MODES,
    BACKENDS,
    BAD_IMAGE_POLICIES,
    LOGGERS,
    SCHEDULES,
    WANDB_MODES,
    Config,
    cpu_cores,
    resolve_accelerator,
    resolve_devices,
    total_batch,
)
from normbench.errors import UserError
from normbench.metrics import TASK_METRICS


def _one_of(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UserError(f"{what}={value!r} is not allowed (allowed: {', '.join(allowed)})")


def _positive(what: str, value: int | float, least: int = 1) -> None:
    if value < least:
        raise UserError(f"{what}={value} must be >= {least}")


def validate(cfg: Config) -> None:
    """Refuse impossible configs before anything is written. Raises UserError.

    On CPU each device is one worker process that normbench starts; more of them than CPU
    cores are refused (they would only share the cores and slow each other down): emulate the
    GPUs instead, e.g. ``devices=1 gpus=8``. Processes started by torchrun or SLURM are theirs
    to place, so that check is left out there.
    """
    # Imported here, not above: they cost every command (normbench report too) about 1.8 s of
    # start-up (torchvision's models, pandas), and only a cell about to run is validated.
    from normbench.data import check_augment_options, check_sizes
    from normbench.norms import get_norm_spec

    _positive("batch", cfg.batch)
    _positive("gpus", cfg.gpus)
    _positive("epochs", cfg.epochs)
    _positive("eval_every", cfg.eval_every)
    if cfg.val_batch is not None:
        _positive("val_batch", cfg.val_batch)
    _positive("cpu_threads", cfg.cpu_threads)
    _positive("seed", cfg.seed, least=0)
    _positive("log_every_steps", cfg.log_every_steps)
    _positive("checkpoint_every_steps", cfg.checkpoint_every_steps, least=0)
    _positive("dataset.workers", cfg.dataset.workers, least=0)
    _positive("optim.reference_batch", cfg.optim.reference_batch)
    _positive("diagnostics.precise_images", cfg.diagnostics.precise_images)
    check_sizes(
        cfg.dataset.name, cfg.dataset.image_size, cfg.dataset.train_size, cfg.dataset.val_size
    )
    if cfg.dataset.train_size is not None and total_batch(cfg) > cfg.dataset.train_size:
        raise UserError(
            f"total batch {total_batch(cfg)} (gpus={cfg.gpus} x batch={cfg.batch}) exceeds "
            f"dataset.train_size={cfg.dataset.train_size}: lower batch or gpus, or use more data"
        )
    _one_of("amp", cfg.amp, AMP_MODES)
    _one_of("accelerator", cfg.accelerator, ACCELERATORS)
    _one_of("backend", cfg.backend, BACKENDS)
    _one_of("optim.schedule", cfg.optim.schedule, SCHEDULES)
    _one_of("logger.kind", cfg.logger.kind, LOGGERS)
    _one_of("logger.mode", cfg.logger.mode, WANDB_MODES)
    _one_of("dataset.bad_images", cfg.dataset.bad_images, BAD_IMAGE_POLICIES)
    task = check_task(cfg)
    _one_of("metric", cfg.metric, TASK_METRICS[task])
    get_norm_spec(cfg.norm.name)  # unknown norm -> UserError listing the norms

    accelerator = resolve_accelerator(cfg)
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("accelerator=cuda but no CUDA device is visible (allowed here: cpu, auto)")
    if cfg.backend == "nccl" and accelerator != "cuda":
        raise UserError("backend=nccl needs CUDA devices; on CPU use backend=gloo (or auto)")
    if cfg.amp != "none" and accelerator != "cuda":
        raise UserError(f"amp={cfg.amp} is for GPUs; on CPU use amp=none")
    devices = resolve_devices(cfg)
    _positive("devices", devices)
    if accelerator == "cuda" and devices > torch.cuda.device_count():
        raise UserError(
            f"devices={devices} but only {torch.cuda.device_count()} CUDA devices are visible"
        )
    started_outside = "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if accelerator == "cpu" and not started_outside and devices > cpu_cores():
        raise UserError(
            f"devices={devices} but only {cpu_cores()} CPU cores are available (on CPU each "
            f"device is a process; allowed: devices <= {cpu_cores()}, or devices=1 emulating "
            "the gpus)"
        )
    if cfg.gpus % devices:
        allowed = [d for d in range(1, cfg.gpus + 1) if cfg.gpus % d == 0]
        raise UserError(
            f"gpus={cfg.gpus} is not a multiple of devices={devices} "
            f"(allowed devices: {', '.join(map(str, allowed))})"
        )
    check_augment_options(cfg.dataset.name, cfg.dataset.color_jitter, cfg.dataset.lighting)
    if task == "detection":
        _check_detection(cfg)
    else:
        _check_classification(cfg)


def check_task(cfg: Config) -> str:
    """The cell's task, which its model implies; a dataset of another task (or an unknown model
    or dataset) is refused in one line naming what is allowed."""
    from normbench.data import dataset_task, list_datasets, list_detection_datasets
    from normbench.models import list_detection_models, list_models, model_task

    models = {"classification": list_models(), "detection": list_detection_models()}
    datasets = {"classification": list_datasets(), "detection": list_detection_datasets()}
    every_model = tuple(name for found in models.values() for name, _ in found)
    _one_of("model.name", cfg.model.name, every_model)
    _one_of("dataset.name", cfg.dataset.name, tuple(n for f in datasets.values() for n, _ in f))
    task, data_task = model_task(cfg.model.name), dataset_task(cfg.dataset.name)
    if task != data_task:
        allowed = ", ".join(name for name, _ in datasets[task])
        raise UserError(
            f"model={cfg.model.name} is a {task} model and dataset={cfg.dataset.name} a "
            f"{data_task} dataset (allowed datasets for {task}: {allowed})"
        )
    return task


def _check_classification(cfg: Config) -> None:
    from normbench.data import check_dataset
    from normbench.models import build_model

    detection_only = {
        "model.pretrained": cfg.model.pretrained,
        "dataset.items": cfg.dataset.items,
        "dataset.item_size": cfg.dataset.item_size,
    }
    for what, value in detection_only.items():
        if value is not None:
            raise UserError(f"{what}={value} is a detection option: set it to null here")
    check_dataset(cfg.dataset.name, cfg.dataset.root, download=cfg.dataset.download)
    # Building the network on the meta device checks every norm option against every layer
    # (e.g. groups that do not divide a width) without allocating memory.
    with torch.device("meta"):
        build_model(
            cfg.model.name,
            norm=cfg.norm.name,
            num_classes=10,
            in_channels=3,
            ws=cfg.model.ws,
            zero_init_last_norm=False,
            width=cfg.model.width,
            norm_options=cfg.norm.options(),
        )


def _check_detection(cfg: Config) -> None:
    """A detection cell's data (checked: the job writes the scenes), its pretrained checkpoint
    and its detector with the cell's norm options."""
    from normbench.data.detection import check_detection_dataset
    from normbench.models import pretrained_checkpoint
    from normbench.train.detect import build_cell_detector

    if cfg.model.ws:
        raise UserError("model.ws=true is not supported by the detectors (allowed: false)")
    if cfg.dataset.name != "fashion_scenes":
        for what, value in (("items", cfg.dataset.items), ("item_size", cfg.dataset.item_size)):
            if value is not None:
                raise UserError(
                    f"dataset.{what}={value} is a fashion_scenes option: set it to null for "
                    f"dataset={cfg.dataset.name}"
                )
    if cfg.model.pretrained is not None:
        pretrained_checkpoint(cfg.model.pretrained)
    check_detection_dataset(cfg.dataset)
    # On the meta device, as for classifiers: every norm option against every layer.
    with torch.device("meta"):
        build_cell_detector(cfg, num_classes=1, in_channels=1)
