"""End to end: wall time of a `normbench sweep` and images/s of each of its cells.

Runs ``normbench sweep <overrides> out_dir=<temporary folder>`` (a fresh folder per repeat, so
no cell is skipped as already finished), then reads every cell's metrics.json and tabulates its
status, steps, wall time and training images/s, beside the wall time of the whole sweep.

    .venv/bin/python scripts/bench_sweep.py [--repeats N] [--name NAME] [OVERRIDE ...]

Without overrides it runs a tiny 2-cell sweep (seconds): the one --quick also uses.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import Report, bench_parser, markdown_table, parse

TINY = [
    "logger=none", "model=resnet8", "model.width=8", "norm.groups=4", "dataset.train_size=256",
    "dataset.val_size=64", "dataset.image_size=16", "epochs=1", "norm=bn,gn",
]  # fmt: skip


def run_sweep(overrides: list[str], threads: int) -> tuple[float, list[dict]]:
    """Wall seconds of one sweep in a fresh out_dir, and the metrics.json of its cells."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as out_dir:
        command = [sys.executable, "-m", "normbench", "sweep", *overrides, f"out_dir={out_dir}"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}  # torch threads of the sweep
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"bench_sweep: `{' '.join(command)}` failed:\n{done.stderr[-3000:]}")
        cells = [json.loads(p.read_text()) for p in sorted(Path(out_dir).rglob("metrics.json"))]
    return wall, cells


def varying_part(cell: dict, per_cell: dict[str, list[dict]]) -> str:
    """The overrides of ``cell`` whose values differ between cells (its full name if none)."""
    all_overrides = [runs[-1].get("overrides") or {} for runs in per_cell.values()]
    keys = sorted({k for o in all_overrides for k in o})
    varying = [k for k in keys if len({str(o.get(k)) for o in all_overrides}) > 1]
    own = cell.get("overrides") or {}
    return ",".join(f"{k}={own.get(k)}" for k in varying) or cell["cell"]


def main() -> None:
    parser = bench_parser(__doc__.splitlines()[0], repeats=1)
    parser.add_argument("--name", default="sweep", help="report name: results/bench/NAME.md")
    parser.add_argument("overrides", nargs="*", help="normbench sweep overrides (default: tiny)")
    args = parse(parser)
    overrides = args.overrides if args.overrides and not args.quick else TINY
    report = Report(args.name, "End to end: normbench sweep wall time and images/s per cell")
    walls: list[float] = []
    per_cell: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        wall, cells = run_sweep(overrides, args.threads)
        walls.append(wall)
        for cell in cells:
            per_cell.setdefault(cell["cell"], []).append(cell)
    rows = []
    for runs in per_cell.values():
        last = runs[-1]
        rows.append([
            varying_part(last, per_cell), last["status"], last.get("steps"),
            last.get("total_batch"), f"{statistics.median(r['wall_time_s'] for r in runs):.1f}",
            f"{statistics.median(r.get('images_per_s') or 0.0 for r in runs):.0f}",
        ])  # fmt: skip
    inside = sum(statistics.median(r["wall_time_s"] for r in runs) for runs in per_cell.values())
    sweep_wall = statistics.median(walls)
    report.add(
        f"Overrides: `{' '.join(overrides)}`; {args.repeats} repeat(s), each in a fresh "
        f"out_dir; OMP_NUM_THREADS={args.threads} for the sweep. Sweep wall time (median): "
        f"{sweep_wall:.1f} s (all: {', '.join(f'{w:.1f}' for w in walls)}), of which "
        f"{sweep_wall - inside:.1f} s outside the cells (Python and torch imports, Hydra "
        "composition and validation of every cell, the final report). Per cell, from "
        "metrics.json: wall_time_s (the cell's worker: data building, training, evaluation) "
        "and images_per_s (training steps only); medians over repeats. Cells are named by the "
        "overrides that differ between them."
    )
    report.add(markdown_table(
        ["cell", "status", "steps", "total batch", "cell wall s", "train img/s"], rows
    ))  # fmt: skip
    report.write(args.out)


if __name__ == "__main__":
    main()
