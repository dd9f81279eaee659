"""Real multi-process training (gloo on CPU) against one process emulating the same GPUs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, run_here


def _rows(run_dir: Path, name: str) -> list[dict[str, float]]:
    with open(run_dir / name) as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _only_cell(out: Path) -> Path:
    cells = [p.parent for p in out.glob("*/*/metrics.json")]
    assert len(cells) == 1, cells
    return cells[0]


@pytest.mark.slow
@pytest.mark.parametrize("eval_stats", ["average", "first"])
def test_two_processes_match_one_process_emulating_two_gpus(tmp_path, tiny, eval_stats, capsys):
    common = [*tiny, "norm=bn", f"norm.eval_stats={eval_stats}", "log_every_steps=1"]
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        args = ["train", *common, f"devices={devices}", f"out_dir={out}"]
        # The emulation in this process; the 2 real processes started by a real command.
        result = run_here(args, capsys) if devices == 1 else run_cli(args, cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        runs[devices] = _only_cell(out)

    emulated, real = _rows(runs[1], "steps.csv"), _rows(runs[2], "steps.csv")
    assert len(emulated) == len(real) == 2 * (256 // 16)
    for a, b in zip(emulated, real, strict=True):
        assert a["step"] == b["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)

    # Evaluation: every rank normalizes with the same combined statistics as the emulation
    # (the val loss sums every rank's images, so one rank with other statistics shows), and so
    # does every BN diagnostic.
    for a, b in zip(_rows(runs[1], "history.csv"), _rows(runs[2], "history.csv"), strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4), a["epoch"]
    metrics = {d: json.loads((r / "metrics.json").read_text()) for d, r in runs.items()}
    for mode in ("ema_average", "ema_first", "precise", "batch"):
        assert metrics[1][f"val_error_{mode}"] == metrics[2][f"val_error_{mode}"], mode
    assert metrics[1][f"val_error_ema_{eval_stats}"] == metrics[1]["val_error_final"]

    weights = {
        d: torch.load(r / "checkpoint.pt", weights_only=False)["model"] for d, r in runs.items()
    }
    assert weights[1].keys() == weights[2].keys()
    for name, value in weights[1].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, weights[2][name], rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(value, weights[2][name]), name


def _fail_on_rank_one(message: str) -> None:
    import os

    if os.environ["RANK"] == "1":
        raise RuntimeError(message)


@pytest.mark.slow
def test_a_dying_worker_fails_the_job_naming_its_rank():
    from normbench.train.distributed import WorkerFailed, launch_workers

    with pytest.raises(WorkerFailed, match=r"worker rank 1 failed: .*out of cheese"):
        launch_workers(_fail_on_rank_one, "out of cheese", nprocs=2, run_id="test-dying-worker")


def _check_divergence_on_each_rank(out_dir: str) -> None:
    """Rank r saw its first NaN loss at step STEPS[r]; write the step the check reports."""
    import os
    from types import SimpleNamespace

    import torch.distributed as dist

    from normbench.train.distributed import DistEnv
    from normbench.train.loop import Diverged, Trainer

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    env = DistEnv(rank, world, rank, torch.device("cpu"), "gloo")
    reported = []
    try:
        for steps in DIVERGENCE_CASES:
            trainer = SimpleNamespace(env=env)
            try:
                Trainer._check_divergence(trainer, torch.tensor(steps[rank]))
                reported.append(None)
            except Diverged as e:
                reported.append(e.step)
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.txt").write_text(repr(reported))


# Per case, the first bad step seen by rank 0 and rank 1 (-1: none yet).
DIVERGENCE_CASES = [(10, 9), (-1, 7), (4, -1), (-1, -1), (12, 12)]


@pytest.mark.slow
def test_divergence_is_reported_at_the_first_step_any_rank_saw(tmp_path):
    from normbench.train.distributed import launch_workers

    launch_workers(_check_divergence_on_each_rank, str(tmp_path), nprocs=2, run_id="test-diverge")
    expected = [9, 7, 4, None, 12]  # the earliest over ranks, not the sum (was 19, 7, 4, -, 24)
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text() == repr(expected)


@pytest.mark.slow
def test_prepare_writes_the_cell_and_workers_under_torchrun_train_it(tmp_path, tiny):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    prepared = run_cli(["prepare", *tiny, "epochs=1", f"out_dir={out}"], cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    (run_dir,) = [p.parent for p in out.glob("*/*/config.yaml")]
    assert f"prepared: {run_dir}" in prepared.stdout
    assert f"-m normbench worker {run_dir}" in prepared.stdout
    record = sorted(p.name for p in run_dir.iterdir() if not p.name.startswith("."))
    assert record == ["config.yaml", "job.json"]  # nothing trained

    # The README's recipe: the user's own launcher starts the workers on the prepared cell.
    workers = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "normbench", "worker", str(run_dir)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert workers.returncode == 0, workers.stdout + workers.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["devices"] == 2
    assert "prepare" in metrics["command"]
