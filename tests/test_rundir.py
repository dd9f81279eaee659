"""The run directory (normbench.track.rundir.RunDir): its records keep their on-disk text, a
claimed cell is refused to everyone else until released, and a job skips a cell with a result."""

from __future__ import annotations

import json
import os

import pytest

from normbench.config import as_config
from normbench.errors import UserError
from normbench.hydra_app import compose
from normbench.track.cell import Cell
from normbench.track.rundir import RECORDED, Claim, RunDir, Status


@pytest.mark.parametrize("status", RECORDED)
def test_the_status_round_trips_through_metrics_json_as_plain_text(tmp_path, status):
    run = RunDir(tmp_path)
    run.write_metrics({"status": status, "val_error_final": 1.5})
    assert json.loads(run.metrics.read_text())["status"] == status.value  # the text of old
    assert run.read_metrics() == {"status": status, "val_error_final": 1.5}
    assert run.status() is status
    assert run.result() == (status if status is not Status.FAILED else None)


def test_a_record_written_as_a_string_reads_as_its_status(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text(json.dumps({"status": "diverged"}))  # as every earlier run wrote it
    assert run.status() is Status.DIVERGED and run.result() is Status.DIVERGED


def test_without_metrics_a_cell_is_unfinished(tmp_path):
    run = RunDir(tmp_path / "not-yet")
    assert (run.read_metrics(), run.status(), run.result()) == (None, Status.UNFINISHED, None)


@pytest.mark.parametrize(
    ("text", "message"),
    [('{"status": "done"}', "unknown status 'done'"), ("{not json", "expected JSON")],
)
def test_a_bad_metrics_file_is_a_user_error_naming_it(tmp_path, text, message):
    run = RunDir(tmp_path)
    run.metrics.write_text(text)
    with pytest.raises(UserError, match=message) as error:
        run.status()
    assert str(run.metrics) in str(error.value)


def test_a_claimed_cell_is_refused_to_another_claim_until_released(tmp_path):
    run = RunDir(tmp_path / "cell")
    with run.claim() as first:
        assert first is Claim.HELD
        holder = run.holder()
        assert f"pid {os.getpid()}" in holder
        with RunDir(run.path).claim() as second:
            assert second is Claim.BUSY
        assert run.holder() == holder  # the refused claim wrote nothing
    assert run.holder() == "a process that has not said which"  # released: no holder
    with run.claim() as again:
        assert again is Claim.HELD


def test_an_error_in_the_block_releases_the_cell(tmp_path):
    run = RunDir(tmp_path)
    with pytest.raises(RuntimeError), run.claim():
        raise RuntimeError("the workers failed")
    with run.claim() as claim:
        assert claim is Claim.HELD


def test_a_forced_rerun_moves_every_record_of_the_result_aside(tmp_path):
    run = RunDir(tmp_path)
    records = [run.metrics, run.history, run.steps, run.config, run.job, run.checkpoint, run.log]
    for path in records:
        path.write_text(path.name)
    archive = run.archive_result()
    assert sorted(p.name for p in archive.iterdir()) == sorted(p.name for p in records)
    assert not any(path.exists() for path in records)
    assert RunDir(tmp_path / "empty").archive_result() is None


def test_a_config_change_that_names_no_science_keeps_the_run_reusable(tmp_path):
    run = RunDir(tmp_path)
    run.config.write_text("batch: 4\nout_dir: /a\nlogger:\n  kind: none\noptim:\n  base_lr: 0.1\n")
    assert run.config_changes({"batch": 4, "out_dir": "/b", "logger": {"kind": "wandb"},
                               "optim": {"base_lr": 0.1}}) == []  # fmt: skip
    assert run.config_changes({"batch": 4, "optim": {"base_lr": 0.2}}) == [
        "optim.base_lr: 0.1 -> 0.2"
    ]


# ---- the job on the run directory: skip, busy, run


@pytest.fixture
def job(tmp_path, tiny, monkeypatch):
    """A cell's config, the cell, its run directory, and the directories workers started on
    (workers that finish at once)."""
    import normbench.job

    overrides = [*tiny, f"out_dir={tmp_path}"]
    config = as_config(compose(overrides))
    cell = Cell.of(config, overrides)
    started = []

    def workers(run, cfg):
        started.append(run.path)
        run.write_metrics({"status": Status.FINISHED, **run.cell().as_dict()})

    monkeypatch.setattr(normbench.job, "_start_workers", workers)
    return config, cell, RunDir(cell.directory(tmp_path)), started


@pytest.mark.parametrize("status", [Status.FINISHED, Status.DIVERGED])
def test_a_cell_with_a_result_is_skipped(job, status):
    from normbench.job import Decision, Outcome, run_cell

    config, cell, run, started = job
    run.path.mkdir(parents=True)
    run.write_metrics({"status": status, **cell.as_dict()})
    assert run_cell(config, cell) == Outcome(Decision.SKIPPED, status)
    assert started == [] and not run.config.exists()


def test_a_failed_cell_is_run_again(job):
    from normbench.job import Decision, Outcome, run_cell

    config, cell, run, started = job
    run.path.mkdir(parents=True)
    run.write_metrics({"status": Status.FAILED, "error": "out of memory", **cell.as_dict()})
    assert run_cell(config, cell) == Outcome(Decision.RAN, Status.FINISHED)
    assert started == [run.path]
    assert run.cell() == cell and run.config.exists()  # job.json and config.yaml written


def test_a_job_on_a_claimed_cell_is_busy_and_writes_nothing(job):
    from normbench.job import Decision, Outcome, run_cell

    config, cell, run, started = job
    with run.claim():
        before = sorted(p.name for p in run.path.iterdir())
        assert run_cell(config, cell) == Outcome(Decision.BUSY)
        assert sorted(p.name for p in run.path.iterdir()) == before
    assert started == []
    assert run_cell(config, cell) == Outcome(Decision.RAN, Status.FINISHED)  # released
