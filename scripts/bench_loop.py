"""Loop overhead: normbench's real training step against a hand-written PyTorch loop.

normbench: ``Trainer.train_epoch`` of :mod:`normbench.train.loop`, built from the config the CLI
composes for such a cell (gpus=1, so no emulated GPUs, CPU, synthetic data held in memory), with
an epoch of ``--steps`` steps. Hand-written: the same model from ``build_model``, the same norm,
batch, lr, SGD momentum and weight decay, cross-entropy, on the same images normalized once up
front and indexed by a shuffled permutation. Both sides do no augmentation (normbench's augmented
step is timed as a third, informative contender). Target: normbench / hand-written <= 1.03.

    .venv/bin/python scripts/bench_loop.py [--quick] [--repeats N] [--steps S]
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _timing import (
    Report,
    Timings,
    bench_parser,
    interleave,
    markdown_table,
    paired_ratios,
    parse,
)

from normbench.config import Config, as_config
from normbench.data import build_datasets
from normbench.hydra_app import compose
from normbench.models import build_model
from normbench.track.tracker import NullTracker
from normbench.train.distributed import DistEnv
from normbench.train.loop import Trainer
from normbench.train.preempt import PreemptionGuard

TARGET = 1.03
NORM = "bn"


@dataclass(frozen=True)
class Case:
    """One comparison: model, base width (None: the model config's), image size, batch, steps."""

    model: str
    width: int | None
    image_size: int
    batch: int
    steps: int
    probe: bool = False  # a near-free model: the time difference is the loop's own overhead

    @property
    def label(self) -> str:
        width = f" w={self.width}" if self.width else ""
        what = " (overhead probe)" if self.probe else ""
        return f"{self.model}{width} {self.image_size}px b={self.batch}{what}"


def make_config(case: Case, augment: bool) -> Config:
    """A one-GPU CPU cell whose training epoch is exactly ``case.steps`` steps: the CLI's
    config (``normbench train <these overrides>``), so the recipe timed is the one users run."""
    overrides = [
        f"model={case.model}", f"norm={NORM}", f"batch={case.batch}", "gpus=1", "devices=1",
        "accelerator=cpu", "dataset=synthetic", f"dataset.image_size={case.image_size}",
        f"dataset.train_size={case.batch * case.steps}", f"dataset.val_size={case.batch}",
        f"dataset.augment={str(augment).lower()}", "dataset.workers=0", "logger=none",
        f"epochs={10**6}",  # keeps the lr schedule flat however many epochs are timed
    ]  # fmt: skip
    if case.width is not None:
        overrides.append(f"model.width={case.width}")
    return as_config(compose(overrides))


def normbench_epoch(trainer: Trainer) -> Callable[[], None]:
    """One call = one training epoch of the real Trainer (progress rewound like run() does)."""
    tracker, guard = NullTracker(), PreemptionGuard()

    def run() -> None:
        trainer.train_epoch(tracker, guard)
        trainer.progress.epoch += 1
        trainer.progress.batch_in_epoch = 0

    return run


def hand_written_epoch(case: Case, cfg: Config, lr: float) -> Callable[[], None]:
    """One call = ``case.steps`` steps of a minimal loop over the same (unaugmented) images."""
    data = build_datasets(
        cfg.dataset.name, None, seed=cfg.seed, image_size=cfg.dataset.image_size,
        train_size=cfg.dataset.train_size, val_size=1, augment=False, download=False,
        bad_images="fail",
    )  # fmt: skip
    images, labels = data.train.__getitems__(range(len(data.train)))  # normalized, in memory
    model = build_model(
        cfg.model.name, norm=cfg.norm.name, num_classes=data.num_classes, width=cfg.model.width,
        norm_options=cfg.norm.options(),
    )  # fmt: skip
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    b = case.batch

    def run() -> None:
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        for i in range(case.steps):
            idx = order[i * b : (i + 1) * b]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def measure(case: Case, repeats: int, run_dir: Path) -> Timings:
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), backend=None)
    plain = Trainer(run_dir / "plain", make_config(case, augment=False), env)
    augmented = Trainer(run_dir / "aug", make_config(case, augment=True), env)
    contenders = {
        "hand": hand_written_epoch(case, plain.cfg, plain.lr),
        "normbench": normbench_epoch(plain),
        "normbench+aug": normbench_epoch(augmented),
    }
    return interleave(contenders, repeats)


def cases(quick: bool, steps: int | None) -> list[Case]:
    """resnet20 at batch 2 and 32, then a near-free model that isolates the loop's overhead.

    Epochs of about half a second: long enough that the per-epoch costs (a new DataLoader
    iterator, the end-of-epoch reduction) weigh as little as in real epochs of many steps.
    """
    scale = 0.2 if quick else 1.0
    return [
        Case("resnet20", None, 32, 2, steps or max(2, round(30 * scale))),
        Case("resnet20", None, 32, 32, steps or max(2, round(5 * scale))),
        Case("resnet8", 1, 8, 2, steps or max(10, round(100 * scale)), probe=True),
    ]


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], repeats=20)
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per timed epoch (default 30, 5, 100)"
    )
    args = parse(parser)
    report = Report("loop", "Loop overhead: normbench Trainer.train_epoch vs a hand-written loop")
    report.add(
        f"Norm {NORM}, synthetic images in memory, gpus=1, CPU; one timed unit = one epoch; "
        f"{args.repeats} rounds alternating hand, normbench, normbench+aug. Ratio = normbench / "
        "hand within each round. normbench+aug adds the random crop + flip the real config "
        "does (informative: the hand-written loop does no augmentation). The probe row runs "
        "both loops on a near-free model (resnet8, width 1, 8x8 images): the per-step "
        "difference there is the loop's own overhead in microseconds."
    )
    rows = []
    for case in cases(args.quick, args.steps):
        with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
            t = measure(case, args.repeats, Path(tmp))
        ratio = paired_ratios(t.cpu, "normbench", "hand")
        hand, ours = (t.median_ms("cpu", k, case.steps) for k in ("hand", "normbench"))
        verdict = "met" if ratio.median <= TARGET else "MISSED"
        rows.append([
            case.label, case.steps, f"{hand:.3f}", f"{ours:.3f}",
            f"{1e3 * (ours - hand):+.0f}", ratio.ratio_text(),
            paired_ratios(t.wall, "normbench", "hand").ratio_text(),
            "-" if case.probe else f"{verdict} (<= {TARGET})",
            paired_ratios(t.cpu, "normbench+aug", "hand").ratio_text(),
        ])  # fmt: skip
    report.add(markdown_table(
        ["case", "steps", "hand cpu ms/step", "normbench cpu ms/step", "diff us/step",
         "normbench/hand (cpu)", "normbench/hand (wall)", "target (cpu)",
         "normbench+aug/hand (cpu)"], rows,
    ))  # fmt: skip
    report.write(args.out)


if __name__ == "__main__":
    main()
