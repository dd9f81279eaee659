"""Norm layers: forward + backward time of every norm in the registry on ResNet activations.

Every contender runs in training mode on the same input (N x C x H x W, with an input gradient)
and the same output gradient, alternated round by round: torch's BatchNorm2d and GroupNorm as
references (and GroupNorm + ReLU, what FRN + TLU and EvoNorm replace), then normbench's bn, bn
with emulated GPUs (per-GPU batch 1 at N=2, 4 at N=32), syncbn without a process group, brn, gn,
ln, in, frn, evonorm_b0, evonorm_s0, iternorm, dbn, and weight standardization as WSConv2d
against Conv2d: the 1x1 convolution (C/4 -> C) that produces this activation in a bottleneck
block. The norms that replace the activation are timed as the models train them: the layer
``NormFactory.norm_act`` builds for a norm + ReLU position (FRN with its TLU fused, EvoNorm with
its nonlinearity); "frn, bare" is the FRN before a residual addition. Shapes: ResNet-50's layer1
and layer3 (GroupNorm with 32 groups) and the CIFAR ResNet-20's first and last stage (8 groups,
the mini setting). Targets: frn, brn, emulated bn and the time WS adds to its convolution within
1.5x of torch's GroupNorm (frn against GroupNorm + ReLU); evonorm_* within 2x of GroupNorm +
ReLU; iternorm and dbn within 4x of GroupNorm.

    .venv/bin/python scripts/bench_norms.py [--quick] [--repeats N] [--large-batch 32]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from _timing import Report, Timings, bench_parser, interleave, markdown_table, paired_ratios, parse
from torch import nn

from normbench.models.resnet import NormFactory
from normbench.norms import WSConv2d, build_norm, set_emulated_gpus

# layer -> (reference, target ratio) for the layers normbench implements itself
TARGETS = {
    "frn": ("torch GroupNorm + ReLU", 1.5),
    "brn": ("torch GroupNorm", 1.5),
    "bn, emulated": ("torch GroupNorm", 1.5),
    "evonorm_b0": ("torch GroupNorm + ReLU", 2.0),
    "evonorm_s0": ("torch GroupNorm + ReLU", 2.0),
    "iternorm": ("torch GroupNorm", 4.0),
    "dbn": ("torch GroupNorm", 4.0),
}
WS_TARGET = 1.5
# model -> (groups of GN and EvoNorm-S0, [(channels, height = width)]): ResNet-50's layer1 and
# layer3; ResNet-20's first and last stage at 32 px.
SHAPES = {"ResNet-50": (32, [(256, 56), (1024, 14)]), "ResNet-20": (8, [(16, 32), (64, 8)])}


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


# Why the new members miss their targets (what the tables show, and what would fix it).
MISSED_WHY = (
    "Why evonorm_b0, evonorm_s0, iternorm and dbn miss their targets. All four have "
    "hand-written backward passes (EvoNorm-B0 and -S0 whole, the whitening norms' centring and "
    "covariance), which took EvoNorm-B0 from 10-20x GroupNorm + ReLU to the figures here and "
    "EvoNorm-S0 from 5-9x; what is left is the count of separate torch ops. GroupNorm + ReLU "
    "is two fused C++ kernels and one elementwise op each way; EvoNorm-B0 in eager PyTorch is "
    "six elementwise passes and two reductions forward, nine passes and five reductions "
    "backward, and four fresh activation-sized tensors (on CPU a fresh tensor costs about as "
    "much as four passes over it: page faults). At ResNet-20 widths (a few thousand elements "
    "per sample) the ~25 op dispatches of either direction cost more than the arithmetic. "
    "IterNorm and DBN spend their time in batched matmuls over 16-channel slices (covariance, "
    "whitening, and three in backward), far below the CPU's matmul peak at that inner size, and "
    "at small shapes in the per-call cost of the 16 x 16 work (five Newton steps; a float64 "
    "eigendecomposition for DBN). DBN is kept: it is not unstable (its backward is the "
    "Daleckii-Krein form, finite for equal eigenvalues) and it is no slower than iternorm. "
    "Closing the rest needs fused kernels (C++ or a compiler), not more torch ops."
)


def trained(norm: str, channels: int, groups: int) -> nn.Module:
    """The norm (and activation) a model trains at a norm + ReLU position."""
    options = {"groups": groups} if norm == "evonorm_s0" else {}
    return nn.Sequential(*NormFactory("bench", norm, options).norm_act(channels))


def contenders(n: int, c: int, size: int, groups: int) -> dict[str, Callable[[], None]]:
    """Every layer at input (n, c, size, size); the convolutions take (n, c/4, size, size)."""
    x = torch.randn(n, c, size, size, requires_grad=True)
    grad = torch.randn(n, c, size, size)
    conv_x = torch.randn(n, c // 4, size, size, requires_grad=True)
    chunks = n if n <= 2 else n // 4  # per-GPU batch 1 at n=2, 4 otherwise
    norms = {
        "torch BatchNorm2d": nn.BatchNorm2d(c),
        "torch GroupNorm": nn.GroupNorm(groups, c),
        "torch GroupNorm + ReLU": nn.Sequential(nn.GroupNorm(groups, c), nn.ReLU(inplace=True)),
        "bn": build_norm("bn", c),
        "bn, emulated": emulated_bn(c, chunks),
        "syncbn": build_norm("syncbn", c),
        "brn": build_norm("brn", c),
        "gn": build_norm("gn", c, groups=groups),
        "ln": build_norm("ln", c),
        "in": build_norm("in", c),
        "frn": trained("frn", c, groups),
        "frn, bare": build_norm("frn", c, act=False),
        "evonorm_b0": trained("evonorm_b0", c, groups),
        "evonorm_s0": trained("evonorm_s0", c, groups),
        "iternorm": trained("iternorm", c, groups),
        "dbn": trained("dbn", c, groups),
    }
    runs = {name: fwd_bwd(layer, x, grad) for name, layer in norms.items()}
    convs = {
        "Conv2d 1x1": nn.Conv2d(c // 4, c, 1, bias=False),
        "WSConv2d 1x1": WSConv2d(c // 4, c, 1, bias=False),
    }
    runs.update({name: fwd_bwd(conv, conv_x, grad) for name, conv in convs.items()})
    return runs


def verdict(name: str, t: Timings) -> str:
    """Target check for our own layers: time (or WS's added time) / its reference's time."""
    if name == "WSConv2d 1x1":
        added = [ws - conv for ws, conv in zip(t.cpu[name], t.cpu["Conv2d 1x1"], strict=True)]
        ratio = sorted(a / g for a, g in zip(added, t.cpu["torch GroupNorm"], strict=True))
        value = ratio[len(ratio) // 2]
        return f"added {value:.2f}x GN: " + ("met" if value <= WS_TARGET else "MISSED")
    if name not in TARGETS:
        return ""
    reference, target = TARGETS[name]
    value = paired_ratios(t.cpu, name, reference).median
    short = "GN+ReLU" if reference.endswith("ReLU") else "GN"
    return f"{value:.2f}x {short} (<= {target}): " + ("met" if value <= target else "MISSED")


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], repeats=7)
    parser.add_argument(
        "--large-batch", type=int, default=32, help="the large N (default 32; lower it if "
        "memory or time forces it)"
    )  # fmt: skip
    args = parse(parser)
    batches = [2] if args.quick else [2, args.large_batch]
    report = Report("norms", "Norm layers: forward + backward on ResNet-50 and ResNet-20 shapes")
    report.add(
        f"Training mode, {args.repeats} rounds, every contender once per round in turn. "
        "'x GN' = time / torch GroupNorm(32) time in the same round (median, CPU time); "
        "'x BN' likewise against torch BatchNorm2d. Convolutions: 1x1, C/4 -> C, no bias; "
        "for WSConv2d the target compares the time WS adds to the convolution with GN's time. "
        "Emulated bn: per-GPU batch 1 at N=2 (2 chunks), 4 at larger N (N/4 chunks). Targets "
        "(the 'target' column): frn, brn, emulated bn and WS within 1.5x of torch GroupNorm, frn "
        "(with its TLU) against GroupNorm + in-place ReLU; evonorm_b0/s0 (with their "
        "nonlinearity, as trained) within 2x of GroupNorm + ReLU; iternorm and dbn within 4x "
        "of GroupNorm (default 16 channels per whitening group)."
    )
    report.add(MISSED_WHY)
    shapes = [(model, g, c, size) for model, (g, dims) in SHAPES.items() for c, size in dims]
    for n in batches:
        for model, groups, c, size in shapes:
            runs = contenders(n, c, size, groups)
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
            report.add(
                f"### {model}, N={n}, {c}x{size}x{size} (G={groups})\n\nWSConv2d / Conv2d: {ws}"
            )
            report.add(markdown_table(
                ["layer", "cpu ms", "wall ms", "x GN (cpu)", "x BN (cpu)", "target"], rows
            ))  # fmt: skip
            del runs, t  # free the large inputs before the next shape
    report.write(args.out)


if __name__ == "__main__":
    main()
