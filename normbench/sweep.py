"""A sweep as the person who started it sees it: which cells, in which order, how far along, and
what came of each.

The parent process plans the sweep (every cell composed, checked and costed before any runs),
hands Hydra the grid with the costliest cells first, watches the cells' run directories while
the launcher runs them, and ends with one summary. Cells write only their own run directories,
so everything here is read from disk and works alike for every launcher. On a terminal the
progress is a live table of the cells; on a pipe (a log file, CI) it is plain lines.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from rich.table import Table

from normbench.checks import validate
from normbench.config import Config, as_config
from normbench.errors import UserError
from normbench.logs import LIVE_ENV, cell_label
from normbench.metrics import measured
from normbench.track.cell import Cell
from normbench.track.rundir import RunDir, Status

# A CPU spends per image a fixed time plus a share of a per-chunk time (each chunk of `batch`
# images pays its own norm statistics and kernel launches): in results/synthetic-batch a cell
# trained 1080 images/s at 32 images per GPU and 437 at 2, so a chunk costs about 3.5 images.
CHUNK_COST_IMAGES = 3.5
FULL_DATASET = 50_000  # train_size=None (the whole dataset) in the estimate
# Values Hydra's sweep syntax would split or parse: such a grid is handed over as it was typed.
_NOT_PLAIN = re.compile(r"[,\[\]{}()'\"\\\s]")
PROGRESS_EVERY_S = 60.0  # a progress line at least this often, besides one per finished cell


def estimated_cost(cfg: Config) -> float:
    """A cell's training time in arbitrary units: only ratios between cells of a sweep matter."""
    images = cfg.epochs * (cfg.dataset.train_size or FULL_DATASET)
    return images * (1 + CHUNK_COST_IMAGES / cfg.batch)


@dataclass(frozen=True)
class PlannedCell:
    overrides: list[str]  # one "key=value" per axis of the grid, in the grid's order
    cell: Cell
    config: Config
    cost: float
    done_before: Status | None  # a result the sweep skips (finished or diverged)

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.cell.directory(self.config.out_dir))


def plan(cells: list[list[str]]) -> list[PlannedCell]:
    """Compose and check every cell before any runs: a bad value fails now, naming its cell."""
    from normbench.hydra_app import compose
    from normbench.job import check_reusable

    planned = []
    for overrides in cells:
        config = as_config(compose(overrides))
        cell = Cell.of(config, overrides)
        run_dir = RunDir(cell.directory(config.out_dir))
        try:
            validate(config)
            check_reusable(run_dir, config)
        except UserError as e:
            raise UserError(f"cell {cell.name}: {e}") from None
        done = None if config.rerun else run_dir.result()
        cost = estimated_cost(config)
        planned.append(PlannedCell(overrides, cell, config, cost, done))
    return planned


def folders(planned: list[PlannedCell]) -> list[Path]:
    """The experiment folders of a sweep (runs/<experiment>/), in the order cells name them."""
    return list(dict.fromkeys(cell.run_dir.path.parent for cell in planned))


def swept_keys(planned: list[PlannedCell]) -> list[str]:
    """The keys whose value differs between cells, among the overrides that name them."""
    named = [c.cell.overrides for c in planned]
    keys = dict.fromkeys(key for overrides in named for key in overrides)
    return [key for key in keys if len({overrides.get(key) for overrides in named}) > 1]


def costliest_first(planned: list[PlannedCell]) -> list[str] | None:
    """Overrides for Hydra's sweeper that run the same cells, the slowest first.

    Hydra launches the grid's product in order, outer axis first, so the axis whose values
    differ most in cost goes outermost and each axis lists its costliest value first (exact
    when one axis sets the cost, e.g. batch; the slowest first in general). The experiment's
    own grid is part of ``planned``, so Hydra is told to ignore it (params=null). None when a
    value holds characters Hydra's sweep syntax would read (lists, quotes): keep that grid as
    typed.
    """
    # A key typed twice (batch=8 ... batch=8,4) is set by its last override, as in Hydra.
    last = {item.split("=", 1)[0]: i for i, item in enumerate(planned[0].overrides)}
    axes: list[dict[str, list[float]]] = []  # per axis: value -> costs of its cells
    for i in sorted(last.values()):
        axis: dict[str, list[float]] = {}
        for cell in planned:
            axis.setdefault(cell.overrides[i], []).append(cell.cost)
        axes.append(axis)
    if len(planned) != math.prod(len(axis) for axis in axes):
        return None  # a value typed twice: the product would run other cells
    lines: list[tuple[float, str]] = []
    for axis in axes:
        mean = {item: sum(costs) / len(costs) for item, costs in axis.items()}
        items = sorted(mean, key=mean.__getitem__, reverse=True)
        if len(items) == 1:
            lines.append((1.0, items[0]))  # typed as is: a fixed override
            continue
        key = items[0].split("=", 1)[0]
        values = [item.split("=", 1)[1] for item in items]
        if any(_NOT_PLAIN.search(v) for v in values):
            return None
        lines.append((max(mean.values()) / min(mean.values()), f"{key}={','.join(values)}"))
    lines.sort(key=lambda spread_line: spread_line[0], reverse=True)
    return ["hydra.sweeper.params=null", *(line for _, line in lines)]


def cell_state(cell: PlannedCell, since: float) -> str:
    """finished, diverged or failed (in this sweep), skipped (a result before it), or unfinished
    (running, not started, or left to another process that holds the cell)."""
    if cell.done_before:
        return "skipped"
    metrics = cell.run_dir.metrics
    try:
        if metrics.stat().st_mtime < since:  # a failure recorded by an earlier run: retried now
            return Status.UNFINISHED
    except FileNotFoundError:
        return Status.UNFINISHED
    return cell.run_dir.status()


def held_elsewhere(run_dir: RunDir) -> bool:
    """Whether a process holds the cell's lock now: one that runs it (another sweep, `train`),
    once this sweep's own processes have ended."""
    if not run_dir.lock.exists():
        return False
    lock = FileLock(str(run_dir.lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def left_unfinished(planned: list[PlannedCell], since: float) -> list[PlannedCell]:
    """The cells a sweep that began at `since` leaves without a result (stopped, cancelled,
    preempted, killed), which the next run resumes; not those another process is running."""
    # The lock first: a cell another process finishes meanwhile then reads as finished.
    return [
        cell
        for cell in planned
        if not held_elsewhere(cell.run_dir) and cell_state(cell, since) == Status.UNFINISHED
    ]


def _history(run_dir: RunDir) -> list[dict[str, str]]:
    """The cell's epochs so far (history.csv is replaced whole, never seen half-written)."""
    try:
        with open(run_dir.history) as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Watch:
    """While the launcher runs the cells, from the run directories: on a pipe a line
    ``[sweep] 3/10 cells done, about 4.2 min left`` each time a cell ends and at least every
    PROGRESS_EVERY_S; on a terminal (``live``) a table of the cells (state, epoch, last val
    error, images/s) under that line, redrawn every second, the cells printing only warnings.

    The estimate weighs each cell's epochs done by its estimated cost and extrapolates the
    sweep's own pace since it began, so cells run in parallel are accounted for.
    """

    def __init__(
        self,
        planned: list[PlannedCell],
        every_s: float = PROGRESS_EVERY_S,
        live: bool | None = None,
    ) -> None:
        self.planned, self.every_s = planned, every_s
        self.live = sys.stdout.isatty() if live is None else live
        self.started = time.time()
        self._start_fraction = self.fraction()  # a resumed cell's epochs are not this sweep's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sweep-progress", daemon=True)
        self._view = None

    def __enter__(self) -> Watch:
        if self.live:
            from rich.live import Live

            os.environ[LIVE_ENV] = "1"  # launchers hand it to the cells
            self._view = Live(self.table(), auto_refresh=False)
            self._view.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._view is not None:
            self._view.update(self.table(), refresh=True)  # the final state stays on screen
            self._view.stop()
            del os.environ[LIVE_ENV]

    def states(self) -> list[str]:
        return [cell_state(cell, self.started) for cell in self.planned]

    def fraction(self) -> float:
        """The share of the sweep's estimated work done (skipped cells count as none)."""
        work = [(c, s) for c, s in zip(self.planned, self.states(), strict=True) if s != "skipped"]
        total = sum(c.cost for c, _ in work)
        if not total:
            return 1.0
        done = sum(c.cost * (1.0 if s != Status.UNFINISHED else self._share(c)) for c, s in work)
        return done / total

    @staticmethod
    def _share(cell: PlannedCell) -> float:
        """The share of a running cell's epochs done (a resumed cell starts part-way)."""
        return min(len(_history(cell.run_dir)) / cell.config.epochs, 1.0)

    def table(self) -> Table:
        """The live view: the progress line, then one row per cell."""
        table = Table(title=self.line().removeprefix("[sweep] "), title_justify="left")
        for column in ("cell", "state", "epoch", "val error %", "images/s"):
            table.add_column(column, justify="left" if column in ("cell", "state") else "right")
        for cell, state in zip(self.planned, self.states(), strict=True):
            history = _history(cell.run_dir)
            last = history[-1] if history else {}
            val_errors = measured(float(row["val_error"] or "nan") for row in history)
            if state == Status.UNFINISHED:
                job = cell.run_dir.job
                started = job.exists() and job.stat().st_mtime >= self.started
                state = "running" if started else "waiting"
            table.add_row(
                cell_label(cell.cell), state, f"{len(history)}/{cell.config.epochs}",
                f"{val_errors[-1]:.2f}" if val_errors else "",
                f"{float(last['images_per_s']):.0f}" if last else "",
            )  # fmt: skip
        return table

    def line(self) -> str:
        states = self.states()
        done = sum(s != Status.UNFINISHED for s in states)
        fraction, elapsed = self.fraction(), time.time() - self.started
        if done == len(states):
            left = "all done"
        elif fraction > self._start_fraction:
            rate = (fraction - self._start_fraction) / elapsed
            left = f"about {_duration((1 - fraction) / rate)} left"
        else:
            left = "estimating the time left"
        return f"[sweep] {done}/{len(states)} cells done, {left} ({_duration(elapsed)} so far)"

    def _run(self) -> None:
        last_done, last_line = -1, 0.0
        while not self._stop.wait(1.0):
            if self._view is not None:
                self._view.update(self.table(), refresh=True)
                continue
            done = sum(s != Status.UNFINISHED for s in self.states())
            if done != last_done or time.time() - last_line >= self.every_s:
                # One write per line: print() writes the newline apart, and a cell training
                # in this process (launcher=basic) could log between the two.
                sys.stdout.write(self.line() + "\n")
                sys.stdout.flush()
                last_done, last_line = done, time.time()

    def summary(
        self, reports: list[Path], left: list[PlannedCell], stopped_by: str | None = None
    ) -> list[str]:
        """The closing lines: what came of each cell, where the reports are, and the cells left
        unfinished (`left`, from :func:`left_unfinished`), by name."""
        counts = Counter(self.states())
        words = [
            f"{counts['finished']} finished",
            f"{counts['skipped']} skipped (a result already there)",
            f"{counts['failed']} failed",
            f"{counts['diverged']} diverged",
        ]
        if left:
            words.append(f"{len(left)} unfinished")
        if counts["unfinished"] > len(left):
            words.append(f"{counts['unfinished'] - len(left)} run by another process")
        elapsed = _duration(time.time() - self.started)
        ended = f"stopped by {stopped_by} after" if stopped_by else "done in"
        lines = [f"sweep {ended} {elapsed}: {len(self.planned)} cells, {', '.join(words)}"]
        lines += [f"report: {path}" for path in reports]
        if left:
            names = "; ".join(cell_label(cell.cell) for cell in left)
            lines.append(f"unfinished, the same command resumes them: {names}")
        return lines
