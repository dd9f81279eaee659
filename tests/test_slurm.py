"""launcher=slurm against a real single-node SLURM (scripts/slurm_local.sh, started once for the
module): a sweep of two cells run as two-task jobs, refused submissions, preemption, requeue and
cancel. Without SLURM: what each cell asks for, and ranks started outside normbench waiting for
rank 0 to write config.yaml.

The SLURM tests skip, saying why, where Debian's slurm-wlm and munge are not installed or this
is not root (slurmd needs it); .ci/run installs the packages when it can.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY, run_cli
from test_reliability import _load, assert_same_result

from normbench.cli import BUSY_EXIT_CODE
from normbench.report import collect_runs
from normbench.track import rundir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
SLURM = ["launcher=slurm", "hydra.launcher.partition=debug"]  # all a CPU-only cluster needs
# The embedded data set: no files to read, wherever the tests run.
CELL = [*TINY, "dataset=synthetic"]
# One CPU-bound thread per process, as in test_reliability: results are compared bit for bit.
ENV = {"OMP_NUM_THREADS": "1"}
# The preemption cell: 2 epochs of 128 steps (about 2 s each on one core), a checkpoint every 8
# steps, so a signal sent after a checkpoint arrives while the cell still trains.
LONG = [o for o in CELL if not o.startswith(("dataset.train_size", "norm="))] + [
    "dataset.train_size=2048", "norm=brn", "checkpoint_every_steps=8", "log_every_steps=8",
]  # fmt: skip


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the local SLURM needs root (slurmd)"
    tools = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # the daemons
    absent = [tool for tool in tools if shutil.which(tool, path=path) is None]
    if absent:
        return (
            f"SLURM is not installed ({', '.join(absent)} missing: apt-get install slurm-wlm munge)"
        )
    return None


@pytest.fixture(scope="module")
def slurm() -> Iterator[dict[str, str]]:
    """A running one-node cluster; the environment that points SLURM's commands at it."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    # Not under pytest's own temporary folder: munged wants every folder above its socket open
    # to all users, and pytest's are private.
    folder = Path(tempfile.mkdtemp(prefix="normbench-slurm-"))
    started = subprocess.run([str(SCRIPT), "start", str(folder)], capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {**ENV, "SLURM_CONF": str(folder / "slurm.conf")}
    finally:
        subprocess.run([str(SCRIPT), "stop", str(folder)], check=True)
        shutil.rmtree(folder)


def _cells(out: Path) -> list[Path]:
    return sorted(p.parent for p in out.glob("*/*/config.yaml"))


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / rundir.METRICS).read_text())


def _squeue(env: dict[str, str]) -> list[tuple[str, str]]:
    """(job id, state) of every job the controller knows, array tasks as 12_0."""
    listing = subprocess.run(
        ["squeue", "-h", "-r", "-t", "all", "-o", "%i %T"], capture_output=True, text=True,
        check=True, env={**os.environ, **env},
    ).stdout  # fmt: skip
    return [tuple(line.split()) for line in listing.splitlines()]


def _slurm(env: dict[str, str], *command: str) -> None:
    subprocess.run(command, check=True, env={**os.environ, **env})


def _sweep_in_background(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "normbench", "sweep", *args], cwd=cwd, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_SILENT": "true", **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip


def _wait_for(what: str, condition, process: subprocess.Popen, timeout: float = 120):
    """Poll `condition()` until it returns something true, while the sweep still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert process.poll() is None, f"the sweep ended before {what}: {process.communicate()[0]}"
        time.sleep(0.02)
    raise AssertionError(f"no {what} within {timeout} s")


def _checkpoint_after(out: Path, step: int):
    """A condition: the cell's checkpoint has passed `step` (returns its progress)."""

    def reached() -> dict | None:
        for path in out.glob(f"*/*/{rundir.CHECKPOINT}"):
            try:
                progress = _load(path)["progress"]
            except (OSError, EOFError, RuntimeError):  # replaced while being read
                return None
            if progress["step"] > step:
                return progress
        return None

    return reached


def _running_job(env: dict[str, str]):
    def running() -> str | None:
        jobs = [job for job, state in _squeue(env) if state == "RUNNING"]
        return jobs[0] if len(jobs) == 1 else None

    return running


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The preemption cell run here once without interruption."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli(["train", *LONG, f"out_dir={out}"], cwd=out, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = _cells(out)
    return run_dir


# ---- what a cell asks for (no SLURM needed) ---------------------------------------------------


@pytest.fixture
def sinfo(tmp_path, monkeypatch):
    """A stand-in for SLURM's sinfo: a CPU partition (the default) and a GPU partition."""
    from normbench.slurm import partition_has_gpus

    fake = tmp_path / "bin" / "sinfo"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf 'cpu* (null)\\ngpu gpu:a100:8(S:0-1)\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    partition_has_gpus.cache_clear()
    yield
    partition_has_gpus.cache_clear()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [  # tasks per node, GPUs per node, CPUs per task, GB per node
        ([], (1, None, 1, 2)),  # the default partition has no GPU: one process emulates them
        (["devices=2"], (2, None, 1, 4)),
        (["hydra.launcher.partition=gpu", "gpus=4"], (4, 4, 1, 8)),  # a task per GPU
        (["hydra.launcher.partition=gpu", "gpus=8", "hydra.launcher.nodes=2"], (4, 4, 1, 8)),
        (["hydra.launcher.partition=gpu", "accelerator=cpu"], (1, None, 1, 2)),
        (["accelerator=cuda", "gpus=8", "dataset=imagenet"], (8, 8, 9, 80)),  # 8 loader workers
        (["hydra.launcher.partition=gpu", "devices=1", "cpu_threads=4"], (1, 1, 4, 2)),
    ],
)
def test_a_cell_asks_for_the_processes_gpus_cpus_and_memory_it_uses(sinfo, overrides, expected):
    from normbench.hydra_app import compose

    launcher = compose(["launcher=slurm", *overrides]).hydra.launcher
    keys = ("tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb")
    assert tuple(launcher[key] for key in keys) == expected


# ---- a sweep ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_runs_each_cell_as_a_job_sized_from_the_cell(slurm, tmp_path):
    """Two cells, each a two-task job (devices=2: gloo, ranks from SLURM's environment); BN's
    must agree with one process emulating the two GPUs up to float noise. A rerun submits
    nothing."""
    out = tmp_path / "out"
    common = [*CELL, "logger=wandb", "log_every_steps=1"]
    args = ["sweep", *common, "norm=bn,gn", "devices=2", *SLURM, f"out_dir={out}"]
    first = run_cli(args, cwd=tmp_path, env=slurm)
    assert first.returncode == 0, first.stdout + first.stderr
    cells = {_metrics(d)["norm"]: d for d in _cells(out)}
    assert sorted(cells) == ["bn", "gn"]
    for run_dir in cells.values():
        assert _metrics(run_dir)["status"] == "finished", run_dir.name
        assert _metrics(run_dir)["devices"] == 2, run_dir.name
        assert list(run_dir.glob("wandb/offline-run-*")), f"no W&B offline run in {run_dir.name}"
    sweep_dir = out / "synthetic-resnet8"
    assert (sweep_dir / "report" / "report.md").exists()
    # On a CPU-only cluster: a task per process, one CPU each, 2 GB per task, no GPU.
    assert "submitted 2 cell(s) as SLURM job" in first.stdout
    assert "tasks_per_node=2, cpus_per_task=1, mem_gb=4)" in first.stdout
    (script,) = sweep_dir.glob(".submitit/*/*_submission.sh")
    sbatch = [line for line in script.read_text().splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --signal=USR1@120" in sbatch
    assert not [line for line in sbatch if "gpu" in line or "gres" in line], sbatch
    assert len(list(sweep_dir.glob(".submitit/*/*_1_log.out"))) == 2  # the tasks of rank 1

    emulated = run_cli(["train", *common, f"out_dir={tmp_path / 'one'}"], cwd=tmp_path, env=ENV)
    assert emulated.returncode == 0, emulated.stdout + emulated.stderr
    (one,) = _cells(tmp_path / "one")
    a, b = (pd.read_csv(d / rundir.STEPS) for d in (one, cells["bn"]))
    assert len(a) == len(b) == 2 * (256 // 16)
    assert a["step"].tolist() == b["step"].tolist()
    pd.testing.assert_series_equal(a["lr"], b["lr"], rtol=1e-12)
    pd.testing.assert_series_equal(a["train_loss"], b["train_loss"], rtol=1e-4, atol=1e-5)
    weights = [_load(d / rundir.CHECKPOINT)["model"] for d in (one, cells["bn"])]
    for name, value in weights[0].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, weights[1][name], rtol=1e-3, atol=1e-4, msg=name)

    jobs = _squeue(slurm)
    again = run_cli(args, cwd=tmp_path, env=slurm)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "submitted" not in again.stdout
    assert again.stdout.count("already finished") == 2
    assert _squeue(slurm) == jobs  # no job submitted


def _sweep_error(monkeypatch, capsys, tmp_path, *changes: str) -> str:
    """`normbench sweep` in this process; its stderr, after checking for exit 2 and one line."""
    from normbench.cli import main
    from normbench.logs import SWEEP_ENV

    for name in (SWEEP_ENV, "SUBMITIT_PREEMPT_SIGNAL"):  # restored afterwards
        monkeypatch.setenv(name, "")
    code = main(["sweep", *CELL, "norm=bn,gn", *SLURM, *changes, f"out_dir={tmp_path}"])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("normbench: "), stderr
    return stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.partition=nosuch", "SLURM refused the jobs: invalid partition"),
        ("hydra.launcher.gpus_per_node=1", "Invalid generic resource (gres) specification"),
    ],
)
def test_a_refused_submission_is_one_line(slurm, monkeypatch, capsys, tmp_path, override, message):
    monkeypatch.setenv("SLURM_CONF", slurm["SLURM_CONF"])
    assert message in _sweep_error(monkeypatch, capsys, tmp_path, override)


def test_without_slurm_commands_the_sweep_says_so_in_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # python, no SLURM command
    assert "sbatch, srun, squeue not found" in _sweep_error(monkeypatch, capsys, tmp_path)


# ---- preemption, requeue, cancel -------------------------------------------------------------


def _starts(run_dir: Path) -> list[str]:
    """The checkpoint each restart of the cell's training resumed from (train.log)."""
    if not (run_dir / rundir.LOG).exists():
        return []
    lines = (run_dir / rundir.LOG).read_text().splitlines()
    return [line.split(" INFO ", 1)[1] for line in lines if "resuming from checkpoint" in line]


def _resumed(run_dir: Path, times: int):
    return lambda: run_dir.is_dir() and len(_starts(run_dir)) >= times


@pytest.mark.slow
def test_preempted_requeued_and_cancelled_jobs_resume_to_the_uninterrupted_result(
    slurm, tmp_path, reference
):
    """One cell interrupted three ways while it trains, each after a checkpoint: SLURM's warning
    before a time limit (SIGUSR1: checkpoint, submitit requeues), an administrator's requeue
    (SIGTERM: checkpoint, SLURM requeues), and scancel (SIGTERM: checkpoint, the job ends, the
    cell stays unfinished). The next sweep resumes it; the result is the uninterrupted one."""
    out = tmp_path / "out"
    args = [*LONG, *SLURM, f"out_dir={out}"]
    run_dir = out / reference.parent.name / reference.name
    sweep = _sweep_in_background(args, tmp_path, slurm)
    try:
        for restarts, interrupt in enumerate((["scancel", "--signal=USR1"], ["scontrol", "requeue"],
                                              ["scancel"])):  # fmt: skip
            _wait_for("a resumed run", _resumed(run_dir, restarts), sweep)
            step = _load(run_dir / rundir.CHECKPOINT)["progress"]["step"] if restarts else 0
            _wait_for("a checkpoint", _checkpoint_after(out, step), sweep)
            _slurm(slurm, *interrupt, _wait_for("the running job", _running_job(slurm), sweep))
        output, _ = sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert "ended CANCELLED before the cell finished" in output, output
    assert sweep.returncode == BUSY_EXIT_CODE, output  # left unfinished: not done, not failed
    assert "unfinished, the same command resumes them: " in output
    assert not (run_dir / rundir.METRICS).exists()  # never "finished"
    assert collect_runs(run_dir.parent)["status"].tolist() == ["unfinished"]
    assert (run_dir / rundir.LOG).read_text().count("preempted: checkpoint saved") == 3
    p = _load(run_dir / rundir.CHECKPOINT)["progress"]

    again = run_cli(["sweep", *args], cwd=tmp_path, env=slurm)
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = f"epoch {p['epoch'] + 1}, batch {p['batch_in_epoch']}, step {p['step']}"
    assert _starts(run_dir)[-1] == f"resuming from checkpoint: {resumed}"
    assert len(_starts(run_dir)) == 3
    assert_same_result(reference, run_dir)


# ---- ranks started outside normbench (torchrun, srun) ----------------------------------------


@pytest.mark.slow
def test_ranks_wait_for_rank_0_to_write_the_config(tmp_path):
    """Rank 1 starts first, long before rank 0 has written config.yaml: it must wait for it."""
    out = tmp_path / "out"
    args = [sys.executable, "-m", "normbench", "train", *CELL, "devices=2", f"out_dir={out}"]
    port = _free_port()
    env = {**os.environ, **ENV, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}  # fmt: skip
    ranks = []
    for rank in (1, 0):
        ranks.append(subprocess.Popen(
            args, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        ))  # fmt: skip
        if rank == 1:
            time.sleep(5)  # rank 1 has composed its config and looks for the cell's files
            assert not list(out.glob("*/*/config.yaml"))
    outputs = [p.communicate(timeout=300)[0] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs
    (run_dir,) = _cells(out)
    assert _metrics(run_dir)["status"] == "finished" and _metrics(run_dir)["devices"] == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
