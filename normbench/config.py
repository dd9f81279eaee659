"""Typed configuration: the schema Hydra validates every override against, its defaults, and
the quantities derived from it (total batch, learning rate, emulated GPUs per process).

The schema is registered in Hydra's ConfigStore as ``base_config``, the first entry of
configs/config.yaml's defaults list, so a misspelt key or a value of the wrong type is rejected
by Hydra before any work starts. Every default lives in one place: a value that is the same
whatever model, norm or dataset is chosen is the schema's (here); what an option of a config
group changes is that option's file (configs/model/resnet8.yaml: the model's name and width);
config.yaml itself only selects the groups; an option whose default a norm layer or a model
states (its constructor: the one source, shown by `normbench norms`) is None, that default. Each
list of allowed values below is the one definition of its choices. Checks that need more than
types (a known norm name, groups that divide every layer, gpus vs devices) live in
:func:`normbench.checks.validate`, above the modules they ask: loading this module loads no
other part of normbench.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

# The allowed values of the string fields below: one definition each, imported wherever a value
# is checked (normbench.checks, the data builders, the trackers).
AMP_MODES = ("none", "bf16", "fp16")
ACCELERATORS = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "gloo", "nccl")
SCHEDULES = ("step", "cosine")
LOGGERS = ("wandb", "none")
WANDB_MODES = ("offline", "online", "auto", "disabled")
BAD_IMAGE_POLICIES = ("fail", "skip")


@dataclass
class ModelConfig:
    name: str = MISSING  # a classifier or a detector: the model's name says the task
    width: int | None = None  # base width of CIFAR-style ResNets; None: the model's own
    ws: bool = False  # weight standardization on every conv; combines with any norm
    zero_init_last_norm: bool = True  # gamma = 0 for the last norm of each residual block
    # Detectors: the backbone's starting weights, a classification run directory (its
    # checkpoint.pt) or a checkpoint file of one; None: from scratch (random weights).
    pretrained: str | None = None


@dataclass
class NormConfig:
    """Every option any norm takes; None means the norm's own default.

    Options apply to the norms that take them, so a sweep can say ``norm=bn,gn norm.groups=8``
    (GN with 8 groups, BN untouched); group_size, when set, takes precedence over groups (a
    model's default G). Each cell's log line names the options its norm used.
    """

    name: str = MISSING
    groups: int | None = None
    group_size: int | None = None
    eps: float | None = None
    momentum: float | None = None
    # How the GPUs' running statistics are combined for evaluation: the layers' default
    # (normbench.norms.batch.DEFAULT_EVAL_STATS, which says why), stated rather than None so
    # that each cell's config.yaml records it; this module imports no other part of normbench,
    # so tests/test_config.py checks that the two agree.
    eval_stats: str | None = "first"
    r_max: float | None = None
    d_max: float | None = None
    warmup_steps: int | None = None
    relax_steps: int | None = None
    learned_eps: bool | None = None
    tlu: bool | None = None
    iterations: int | None = None  # IterNorm's Newton iterations T
    # The whitening norms' (dbn, iternorm) running estimate for evaluation: "covariance"
    # (whitened at evaluation) or "whitening" (the averaged whitening matrix).
    running: str | None = None

    def options(self) -> dict[str, Any]:
        """The options set for this norm (None values and other norms' options left out)."""
        from normbench.norms import get_norm_spec

        accepted = get_norm_spec(self.name).options
        options = {k: v for k, v in self.__dict__.items() if k in accepted and v is not None}
        if "group_size" in options:  # the more specific setting wins over a default G
            options.pop("groups", None)
        return options


@dataclass
class DatasetConfig:
    name: str = MISSING
    # The dataset's folder: read from, and downloaded into. None: <data root>/<name>, the data
    # root being $NORMBENCH_DATA, else ~/.cache/normbench/data ($XDG_CACHE_HOME honoured);
    # normbench.data.dataset_dir is this rule. Fashion-MNIST is also read from the Debian
    # package's folder, /usr/share/datasets/fashion-mnist (read only, never written).
    root: str | None = None
    image_size: int | None = None  # None: the dataset's own (synthetic images have none)
    # A seeded subset of the split, set by the mini datasets' files; None: every image (the
    # synthetic set, generated to order, needs both).
    train_size: int | None = None
    val_size: int | None = None
    augment: bool = True
    # Fetch files not found locally (Fashion-MNIST, CIFAR; torchvision's mirrors and md5 sums),
    # as torchvision users expect; false for offline clusters: a missing dataset is then one
    # line saying where it was looked for (the default Fashion-MNIST: synthetic data instead).
    download: bool = True
    bad_images: str = "fail"  # BAD_IMAGE_POLICIES: fail, or skip (and count) unreadable images
    workers: int = 0  # DataLoader worker processes per rank
    # The paper's extra ImageNet train augmentation (fb.resnet.torch), 0 = off; imagenet only,
    # other datasets refuse a non-zero value: brightness/contrast/saturation jitter strength,
    # and the alpha std of AlexNet's PCA lighting noise.
    color_jitter: float = 0.0
    lighting: float = 0.0
    # The detection scenes' generation (dataset=fashion_scenes; None elsewhere): [fewest, most]
    # items drawn per scene and [smallest, largest] item side in pixels.
    items: list[int] | None = None
    item_size: list[int] | None = None


@dataclass
class OptimConfig:
    base_lr: float = 0.1  # lr at the reference total batch (the paper: 0.1 per 256 images)
    reference_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    norm_weight_decay: float | None = (
        None  # None: same as weight_decay (the paper decays gamma/beta)
    )
    schedule: str = "step"
    # Decays at these fractions of the epochs: 6 and 10 of 15 (the paper's 30, 60, 90 of 100
    # are 0.3, 0.6, 0.9).
    milestones: list[float] = field(default_factory=lambda: [0.4, 0.667])
    decay: float = 0.1
    warmup_epochs: float = 0.0
    # The lr factor warmup starts from, rising linearly to 1 (Detectron's detection recipe:
    # 1/3); 0: one step's worth, 1/warmup steps (the classification recipes').
    warmup_start: float = 0.0
    label_smoothing: float = 0.0


@dataclass
class DiagnosticsConfig:
    """BN diagnostics after training (normbench.train.diagnostics): the final network's val
    error under every way of normalizing at test time, for cells with per-GPU batch statistics.
    Extra measurements only: the cell's headline numbers do not depend on them."""

    enabled: bool = True
    # Training images (whole steps of the total batch, at most one epoch) whose population
    # statistics PreciseBN recomputes; Wu & Johnson 2021 find about 10^4 enough on ImageNet.
    precise_images: int = 4096


@dataclass
class LoggerConfig:
    kind: str = MISSING
    # W&B's settings (logger=wandb). Offline by default: runs land in each cell's wandb/ folder
    # and `wandb sync` uploads them later; mode=auto goes online when an API key is configured.
    project: str = "normbench"
    entity: str | None = None
    mode: str = "offline"


@dataclass
class Config:
    """The whole config of one cell.

    The defaults are the CPU mini reproduction of the paper's protocol: `normbench sweep
    norm=bn,gn batch=32,16,8,4,2` runs its Table 2 on real images (with the groups config.yaml
    selects: Fashion-MNIST at its native 28 px, ResNet-8). From the paper (the experiments
    paper-* change the scale: ImageNet, ResNet-50, 100 epochs): 8 GPUs (emulated), BN statistics
    per GPU and GPU 0's moving averages for evaluation, lr 0.1 x total/256 with no warmup, the
    same epochs for every batch size with step decays (x0.1), weight decay on gamma/beta,
    zero-init of each block's last gamma, the median val error of the last 5 epochs. Chosen for
    compute only (2 CPU cores; measured in results/tuning.md): 15 epochs with the decays at
    epochs 6 and 10, so the median's 5 epochs are the final plateau at lr/100, and (in the mini
    datasets' files) 2560 training images: 10 full batches of 8 x 32, so every batch size trains
    on the same images each epoch.
    A name without a default (MISSING) is set by the chosen option of its config group.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    norm: NormConfig = field(default_factory=NormConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    # The experiment: run directories go to <out_dir>/<name>/<cell>.
    name: str = "${dataset.name}-${model.name}"
    batch: int = 32  # images per GPU, the paper's "batch size"
    gpus: int = 8  # GPUs of the experiment (8 in the paper), real or emulated
    devices: int | None = None  # processes on this machine; None: every GPU, or 1 on CPU
    accelerator: str = "auto"
    backend: str = "auto"
    seed: int = 0
    epochs: int = 15
    # Validation runs every eval_every-th epoch and at each of the last 5 (all the headline's
    # median needs); 1, every epoch, draws the whole curve. Other epochs' val columns are empty.
    eval_every: int = 1
    # Images per validation batch per process; None: the training batch per process. Evaluation
    # uses the moving averages, so this changes no prediction, only speed and memory.
    val_batch: int | None = None
    amp: str = "none"
    channels_last: bool = False
    deterministic: bool = False
    # torch intra-op threads per CPU process. One is the fastest for the small models of CPU
    # runs and immune to oversubscription (measured on 2 cores: 2 threads ran 10-30x slower as
    # soon as another process took a core); parallel cells use the other cores instead.
    cpu_threads: int = 1
    checkpoint_every_steps: int = 0  # 0: only at the end of each epoch
    log_every_steps: int = 50
    out_dir: str = "runs"
    # What the report's tables show, one of normbench.metrics' val errors (also what a report
    # shows when its cells name none): the median of the last 5 epochs, the paper's authors'
    # choice. A run of 5 epochs or fewer should say val_error_final: its "last 5" would be all
    # its epochs.
    metric: str = "val_error_median5"
    # Whether a sweep ends with its report. false for a protocol's tuning runs, where nothing
    # may compare cells (BN with GN) before the protocol is chosen; `normbench report` builds
    # it afterwards from the same records.
    report: bool = True
    rerun: bool = False
    progress: bool = True


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
    if not OmegaConf.has_resolver("pretraining_norm"):
        OmegaConf.register_new_resolver("pretraining_norm", pretraining_norm)


# The norm of the classification run a detector's backbone starts from, as in the paper:
# BN-pretrained for BN* (frozen), BN and SyncBN; every other norm its own (GN: GN-pretrained).
PRETRAINING_NORMS = {"frozen_bn": "bn", "syncbn": "bn"}


def pretraining_norm(norm: str) -> str:
    """The norm whose classification run pretrains a detector with norm ``norm``
    (the ``${pretraining_norm:...}`` resolver of the detection experiments)."""
    return PRETRAINING_NORMS.get(norm, norm)


def as_config(cfg: DictConfig | Config) -> Config:
    """A typed Config object from a (possibly Hydra-composed) DictConfig."""
    if isinstance(cfg, Config):
        return cfg
    cfg = OmegaConf.merge(OmegaConf.structured(Config), _without_hydra(cfg))
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def _without_hydra(cfg: DictConfig) -> DictConfig:
    """The config without Hydra's own node (whose interpolations need a running Hydra app)."""
    keep = [key for key in cfg if key not in ("hydra", "experiment", "launcher")]
    return OmegaConf.create(
        {
            key: OmegaConf.to_container(cfg[key], resolve=True)
            if OmegaConf.is_config(cfg[key])
            else cfg[key]
            for key in keep
        }
    )


# ---- derived quantities: one definition each --------------------------------------------------


def total_batch(cfg: Config) -> int:
    return cfg.gpus * cfg.batch


def learning_rate(cfg: Config) -> float:
    """Linear scaling rule of the paper: lr = base_lr x total_batch / 256."""
    return cfg.optim.base_lr * total_batch(cfg) / cfg.optim.reference_batch


def norm_label(cfg: Config) -> str:
    """The norm as tables and W&B name it: weight standardization is part of it ("gn+ws")."""
    return cfg.norm.name + ("+ws" if cfg.model.ws else "")


def resolve_accelerator(cfg: Config) -> str:
    if cfg.accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.accelerator


def parallel_cells() -> int:
    """Cells a sweep runs at once: one per CPU core on a CPU-only machine (each cell is one
    single-threaded process), one at a time when GPUs exist (each cell takes them all)."""
    if torch.cuda.is_available():
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def resolve_devices(cfg: Config) -> int:
    """Processes to start: every visible GPU (at most `gpus`) or one CPU process by default."""
    if cfg.devices is not None:
        return cfg.devices
    if resolve_accelerator(cfg) == "cuda":
        available = torch.cuda.device_count()
        return max(d for d in range(1, min(available, cfg.gpus) + 1) if cfg.gpus % d == 0)
    return 1


def gpus_per_device(cfg: Config) -> int:
    """How many of the experiment's GPUs each process emulates (chunks of `batch` samples)."""
    return cfg.gpus // resolve_devices(cfg)


# ---- the machine ---------------------------------------------------------------------------


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask: what a container or taskset gives)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
