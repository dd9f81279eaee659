"""How long a reproduce entry takes (default: `make results`), from a short run of its cells.

A run of `make results` takes hours, longer than a session here, and the machines differ about
3.5x in speed, so its budget (issue 18: at most 6 hours on the slowest 2-core machine) is
checked by a benchmark: every sweep of the entry runs as `make results` runs it (the same
cells and seeds, the same launcher with its cells in parallel, one per core, one scratch folder
so that a cell two sweeps share runs once) but for ``--epochs`` epochs, and the yardstick cell
runs in the same call. (``--first-seed`` runs one seed per cell instead: cheaper, but a sweep
with fewer cells than cores then runs them alone, faster than beside another.)

Each short cell's history.csv gives the seconds of a training-only epoch and of a validated
one (medians, the first epoch left out: it pays for warm-up), its metrics.json the seconds
outside the epochs (data, model, the first epoch's extra); every cell of the full entry is its
short counterpart's times over the full schedule. The estimate runs each sweep's cells on the
cores, the longest first, plus the sweeps' own time outside their cells (imports, planning,
reports), and scales that to the slowest machine seen by the ratio of yardstick speeds.

    .venv/bin/python scripts/bench_results.py [ENTRY] [--epochs E] [--first-seed] [--quick]
"""

from __future__ import annotations

import csv
import heapq
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from _timing import Report, bench_parser, markdown_table, parse
from reproduce import ENTRIES, sweep, yardstick

SLOWEST_YARDSTICK = 440  # img/s of the yardstick cell on the slowest machine seen


@dataclass(frozen=True)
class EpochTimes:
    """One short cell's measured seconds: outside the epochs, per training-only epoch and per
    validated epoch."""

    setup_s: float
    train_epoch_s: float
    validated_epoch_s: float

    def full_cell_s(self, epochs: int, validated: int) -> float:
        """The seconds of the same cell over ``epochs``, ``validated`` of them with validation."""
        return (
            self.setup_s
            + (epochs - validated) * self.train_epoch_s
            + (validated * self.validated_epoch_s)
        )


def epoch_times(history: list[dict[str, str]], wall_s: float) -> EpochTimes:
    """A short cell's EpochTimes from its history.csv rows and its metrics.json wall_time_s."""
    seconds = [float(row["time_s"]) for row in history]
    validated = [row["val_error"] not in ("", "nan") for row in history]
    later = list(zip(seconds[1:], validated[1:], strict=True))  # epoch 1 pays for warm-up
    train = [s for s, v in later if not v]
    checked = [s for s, v in later if v]
    if not train or not checked:
        raise ValueError("the short run needs training-only and validated epochs after the first")
    train_s, checked_s = statistics.median(train), statistics.median(checked)
    typical = checked_s if validated[0] else train_s
    setup = wall_s - sum(seconds) + (seconds[0] - typical)
    return EpochTimes(max(setup, 0.0), train_s, checked_s)


def validated_epochs(epochs: int, every: int) -> int:
    """How many of ``epochs`` are validated (normbench.train.loop.is_evaluated)."""
    from normbench.train.loop import is_evaluated

    return sum(is_evaluated(epoch, epochs, every) for epoch in range(1, epochs + 1))


def cell_key(overrides: dict[str, str], ignored: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """A cell's name without the ``ignored`` overrides: it pairs full and short cells."""
    return tuple(sorted((k, v) for k, v in overrides.items() if k not in ignored))


def full_cells(
    sweeps: list[list[str]], out_dir: Path, ignored: tuple[str, ...]
) -> list[list[tuple[tuple, int, int]]]:
    """Per sweep of the entry, the cells it trains (a cell an earlier sweep trained is skipped):
    each cell's key, epochs and validated epochs. Planned under an empty ``out_dir``, so no
    earlier run of the entry is read."""
    from normbench.hydra_app import expand_sweep
    from normbench.sweep import plan

    seen: set[str] = set()
    per_sweep = []
    for args in sweeps:
        cells = []
        for planned in plan(expand_sweep([*args, f"out_dir={out_dir}"])):
            if planned.cell.name in seen:
                continue
            seen.add(planned.cell.name)
            config = planned.config
            cells.append((
                cell_key(planned.cell.overrides, ignored),
                config.epochs,
                validated_epochs(config.epochs, config.eval_every),
            ))  # fmt: skip
        per_sweep.append(cells)
    return per_sweep


def makespan(seconds: list[float], at_once: int) -> float:
    """Wall seconds of cells run ``at_once`` at a time, the longest first (as a sweep orders
    them), each starting when a worker frees up."""
    workers = [0.0] * at_once
    for cell_s in sorted(seconds, reverse=True):
        heapq.heapreplace(workers, workers[0] + cell_s)
    return max(workers)


def short_cells(out_dir: Path, ignored: tuple[str, ...]) -> dict[tuple, tuple[EpochTimes, float]]:
    """Each short cell's key -> (its EpochTimes, its wall seconds)."""
    cells = {}
    for metrics_path in sorted(out_dir.glob("*/*/metrics.json")):
        metrics = json.loads(metrics_path.read_text())
        job = json.loads((metrics_path.parent / "job.json").read_text())
        with (metrics_path.parent / "history.csv").open() as f:
            history = list(csv.DictReader(f))
        wall = float(metrics["wall_time_s"])
        cells[cell_key(job["cell"]["overrides"], ignored)] = (epoch_times(history, wall), wall)
    return cells


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], repeats=1)
    parser.add_argument("entry", nargs="?", default="fashion_mnist-converged-8px",
                        choices=sorted(ENTRIES), help="a scripts/reproduce.py entry")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=12, help="epochs of the short run")
    parser.add_argument("--first-seed", action="store_true", help="one seed per cell (seed=0)")
    parser.add_argument(
        "--parallel", type=int, default=None, help="cells at once (default: the launcher's)"
    )
    args = parse(parser)
    if args.quick:  # a smoke run: the least that still has both kinds of epoch after the first
        args.epochs, args.first_seed = 7, True
    from normbench.config import parallel_cells

    at_once = args.parallel or parallel_cells()
    sweeps = ENTRIES[args.entry]
    extra = [f"epochs={args.epochs}", *(["seed=0"] if args.first_seed else [])]
    ignored = ("epochs", "seed") if args.first_seed else ("epochs",)
    report = Report(f"results-budget-{args.entry}", f"The wall time of reproducing {args.entry}")
    with tempfile.TemporaryDirectory(prefix="bench-results-") as scratch:
        speed = yardstick(Path(scratch))
        # The entry's sweeps as reproduce.py runs them, shortened by the ``extra`` overrides.
        sweep_wall = sum(sweep([*args, *extra], Path(scratch) / "runs")[1] for args in sweeps)
        measured = short_cells(Path(scratch) / "runs", ignored)
        full = full_cells(sweeps, Path(scratch) / "plan", ignored)
    # Shown per cell with its seeds together: (times of each short run, full seconds of each cell)
    shown: dict[tuple, tuple[list[EpochTimes], list[float]]] = {}
    full_s, short_s = [], []  # per sweep: its wall seconds, full and in the short run
    for cells in full:
        cell_s = []
        for key, epochs, validated in cells:
            if key not in measured:
                sys.exit(f"bench_results: no short run of the cell {dict(key)}")
            times = measured[key][0]
            runs, seconds = shown.setdefault(cell_key(dict(key), ("seed",)), ([], []))
            runs.append(times)
            seconds.append(times.full_cell_s(epochs, validated))
            cell_s.append(seconds[-1])
        full_s.append(makespan(cell_s, at_once))
        short_s.append(makespan([measured[key][1] for key, _, _ in cells], at_once))
    rows = [[",".join(f"{k}={v}" for k, v in key), len(seconds),
             f"{statistics.median(t.setup_s for t in runs):.1f}",
             f"{statistics.median(t.train_epoch_s for t in runs):.2f}",
             f"{statistics.median(t.validated_epoch_s for t in runs):.2f}",
             f"{sum(seconds) / 60:.1f}"] for key, (runs, seconds) in shown.items()]  # fmt: skip
    total_s = sum(sum(seconds) for _, seconds in shown.values())
    outside_s = max(sweep_wall - sum(short_s), 0.0)  # imports, planning, reports
    here_h = (sum(full_s) + outside_s) / 3600
    slowest_h = here_h * speed / SLOWEST_YARDSTICK
    commands = "; ".join(" ".join(["normbench sweep", *a]) for a in sweeps)
    report.add(
        f"Entry `{args.entry}` ({commands}): {len(measured)} cells. Short run: every sweep with "
        f"`{' '.join(extra)}`, {at_once} cells at once; {sweep_wall:.0f} s in all, of which "
        f"about {outside_s:.0f} s outside the cells. Yardstick measured in the same call: "
        f"{speed:.0f} img/s. Per cell (its seeds together; medians over seeds): the seconds "
        "outside its epochs, of a training-only epoch and of a validated epoch in the short "
        "run, and the minutes of all its seeds over the full schedule."
    )
    report.add(markdown_table(
        ["cell", "seeds", "setup s", "train epoch s", "validated epoch s", "full min (all seeds)"],
        rows,
    ))  # fmt: skip
    report.add(
        f"**Estimate: {here_h:.2f} h on this machine** ({total_s / 3600:.2f} h of cell time, "
        f"each sweep's cells {at_once} at once, the longest first, a core idle at a sweep's "
        f"end; plus the sweeps' own time), **{slowest_h:.2f} h on the slowest machine seen** "
        f"(yardstick {SLOWEST_YARDSTICK} img/s: x{speed / SLOWEST_YARDSTICK:.2f}). Not counted: "
        "a machine whose speed on these cells differs from its speed on the yardstick's."
    )
    report.write(args.out)


if __name__ == "__main__":
    main()
