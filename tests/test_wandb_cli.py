"""W&B through the real command: a tiny sweep in offline mode, read back by decoding the
offline run files (tests/wandb_records.py), plus resume and logger=none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, run_here
from wandb_records import (
    config,
    exit_code,
    history_rows,
    read_records,
    run_files,
    run_info,
    summary,
)


def _env(home: Path) -> dict[str, str]:
    """Offline, no credentials, nothing written to the real home directory."""
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "NETRC": str(home / "no-netrc")}
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        env[name] = str(home / name.lower())
    return env


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("wandb_sweep")
    from conftest import TINY

    args = [a for a in TINY if not a.startswith("logger=")]
    result = run_cli(
        ["sweep", *args, "logger=wandb", "name=wb", "norm=bn,gn", f"out_dir={root / 'runs'}"],
        cwd=root, env=_env(root),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "runs" / "wb"


def _cell_records(cell: Path) -> list:
    files = run_files(cell / "wandb")
    assert len(files) == 1, files
    records = read_records(files[0])
    assert exit_code(records) == 0
    return records


@pytest.mark.slow
def test_each_cell_is_one_offline_run_with_metrics_config_and_summary(sweep):
    cells = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert [json.loads((c / "metrics.json").read_text())["norm"] for c in cells] == ["bn", "gn"]
    ids = set()
    for cell in cells:
        records = _cell_records(cell)
        metrics = json.loads((cell / "metrics.json").read_text())
        info = run_info(records)
        ids.add(info["id"])
        assert info["id"] == (cell / "wandb_id.txt").read_text().strip()
        assert info["group"] == "wb"
        assert f"norm:{metrics['norm']}" in info["tags"] and "batch:8" in info["tags"]
        cfg = config(records)
        assert cfg["norm"]["name"] == metrics["norm"] and cfg["batch"] == 8 and cfg["gpus"] == 2

        rows = history_rows(records)
        steps = [r for r in rows if "train/loss" in r]
        logged = (cell / "steps.csv").read_text().splitlines()[1:]
        assert len(steps) == len(logged) == 2  # 16 steps/epoch < log_every_steps: epoch ends
        assert steps[-1]["train/loss"] == pytest.approx(float(logged[-1].split(",")[2]))
        epochs = [r for r in rows if "epoch/val_error" in r]
        history = (cell / "history.csv").read_text().splitlines()[1:]
        assert len(epochs) == len(history) == 2
        assert epochs[-1]["epoch/val_error"] == pytest.approx(metrics["val_error_final"])

        final = summary(records)
        for key in ("val_error_median5", "val_error_final", "val_error_best"):
            assert final[key] == pytest.approx(metrics[key])
    assert len(ids) == 2  # one run per cell, never merged


@pytest.mark.slow
def test_the_report_is_logged_as_a_report_run_with_table_and_plots(sweep):
    files = run_files(sweep / "report" / "wandb")
    assert len(files) == 1
    records = read_records(files[0])
    info = run_info(records)
    assert info["job_type"] == "report" and info["group"] == "wb"
    logged = {k for row in history_rows(records) for k in row}
    assert "results" in logged
    assert {"curves/" + p.stem for p in (sweep / "report" / "curves").glob("*.png")} <= logged


@pytest.mark.slow
def test_a_resumed_cell_continues_the_same_run(sweep, tmp_path):
    cell = next(p for p in sweep.iterdir() if ",norm=gn" in p.name)
    run_id = (cell / "wandb_id.txt").read_text().strip()
    # Pretend the cell was interrupted after its first epoch: drop the result, keep checkpoint.
    (cell / "metrics.json").unlink()
    from conftest import TINY

    args = [a for a in TINY if not a.startswith("logger=")]
    result = run_cli(
        ["train", *args, "logger=wandb", "name=wb", "norm=gn", f"out_dir={sweep.parent}"],
        cwd=sweep.parent.parent, env=_env(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    files = run_files(cell / "wandb")
    assert len(files) == 2
    assert run_info(read_records(files[-1]))["id"] == run_id


@pytest.mark.slow
def test_logger_none_writes_no_wandb_files(tmp_path, tiny, capsys):
    result = run_here(["train", *tiny, "epochs=1", f"out_dir={tmp_path / 'runs'}"], capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (next((tmp_path / "runs").glob("*/*/metrics.json"))).exists()
    assert not list(tmp_path.rglob("wandb*")) and not list(tmp_path.rglob("*.wandb"))
