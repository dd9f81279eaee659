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


def test_prepare_sweeps_run_only_while_a_cell_is_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The detection table's pretraining runs first on a fresh machine, and not at all where
    every detection cell's record is committed (a clone that only rebuilds the report)."""
    reproduce = _reproduce()
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    monkeypatch.setattr(reproduce, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(reproduce, "yardstick", lambda scratch: 1000.0)
    monkeypatch.setattr(reproduce, "normbench", lambda args: None)  # the report
    ran: list[list[str]] = []
    monkeypatch.setattr(reproduce, "sweep", lambda args, out: (ran.append(args), ("", 0.0))[1])
    entry = "fashion_scenes-detect"
    sweeps = reproduce.ENTRIES[entry]
    experiment = tmp_path / "results" / "fashion_scenes-detect"
    experiment.mkdir(parents=True)  # what the sweeps would have made

    reproduce.reproduce(entry, tmp_path / "runs", commit_cells=False, scratch=tmp_path / "s")
    assert ran == [*reproduce.PREPARE[entry], *sweeps]

    # Every cell finished (as after a clone of a complete table): the pretraining is skipped.
    cells = [name for args in sweeps for name in reproduce.unfinished_cells(args, Path("results"))]
    assert len(cells) == 15  # BN*, BN, SyncBN, GN and GN from scratch x 3 seeds
    for name in cells:
        _cell(experiment, name, "finished")
    ran.clear()
    reproduce.reproduce(entry, tmp_path / "runs", commit_cells=False, scratch=tmp_path / "s")
    assert ran == sweeps
    assert "first, while a cell below is unfinished" in (experiment / "RUN.md").read_text()
