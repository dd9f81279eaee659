"""scripts/reproduce.py's in-place entries: each finished cell's record is committed as it lands
(only the record: no checkpoint, lock or W&B file), and a cell already committed is not again."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def _reproduce():
    return load_script("reproduce")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout  # fmt: skip


def _cell(experiment: Path, name: str, status: str) -> Path:
    cell = experiment / name
    cell.mkdir(parents=True)
    (cell / "metrics.json").write_text(json.dumps({"status": status}))
    for record in ("history.csv", "config.yaml", "job.json"):
        (cell / record).write_text(record)
    (cell / "checkpoint.pt").write_bytes(b"weights")
    (cell / ".lock").write_text("")
    return cell


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "test@example.com")
    _git(tmp_path, "config", "user.name", "test")
    (tmp_path / "README").write_text("x")
    _git(tmp_path, "add", "README")
    _git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def test_committer_commits_finished_records_only(repo: Path) -> None:
    reproduce = _reproduce()
    experiment = repo / "results" / "exp"
    _cell(experiment, "batch=2,norm=bn,seed=0", "finished")
    _cell(experiment, "batch=2,norm=gn,seed=0", "diverged")
    _cell(experiment, "batch=32,norm=bn,seed=0", "failed")  # retried by the next run: no record
    (repo / "staged-by-someone-else").write_text("x")
    _git(repo, "add", "staged-by-someone-else")

    committer = reproduce.CellCommitter(experiment)
    committer.sweep_once()

    tracked = set(_git(repo, "ls-files", "results").split())
    cell = "results/exp/batch=2,norm=bn,seed=0"
    assert {f"{cell}/{name}" for name in ("metrics.json", "history.csv", "config.yaml",
                                          "job.json")} <= tracked  # fmt: skip
    assert f"{cell}/checkpoint.pt" not in tracked and f"{cell}/.lock" not in tracked
    assert "results/exp/batch=2,norm=gn,seed=0/metrics.json" in tracked
    assert not any("batch=32" in path for path in tracked)
    # One commit per cell, and what another process had staged stays uncommitted.
    assert len(_git(repo, "log", "--oneline").splitlines()) == 3
    assert "staged-by-someone-else" in _git(repo, "diff", "--cached", "--name-only")


def test_committer_skips_cells_committed_before(repo: Path) -> None:
    reproduce = _reproduce()
    experiment = repo / "results" / "exp"
    _cell(experiment, "batch=2,norm=bn,seed=0", "finished")
    reproduce.CellCommitter(experiment).sweep_once()
    commits = len(_git(repo, "log", "--oneline").splitlines())

    again = reproduce.CellCommitter(experiment)  # a later run, e.g. on another machine
    assert again.committed == {experiment / "batch=2,norm=bn,seed=0"}
    again.sweep_once()
    assert len(_git(repo, "log", "--oneline").splitlines()) == commits
