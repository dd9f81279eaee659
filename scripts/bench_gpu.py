"""GPU throughput: ResNet-50 training images/s, normbench's model against torchvision's.

For BN and GN, fp32 and bf16 (autocast), channels_last off and on, and 32 and 2 images per GPU,
the same plain training loop (SGD momentum, cross-entropy, data already on the GPU) runs
normbench's ``build_model("resnet50", norm=...)`` and torchvision's ``resnet50`` with the
matching norm layer (``nn.BatchNorm2d`` or ``nn.GroupNorm(32, C)``), alternated round by round.
Ratio = normbench time / torchvision time in the same round. Loop overhead is measured on CPU by
bench_loop.py; this script compares the models on the accelerator.

Without a CUDA device it prints why, writes results/bench/gpu.md saying nothing was measured,
and exits 0. ``--device cpu`` runs every code path on CPU with tiny images (a smoke test; it
writes no report).

    .venv/bin/python scripts/bench_gpu.py [--quick] [--repeats N] [--steps S] [--device cpu]
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from _timing import Report, bench_parser, interleave, markdown_table, paired_ratios, parse
from torch import nn

from normbench.models import build_model

NUM_CLASSES = 1000


def torchvision_resnet50(norm: str) -> nn.Module:
    norm_layer = nn.BatchNorm2d if norm == "bn" else (lambda c: nn.GroupNorm(32, c))
    return torchvision.models.resnet50(weights=None, norm_layer=norm_layer)


def training_steps(
    model: nn.Module, device: torch.device, batch: int, image_size: int, bf16: bool,
    channels_last: bool, steps: int,
) -> Callable[[], None]:  # fmt: skip
    """One call = ``steps`` training steps of ``model`` on one fixed batch held on ``device``."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def autocast():
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def run() -> None:
        for _ in range(steps):
            with autocast():
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def write_not_measured(report: Report, out) -> None:
    report.add(
        "Not measured: no CUDA device was visible when this ran (the development machine is "
        "CPU-only). Run `.venv/bin/python scripts/bench_gpu.py` on a machine with a GPU to "
        "fill this file; `--device cpu --quick` smoke-tests the code paths without one."
    )
    report.write(out)


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed call (10)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke test)")
    args = parse(parser)
    report = Report("gpu", "GPU: ResNet-50 training images/s, normbench vs torchvision")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device visible; nothing measured (use --device cpu to "
              "smoke-test the code on CPU)")  # fmt: skip
        write_not_measured(report, args.out)
        return
    device = torch.device(args.device)
    smoke = device.type != "cuda"
    torch.backends.cudnn.benchmark = True
    image_size = 32 if smoke else 224
    steps = args.steps or (1 if smoke or args.quick else 10)
    batches = [2] if smoke or args.quick else [32, 2]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    rows = []
    for norm, bf16, channels_last, batch in itertools.product(
        ("bn", "gn"), (False, True), (False, True), batches
    ):
        setting = (device, batch, image_size, bf16, channels_last, steps)
        contenders = {
            "normbench": training_steps(build_model("resnet50", norm=norm), *setting),
            "torchvision": training_steps(torchvision_resnet50(norm), *setting),
        }
        t = interleave(contenders, args.repeats, sync=sync)
        ours, theirs = (batch * steps / (t.median_ms("wall", k) / 1e3) for k in contenders)
        rows.append([
            norm, "bf16" if bf16 else "fp32", "on" if channels_last else "off", batch,
            f"{ours:.1f}", f"{theirs:.1f}",
            paired_ratios(t.wall, "normbench", "torchvision").ratio_text(),
        ])  # fmt: skip
        del contenders
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = markdown_table(
        ["norm", "precision", "channels_last", "batch/GPU", "normbench img/s",
         "torchvision img/s", "time normbench/torchvision"], rows,
    )  # fmt: skip
    if smoke:
        print(f"smoke test on {device} ({image_size}x{image_size} images, {steps} step(s)); "
              f"no report written\n\n{table}")  # fmt: skip
        return
    report.add(
        f"{image_size}x{image_size} images already on the GPU, {steps} steps per call, "
        f"{args.repeats} rounds alternating normbench and torchvision; cudnn.benchmark on; "
        "bf16 = torch.autocast(bfloat16). Images/s from the median call (wall clock, "
        "synchronized)."
    )
    report.add(table)
    report.write(args.out)


if __name__ == "__main__":
    main()
