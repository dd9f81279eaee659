"""Emulated GPUs: a step with 8 emulated GPUs (per-chunk BN statistics) against plain BN.

The same model runs both ways on the same batch of ``8 x b`` images, switched between rounds
with ``set_emulated_gpus(model, 8)`` and ``set_emulated_gpus(model, 1)``, so the only
difference is how BN computes its statistics. Two workloads:

* resnet20 (32x32 images): a whole training step (forward, cross-entropy, backward, SGD);
* ResNet-50 bottleneck blocks at their ImageNet shapes (layer1: 256x56x56, layer3: 1024x14x14):
  forward + backward of one block.

Target: emulated / plain <= 1.10.

    .venv/bin/python scripts/bench_emulated.py [--quick] [--repeats N]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from _timing import Report, bench_parser, interleave, markdown_table, paired_ratios, parse
from torch import nn

from normbench.models import build_model
from normbench.models.resnet import Bottleneck, NormFactory
from normbench.norms import set_emulated_gpus

TARGET = 1.10
GPUS = 8


@dataclass(frozen=True)
class Workload:
    label: str
    build: Callable[[int], tuple[nn.Module, Callable[[], None]]]  # total batch -> model, step


def resnet20_step(total: int) -> tuple[nn.Module, Callable[[], None]]:
    """A whole training step of resnet20 + BN on ``total`` 32x32 images."""
    model = build_model("resnet20", norm="bn", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(total, 3, 32, 32), torch.randint(0, 10, (total,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model.train(), step


def bottleneck_step(inplanes: int, size: int) -> Callable[[int], tuple[nn.Module, Callable]]:
    """Forward + backward of a ResNet-50 bottleneck block (identity shortcut) with BN."""

    def build(total: int) -> tuple[nn.Module, Callable[[], None]]:
        block = Bottleneck(inplanes, inplanes // 4, norm_layer=NormFactory("resnet50", "bn"))
        x = torch.randn(total, inplanes, size, size, requires_grad=True)
        grad = torch.randn(total, inplanes, size, size)

        def step() -> None:
            x.grad = None
            block.zero_grad(set_to_none=True)
            block(x).backward(grad)

        return block.train(), step

    return build


WORKLOADS = [
    Workload("resnet20 train step, 32x32", resnet20_step),
    Workload("ResNet-50 layer1 block, 256x56x56", bottleneck_step(256, 56)),
    Workload("ResNet-50 layer3 block, 1024x14x14", bottleneck_step(1024, 14)),
]


def switched(
    model: nn.Module, step: Callable[[], None], chunks: int, inplace_relu: bool = True
) -> Callable[[], None]:
    """``step`` run with BN statistics over ``chunks`` emulated GPUs.

    ``inplace_relu=False`` makes every ReLU out of place: the diagnostic contender showing what
    autograd's in-place-on-a-view path (ReLU after the unfolded BN output) costs.
    """
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]

    def run() -> None:
        set_emulated_gpus(model, chunks)
        for relu in relus:
            relu.inplace = inplace_relu
        step()

    return run


def per_gpu_batches(label: str, quick: bool) -> list[int]:
    """Per-GPU batches to time: the paper's smallest and a mid one (32 for the small model)."""
    if quick:
        return [2]
    return [2, 32] if label.startswith("resnet20") else [2, 4]


def main() -> None:
    args = parse(bench_parser(__doc__.splitlines()[0], repeats=10))
    report = Report("emulated", f"Emulated GPUs: {GPUS} emulated GPUs vs plain BN, same batch")
    report.add(
        f"Same model and batch of {GPUS} x b images, BN statistics per emulated GPU (chunks="
        f"{GPUS}) or over the whole batch (chunks=1), alternated for {args.repeats} rounds. "
        "Ratio = emulated / plain within each round (CPU time). The last column is a "
        "diagnostic: the emulated step with every ReLU out of place (see the notes)."
    )
    rows = []
    for workload in WORKLOADS:
        for b in per_gpu_batches(workload.label, args.quick):
            total = GPUS * b
            model, step = workload.build(total)
            contenders = {
                "plain": switched(model, step, 1),
                "emulated": switched(model, step, GPUS),
                "emulated, ReLU out of place": switched(model, step, GPUS, inplace_relu=False),
            }
            t = interleave(contenders, args.repeats)
            ratio = paired_ratios(t.cpu, "emulated", "plain")
            verdict = "met" if ratio.median <= TARGET else "MISSED"
            rows.append([
                workload.label, b, total, f"{t.median_ms('cpu', 'plain'):.1f}",
                f"{t.median_ms('cpu', 'emulated'):.1f}", ratio.ratio_text(),
                paired_ratios(t.wall, "emulated", "plain").ratio_text(),
                f"{verdict} (<= {TARGET})",
                paired_ratios(t.cpu, "emulated, ReLU out of place", "plain").ratio_text(),
            ])  # fmt: skip
    report.add(markdown_table(
        ["workload", "b per GPU", "total batch", "plain cpu ms", "emulated cpu ms",
         "emulated/plain (cpu)", "emulated/plain (wall)", "target",
         "emulated, ReLU out of place / plain (cpu)"], rows,
    ))  # fmt: skip
    report.write(args.out)


if __name__ == "__main__":
    main()
