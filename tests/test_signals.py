"""Stopping a sweep, with real processes: SIGTERM, SIGINT or SIGHUP to `normbench sweep` ends
every process it started (none is left training), each unfinished cell keeps its checkpoint and
the next sweep resumes it, and the stopped sweep exits 128 + the signal naming those cells. A
cell preempted on its own (its worker process signalled, not the sweep) leaves the sweep
exiting 75, naming the cells. (launcher=slurm's scancel: test_slurm's preemption test.)

A sweep's processes are found by a marker in their environment, which every process it starts
inherits wherever it is re-parented; a failed test kills what it left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli
from test_reliability import ENV, tiny

from normbench import stop
from normbench.cli import BUSY_EXIT_CODE
from normbench.track import rundir

needs_proc = pytest.mark.skipif(not stop.PROC.is_dir(), reason="finds processes in /proc")

MARK = "NORMBENCH_TEST_MARK"
# Two cells of 32 and 64 steps, a checkpoint every 4: a signal sent once both have one usually
# finds both training, but on a slow machine the shorter one may have finished (seen with the
# CPU throttled to the slowest machine's speed), so what is left is read from the run
# directories. Resumed, each runs its remaining steps in seconds.
# The default launcher: its worker processes are what a signal must end.
CELLS = [
    *tiny("launcher=parallel", "dataset.train_size=512", "epochs=1", "checkpoint_every_steps=4"),
    "batch=8,4",
]
LABELS = ("batch=8", "batch=4")  # the cells in the sweep's order, as its lines name them
STARTS_S = 300  # two cells to start and checkpoint, on a shared and busy machine


def _marked(marker: str) -> dict[int, str]:
    """The processes whose environment holds the marker (zombies have none): pid -> command."""
    found = {}
    for entry in stop.PROC.glob("[0-9]*"):
        try:
            if f"{MARK}={marker}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return {pid: command.decode(errors="replace") for pid, command in found.items()}


@dataclass
class Background:
    """A command in the background, its output in a file (a pipe would stay open as long as any
    process it started), every process it starts marked by `marker` in its environment."""

    process: subprocess.Popen
    marker: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def wait_for(self, what: str, condition: Callable[[], object], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"it ended before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def stop_waiting_for(self, timeout: float) -> str:
        """Wait for the command to end: its output."""
        self.process.wait(timeout)
        return self.output()

    def assert_all_ended(self) -> None:
        """Nothing it started still runs. Helpers that ignore SIGTERM (the resource trackers)
        end by themselves once the processes they serve have: in a few seconds."""
        deadline = time.monotonic() + 30
        while _marked(self.marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _marked(self.marker) == {}


@contextlib.contextmanager
def _background(command: list[str], cwd: Path) -> Iterator[Background]:
    """`command` in the background with a fresh marker; on the way out, every process still
    holding the marker is killed."""
    marker = uuid.uuid4().hex
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", **ENV, MARK: marker}
    log = cwd / f"{marker}.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Background(process, marker, log)
    finally:
        for pid in _marked(marker):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait()


def _sweep(args: list[str], cwd: Path):
    return _background([sys.executable, "-m", "normbench", "sweep", *args], cwd)


def _cells(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/*/config.yaml"))


def _both_checkpointed(out: Path) -> Callable[[], bool]:
    return lambda: len(list(out.glob(f"*/*/{rundir.CHECKPOINT}"))) == 2


def _assert_resumable(out: Path, output: str, checkpointed: tuple[str, ...] = LABELS) -> list[str]:
    """The cells left unfinished (at least one) are not recorded as failed, those of them seen
    with a checkpoint before the signal still have it, and the sweep's closing line names
    exactly them; a cell that finished before the signal is recorded as finished. Returns the
    labels of the cells left."""
    cells = {label: _cell(out, label) for label in LABELS}
    left = [label for label, run_dir in cells.items()
            if run_dir is None or not (run_dir / rundir.METRICS).exists()]  # fmt: skip
    assert left, "no cell was training when the signal came"
    for label, run_dir in cells.items():
        if label not in left:
            assert json.loads((run_dir / rundir.METRICS).read_text())["status"] == "finished"
        elif label in checkpointed:
            assert (run_dir / rundir.CHECKPOINT).exists(), run_dir.name
    assert f"unfinished, the same command resumes them: {'; '.join(left)}\n" in output, output
    return left


def _cell(out: Path, label: str) -> Path | None:
    """The cell's run directory; None before its job has begun."""
    found = [p for p in _cells(out) if p.name.startswith(f"{label},")]
    return found[0] if found else None


def _checkpointed(out: Path, label: str) -> Callable[[], bool]:
    return lambda: (cell := _cell(out, label)) is not None and (cell / rundir.CHECKPOINT).exists()


@needs_proc
@pytest.mark.slow
@pytest.mark.parametrize("signum", stop.SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_to_a_sweep_ends_every_process_and_the_next_sweep_resumes(tmp_path, signum):
    out = tmp_path / "out"
    args = [*CELLS, f"out_dir={out}"]
    with _sweep(args, tmp_path) as sweep:
        sweep.wait_for("checkpoint in both cells", _both_checkpointed(out), STARTS_S)
        sent = time.monotonic()
        sweep.process.send_signal(signum)
        output = sweep.stop_waiting_for(stop.GRACE_S + 60)
        # The cells stopped by themselves after a step, not killed at the end of the grace.
        assert time.monotonic() - sent < stop.GRACE_S, output
        sweep.assert_all_ended()
    assert sweep.process.returncode == 128 + signum, output
    assert f"sweep stopped by {signal.Signals(signum).name}" in output
    assert "preempted: checkpoint saved" in output  # the signal was handed to the cells
    assert "Traceback" not in output
    left = _assert_resumable(out, output)
    if signum != signal.SIGTERM:  # the same state as after SIGTERM: resumed once, there
        return

    # One cell after another: the resume is the subject here, not the launcher's processes.
    again = run_cli(["sweep", *args, "launcher=basic"], cwd=tmp_path, timeout=STARTS_S, env=ENV)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("resuming from checkpoint") == len(left), again.stdout
    for run_dir in _cells(out):
        assert json.loads((run_dir / rundir.METRICS).read_text())["status"] == "finished"


@needs_proc
@pytest.mark.slow
def test_a_cell_preempted_on_its_own_leaves_the_sweep_exiting_75_naming_the_cells(tmp_path):
    """SIGTERM to the process running one cell (a preemption, not the sweep stopping): loky
    ends the launch, and the sweep says which cells are left instead of a traceback."""
    out = tmp_path / "out"
    with _sweep([*CELLS, f"out_dir={out}"], tmp_path) as sweep:
        # The longer cell, as soon as it has a checkpoint: waiting for the other one too could
        # outlast it where the second worker process is slow to start (seen at the slowest
        # machine's speed).
        sweep.wait_for("checkpoint in the longer cell", _checkpointed(out, "batch=4"), STARTS_S)
        holder = json.loads((_cell(out, "batch=4") / rundir.LOCK_HOLDER).read_text())["pid"]
        os.kill(holder, signal.SIGTERM)
        output = sweep.stop_waiting_for(stop.GRACE_S + 60)
        sweep.assert_all_ended()
    assert sweep.process.returncode == BUSY_EXIT_CODE, output
    assert "a worker process ended before its cell did (exit codes {SIGTERM(-15)})" in output
    assert "Traceback" not in output
    assert "batch=4" in _assert_resumable(out, output, checkpointed=("batch=4",))


def test_the_summary_names_the_cells_left_and_not_those_another_process_runs(tmp_path, monkeypatch):
    """Of three cells without a result before the sweep: one finishes, one is held by another
    process (it runs the cell: not left), one has nothing (left: named, the exit is 75)."""
    from filelock import FileLock

    from normbench.hydra_app import expand_sweep
    from normbench.logs import SWEEP_KEYS_ENV
    from normbench.sweep import Watch, left_unfinished, plan

    monkeypatch.setenv(SWEEP_KEYS_ENV, "batch")  # as the sweep sets it: the cells' labels
    planned = plan(expand_sweep([*CELLS[:-1], "batch=8,4,2", f"out_dir={tmp_path}"]))
    watch = Watch(planned, live=False)
    finished, held, _ = (cell.run_dir for cell in planned)
    finished.path.mkdir(parents=True)
    finished.write_metrics({"status": "finished"})
    held.path.mkdir(parents=True)
    with FileLock(str(held.lock)):
        left = left_unfinished(planned, watch.started)
        lines = watch.summary([], left)
    assert [cell.config.batch for cell in left] == [2]
    assert "1 finished" in lines[0] and "1 unfinished, 1 run by another process" in lines[0]
    assert lines[-1] == "unfinished, the same command resumes them: batch=2"


@needs_proc
def test_what_still_runs_after_the_grace_is_killed_and_helpers_are_left_to_end(tmp_path):
    """end_processes on a child that ignores SIGTERM in Python (it has a handler that does
    nothing) with a grandchild, and a helper that ignores SIGTERM outright and ends when its
    input closes, as a resource tracker does: the first two are killed after the grace, the
    helper ends by itself once the process it serves has ended."""
    script = textwrap.dedent("""
        import subprocess, sys, time
        from normbench.stop import end_processes
        stubborn = ("import signal, subprocess, sys, time; "
                    "signal.signal(signal.SIGTERM, lambda *a: None); "
                    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                    "print('ready', flush=True); time.sleep(600)")
        helper = ("import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('ready', flush=True); sys.stdin.read()")
        children = [subprocess.Popen([sys.executable, '-c', code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
                    for code in (stubborn, helper)]
        for child in children:
            child.stdout.readline()
        time.sleep(0.5)  # the grandchild has started
        start = time.monotonic()
        print(end_processes(grace_s=1.0), round(time.monotonic() - start, 1), flush=True)
    """)
    with _background([sys.executable, "-c", script], tmp_path) as run:
        output = run.stop_waiting_for(120)
        assert run.process.returncode == 0, output
        killed, seconds = output.split()
        assert int(killed) == 2, output  # the stubborn child and its grandchild, not the helper
        assert 1.0 <= float(seconds) < 30, output
        run.assert_all_ended()


def test_a_stopped_torchrun_agent_hands_the_signal_on_and_gives_the_handlers_back(monkeypatch):
    """torch's agent, told to stop, stops the workers (they write a checkpoint) and raises
    SignalException, having replaced this process's handlers for good: the cell must end by the
    signal, as one process does, not be recorded as failed, and the handlers must come back."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from normbench.train import distributed

    def stopped_agent(config, entrypoint):
        def run(arg):
            signal.signal(signal.SIGTERM, lambda *_: None)  # as torch's agent does
            raise SignalException("Process 1 got signal: 15", sigval=signal.SIGTERM)

        return run

    monkeypatch.setattr("torch.distributed.launcher.api.elastic_launch", stopped_agent)
    handed = []
    monkeypatch.setattr(distributed, "hand_on", handed.append)
    before = signal.getsignal(signal.SIGTERM)
    distributed.launch_workers(print, "run_dir", 2, run_id="cell")
    assert handed == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before
