"""Reliability of a cell: atomic checkpoints, exact resume after SIGKILL, preemption by SIGTERM,
divergence, two sweeps at once, and a full disk. Each result is compared with one uninterrupted
run of the same cell: val errors, train loss and error, the logged steps and the final weights
and optimizer state must be exactly equal (CPU, same thread count), and nothing may be lost.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli, run_here
from filelock import FileLock

from normbench.cli import BUSY_EXIT_CODE, main
from normbench.report import collect_runs
from normbench.report.tables import build_tables
from normbench.track import rundir
from normbench.track.cell import cell_name


def tiny(*changes: str) -> list[str]:
    """TINY with some values changed or added (one value per key)."""
    keys = {change.split("=", 1)[0] for change in changes}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + list(changes)


# The cell of the resume tests uses batch renorm: running statistics, a step counter that relaxes
# its limits, two emulated GPUs and augmentation all have to come back exactly after a restart.
# A log line every 2 steps, so a checkpoint can fall between two.
SMALL = tiny("dataset.train_size=128", "dataset.val_size=32")  # 8 steps per epoch
CELL = [*SMALL, "norm=brn", "norm.warmup_steps=4", "norm.relax_steps=8", "log_every_steps=2"]
STEPS_PER_EPOCH, TOTAL_STEPS = 8, 16
# One cell where only the flow matters: 4 steps, one epoch.
QUICK = tiny("dataset.train_size=64", "dataset.val_size=32", "epochs=1")
# One torch thread per process: two busy cores shared by the processes a test starts at once.
# Every run compared bit for bit uses this same setting.
ENV = {"OMP_NUM_THREADS": "1"}
RESULT_KEYS = ("val_error_final", "val_error_best", "val_error_median5", "train_error_final",
               "steps", "status")  # fmt: skip
HISTORY_KEYS = ("epoch", "step", "train_loss", "train_error", "val_loss", "val_error", "lr")


def _cell_dir(out: Path) -> Path:
    cells = [p.parent for p in out.glob("*/*/config.yaml")]
    assert len(cells) == 1, cells
    return cells[0]


def _rows(path: Path, keys: tuple[str, ...] | None = None) -> list[dict[str, str]]:
    with open(path) as f:
        return [{k: v for k, v in row.items() if keys is None or k in keys}
                for row in csv.DictReader(f)]  # fmt: skip


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _temp_files(run_dir: Path) -> list[Path]:
    return list(run_dir.glob(".*.tmp"))


def assert_same_result(reference: Path, resumed: Path) -> None:
    """Exactly the numbers and the weights of the uninterrupted run."""
    ref_m = json.loads((reference / rundir.METRICS).read_text())
    new_m = json.loads((resumed / rundir.METRICS).read_text())
    assert {k: new_m[k] for k in RESULT_KEYS} == {k: ref_m[k] for k in RESULT_KEYS}
    assert _rows(resumed / rundir.HISTORY, HISTORY_KEYS) == _rows(
        reference / rundir.HISTORY, HISTORY_KEYS
    )
    assert _rows(resumed / rundir.STEPS) == _rows(reference / rundir.STEPS)
    ref_c, new_c = _load(reference / rundir.CHECKPOINT), _load(resumed / rundir.CHECKPOINT)
    assert ref_c["model"].keys() == new_c["model"].keys()
    for name, value in ref_c["model"].items():  # weights and BN buffers, bit for bit
        assert torch.equal(value, new_c["model"][name]), name
    ref_opt, new_opt = ref_c["optimizer"]["state"], new_c["optimizer"]["state"]
    assert ref_opt.keys() == new_opt.keys()
    for index, state in ref_opt.items():  # momentum buffers
        assert torch.equal(state["momentum_buffer"], new_opt[index]["momentum_buffer"]), index
    assert new_c["scheduler"] == ref_c["scheduler"]
    assert _temp_files(resumed) == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The cell run once without interruption."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli(["train", *CELL, f"out_dir={out}"], cwd=out, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    return _cell_dir(out)


@contextlib.contextmanager
def _running(args: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """`normbench <args>` in the background; killed on the way out if still running."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **ENV}
    process = subprocess.Popen(
        [sys.executable, "-m", "normbench", *args], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _wait_for_checkpoint(out: Path, process: subprocess.Popen, reached, timeout: float = 180):
    """Poll the cell's checkpoint until `reached(progress)`; returns that progress."""
    deadline, seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        for path in out.glob(f"*/*/{rundir.CHECKPOINT}"):
            stat = path.stat()
            if (stat.st_ino, stat.st_mtime_ns) != seen:  # a new file (replaced by rename)
                seen = (stat.st_ino, stat.st_mtime_ns)
                progress = _load(path)["progress"]
                if reached(progress):
                    return progress
        assert process.poll() is None, "the run ended before the checkpoint: " + str(
            process.communicate()[0]
        )
        time.sleep(0.01)
    raise AssertionError("no such checkpoint in time")


# ---- 1. atomic writes -------------------------------------------------------------------------


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    rundir.atomic_write_text(target, "old")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left on device") as info:
        rundir.atomic_write_text(target, "new" * 1000)
    assert info.value.filename == str(target)  # the message names the file
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


TORN_WRITE = """
import os, signal, sys
from normbench.cli import BUSY_EXIT_CODE, main

real_fdopen, checkpoint_writes = os.fdopen, []


class Torn:
    '''A file whose write stops half way: the process dies with half the bytes on disk.'''

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def fdopen(fd, *args, **kwargs):
    f = real_fdopen(fd, *args, **kwargs)
    if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
        checkpoint_writes.append(fd)
        if len(checkpoint_writes) == 2:
            return Torn(f)
    return f


os.fdopen = fdopen
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name open files")
def test_crash_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(
    tmp_path, capsys, reference
):
    out = tmp_path / "out"
    script = tmp_path / "torn_write.py"
    script.write_text(TORN_WRITE)
    args = ["train", *CELL, f"out_dir={out}", "checkpoint_every_steps=3"]
    crashed = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env={**os.environ, **ENV},
    )  # fmt: skip
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    run_dir = _cell_dir(out)
    (torn,) = _temp_files(run_dir)  # the half-written next checkpoint
    assert 0 < torn.stat().st_size < (run_dir / rundir.CHECKPOINT).stat().st_size
    assert _load(run_dir / rundir.CHECKPOINT)["progress"]["step"] == 3  # the previous one
    assert not (run_dir / rundir.METRICS).exists()

    resumed = run_here(args, capsys)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming from checkpoint: epoch 1, batch 3, step 3" in resumed.stdout
    assert not torn.exists()
    assert_same_result(reference, run_dir)


# ---- 2. exact resume after SIGKILL -------------------------------------------------------------

# Checkpoints every 3 steps (steps 3, 6, the epoch's end at 8, then 9, 12, 15): killed in epoch 1
# between two log lines, in epoch 1 on one, and in epoch 2 (after an epoch end) between two.
KILL_AT_STEP = [3, 6, 9]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", KILL_AT_STEP)
def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_result(
    tmp_path, capsys, reference, kill_at
):
    out = tmp_path / "out"
    args = ["train", *CELL, f"out_dir={out}", "checkpoint_every_steps=3"]
    with _running(args, tmp_path) as process:
        _wait_for_checkpoint(out, process, lambda p: p["step"] >= kill_at and p["batch_in_epoch"])
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    run_dir = _cell_dir(out)
    killed_at = _load(run_dir / rundir.CHECKPOINT)["progress"]
    print(f"killed with the checkpoint at step {killed_at['step']}, "
          f"batch {killed_at['batch_in_epoch']} of epoch {killed_at['epoch'] + 1}")  # fmt: skip
    assert 0 < killed_at["batch_in_epoch"] < STEPS_PER_EPOCH  # in the middle of an epoch
    assert not (run_dir / rundir.METRICS).exists()

    resumed = run_here(args, capsys)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"batch {killed_at['batch_in_epoch']}, step {killed_at['step']}" in resumed.stdout
    assert_same_result(reference, run_dir)


# ---- 3. preemption ----------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_exits_and_the_rerun_resumes(tmp_path, capsys, reference):
    out = tmp_path / "out"
    args = ["train", *CELL, f"out_dir={out}", "checkpoint_every_steps=3"]
    with _running(args, tmp_path) as process:
        seen = _wait_for_checkpoint(out, process, lambda p: p["step"] >= 9)  # in epoch 2
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGTERM, output  # the signal's own exit, once saved
    run_dir = _cell_dir(out)
    saved = _load(run_dir / rundir.CHECKPOINT)["progress"]
    assert saved["step"] > seen["step"]  # a checkpoint written after the signal came
    expected = f"preempted: checkpoint saved at epoch {saved['epoch'] + 1}, step {saved['step']}"
    assert expected in output
    assert not (run_dir / rundir.METRICS).exists()

    resumed = run_here(args, capsys)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"step {saved['step']}" in resumed.stdout
    assert_same_result(reference, run_dir)


# ---- 4. divergence ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_diverged_cell_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path / "out"
    # lr 1e30 turns the loss to NaN within a couple of steps. A log line only every 50 steps but
    # a checkpoint every step: divergence must be caught before a checkpoint is written.
    sweep = run_cli(
        ["sweep", *QUICK, "norm=bn,gn", "optim.base_lr=1e30,0.1", "log_every_steps=50",
         "checkpoint_every_steps=1", f"out_dir={out}"], cwd=tmp_path, env=ENV,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    cells = {p.name: p for p in out.glob("*/*") if (p / rundir.CONFIG).exists()}
    assert len(cells) == 4
    diverged = [p for name, p in cells.items() if "optim.base_lr=1e+30" in name]
    healthy = [p for name, p in cells.items() if "optim.base_lr=0.1" in name]
    assert len(diverged) == len(healthy) == 2
    for run_dir in diverged:  # the first cell of each norm: the sweep went on after it
        metrics = json.loads((run_dir / rundir.METRICS).read_text())
        assert metrics["status"] == "diverged"
        step = metrics["diverged_at_step"]
        assert isinstance(step, int) and 1 <= step < 4
        assert f"NaN or inf at step {step}" in metrics["error"]
        assert _load(run_dir / rundir.CHECKPOINT)["progress"]["step"] < step  # no NaN state
        assert f"{run_dir.name}: diverged (at step {step})" in sweep.stdout  # the sweep's report
    for run_dir in healthy:
        assert json.loads((run_dir / rundir.METRICS).read_text())["status"] == "finished"

    assert main(["report", str(out / "synthetic-resnet8")]) == 0
    report = capsys.readouterr().out
    assert "2 finished, 2 diverged" in report
    # Each lr is a column of its own (not seeds of one cell): the 1e30 columns read "diverged".
    (table,) = build_tables(collect_runs(out / "synthetic-resnet8"))
    assert table.display.loc["error", "BN optim.base_lr=1e+30"] == "diverged"
    assert table.display.loc["error", "GN optim.base_lr=1e+30"] == "diverged"
    assert float(table.display.loc["error", "GN optim.base_lr=0.1"]) > 0

    # A diverged cell is a result: `train` with the same values (spelt 1e30, which Hydra's sweep
    # wrote 1e+30) finds it and does not train again.
    (bn_diverged,) = [p for p in diverged if "norm=bn" in p.name]
    before = (bn_diverged / rundir.METRICS).read_text()
    again = run_here(["train", *QUICK, "optim.base_lr=1e30", f"out_dir={out}"], capsys)
    assert again.returncode == 0, again.stderr
    assert f"run directory: {bn_diverged}" in again.stdout and "diverged" in again.stdout
    assert (bn_diverged / rundir.METRICS).read_text() == before


# ---- 5. two sweeps at once ----------------------------------------------------------------------


def _starts(run_dir: Path) -> int:
    """How many times training of this cell began (train.log is appended to)."""
    return sum(" INFO cell " in line for line in (run_dir / rundir.LOG).read_text().splitlines())


@pytest.mark.slow
def test_two_sweeps_at_once_run_each_cell_exactly_once(tmp_path):
    out = tmp_path / "out"
    common = [*QUICK, f"out_dir={out}"]
    with (
        _running(["sweep", *common, "norm=bn,gn,ln"], tmp_path) as first,
        _running(["sweep", *common, "norm=gn,bn"], tmp_path) as second,
    ):
        outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs

    cells = sorted(p.parent for p in out.glob("*/*/config.yaml"))
    assert len(cells) == 3
    for run_dir in cells:
        metrics = json.loads((run_dir / rundir.METRICS).read_text())
        assert metrics["status"] == "finished", run_dir.name
        assert _starts(run_dir) == 1, run_dir.name
        assert len(_rows(run_dir / rundir.HISTORY)) == 1
        assert _load(run_dir / rundir.CHECKPOINT)["progress"]["step"] == 4
        assert _temp_files(run_dir) == []
    skipped = sum(out.count("another process is running") + out.count("already finished")
                  for out in outputs)  # fmt: skip
    assert skipped >= 2  # the two shared cells: each left to the process that had it


def test_a_cell_held_by_another_process_is_left_alone(tmp_path):
    out = tmp_path / "out"
    args = ["train", *QUICK, f"out_dir={out}"]
    run_dir = out / "synthetic-resnet8" / cell_name(QUICK, "bn", 8)
    run_dir.mkdir(parents=True)
    with FileLock(str(run_dir / rundir.LOCK)):  # a holder that did not say who it is
        busy = run_cli(args, cwd=tmp_path, env=ENV)
    # Not trained is not success: a script must see it (EX_TEMPFAIL: try again later).
    assert busy.returncode == BUSY_EXIT_CODE == 75, busy.stdout + busy.stderr
    (line,) = busy.stderr.strip().splitlines()
    assert "another process is running this cell" in line and str(run_dir) in line
    assert sorted(p.name for p in run_dir.iterdir()) == [rundir.LOCK]  # nothing written


@pytest.mark.slow
def test_train_on_a_busy_cell_exits_non_zero_naming_the_process_that_holds_it(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["train", *tiny("dataset.train_size=64", "dataset.val_size=32"), f"out_dir={out}"]
    with _running([*args, "epochs=200"], tmp_path) as holder:
        _wait_for_checkpoint(out, holder, lambda progress: progress["step"] >= 1)
        busy = run_here([*args, "epochs=200"], capsys)
        assert holder.poll() is None  # still training: the lock was really held
    assert busy.returncode == BUSY_EXIT_CODE, busy.stdout + busy.stderr
    lines = busy.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    (line,) = lines
    assert f"pid {holder.pid} on {socket.gethostname()}" in line, line
    assert "val top-1 error" not in busy.stdout


# ---- 7. a full disk -----------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name open files")
def test_full_disk_fails_the_cell_naming_the_file_and_keeps_what_was_saved(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    args = ["train", *tiny("dataset.train_size=32", "dataset.val_size=16"), f"out_dir={out}"]
    real_fsync, state = os.fsync, {"full": False}

    def fsync(fd: int) -> None:
        """The disk fills up right after the first checkpoint (end of epoch 1)."""
        if state["full"] and str(out) in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
        if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            state["full"] = True

    monkeypatch.setattr(os, "fsync", fsync)
    assert main(args) == 1
    run_dir = _cell_dir(out)
    log = (run_dir / rundir.LOG).read_text()
    # Epoch 2's history.csv is the first write to fail; then metrics.json cannot be written.
    assert f"No space left on device: '{run_dir / rundir.HISTORY}'" in log
    assert "could not record the failure" in log
    assert not (run_dir / rundir.METRICS).exists()
    history = _rows(run_dir / rundir.HISTORY)
    assert [row["epoch"] for row in history] == ["1"]
    assert _load(run_dir / rundir.CHECKPOINT)["progress"]["epoch"] == 1
    assert _temp_files(run_dir) == []

    monkeypatch.setattr(os, "fsync", real_fsync)  # space again: the rerun resumes
    assert main(args) == 0
    assert json.loads((run_dir / rundir.METRICS).read_text())["status"] == "finished"
    after = _rows(run_dir / rundir.HISTORY)
    assert len(after) == 2 and after[0] == history[0]
