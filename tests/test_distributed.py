"""Real multi-process training (gloo on CPU) against one process emulating the same GPUs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import run_cli


def _steps(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "steps.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _only_cell(out: Path) -> Path:
    cells = [p.parent for p in out.glob("*/*/metrics.json")]
    assert len(cells) == 1, cells
    return cells[0]


@pytest.mark.slow
@pytest.mark.parametrize("eval_stats", ["average", "first"])
def test_two_processes_match_one_process_emulating_two_gpus(tmp_path, tiny, eval_stats):
    common = [*tiny, "norm=bn", f"norm.eval_stats={eval_stats}", "log_every_steps=1"]
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        result = run_cli(["train", *common, f"devices={devices}", f"out_dir={out}"], cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        runs[devices] = _only_cell(out)

    emulated, real = _steps(runs[1]), _steps(runs[2])
    assert len(emulated) == len(real) == 2 * (256 // 16)
    for a, b in zip(emulated, real, strict=True):
        assert a["step"] == b["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-12)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5)

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
