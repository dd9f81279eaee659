"""The cell record (normbench.track.cell.Cell): named by the naming policy beside it, computed
once per job from the composed config and the job's overrides, stored in job.json, and the one
identity that metrics.json, a failure record, Hydra's job directory and the console carry."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from fixtures_report import write_cell
from hydra.core.hydra_config import HydraConfig

from normbench.config import as_config
from normbench.hydra_app import compose
from normbench.track.cell import Cell, cell_name, cell_overrides, is_science_key
from normbench.track.rundir import JOB, RunDir, Status

OVERRIDES = ["norm=gn_ws", "batch=4", "norm.groups=8", "optim.milestones=[0.3,0.6]",
             "logger=none", "out_dir=/tmp/runs", "seed=2"]  # fmt: skip


@pytest.fixture(scope="module")
def composed():
    return compose(OVERRIDES)


def test_a_cell_is_computed_from_its_config_and_overrides(composed):
    config = as_config(composed)
    cell = Cell.of(config, OVERRIDES)
    # The science overrides name it, sorted by key; logger and out_dir change no science.
    assert cell.overrides == {"batch": "4", "norm": "gn_ws", "norm.groups": "8",
                              "optim.milestones": "[0.3,0.6]", "seed": "2"}  # fmt: skip
    assert cell.name == "batch=4,norm=gn_ws,norm.groups=8,optim.milestones=[0.3,0.6],seed=2"
    # What the run is, from the composed config: norm=gn_ws is GN with weight standardization.
    assert (cell.norm, cell.norm_label, cell.groups, cell.group_size) == ("gn", "gn+ws", 8, None)
    assert (cell.batch, cell.gpus, cell.total_batch, cell.seed) == (4, 8, 32, 2)
    assert (cell.experiment, cell.model, cell.dataset) == (
        config.name, config.model.name, config.dataset.name,
    )  # fmt: skip
    assert cell.directory(config.out_dir) == Path("/tmp/runs") / config.name / cell.name
    assert Cell.of(config, reversed(OVERRIDES)) == cell  # whatever the order they were typed in


def test_hydras_job_directory_is_the_cells(composed):
    # Hydra's sweep subdir is resolved from its list of overrides (no parsing of a joined
    # string: the list value's comma stays inside it).
    cell = Cell.of(as_config(composed), OVERRIDES)
    HydraConfig.instance().set_config(composed)
    try:
        assert composed.hydra.sweep.subdir == cell.name
        assert Path(composed.hydra.run.dir) == cell.directory(composed.out_dir)
    finally:
        HydraConfig.instance().cfg = None


def test_the_console_labels_a_cell_by_the_keys_the_sweep_varies(composed, monkeypatch):
    from normbench.logs import SWEEP_KEYS_ENV, cell_label

    cell = Cell.of(as_config(composed), OVERRIDES)
    monkeypatch.setenv(SWEEP_KEYS_ENV, "seed,batch")
    assert cell_label(cell) == "batch=4,seed=2"
    monkeypatch.setenv(SWEEP_KEYS_ENV, "")  # a sweep of one cell: its whole name
    assert cell_label(cell) == cell.name


def test_the_json_record_round_trips_and_is_what_the_report_reads(tmp_path, composed):
    cell = Cell.of(as_config(composed), OVERRIDES)
    record = json.loads(json.dumps(cell.as_dict()))
    assert record["cell"] == cell.name and Cell.from_dict(record) == cell
    assert Cell.from_dict({**record, "status": "finished", "val_error_final": 1.0}) == cell
    # The report's fixtures write the record in the contract's format: the same fields.
    fixture = write_cell(tmp_path / "exp", {"norm": "gn", "batch": 4})
    written = json.loads((fixture / JOB).read_text())["cell"]
    assert written.keys() == record.keys()
    assert Cell.from_dict(written).as_dict() == written


@pytest.mark.slow
def test_metrics_and_a_failure_record_carry_the_cell_the_job_stored(tmp_path, tiny, monkeypatch):
    import normbench.job
    from normbench.job import Decision, Outcome, run_cell

    overrides = [*tiny, "epochs=1", "norm=gn", "model.ws=true", f"out_dir={tmp_path}"]
    config = as_config(compose(overrides))
    expected = Cell.of(config, overrides)
    assert run_cell(config, expected) == Outcome(Decision.RAN, Status.FINISHED)
    run = RunDir(expected.directory(tmp_path))
    metrics = json.loads(run.metrics.read_text())
    assert run.cell() == Cell.from_dict(metrics) == expected
    assert metrics["norm_label"] == "gn+ws"

    def fail(run, cfg):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(normbench.job, "_start_workers", fail)
    rerun = dataclasses.replace(config, rerun=True)
    assert run_cell(rerun, expected) == Outcome(Decision.RAN, Status.FAILED)
    failure = json.loads(run.metrics.read_text())
    assert (failure["status"], failure["error"]) == ("failed", "RuntimeError: out of memory")
    assert Cell.from_dict(failure) == expected


def test_a_worker_refuses_a_directory_that_does_not_say_its_cell(tmp_path):
    from normbench.errors import UserError

    (tmp_path / JOB).write_text(json.dumps({"command": "normbench train", "overrides": {}}))
    with pytest.raises(UserError, match="does not say which cell"):
        RunDir(tmp_path).cell()


def test_the_naming_policy_keeps_the_science_overrides_in_one_spelling():
    typed = ["out_dir=/x", "logger=wandb", "+dataset.root=/data", "diagnostics.enabled=false",
             "optim.base_lr=1e30", "~norm.groups=8", "norm=gn", "seed=1"]  # fmt: skip
    assert cell_overrides(typed, "gn", 4) == {
        "batch": "4", "norm": "gn", "norm.groups": "8", "optim.base_lr": "1e+30", "seed": "1",
    }  # fmt: skip
    # Hydra's spelling of a swept float names the same cell as the one typed.
    assert cell_name(["optim.base_lr=1e+30"], "bn", 4) == cell_name(["optim.base_lr=1e30"], "bn", 4)
    assert not is_science_key("+logger.project") and is_science_key("optim.base_lr")


@pytest.fixture
def cell_of_calls(monkeypatch):
    """Every Cell.of call from here on, by the overrides it was given."""
    calls: list[list[str]] = []
    compute = Cell.of.__func__

    def counted(cls, cfg, overrides):
        calls.append(list(overrides))
        return compute(cls, cfg, overrides)

    monkeypatch.setattr(Cell, "of", classmethod(counted))
    return calls


@pytest.fixture
def instant_workers(monkeypatch):
    """Workers that finish at once: the job's flow without training."""
    import normbench.job

    def finish(run, cfg):
        run.write_metrics({"status": Status.FINISHED, **run.cell().as_dict()})

    monkeypatch.setattr(normbench.job, "_start_workers", finish)


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_a_cli_job_composes_its_cell_once(tmp_path, tiny, monkeypatch, command, cell_of_calls,
                                          instant_workers):  # fmt: skip
    from normbench.cli import main
    from normbench.track.environment import COMMAND_ENV

    monkeypatch.setenv(COMMAND_ENV, "")  # main() records its command there: restored after
    assert main([command, *tiny, f"out_dir={tmp_path}"]) == 0
    assert len(cell_of_calls) == 1
    assert (tmp_path / "synthetic-resnet8").is_dir()


def test_a_sweep_job_composes_its_cell_once(tmp_path, tiny, monkeypatch, cell_of_calls,
                                            instant_workers):  # fmt: skip
    from normbench.hydra_app import multirun
    from normbench.logs import SWEEP_ENV

    monkeypatch.setenv(SWEEP_ENV, "")  # multirun() tells the cells the sweep's size there
    multirun([*tiny, "launcher=basic", "norm=bn,gn", f"out_dir={tmp_path}"], total=2)
    assert len(cell_of_calls) == 2  # one per job
    finished = [RunDir(p).status() for p in (tmp_path / "synthetic-resnet8").iterdir()
                if p.is_dir()]  # fmt: skip
    assert sorted(finished) == [Status.FINISHED, Status.FINISHED]
