"""Regenerate the CPU-scale reproductions committed under results/.

Each entry runs one or more `normbench sweep`s and writes results/<entry>/ with RUN.md, which
records the exact commands, the wall times, the machine, its yardstick speed and the commit.
Finished cells are reused, as always, so an interrupted run picks up where it stopped.

Two kinds of entry:
- copied: the sweep runs under --out-dir (runs/) and its report (tables, plots, cells.csv) is
  copied into results/<entry>/;
- in place (the converged tables): the cells run inside results/ itself, so every finished cell's
  record (metrics.json, history.csv, config.yaml, job.json, ...; checkpoints are git-ignored)
  sits in the repository. With --commit-cells each record is committed the moment its cell
  finishes, so a run of hours outlives the machine: on another machine, a fresh clone, the same
  command skips every committed cell and trains the rest. RUN.md gains one line per run.

    python scripts/reproduce.py                                 # every entry
    python scripts/reproduce.py fashion_mnist-batch             # one entry
    python scripts/reproduce.py fashion_mnist-converged-8px --commit-cells
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
# Each entry: the sweeps it runs, in order; the sweeps of one entry share an experiment folder.
ENTRIES: dict[str, list[list[str]]] = {
    # The paper's Tables 1, 2 and 3 on the converged protocol, 3 seeds (results/tuning.md). The
    # cells its doubling test reads first: Table 1 (GN, LN, IN at 32 per GPU) and BN at 2.
    # (results/fashion_mnist-converged holds the 12-px, 160-epoch protocol of commit e104e8e.)
    "fashion_mnist-converged-8px": [
        ["experiment=converged-norms"],
        ["experiment=converged-batch", "norm=bn", "batch=2"],
        ["experiment=converged-batch"],
        ["experiment=converged-groups"],
        ["experiment=converged-group-size"],
    ],
    # Its doubling test: the cells that converge last at twice the epochs, seed 0.
    "fashion_mnist-converged-8px-check": [
        ["experiment=converged-check", "norm=gn,ln,in", "batch=32"],
        ["experiment=converged-check", "norm=bn", "batch=2"],
    ],
    # Table 2's length check: its four ends at 4x the epochs, seed 0, BN at 2 per GPU first.
    "fashion_mnist-converged-8px-length": [
        ["experiment=converged-length", "norm=bn", "batch=2"],
        ["experiment=converged-length", "norm=bn,gn", "batch=32"],
        ["experiment=converged-length", "norm=gn", "batch=2"],
    ],
    # The preview of Table 2 on the same protocol: exactly `make demo` (one seed, 20 epochs).
    "fashion_mnist-batch": [["experiment=mini-batch"]],
    # The 2560-image protocol's Table 2 ends on all of Fashion-MNIST, trained 23x longer.
    "fashion_mnist-batch-full": [["experiment=mini-batch-full"]],
    "fashion_mnist-batch-full-seeds": [["experiment=mini-batch-full", "seed=1,2"]],
    # Every norm of the zoo at 32, 8, 2 images per GPU on the 2560-image protocol (the defaults).
    "fashion_mnist-zoo": [["experiment=mini-zoo"]],
}
IN_PLACE = frozenset(
    {
        "fashion_mnist-converged-8px",
        "fashion_mnist-converged-8px-check",
        "fashion_mnist-converged-8px-length",
    }
)
# What of a finished cell is committed: everything but checkpoints, locks and W&B files.
RECORD_FILES = ("metrics.json", "history.csv", "steps.csv", "config.yaml", "job.json", "train.log")
DONE = ("finished", "diverged")
# The speed every recorded wall time is read against (the slowest machine seen: 440 img/s).
YARDSTICK = ["train", "dataset=synthetic", "model=resnet20", "gpus=4", "dataset.train_size=10000",
             "dataset.val_size=2000", "dataset.image_size=16", "norm=bn", "batch=32", "epochs=1",
             "logger=none"]  # fmt: skip


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


def git(*args: str, where: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=where, capture_output=True, text=True)


def commit() -> str:
    return git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"


def normbench(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", "normbench", *args], cwd=ROOT, check=True)


def yardstick(scratch: Path) -> float:
    """img/s of the yardstick cell on this machine now (README: the machines differ ~3.5x)."""
    out = scratch / "yardstick"
    shutil.rmtree(out, ignore_errors=True)
    normbench([*YARDSTICK, f"out_dir={out}", "diagnostics.enabled=false"])
    history = next(out.glob("*/*/history.csv")).read_text().splitlines()
    columns = history[0].split(",")
    return float(history[-1].split(",")[columns.index("images_per_s")])


def sweep(args: list[str], out_dir: Path) -> tuple[str, float]:
    command = ["sweep", *args, f"out_dir={out_dir}"]
    start = time.time()
    normbench(command)
    return shlex.join(["normbench", *command]), time.time() - start


def experiment_dir(args: list[str], out_dir: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from normbench.hydra_app import compose, expand_sweep

    # compose() takes one cell: a swept value (seed=1,2) is expanded first.
    first_cell = expand_sweep([*args, f"out_dir={out_dir}"])[0]
    cfg = compose(first_cell)
    return Path(cfg.out_dir) / cfg.name


def finished_cells(experiment: Path) -> list[Path]:
    """Cell folders whose metrics.json holds a result."""
    done = []
    for metrics in sorted(experiment.glob("*/metrics.json")):
        try:
            status = json.loads(metrics.read_text()).get("status")
        except (OSError, ValueError):
            continue
        if status in DONE:
            done.append(metrics.parent)
    return done


def commit_record(cell: Path) -> bool:
    """Commit one finished cell's record (only these paths, whatever else is staged)."""
    # git runs in the cell's real folder: results/ may be a link into another checkout.
    where = cell.resolve()
    paths = [name for name in RECORD_FILES if (where / name).is_file()]
    for _ in range(20):  # another process may hold git's index lock for a moment
        added = git("add", "-f", "--", *paths, where=where)
        if added.returncode == 0:
            message = f"results/{cell.parent.name}: {cell.name} (record of a finished cell)"
            done = git("commit", "-q", "-m", message, "--", *paths, where=where)
            if done.returncode == 0 or "nothing" in done.stdout + done.stderr:
                return True
        time.sleep(3)
    print(f"could not commit {cell}: {added.stderr or done.stderr}", flush=True)
    return False


class CellCommitter(threading.Thread):
    """Commits each cell's record as it lands, while the sweeps run."""

    def __init__(self, experiment: Path, every_s: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.experiment, self.every_s = experiment, every_s
        self.stopped = threading.Event()
        where = experiment.resolve()
        tracked = git("ls-files", "--", ".", where=where).stdout.splitlines()
        self.committed = {
            experiment / Path(p).parent.name for p in tracked if p.endswith("metrics.json")
        }

    def sweep_once(self) -> None:
        for cell in finished_cells(self.experiment):
            if cell not in self.committed and commit_record(cell):
                self.committed.add(cell)

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            self.sweep_once()

    def stop(self) -> None:
        self.stopped.set()
        self.join()
        self.sweep_once()


def run_md_header(entry: str, sweeps: list[list[str]], out_dir: Path) -> list[str]:
    lines = [f"# {entry}", "", f"Produced by `python scripts/reproduce.py {entry}`, i.e.:", ""]
    return lines + ["    " + shlex.join(["normbench", "sweep", *a, f"out_dir={out_dir}"])
                    for a in sweeps] + [""]  # fmt: skip


def reproduce(entry: str, out_dir: Path, commit_cells: bool, scratch: Path) -> None:
    in_place = entry in IN_PLACE
    out_dir = RESULTS.relative_to(ROOT) if in_place else out_dir  # run from ROOT
    sweeps = ENTRIES[entry]
    experiment = ROOT / experiment_dir(sweeps[0], out_dir)
    before = len(finished_cells(experiment)) if experiment.is_dir() else 0
    speed = yardstick(scratch)
    committer = None
    if in_place and commit_cells:
        experiment.mkdir(parents=True, exist_ok=True)
        committer = CellCommitter(experiment)
        committer.start()
    start = time.time()
    try:
        commands = [sweep(args, out_dir) for args in sweeps]
    finally:
        if committer is not None:
            committer.stop()
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    where = f"{machine()}; yardstick {speed:.0f} img/s; commit {commit()}"
    if in_place:
        normbench(["report", str(experiment.relative_to(ROOT))])
        run_md = experiment / "RUN.md"
        lines = run_md.read_text().splitlines() if run_md.is_file() else [
            *run_md_header(entry, sweeps, out_dir),
            "The report (report/report.md) is rebuilt from the committed records by "
            f"`normbench report results/{entry}`. One line per run of the command above (a run",
            "skips the cells earlier runs finished):", ""]  # fmt: skip
        trained = len(finished_cells(experiment)) - before
        lines.append(f"- {stamp}: {trained} cells trained in {(time.time() - start) / 60:.1f} min "
                     f"wall ({where})")  # fmt: skip
        run_md.write_text("\n".join(lines) + "\n")
        print(f"{run_md.relative_to(ROOT)}: written", flush=True)
        return
    source = experiment / "report"
    target = RESULTS / entry
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("wandb"))
    lines = [f"# {entry}", "", f"Produced by `python scripts/reproduce.py {entry}`, i.e.:", ""]
    lines += [f"    {cmd}    # {seconds / 60:.1f} min wall" for cmd, seconds in commands]
    lines += ["", f"- machine: {machine()}; yardstick {speed:.0f} img/s",
              f"- normbench commit: {commit()}", f"- finished: {stamp}",
              "- the tables and plots here are the sweep's report (report.md), copied unchanged",
              ""]  # fmt: skip
    (target / "RUN.md").write_text("\n".join(lines))
    print(f"results/{entry}: written", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("entries", nargs="*", help=f"any of {', '.join(ENTRIES)} (default: all)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "runs")
    parser.add_argument(
        "--commit-cells",
        action="store_true",
        help="commit each finished cell's record of an in-place entry to git",
    )
    args = parser.parse_args()
    unknown = set(args.entries) - set(ENTRIES)
    if unknown:
        parser.error(f"unknown entries {sorted(unknown)} (allowed: {', '.join(ENTRIES)})")
    for entry in args.entries or ENTRIES:
        reproduce(entry, args.out_dir, args.commit_cells, args.out_dir / ".reproduce")


if __name__ == "__main__":
    main()
