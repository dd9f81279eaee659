"""The `normbench` command. Thin: each subcommand hands its arguments to the module that owns
the idea (Hydra composition, the job, the report, the registries) and turns user errors into
one line and exit code 2.

    normbench train  [overrides]      one cell, e.g. norm=gn batch=4
    normbench prepare [overrides]     a cell's directory, for workers you start yourself
    normbench sweep  [overrides]      every combination of comma-separated values, e.g. batch=32,2
    normbench report [sweep_dir] [metric=...]   tables and plots from run directories
    normbench norms | models | datasets   what is available, with options
    normbench worker <run_dir>        one training process (used by torchrun / srun)
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from normbench.errors import UserError
from normbench.track.environment import COMMAND_ENV
from normbench.track.rundir import CONFIG, RunDir, Status, ensure_writable

if TYPE_CHECKING:
    from normbench.job import Outcome

USAGE = __doc__.split("\n\n", 1)[1].rstrip()
# Not done, not failed: the same command later finishes the work (EX_TEMPFAIL). `train` or
# `prepare` on a cell another process is running; a sweep that leaves cells unfinished.
BUSY_EXIT_CODE = 75
log = logging.getLogger("normbench")


def _one_cell(command: str, args: list[str], *, start: bool) -> tuple[Outcome, RunDir]:
    """Run (or prepare) the one cell `args` name: what came of it, and its run directory."""
    from normbench.config import as_config
    from normbench.hydra_app import compose, with_available_dataset
    from normbench.job import run_cell
    from normbench.track.cell import Cell

    # A list, or a quoted value (a run directory's name has commas), is one value.
    if any("," in a.split("=", 1)[-1] and not a.split("=", 1)[-1].startswith(("[", "'", '"'))
           for a in args):  # fmt: skip
        raise UserError(
            f"{command} takes one cell; comma-separated values sweep: use `normbench sweep`"
        )
    args = with_available_dataset(args)
    config = as_config(compose(args))
    cell = Cell.of(config, args)  # the job's one cell
    return run_cell(config, cell, start=start), RunDir(cell.directory(config.out_dir))


def _busy(run: RunDir, what: str) -> int:
    from normbench.job import busy_message

    print(f"normbench: {run.path} {what}: {busy_message(run)}", file=sys.stderr)
    return BUSY_EXIT_CODE


def _cmd_train(args: list[str]) -> int:
    from normbench.job import Decision

    outcome, run = _one_cell("train", args, start=True)
    if outcome.decision is Decision.BUSY:
        return _busy(run, "not trained")
    metrics = run.read_metrics() or {}
    if metrics.get("val_error_median5") is not None:
        print(
            f"val top-1 error: {metrics['val_error_median5']:.2f}% (median of last 5 epochs; "
            f"final {metrics['val_error_final']:.2f}%, best {metrics['val_error_best']:.2f}%)"
        )
    elif metrics.get("box_ap") is not None:
        print(
            f"COCO AP of the final model: box {metrics['box_ap']:.2f} (AP50 "
            f"{metrics['box_ap50']:.2f}, AP75 {metrics['box_ap75']:.2f}), mask "
            f"{metrics['mask_ap']:.2f} (AP50 {metrics['mask_ap50']:.2f}, AP75 "
            f"{metrics['mask_ap75']:.2f})"
        )
    elif outcome.status is Status.DIVERGED:
        print(f"diverged: {metrics.get('error')}")
    print(f"run directory: {run.path}")
    return 1 if outcome.status is Status.FAILED else 0


def _cmd_prepare(args: list[str]) -> int:
    from normbench.job import Decision

    outcome, run = _one_cell("prepare", args, start=False)
    if outcome.decision is Decision.BUSY:
        return _busy(run, "not prepared")
    if outcome.decision is Decision.SKIPPED:
        print(f"{run.path} is already {outcome.status} (rerun=true prepares it "
              "again, archiving the result)")  # fmt: skip
        return 0
    print(f"prepared: {run.path}")
    print(f"start its workers on every node: torchrun --nproc-per-node <processes per node> "
          f"... -m normbench worker {run.path}")  # fmt: skip
    return 0


def _cmd_sweep(args: list[str]) -> int:
    """Exit status: 0 when every cell has a result, 1 when one failed, 75 when cells are left
    unfinished (cancelled, preempted: rerun to resume), 128 + N when stopped by signal N."""
    from normbench import sweep
    from normbench.hydra_app import expand_sweep, multirun, with_available_dataset
    from normbench.job import skip_message
    from normbench.logs import SWEEP_KEYS_ENV
    from normbench.report import build_report, format_report
    from normbench.stop import StopOnSignals

    args = with_available_dataset(args)
    planned = sweep.plan(expand_sweep(args))
    folders = sweep.folders(planned)  # one per experiment: model=a,b sweeps two
    for folder in folders:
        ensure_writable(folder)  # before Hydra, whose own error is a traceback
    print(f"sweep: {len(planned)} cells into {', '.join(map(str, folders))}", flush=True)
    os.environ[SWEEP_KEYS_ENV] = ",".join(sweep.swept_keys(planned))  # the cells' line labels
    with sweep.Watch(planned) as watch, StopOnSignals() as stop:
        if all(cell.done_before for cell in planned):
            # Nothing to run: no launcher, so no worker processes (or SLURM jobs) to start.
            for cell in planned:
                print(skip_message(cell.run_dir, cell.done_before), flush=True)
        else:
            multirun(sweep.costliest_first(planned) or args, total=len(planned))
    written = []
    for folder in folders if stop.signum is None else []:  # stopped: leave at once, as asked
        config = next(c.config for c in planned if c.run_dir.path.parent == folder)
        if not config.report:
            print(f"no report (report=false): `normbench report {folder}` builds it", flush=True)
            continue
        report = build_report(folder, metric=config.metric)
        print(format_report(report))
        if config.logger.kind == "wandb":
            _log_report_to_wandb(report, config)
        written += [p for p in report.paths if p.name == "report.md"]
    left = sweep.left_unfinished(planned, watch.started)
    stopped_by = signal.Signals(stop.signum).name if stop.signum else None
    print("\n".join(watch.summary(written, left, stopped_by)))
    if stop.signum:
        return 128 + stop.signum  # as a shell reports a process ended by that signal
    if Status.FAILED in watch.states():
        return 1
    return BUSY_EXIT_CODE if left else 0


def _log_report_to_wandb(report, config) -> None:
    from omegaconf import OmegaConf

    from normbench.track.wandb_tracker import log_report

    images = {
        str(p.relative_to(report.out_dir).with_suffix("")): p
        for p in report.paths
        if p.suffix == ".png"
    }
    plain = OmegaConf.to_container(OmegaConf.structured(config))
    try:
        log_report(report.sweep_dir, report.experiment, report.cells, images, plain)
    except Exception as e:  # the report on disk is the record; W&B is a mirror of it
        print(f"normbench: warning: the report was not logged to W&B: {e}", file=sys.stderr)


def _cmd_report(args: list[str]) -> int:
    from normbench.hydra_app import compose, sweep_dir
    from normbench.report import build_report, format_report

    if args and "=" not in args[0]:  # a folder, then at most metric=...
        directory, extra = Path(args[0]), args[1:]
        if any(not a.startswith("metric=") for a in extra):
            raise UserError(
                f"after the sweep folder only metric=... is accepted, got {extra[0]!r} "
                "(e.g. normbench report runs/x metric=val_error_final)"
            )
        metric = extra[-1].split("=", 1)[1] if extra else None
    else:
        cfg = compose(args)
        directory, metric = sweep_dir(cfg), cfg.metric
    if not directory.is_dir():
        raise UserError(f"no sweep directory {directory} (give runs/<experiment>)")
    print(format_report(build_report(directory, metric=metric)))
    return 0


def _cmd_norms(args: list[str]) -> int:
    from normbench.norms import list_norms

    specs = list_norms()
    width = max(len(spec.name) for spec in specs)  # every description starts in one column
    for spec in specs:
        flags = [f for f, on in (("batch statistics", spec.batch_dependent),
                                 ("replaces ReLU", spec.replaces_activation)) if on]  # fmt: skip
        shown = f"  [{', '.join(flags)}]" if flags else ""
        print(f"{spec.name:{width}s} {spec.description}{shown}")
        for option, help_text in spec.options.items():
            print(f"{'':{width}s}   norm.{option}: {help_text}")
    print("\nweight standardization combines with any norm: model.ws=true")
    return 0


def _print_by_task(entries: dict[str, list[tuple[str, str]]], width: int) -> None:
    """Each task's (name, description) entries under a heading, blank lines between tasks."""
    for task, found in entries.items():
        if task != next(iter(entries)):
            print()
        print(f"{task}:")
        for name, description in found:
            print(f"  {name:{width}s} {description}")


def _cmd_models(args: list[str]) -> int:
    """Classifiers, then detectors: a model's name says the cell's task."""
    from normbench.models import list_detection_models, list_models

    _print_by_task(
        {"classification": list_models(), "detection (dataset=fashion_scenes or coco)":
         list_detection_models()}, width=16,
    )  # fmt: skip
    return 0


def _cmd_datasets(args: list[str]) -> int:
    from normbench.data import list_datasets, list_detection_datasets

    _print_by_task(
        {"classification": list_datasets(), "detection": list_detection_datasets()}, width=14
    )
    return 0


def _cmd_worker(args: list[str]) -> int:
    from normbench.train.worker import run_worker

    if len(args) != 1 or not RunDir(Path(args[0])).config.exists():
        raise UserError(f"usage: normbench worker <run_dir> (a directory holding {CONFIG})")
    run_worker(args[0])
    return 0


COMMANDS = {
    "train": _cmd_train,
    "prepare": _cmd_prepare,
    "sweep": _cmd_sweep,
    "report": _cmd_report,
    "norms": _cmd_norms,
    "models": _cmd_models,
    "datasets": _cmd_datasets,
    "worker": _cmd_worker,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(f"usage: normbench <command> [overrides]\n\n{USAGE}")
        return 0
    command, args = argv[0], argv[1:]
    os.environ[COMMAND_ENV] = shlex.join(["normbench", *argv])  # recorded in every cell's metrics
    if command not in COMMANDS:
        print(f"normbench: unknown command {command!r} (allowed: {', '.join(COMMANDS)})",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        return COMMANDS[command](args)
    except UserError as e:
        print(f"normbench: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("normbench: interrupted; finished cells are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
