"""Regenerate the CPU-scale reproductions committed under results/.

Each entry runs one `normbench sweep`, then copies the sweep's report (tables, plots, cells.csv)
into results/<entry>/ beside RUN.md, which records the exact command, the wall time, the machine
and the commit. Finished cells are reused, as always, so an interrupted run picks up where it
stopped.

    python scripts/reproduce.py                      # every entry
    python scripts/reproduce.py synthetic-batch      # one entry
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRIES: dict[str, list[str]] = {
    # The mini Table 2 on real images: exactly `make demo` (seed 0) ...
    "fashion_mnist-batch": ["experiment=mini-batch"],
    # ... and two more seeds of the same cells; the report pools them with seed 0.
    "fashion_mnist-batch-seeds": ["experiment=mini-batch", "seed=1,2"],
    # Its two ends on all of Fashion-MNIST: the cells trained 23x longer.
    "fashion_mnist-batch-full": ["experiment=mini-batch-full"],
    "fashion_mnist-batch-full-seeds": ["experiment=mini-batch-full", "seed=1,2"],
    "fashion_mnist-norms": ["experiment=mini-norms"],
    # Every norm of the zoo at 32, 8, 2 images per GPU on the same protocol.
    "fashion_mnist-zoo": ["experiment=mini-zoo"],
    "synthetic-groups": ["experiment=mini-groups", "dataset=synthetic"],
    "fashion_mnist-groups": ["experiment=mini-groups", "dataset=fashion_mnist"],
}
# The group-size half of Table 3 goes into the same experiment (and report) as the groups half.
FOLLOW_UPS = {
    "synthetic-groups": ["experiment=mini-group-size", "dataset=synthetic"],
    "fashion_mnist-groups": ["experiment=mini-group-size", "dataset=fashion_mnist"],
}


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    python = platform.python_version()
    return f"{cpu}, {os.cpu_count()} cores, Python {python}, torch {torch.__version__}"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True)  # fmt: skip
    return out.stdout.strip() or "unknown"


def sweep(args: list[str], out_dir: Path) -> tuple[str, float]:
    command = ["normbench", "sweep", *args, f"out_dir={out_dir}"]
    start = time.time()
    subprocess.run([sys.executable, "-m", "normbench", *command[1:]], cwd=ROOT, check=True)
    return shlex.join(command), time.time() - start


def experiment_dir(args: list[str], out_dir: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from normbench.hydra_app import compose, expand_sweep

    # compose() takes one cell: a swept value (seed=1,2) is expanded first.
    first_cell = expand_sweep([*args, f"out_dir={out_dir}"])[0]
    cfg = compose(first_cell)
    return Path(cfg.out_dir) / cfg.name


def reproduce(entry: str, out_dir: Path) -> None:
    runs = [ENTRIES[entry], *([FOLLOW_UPS[entry]] if entry in FOLLOW_UPS else [])]
    commands = [sweep(args, out_dir) for args in runs]
    source = experiment_dir(ENTRIES[entry], out_dir) / "report"
    target = ROOT / "results" / entry
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("wandb"))
    lines = [f"# {entry}", "", "Produced by `python scripts/reproduce.py " + entry + "`, i.e.:", ""]
    lines += [f"    {cmd}    # {seconds / 60:.1f} min wall" for cmd, seconds in commands]
    lines += ["", f"- machine: {machine()}", f"- normbench commit: {commit()}",
              f"- finished: {time.strftime('%Y-%m-%d %H:%M %Z')}",
              "- the tables and plots here are the sweep's report (report.md), copied unchanged",
              ""]  # fmt: skip
    (target / "RUN.md").write_text("\n".join(lines))
    print(f"results/{entry}: written", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("entries", nargs="*", help=f"any of {', '.join(ENTRIES)} (default: all)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs")
    args = parser.parse_args()
    unknown = set(args.entries) - set(ENTRIES)
    if unknown:
        parser.error(f"unknown entries {sorted(unknown)} (allowed: {', '.join(ENTRIES)})")
    for entry in args.entries or ENTRIES:
        reproduce(entry, args.out_dir)


if __name__ == "__main__":
    main()
