"""`normbench sweep`: the grid, one run directory per cell, skipping finished cells, forced
reruns that keep the old result, the launchers, and the experiments' grids."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from conftest import run_cli, run_here

from normbench.hydra_app import expand_sweep


def _cells(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    from conftest import TINY

    root = tmp_path_factory.mktemp("sweep")
    # The default launcher (cells at once in worker processes), as a user's first sweep runs.
    args = ["sweep", *TINY, "launcher=parallel", "name=tiny", "norm=bn,gn",
            f"out_dir={root / 'runs'}"]  # fmt: skip
    first = run_cli(args, cwd=root)
    assert first.returncode == 0, first.stdout + first.stderr
    return root, args, first


@pytest.mark.slow
def test_a_two_cell_sweep_writes_one_directory_per_cell_and_a_report(swept):
    root, _, first = swept
    sweep_dir = root / "runs" / "tiny"
    cells = _cells(sweep_dir)
    assert sorted(m["norm"] for m in cells.values()) == ["bn", "gn"]
    assert all(m["status"] == "finished" and m["total_batch"] == 16 for m in cells.values())
    assert "] cell 1/2" in first.stdout and "] cell 2/2" in first.stdout
    report = sweep_dir / "report"
    assert (report / "report.md").stat().st_size > 0 and (report / "cells.csv").exists()
    table = (report / "report.md").read_text()
    for m in cells.values():  # the printed and written tables hold the cells' numbers
        assert f"{m['val_error_median5']:.2f}" in table
        assert f"{m['val_error_median5']:.2f}" in first.stdout


@pytest.mark.slow
def test_rerunning_a_sweep_skips_finished_cells_and_rerun_true_archives(swept, capsys):
    root, args, _ = swept
    sweep_dir = root / "runs" / "tiny"
    before = {name: (sweep_dir / name / "metrics.json").read_bytes() for name in _cells(sweep_dir)}
    launched = (sweep_dir / "multirun.yaml").stat().st_mtime_ns  # Hydra writes it per launch
    again = run_here(args, capsys)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skip ") == 2 and "epoch 1/" not in again.stdout
    assert {n: (sweep_dir / n / "metrics.json").read_bytes() for n in before} == before
    # Every cell has its result: nothing is launched (no worker processes, no SLURM jobs).
    assert (sweep_dir / "multirun.yaml").stat().st_mtime_ns == launched

    forced = run_cli([*args[:-2], "norm=gn", args[-1], "rerun=true", "launcher=basic"], cwd=root)
    assert forced.returncode == 0, forced.stderr
    gn_cell = next(n for n in before if ",norm=gn" in n)
    archived = list((sweep_dir / gn_cell / "archive").glob("*/metrics.json"))
    assert len(archived) == 1 and archived[0].read_bytes() == before[gn_cell]
    assert "epoch 1/" in forced.stdout


@pytest.mark.slow
def test_a_finished_cell_is_never_reused_for_another_config(swept, capsys):
    root, args, _ = swept
    sweep_dir = root / "runs" / "tiny"
    before = {name: (sweep_dir / name / "metrics.json").read_bytes() for name in _cells(sweep_dir)}
    # As if a default had changed since the cell ran: base_lr does not name the cell, so without
    # the check the old result would be reported as the answer to the new config.
    config = sweep_dir / sorted(before)[0] / "config.yaml"
    original = config.read_text()
    assert "base_lr: 0.1\n" in original
    config.write_text(original.replace("base_lr: 0.1\n", "base_lr: 0.3\n"))
    try:
        changed = run_here(args, capsys)
    finally:
        config.write_text(original)
    assert changed.returncode == 2
    lines = changed.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.base_lr: 0.3 -> 0.1" in lines[0], changed.stderr
    assert "rerun=true" in lines[0] and "Traceback" not in changed.stderr
    assert "epoch 1/" not in changed.stdout
    assert {n: (sweep_dir / n / "metrics.json").read_bytes() for n in before} == before
    # Settings that do not change what a cell computes still reuse it.
    quiet = run_here([*args, "log_every_steps=7", "cpu_threads=2"], capsys)
    assert quiet.returncode == 0 and quiet.stdout.count("skip ") == 2, quiet.stderr


@pytest.mark.slow
def test_a_sweep_over_two_experiments_reports_both_and_names_every_line(tmp_path, tiny):
    tiny = [o for o in tiny if not o.startswith(("model=", "batch="))]
    args = ["sweep", *tiny, "epochs=1", "model=resnet8,resnet14", "batch=8,4"]
    result = run_cli([*args, f"out_dir={tmp_path / 'runs'}"], cwd=tmp_path)  # a pipe, not a tty
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for model in ("resnet8", "resnet14"):  # each experiment folder gets its own report
        report = tmp_path / "runs" / f"synthetic-{model}" / "report" / "report.md"
        assert report.is_file(), out
        assert f"report: {report}" in out
    assert "4 cells, 4 finished, 0 skipped (a result already there), 0 failed, 0 diverged" in out

    assert len(list((tmp_path / "runs").glob("*/*/metrics.json"))) == 4
    # Parallel cells interleave: each line says whose it is, by the values the sweep varies.
    labels = {f"batch={b},model={m}" for b in (8, 4) for m in ("resnet8", "resnet14")}
    cell_lines = out[: out.index("normbench report:")].splitlines()[1:]  # after "sweep: ..."
    for line in cell_lines:
        assert line.startswith("[sweep] ") or line[1:].split("] ")[0] in labels, line
    assert any(line.startswith("[") and "epoch 1/1" in line for line in cell_lines)
    assert any(line.startswith("[sweep] ") and "/4 cells done" in line for line in cell_lines)
    # The slowest cells (4 images per GPU: twice the steps) start first.
    started = [line[1:].split("] ")[0] for line in cell_lines if re.search(r"] cell \d/4$", line)]
    assert len(started) == 4 and all("batch=4" in n for n in started[:2]), started


def test_a_sweep_hands_hydra_its_costliest_cells_first(tmp_path, monkeypatch):
    from normbench.sweep import costliest_first, plan

    monkeypatch.chdir(tmp_path)  # planning reads runs/<cell>/: not the checkout's own runs
    planned = plan(expand_sweep(["experiment=mini-batch", "logger=none"]))
    overrides = costliest_first(planned)
    assert overrides[:3] == ["hydra.sweeper.params=null", "batch=2,4,8,16,32", "norm=bn,gn"]
    # The same cells as the experiment's grid, only in another order.
    assert sorted(map(sorted, expand_sweep(overrides[1:]))) == sorted(
        sorted(c.overrides) for c in planned
    )
    # A key given twice is set by its last value, as Hydra does.
    twice = costliest_first(plan(expand_sweep(["logger=none", "batch=8", "batch=8,4"])))
    assert twice == ["hydra.sweeper.params=null", "batch=4,8", "logger=none"]
    lists = plan(expand_sweep(["logger=none", "batch=4,2", "optim.milestones=[0.5],[0.3,0.6]"]))
    assert costliest_first(lists) is None  # values Hydra would parse: the grid as typed


def test_on_a_terminal_a_sweep_shows_a_live_table_of_its_cells(tmp_path, monkeypatch):
    from rich.console import Console

    from normbench.logs import LIVE_ENV, SWEEP_KEYS_ENV, setup_logging
    from normbench.sweep import Watch, plan, swept_keys

    cells = expand_sweep(["logger=none", "dataset=synthetic", "epochs=2", "batch=8,4",
                          f"out_dir={tmp_path}"])  # fmt: skip
    planned = plan(cells)
    monkeypatch.setenv(SWEEP_KEYS_ENV, ",".join(swept_keys(planned)))
    watch = Watch(planned, live=True)
    running = {c.config.batch: c.run_dir for c in planned}[8]
    running.path.mkdir(parents=True)
    running.job.write_text("{}")  # written when a cell starts
    running.history.write_text("epoch,val_error,images_per_s\n1,42.5,123.4\n")
    console = Console(record=True, width=120)
    console.print(watch.table())
    text = console.export_text()
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines()]
    assert ["batch=8", "running", "1/2", "42.50", "123"] in rows
    assert ["batch=4", "waiting", "0/2", "", ""] in rows
    assert "0/2 cells done" in text
    # The cells print only warnings meanwhile: the table is their progress.
    monkeypatch.setenv(LIVE_ENV, "1")
    (console_handler,) = setup_logging(cell="batch=8").handlers
    assert console_handler.level == logging.WARNING


@pytest.mark.slow
def test_the_local_submitit_launcher_runs_the_cells(tmp_path, tiny):
    args = ["sweep", *tiny, "epochs=1", "launcher=local", "name=loc", "batch=8,4"]
    result = run_cli([*args, f"out_dir={tmp_path / 'runs'}"], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    cells = _cells(tmp_path / "runs" / "loc")
    assert sorted(m["batch"] for m in cells.values()) == [4, 8]


@pytest.mark.parametrize(
    ("experiment", "count", "axes"),
    [
        ("mini-batch", 10, {"norm", "batch"}),
        ("mini-norms", 4, {"norm"}),
        ("mini-groups", 7, {"norm.groups"}),
        ("mini-group-size", 7, {"norm.group_size"}),
        ("paper-batch", 10, {"norm", "batch"}),
        ("paper-norms", 4, {"norm"}),
        ("paper-groups", 7, {"norm.groups"}),
        ("paper-group-size", 7, {"norm.group_size"}),
    ],
)
def test_experiments_define_the_papers_grids(experiment, count, axes):
    cells = expand_sweep([f"experiment={experiment}"])
    assert len(cells) == count
    keys = {o.split("=", 1)[0] for cell in cells for o in cell} - {"experiment"}
    assert keys == axes


def test_command_line_values_replace_an_experiments_grid_axis():
    cells = expand_sweep(["experiment=mini-batch", "batch=4,2"])
    assert len(cells) == 4 and {c for cell in cells for c in cell if c.startswith("batch")} == {
        "batch=4",
        "batch=2",
    }


def test_report_false_ends_a_sweep_without_comparing_its_cells(tmp_path, tiny):
    # A protocol's tuning runs: the cells train and are recorded, and no table sets BN beside GN
    # until `normbench report` is asked for one.
    out_dir = tmp_path / "runs"
    result = run_cli(["sweep", *tiny, "epochs=1", "norm=bn,gn", "report=false",
                      f"out_dir={out_dir}"], cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    experiment = out_dir / "synthetic-resnet8"
    assert len(_cells(experiment)) == 2
    assert not (experiment / "report").exists()
    assert f"no report (report=false): `normbench report {experiment}` builds it" in result.stdout
    assert "normbench report:" not in result.stdout  # the printed report's first line
    # The switch names no cell: the same sweep with the report reuses both cells.
    again = run_cli(["sweep", *tiny, "epochs=1", "norm=bn,gn", f"out_dir={out_dir}"], cwd=tmp_path)
    assert again.returncode == 0 and "2 skipped" in again.stdout, again.stdout + again.stderr
    assert (experiment / "report" / "report.md").is_file()
