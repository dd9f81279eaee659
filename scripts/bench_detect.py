"""Detection training step: normbench's Mask R-CNN step against torchvision's own model and loop.

normbench: the detector a detection cell builds (``build_cell_detector`` from the config the CLI
composes for ``experiment=mini-detect``: maskrcnn_mini, ResNet-8 body, 64-px scenes), told its
emulated GPUs (``set_emulated_gpus``), and per step ``emulated_forward`` -> sum of the losses ->
backward -> SGD (``build_optimizer``), what ``DetectTrainer`` does per step.

torchvision: the same architecture built from torchvision's parts alone (``MaskRCNN``,
``BackboneWithFPN``, ``FastRCNNConvFCHead``, ``MaskRCNNHeads``, ResNet ``BasicBlock``) with
torchvision's own norm layers (``nn.BatchNorm2d``, ``nn.GroupNorm``, ``FrozenBatchNorm2d``),
normbench's weights loaded into it, and the step of torchvision's reference loop
(references/detection/engine.py ``train_one_epoch`` without AMP and logging): ``loss_dict =
model(images, targets)``, the sum, ``zero_grad``, ``backward``, ``step``.

Both see the same fixed list of scenes (``write_scenes`` read back through the COCO dataset) and
the same random draws of the RPN and RoI samplers (the global generator is reseeded before each
step); before timing, both models' losses on the same batch are checked to agree.

Cases, each a ratio normbench / torchvision of CPU time within rounds (target <= 1.05):
* one GPU, 2 images per step: gn, bn, frozen_bn;
* 8 emulated GPUs, 16 images per step (bn, gn): torchvision doing the same work, 8 forwards of
  2 images with gradient accumulation, and (for information) torchvision's one forward over the
  16 images, which is another computation (one GPU holding 16 images).

    .venv/bin/python scripts/bench_detect.py [--quick] [--repeats N] [--steps S]
"""

from __future__ import annotations

import copy
import functools
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from _timing import Report, Timings, bench_parser, interleave, markdown_table, paired_ratios, parse
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock
from torchvision.ops import Conv2dNormActivation, FrozenBatchNorm2d

from normbench.config import Config, as_config, learning_rate
from normbench.data import coco
from normbench.data.scenes import CHANNELS, NUM_CLASSES, write_scenes
from normbench.hydra_app import compose
from normbench.models.detection import MINI_CHANNELS, MINI_MASK_POOL, MINI_OPTIONS
from normbench.norms import set_emulated_gpus
from normbench.train.detect import build_cell_detector
from normbench.train.emulate import emulated_forward
from normbench.train.loop import build_optimizer

TARGET = 1.05
GPUS = 8
PER_GPU = 2  # images per GPU: the paper's detection batch
ONE_GPU_NORMS = ("gn", "bn", "frozen_bn")
EMULATED_NORMS = ("bn", "gn")

Images = list[torch.Tensor]
Targets = list[dict[str, Any]]
Batch = tuple[Images, Targets]
Step = Callable[[Images, Targets], torch.Tensor]  # one training step; returns its loss


def cell_config(norm: str, gpus: int) -> Config:
    """The config of a mini detection cell with ``norm`` on ``gpus`` GPUs (from scratch)."""
    overrides = ["experiment=mini-detect", f"norm={norm}", f"gpus={gpus}", "model.pretrained=null"]
    return as_config(compose(overrides))


def load_scenes(count: int, folder: Path) -> tuple[Images, Targets]:
    """The first ``count`` training scenes of a fresh scenes folder, as the cells read them."""
    root = write_scenes(folder / "scenes", seed=0, train_images=count + 8, val_images=1)
    train, _ = coco.build(root, seed=0, augment=False, bad_images="fail", channels=CHANNELS)
    samples = [train[i] for i in range(count)]
    return [image for image, _ in samples], [target for _, target in samples]


# --- torchvision's side -------------------------------------------------------------------------


def torchvision_norms(norm: str, options: dict[str, Any]) -> tuple[Callable, Callable | None]:
    """torchvision's own layers for (the body, the FPN and heads): BN* freezes the body's BN
    and leaves the FPN and heads without a norm, as normbench's detector does."""
    if norm == "bn":
        return nn.BatchNorm2d, nn.BatchNorm2d
    if norm == "gn":
        group_norm = functools.partial(nn.GroupNorm, options["groups"])
        return group_norm, group_norm
    if norm == "frozen_bn":
        return FrozenBatchNorm2d, None
    raise ValueError(f"no torchvision counterpart for norm {norm!r}")


def cifar_body(like: nn.Module, norm_layer: Callable) -> nn.Sequential:
    """A CIFAR-style ResNet body (3x3 stem, three stages of torchvision's ``BasicBlock``) shaped
    like normbench's ``like``, with its children named as in normbench's so weights load."""
    stem = like.conv1
    width, blocks = stem.out_channels, len(like.layer1)
    children: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(stem.in_channels, width, 3, padding=1, bias=False),
        bn1=norm_layer(width),
        relu=nn.ReLU(inplace=True),
    )
    inplanes = width
    for i, (planes, stride) in enumerate(((width, 1), (2 * width, 2), (4 * width, 2)), start=1):
        stage = []
        for b in range(blocks):
            s = stride if b == 0 else 1
            down = None
            if s != 1 or inplanes != planes:
                down = nn.Sequential(
                    nn.Conv2d(inplanes, planes, 1, stride=s, bias=False), norm_layer(planes)
                )
            stage.append(BasicBlock(inplanes, planes, s, down, norm_layer=norm_layer))
            inplanes = planes
        children[f"layer{i}"] = nn.Sequential(*stage)
    return nn.Sequential(children)


def torchvision_detector(like: MaskRCNN, norm: str, options: dict[str, Any]) -> MaskRCNN:
    """normbench's detector ``like`` rebuilt from torchvision's parts and norm layers, with
    ``like``'s weights and buffers (a strict load: every tensor has its counterpart)."""
    body_norm, head_norm = torchvision_norms(norm, options)
    fpn = like.backbone.fpn
    channels = like.backbone.out_channels
    backbone = BackboneWithFPN(
        cifar_body(like.backbone.body, body_norm),
        return_layers={"layer2": "0", "layer3": "1"},
        in_channels_list=[block[0].in_channels for block in fpn.inner_blocks],
        out_channels=channels,
        norm_layer=head_norm,
    )
    heads = like.roi_heads
    box_convs = sum(isinstance(m, Conv2dNormActivation) for m in heads.box_head)
    mask_convs = sum(isinstance(m, Conv2dNormActivation) for m in heads.mask_head)
    fc = heads.box_predictor.cls_score.in_features
    pool = heads.box_roi_pool.output_size[0]
    num_classes = heads.box_predictor.cls_score.out_features
    transform = like.transform
    model = MaskRCNN(
        backbone,
        min_size=transform.min_size[0],
        max_size=transform.max_size,
        image_mean=transform.image_mean,
        image_std=transform.image_std,
        rpn_anchor_generator=copy.deepcopy(like.rpn.anchor_generator),
        box_roi_pool=copy.deepcopy(heads.box_roi_pool),
        box_head=FastRCNNConvFCHead(
            (channels, pool, pool), [channels] * box_convs, [fc], norm_layer=head_norm
        ),
        box_predictor=FastRCNNPredictor(fc, num_classes),
        mask_roi_pool=copy.deepcopy(heads.mask_roi_pool),
        mask_head=MaskRCNNHeads(channels, [channels] * mask_convs, 1, norm_layer=head_norm),
        mask_predictor=MaskRCNNPredictor(channels, channels, num_classes),
        **MINI_OPTIONS,
    )
    model.load_state_dict(like.state_dict())
    return model.train()


def torchvision_sgd(model: nn.Module, cfg: Config, lr: float) -> torch.optim.SGD:
    """The reference's SGD (one group, weight decay on all). foreach=True: torch's default on
    CUDA, where the reference runs; CPU's per-tensor default would handicap torchvision here."""
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay, foreach=True,
    )  # fmt: skip


def torchvision_losses(
    model: MaskRCNN, images: Images, targets: Targets, forwards: int
) -> list[dict[str, torch.Tensor]]:
    """The loss dicts of ``forwards`` forwards, forward j on images j, j + forwards, ..."""
    return [model(images[j::forwards], targets[j::forwards]) for j in range(forwards)]


def torchvision_step(model: MaskRCNN, opt: torch.optim.SGD, forwards: int) -> Step:
    """The reference loop's step; with ``forwards`` > 1, that many forwards of equal shares of
    the images, each loss divided by ``forwards`` and backpropagated (gradient accumulation)."""

    def step(images: Images, targets: Targets) -> torch.Tensor:
        opt.zero_grad()
        total = 0.0
        for j in range(forwards):
            loss_dict = model(images[j::forwards], targets[j::forwards])
            losses = sum(loss_dict.values()) / forwards
            losses.backward()
            total += losses.detach()
        opt.step()
        return total

    return step


# --- normbench's side ---------------------------------------------------------------------------


def normbench_detector(cfg: Config, chunks: int) -> nn.Module:
    """The cell's detector (random weights), told its emulated GPUs, in training mode."""
    model = build_cell_detector(cfg, NUM_CLASSES, CHANNELS)
    set_emulated_gpus(model, chunks)
    return model.train()


def normbench_step(model: nn.Module, opt: torch.optim.SGD, chunks: int) -> Step:
    """DetectTrainer's step: emulated_forward, the sum of the losses, backward, SGD."""

    def step(images: Images, targets: Targets) -> torch.Tensor:
        loss = sum(emulated_forward(model, images, targets, chunks).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


# --- the comparison -----------------------------------------------------------------------------


def batches(images: Images, targets: Targets, size: int, steps: int) -> list[Batch]:
    """``steps`` consecutive batches of ``size`` scenes (wrapping around the list)."""
    n = len(images)
    picks = [[(s * size + i) % n for i in range(size)] for s in range(steps)]
    return [([images[i] for i in p], [targets[i] for i in p]) for p in picks]


def replay(step: Step, work: list[Batch], losses: list[float]) -> Callable:
    """One timed call: ``step`` over every batch of ``work``, the global generator reseeded per
    step so that every contender's samplers draw the same anchors and RoIs; the last loss is
    kept in ``losses`` (a diverged run would time other work)."""

    def run() -> None:
        for seed, (images, targets) in enumerate(work):
            torch.manual_seed(seed)
            loss = step(images, targets)
        losses.append(float(loss))

    return run


def check_same_losses(
    ours: nn.Module, theirs: MaskRCNN, images: Images, targets: Targets, chunks: int
) -> float:
    """The largest relative difference between both models' losses on one batch (the mean of
    torchvision's ``chunks`` forwards); an error above 1e-4: the models are not the same."""
    with torch.no_grad():
        torch.manual_seed(0)
        mine = emulated_forward(ours, images, targets, chunks)
        torch.manual_seed(0)
        per_forward = torchvision_losses(theirs, images, targets, chunks)
    worst = 0.0
    for key, value in mine.items():
        other = torch.stack([d[key] for d in per_forward]).mean()
        worst = max(worst, float((value - other).abs() / other.abs().clamp_min(1e-8)))
    if worst > 1e-4:
        raise RuntimeError(f"normbench's and torchvision's losses differ by {worst:.2e}")
    return worst


def max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between the two models' parameters (same names)."""
    theirs = dict(b.named_parameters())
    with torch.no_grad():
        return max(float((p - theirs[n]).abs().max()) for n, p in a.named_parameters())


def one_gpu_case(
    norm: str, images: Images, targets: Targets, steps: int, repeats: int
) -> tuple[Timings, dict[str, float], dict[str, list[float]]]:
    """normbench vs torchvision, 2 images per step, ``steps`` steps per timed call."""
    cfg = cell_config(norm, gpus=1)
    lr = learning_rate(cfg)
    ours = normbench_detector(cfg, 1)
    theirs = torchvision_detector(ours, norm, cfg.norm.options())
    work = batches(images, targets, PER_GPU, steps)
    checks = {"loss rel. diff": check_same_losses(ours, theirs, *work[0], 1)}
    losses: dict[str, list[float]] = {"normbench": [], "torchvision": []}
    contenders = {
        "normbench": replay(normbench_step(ours, build_optimizer(ours, cfg, lr), 1), work,
                            losses["normbench"]),
        "torchvision": replay(torchvision_step(theirs, torchvision_sgd(theirs, cfg, lr), 1), work,
                              losses["torchvision"]),
    }  # fmt: skip
    timings = interleave(contenders, repeats)
    checks["weight diff after"] = max_weight_difference(ours, theirs)
    return timings, checks, losses


def emulated_case(
    norm: str, images: Images, targets: Targets, repeats: int
) -> tuple[Timings, dict[str, float], dict[str, list[float]]]:
    """8 emulated GPUs x 2 images: normbench vs torchvision's 8 accumulated forwards and (for
    information) its single forward over the 16 images; one step per timed call."""
    cfg = cell_config(norm, gpus=GPUS)
    lr = learning_rate(cfg)
    ours = normbench_detector(cfg, GPUS)
    accumulated = torchvision_detector(ours, norm, cfg.norm.options())
    single = torchvision_detector(ours, norm, cfg.norm.options())
    work = batches(images, targets, GPUS * PER_GPU, 1)
    checks = {"loss rel. diff": check_same_losses(ours, accumulated, *work[0], GPUS)}
    losses: dict[str, list[float]] = {"normbench": [], "torchvision x8": [], "torchvision 1x16": []}
    contenders = {
        "normbench": replay(normbench_step(ours, build_optimizer(ours, cfg, lr), GPUS), work,
                            losses["normbench"]),
        "torchvision x8": replay(
            torchvision_step(accumulated, torchvision_sgd(accumulated, cfg, lr), GPUS), work,
            losses["torchvision x8"]),
        "torchvision 1x16": replay(
            torchvision_step(single, torchvision_sgd(single, cfg, lr), 1), work,
            losses["torchvision 1x16"]),
    }  # fmt: skip
    timings = interleave(contenders, repeats)
    checks["weight diff after"] = max_weight_difference(ours, accumulated)
    return timings, checks, losses


def verdict(ratio: float) -> str:
    return f"{'met' if ratio <= TARGET else 'MISSED'} (<= {TARGET})"


def last_losses(losses: dict[str, list[float]]) -> str:
    return ", ".join(f"{name} {values[-1]:.3f}" for name, values in losses.items())


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__.splitlines()[0], repeats=15)
    parser.add_argument(
        "--steps", type=int, default=2, help="one-GPU steps per timed call (default 2)"
    )
    args = parse(parser, argv)
    # An emulated step is 8 one-GPU steps and has three contenders: fewer rounds keep the
    # whole run near 5 minutes of wall time on a busy 2-core machine.
    emulated_repeats = max(3, args.repeats // 2)
    report = Report("detect", "Detection step: normbench vs torchvision's Mask R-CNN and loop")
    report.add(
        f"maskrcnn_mini as `experiment=mini-detect` builds it (ResNet-8 body, FPN and heads of "
        f"{MINI_CHANNELS} channels, {MINI_OPTIONS['box_batch_size_per_image']} RoIs per image, "
        f"mask RoIs of {MINI_MASK_POOL} px, 64-px scenes from `write_scenes`, from scratch), "
        f"{PER_GPU} images per GPU. "
        "torchvision: the same architecture from torchvision's parts and norm layers with "
        "normbench's weights, and its reference loop's step. Before timing, both models' losses "
        "on the same batch are checked to agree (relative difference below 1e-4); every step "
        "reseeds the global generator so both samplers draw the same RoIs. Ratios: normbench / "
        "torchvision within each round, CPU time (wall beside). Process niceness "
        f"{os.nice(0)}: run beside another job that keeps both cores busy, see the load average."
    )
    with tempfile.TemporaryDirectory(prefix="bench-detect-") as tmp:
        images, targets = load_scenes(GPUS * PER_GPU, Path(tmp))
    items = sum(len(t["labels"]) for t in targets)
    report.add(f"Inputs: {len(images)} scenes of 64 px holding {items} items in all.")

    rows, notes = [], []
    for norm in ONE_GPU_NORMS:
        t, checks, losses = one_gpu_case(norm, images, targets, args.steps, args.repeats)
        ratio = paired_ratios(t.cpu, "normbench", "torchvision")
        rows.append([
            norm, f"{t.median_ms('cpu', 'torchvision', args.steps):.1f}",
            f"{t.median_ms('cpu', 'normbench', args.steps):.1f}", ratio.ratio_text(),
            paired_ratios(t.wall, "normbench", "torchvision").ratio_text(), verdict(ratio.median),
        ])  # fmt: skip
        notes.append(
            f"- one GPU, {norm}: losses agree to {checks['loss rel. diff']:.1e} (relative); "
            f"weights after every timed step differ by {checks['weight diff after']:.1e} at "
            f"most; last losses: {last_losses(losses)}"
        )
    report.add(
        f"## One GPU: {PER_GPU} images per step, {args.steps} steps per timed call, "
        f"{args.repeats} rounds\n\n"
        + markdown_table(
            [
                "norm",
                "torchvision cpu ms/step",
                "normbench cpu ms/step",
                "normbench/torchvision (cpu)",
                "normbench/torchvision (wall)",
                "target (cpu)",
            ],
            rows,
        )  # fmt: skip
    )

    rows = []
    for norm in EMULATED_NORMS:
        t, checks, losses = emulated_case(norm, images, targets, emulated_repeats)
        ratio = paired_ratios(t.cpu, "normbench", "torchvision x8")
        rows.append([
            norm, f"{t.median_ms('cpu', 'torchvision x8'):.0f}",
            f"{t.median_ms('cpu', 'normbench'):.0f}", ratio.ratio_text(),
            paired_ratios(t.wall, "normbench", "torchvision x8").ratio_text(),
            verdict(ratio.median), f"{t.median_ms('cpu', 'torchvision 1x16'):.0f}",
            paired_ratios(t.cpu, "normbench", "torchvision 1x16").ratio_text(),
        ])  # fmt: skip
        notes.append(
            f"- {GPUS} emulated GPUs, {norm}: losses agree to {checks['loss rel. diff']:.1e} "
            f"(relative, against the mean of torchvision's {GPUS} forwards); weights after "
            f"every timed step differ by {checks['weight diff after']:.1e} at most; last "
            f"losses: {last_losses(losses)}"
        )
    report.add(
        f"## {GPUS} emulated GPUs: {GPUS * PER_GPU} images per step, one step per timed call, "
        f"{emulated_repeats} rounds\n\n"
        f"'torchvision x{GPUS}': {GPUS} forwards of {PER_GPU} images, each loss / {GPUS} "
        f"backpropagated, one SGD step (the work of per-GPU statistics). 'torchvision 1x16': "
        f"one forward over all {GPUS * PER_GPU} images, for information only: one GPU holding "
        "16 images (BN statistics over 16, losses normalized over the whole batch).\n\n"
        + markdown_table(
            [
                "norm",
                f"torchvision x{GPUS} cpu ms/step",
                "normbench cpu ms/step",
                f"normbench/torchvision x{GPUS} (cpu)",
                f"normbench/torchvision x{GPUS} (wall)",
                "target (cpu)",
                "torchvision 1x16 cpu ms/step",
                "normbench/torchvision 1x16 (cpu)",
            ],
            rows,
        )  # fmt: skip
    )
    report.add("## Checks\n\n" + "\n".join(notes))
    report.write(args.out)


if __name__ == "__main__":
    main()
