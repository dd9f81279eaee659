"""Timing helpers shared by the scripts/bench_*.py benchmarks.

The machine these run on is small and shared, so every comparison is measured side by side in
one process: the contenders run in turn (A, B, A, B, ...) and each ratio is taken within one
round, which cancels slow drifts in the load; the report gives the median of those ratios and
their spread. Every benchmark writes ``results/bench/<name>.md`` with the exact command, the
machine and the load average at its start and end.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results" / "bench"


def bench_parser(description: str, *, repeats: int, threads: int = 1) -> argparse.ArgumentParser:
    """The options every benchmark takes: --quick, --repeats, --threads, --out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="fewer cases and steps (seconds)")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"timed rounds per case (default {repeats}, "
        f"quick {max(3, repeats // 3)})"
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=threads, help=f"torch intra-op threads (default {threads})"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help=f"report folder (default {RESULTS_DIR})"
    )
    parser.set_defaults(default_repeats=repeats)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse arguments, fill in --repeats from --quick, and set torch's thread count."""
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = max(3, args.default_repeats // 3) if args.quick else args.default_repeats
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    return args


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. '1.52 1.20 0.98'."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """One line naming the CPU, its cores, the torch build and the threads used."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch thread(s), Python {platform.python_version()}, {gpu}"
    )


def command_line() -> str:
    """The command that ran this script, relative to the repository root."""
    script = os.path.relpath(sys.argv[0], RESULTS_DIR.parent.parent)
    return shlex.join([".venv/bin/python", script, *sys.argv[1:]])


@dataclass
class Timings:
    """Seconds per call of each contender: wall clock, and CPU time of this process.

    CPU time leaves out the time this process sat descheduled while other jobs ran, so on a
    busy machine it is the steadier measure of single-process work (it does not count
    DataLoader worker processes or a GPU's time: use wall time for those).
    """

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def clock(self, name: str) -> dict[str, list[float]]:
        """The timings of clock ``name`` ("wall" or "cpu")."""
        return self.wall if name == "wall" else self.cpu

    def median_ms(self, clock: str, name: str, per: int = 1) -> float:
        """Median milliseconds of one call of ``name``, divided by ``per`` (e.g. steps)."""
        return 1e3 * statistics.median(self.clock(clock)[name]) / per


def interleave(
    contenders: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    sync: Callable[[], None] | None = None,
) -> Timings:
    """Time every contender ``repeats`` times in turn (A, B, A, B, ...) after ``warmup`` calls each.

    Round ``i`` of every contender ran back to back, so ratios within a round compare
    like with like on a machine whose load changes from second to second. Each round starts
    one contender further on (A B C, B C A, C A B, ...) so none always runs first. ``sync``
    waits for queued device work before and after each call.
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    names = list(contenders)
    out = Timings({name: [] for name in names}, {name: [] for name in names})
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if sync:
                sync()
            wall, cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            if sync:
                sync()
            out.cpu[name].append(time.process_time() - cpu)
            out.wall[name].append(time.perf_counter() - wall)
    return out


@dataclass(frozen=True)
class Spread:
    """The median of some values and the range of their middle half (quartiles) and extremes."""

    median: float
    q1: float
    q3: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if len(values) == 1:
            v = values[0]
            return cls(v, v, v, v, v)
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(statistics.median(values), q1, q3, min(values), max(values))

    def ratio_text(self) -> str:
        """'1.012 [1.004-1.020]': median and interquartile range."""
        return f"{self.median:.3f} [{self.q1:.3f}-{self.q3:.3f}]"


def paired_ratios(times: Mapping[str, list[float]], num: str, den: str) -> Spread:
    """Spread of time[num] / time[den], taken within each round."""
    return Spread.of([a / b for a, b in zip(times[num], times[den], strict=True)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-style pipe table, columns padded so it also reads well in a terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


@dataclass
class Report:
    """What one benchmark run writes to results/bench/<name>.md."""

    name: str
    title: str
    command: str = field(default_factory=command_line)
    load_start: str = field(default_factory=load_average)
    started: str = field(
        default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds")
    )
    sections: list[str] = field(default_factory=list)

    def add(self, text: str, *, show: bool = True) -> None:
        """Append a paragraph or table to the report (and print it)."""
        self.sections.append(text.strip())
        if show:
            print(text.strip(), end="\n\n", flush=True)

    def write(self, out_dir: Path) -> Path:
        """Write the report, closing it with the load average now."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.name}.md"
        header = [
            f"# {self.title}",
            f"Command (from the repository root): `{self.command}`",
            f"Machine: {machine()}",
            f"Run: {self.started}; load average (1/5/15 min) at start {self.load_start}, "
            f"at end {load_average()}. The machine is shared with other jobs: figures are noisy; "
            "ratios are medians of per-round ratios of contenders run alternately, with the "
            "interquartile range in brackets; each round starts with the next contender. "
            "'cpu' figures are this process's CPU time (time spent descheduled behind other "
            "jobs left out), 'wall' figures are wall-clock time.",
        ]
        path.write_text("\n\n".join(header + self.sections) + "\n")
        print(f"wrote {path}")
        return path
