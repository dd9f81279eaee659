"""Norm layers: forward + backward time of every norm in the registry on ResNet-50 activations.

Every contender runs in training mode on the same input (N x C x H x W, with an input gradient)
and the same output gradient, alternated round by round: torch's BatchNorm2d and GroupNorm(32)
as references (and GroupNorm + ReLU, what FRN + TLU replaces), then normbench's bn, bn with
emulated GPUs (per-GPU batch 1 at N=2, 4 at N=32), syncbn without a process group, brn, gn, ln,
in, frn (+TLU and without), and weight standardization as WSConv2d against Conv2d: the 1x1
convolution (C/4 -> C) that produces this activation in a bottleneck block. Target: our own
layers (frn, brn, emulated bn, and the time WS adds to its convolution) within 1.5x of torch's
GroupNorm.

    .venv/bin/python scripts/bench_norms.py [--quick] [--repeats N] [--large-batch 32]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _timing import Report, Timings, bench_parser, interleave, markdown_table, paired_ratios, parse
from torch import nn

from normbench.norms import WSConv2d, build_norm, set_emulated_gpus

TARGET = 1.5
OWN = ("frn", "brn", "bn, emulated")  # layers normbench implements itself
SHAPES = [(256, 56), (1024, 14)]  # (channels, height = width) of ResNet-50 layer1 and layer3


def fwd_bwd(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    """One training forward and backward of ``layer`` (input and parameter gradients)."""
    layer.train()

    def run() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return run


def emulated_bn(channels: int, chunks: int) -> nn.Module:
    layer = build_norm("bn", channels)
    set_emulated_gpus(layer, chunks)
    return layer


def contenders(n: int, c: int, size: int) -> dict[str, Callable[[], None]]:
    """Every layer at input (n, c, size, size); the convolutions take (n, c/4, size, size)."""
    x = torch.randn(n, c, size, size, requires_grad=True)
    grad = torch.randn(n, c, size, size)
    conv_x = torch.randn(n, c // 4, size, size, requires_grad=True)
    chunks = n if n <= 2 else n // 4  # per-GPU batch 1 at n=2, 4 otherwise
    norms = {
        "torch BatchNorm2d": nn.BatchNorm2d(c),
        "torch GroupNorm": nn.GroupNorm(32, c),
        "torch GroupNorm + ReLU": nn.Sequential(nn.GroupNorm(32, c), nn.ReLU(inplace=True)),
        "bn": build_norm("bn", c),
        "bn, emulated": emulated_bn(c, chunks),
        "syncbn": build_norm("syncbn", c),
        "brn": build_norm("brn", c),
        "gn": build_norm("gn", c),
        "ln": build_norm("ln", c),
        "in": build_norm("in", c),
        "frn": build_norm("frn", c),
        "frn, no TLU": build_norm("frn", c, tlu=False),
    }
    runs = {name: fwd_bwd(layer, x, grad) for name, layer in norms.items()}
    convs = {
        "Conv2d 1x1": nn.Conv2d(c // 4, c, 1, bias=False),
        "WSConv2d 1x1": WSConv2d(c // 4, c, 1, bias=False),
    }
    runs.update({name: fwd_bwd(conv, conv_x, grad) for name, conv in convs.items()})
    return runs


def verdict(name: str, t: Timings) -> str:
    """Target check for our own layers: time (or WS's added time) / torch GroupNorm."""
    if name == "WSConv2d 1x1":
        added = [ws - conv for ws, conv in zip(t.cpu[name], t.cpu["Conv2d 1x1"], strict=True)]
        ratio = sorted(a / g for a, g in zip(added, t.cpu["torch GroupNorm"], strict=True))
        value = ratio[len(ratio) // 2]
        return f"added {value:.2f}x GN: " + ("met" if value <= TARGET else "MISSED")
    if name == "frn":  # FRN + TLU replaces a norm *and* its activation
        value = paired_ratios(t.cpu, name, "torch GroupNorm + ReLU").median
        return f"{value:.2f}x GN+ReLU: " + ("met" if value <= TARGET else "MISSED")
    if name in OWN:
        value = paired_ratios(t.cpu, name, "torch GroupNorm").median
        return "met" if value <= TARGET else "MISSED"
    return ""


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], repeats=7)
    parser.add_argument(
        "--large-batch", type=int, default=32, help="the large N (default 32; lower it if "
        "memory or time forces it)"
    )  # fmt: skip
    args = parse(parser)
    batches = [2] if args.quick else [2, args.large_batch]
    report = Report("norms", "Norm layers: forward + backward on ResNet-50 activation shapes")
    report.add(
        f"Training mode, {args.repeats} rounds, every contender once per round in turn. "
        "'x GN' = time / torch GroupNorm(32) time in the same round (median, CPU time); "
        "'x BN' likewise against torch BatchNorm2d. Convolutions: 1x1, C/4 -> C, no bias; "
        "for WSConv2d the target compares the time WS adds to the convolution with GN's time. "
        f"Emulated bn: per-GPU batch 1 at N=2 (2 chunks), 4 at larger N (N/4 chunks). Target: "
        f"frn, brn, emulated bn and WS within {TARGET}x of torch GroupNorm; frn (with its TLU, "
        "which replaces the activation) against torch GroupNorm followed by an in-place ReLU."
    )
    for n in batches:
        for c, size in SHAPES:
            runs = contenders(n, c, size)
            t = interleave(runs, args.repeats)
            rows = [
                [
                    name, f"{t.median_ms('cpu', name):.2f}", f"{t.median_ms('wall', name):.2f}",
                    paired_ratios(t.cpu, name, "torch GroupNorm").ratio_text(),
                    f"{paired_ratios(t.cpu, name, 'torch BatchNorm2d').median:.2f}",
                    verdict(name, t),
                ]
                for name in runs
            ]  # fmt: skip
            ws = paired_ratios(t.cpu, "WSConv2d 1x1", "Conv2d 1x1").ratio_text()
            report.add(f"### N={n}, {c}x{size}x{size}\n\nWSConv2d / Conv2d: {ws}")
            report.add(markdown_table(
                ["layer", "cpu ms", "wall ms", "x GN (cpu)", "x BN (cpu)", "target"], rows
            ))  # fmt: skip
            del runs, t  # free the large inputs before the next shape
    report.write(args.out)


if __name__ == "__main__":
    main()
