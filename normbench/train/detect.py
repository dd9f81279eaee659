"""Detection cells (Mask R-CNN on COCO-format data): the classification :class:`Trainer` with
detection's data, model, training step, evaluation and results.

Everything else is the classification loop's: the run directory, checkpoints and exact resume,
preemption, divergence checks, logging, emulated GPUs, DDP. What differs, read top to bottom:

- data: COCO-format train/val splits (:func:`normbench.data.build_detection_datasets`) through
  the same loaders (each rank's batch holds ``batch`` images per emulated GPU; the val sampler
  gives each image to one rank, without padding, as COCOeval needs);
- model: :func:`normbench.models.detection.build_detector` with the cell's norm, its backbone
  loaded from ``model.pretrained`` (a classification run of the matching norm) or trained from
  scratch (null);
- step: :func:`normbench.train.emulate.emulated_forward`, one forward per emulated GPU where
  the norm has per-GPU batch statistics (BN's statistics are each GPU's ``batch`` images, as on
  real GPUs), one forward otherwise; the loss is the sum of Mask R-CNN's losses;
- evaluation: COCO box and mask AP, AP50, AP75 by pycocotools (:mod:`normbench.train.coco_eval`)
  after each validated epoch (``eval_every`` and the last 5, as in classification), BN's
  running statistics combined first;
- results: the final model's six APs (the paper's headline), in metrics.json and W&B.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from normbench.config import Config
from normbench.data.detection import DetectionBundle, build_detection_datasets
from normbench.metrics import DETECTION_NAMES, detection_metrics
from normbench.models import pretrained_checkpoint
from normbench.norms import set_emulated_gpus
from normbench.track.rundir import RunDir
from normbench.train.coco_eval import CocoEvaluator
from normbench.train.distributed import DistEnv
from normbench.train.loop import Trainer, _autocast, shown

log = logging.getLogger("normbench")

# history.csv of a detection cell: the APs take the val error's place.
HISTORY_COLUMNS = (
    "epoch", "step", "train_loss", *DETECTION_NAMES, "lr", "images_per_s", "peak_mem_mb",
    "time_s",
)  # fmt: skip

Targets = list[dict[str, Any]]


def to_device(
    batch: tuple[list[torch.Tensor], Targets], device: torch.device
) -> tuple[list[torch.Tensor], Targets]:
    """A collated detection batch (lists of images and targets) on ``device``."""
    images, targets = batch
    moved = [
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]
    return [image.to(device, non_blocking=True) for image in images], moved


def build_cell_detector(cfg: Config, num_classes: int, in_channels: int) -> nn.Module:
    """The cell's detector, random weights: ``num_classes`` object categories (the background
    is added), the cell's norm and options, and where the config sets them (None: the
    detector's own) the body's width and the size images are resized to (dataset.image_size)."""
    from normbench.models.detection import build_detector

    sizes = {"width": cfg.model.width, "image_size": cfg.dataset.image_size}
    return build_detector(
        cfg.model.name, norm=cfg.norm.name, num_classes=num_classes + 1,
        in_channels=in_channels, norm_options=cfg.norm.options(),
        **{key: value for key, value in sizes.items() if value is not None},
    )  # fmt: skip


def load_pretrained(model: nn.Module, path: str) -> None:
    """Load the backbone of ``model`` from the classification checkpoint ``path`` names."""
    from normbench.models.detection import load_backbone

    state = torch.load(pretrained_checkpoint(path), map_location="cpu", weights_only=False)
    load_backbone(model, state.get("model", state) if isinstance(state, dict) else state)


class DetectTrainer(Trainer):
    """One detection cell; see the module docstring."""

    history_columns = HISTORY_COLUMNS
    val_columns = DETECTION_NAMES
    has_train_error = False
    data: DetectionBundle

    def __init__(self, run_dir: RunDir, cfg: Config, env: DistEnv) -> None:
        super().__init__(run_dir, cfg, env)
        # Each iterator over a loader draws a seed, by default from the global generator,
        # which torchvision's RPN and RoI samplers draw from too: a resumed epoch (one more
        # iterator) would then sample other anchors than the uninterrupted run. The loaders
        # get their own.
        for loader in (self.train_loader, self.val_loader):
            loader.generator = torch.Generator().manual_seed(cfg.seed)

    def build_data(self) -> DetectionBundle:
        return build_detection_datasets(
            self.cfg.dataset, seed=self.cfg.seed, skipped_file=self.run_dir.skipped
        )

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        model = build_cell_detector(cfg, self.data.num_classes, self.data.in_channels)
        if cfg.model.pretrained is not None:
            load_pretrained(model, cfg.model.pretrained)
        # emulated_forward runs one forward per emulated GPU; the norms combine the GPUs'
        # moving averages for evaluation as in classification.
        set_emulated_gpus(model, self.chunks)
        return model

    def train_loss(self, batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One step's forward: the sum of Mask R-CNN's losses (RPN objectness and box, RoI
        classification and box, mask), averaged over the emulated GPUs; no errors counted."""
        from normbench.train.emulate import emulated_forward

        images, targets = to_device(batch, self.env.device)
        with _autocast(self.cfg, self.env.device):
            losses = emulated_forward(self.net, images, targets, self.chunks)
            loss = sum(losses.values())
        return loss, torch.zeros((), device=self.env.device), len(images)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """COCO AP of this rank's val images, gathered over the ranks (a collective)."""
        model, ids = self.model, self.data.category_ids
        model.eval()
        evaluator = CocoEvaluator(self.data.coco_val)
        for batch in self.val_loader:
            images, targets = to_device(batch, self.env.device)
            with _autocast(self.cfg, self.env.device):
                outputs = model(images)
            for output in outputs:  # labels 1..K -> the categories' COCO ids
                output["labels"] = torch.tensor(
                    [ids[label - 1] for label in output["labels"].tolist()], dtype=torch.int64
                )
            evaluator.update([t["image_id"] for t in targets], outputs)
        return evaluator.result()

    def epoch_summary(self, row: dict[str, Any]) -> str:
        return (
            f"train loss {row['train_loss']:.4f}  box AP {shown(row['box_ap'])}  "
            f"mask AP {shown(row['mask_ap'])}"
        )

    def results(self) -> dict[str, Any]:
        """The final model's six APs and where its backbone started (BN diagnostics are the
        classification protocol's)."""
        return {**detection_metrics(self.progress.history), "pretrained": self.cfg.model.pretrained}
