"""Tests of normbench.report: reading run directories, paper layouts, plots and files."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from fixtures_report import (
    COMMAND,
    make_ablation_sweep,
    make_batch_sweep,
    make_converged_sweep,
    make_norms_sweep,
    write_cell,
)

from normbench.errors import UserError
from normbench.report import build_report, collect_runs, format_report, write_atomic
from normbench.report.committed import load_reference, read_cells_csv
from normbench.report.paper import PAPER_TABLES, load_paper_table
from normbench.report.plots import plot_sweep
from normbench.report.tables import (
    DIFF_ROW,
    METRICS,
    VS_BN_ROW,
    build_table,
    build_tables,
    paper_table,
)


def _snapshot(folder: Path) -> dict[str, str]:
    """Hash of every file under a folder, to prove the report writes nothing there."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def batch_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_batch_sweep(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def batch_report(batch_sweep: Path, tmp_path_factory: pytest.TempPathFactory):
    before = _snapshot(batch_sweep)
    report = build_report(batch_sweep, tmp_path_factory.mktemp("out") / "report")
    assert _snapshot(batch_sweep) == before, "the report must not touch run directories"
    return report


# ----------------------------------------------------------------------------- collect


def test_collect_reads_every_cell_and_its_status(batch_sweep: Path) -> None:
    cells = collect_runs(batch_sweep).set_index("cell")
    assert len(cells) == 12
    assert cells["status"].value_counts().to_dict() == {
        "finished": 10,
        "diverged": 1,
        "unfinished": 1,
    }
    unfinished = cells.loc["batch=2,norm=gn,seed=0"]
    # identified from the cell's record in job.json although metrics.json is missing
    assert (unfinished["norm"], unfinished["batch"], unfinished["groups"]) == ("gn", 2, 32)
    assert unfinished["epochs_done"] == 3
    assert cells.loc["batch=2,norm=bn,seed=0", "diverged_at_step"] == 25


@pytest.mark.parametrize("status", ["finished", "unfinished"])
def test_a_renamed_directory_holds_the_same_cell(tmp_path: Path, status: str) -> None:
    # The cell is read from its record (metrics.json, else job.json), never from the name.
    sweep = tmp_path / "exp"
    overrides = {"batch": 4, "norm": "gn", "norm.groups": 8, "optim.base_lr": 0.2}
    cell = write_cell(sweep, overrides, 12.0, status=status, groups=8)
    renamed = cell.rename(sweep / "batch=32,norm=bn")
    (row,) = collect_runs(sweep).to_dict("records")
    assert (row["cell"], row["path"]) == (cell.name, str(renamed))
    assert (row["norm"], row["batch"], row["groups"], row["total_batch"]) == ("gn", 4, 8, 32)
    assert json.loads(row["overrides"])["optim.base_lr"] == "0.2"


def test_a_cell_without_a_record_is_refused_naming_its_job_file(tmp_path: Path) -> None:
    # A directory written before job.json held the cell: nothing says which cell it is (its name
    # is never read for that), so the report says which file lacks the record.
    sweep = tmp_path / "exp"
    cell = write_cell(sweep, {"batch": 4, "norm": "gn"}, status="unfinished", record=False)
    with pytest.raises(UserError, match="does not say which cell this is") as error:
        collect_runs(sweep)
    assert str(cell / "job.json") in str(error.value)


def test_the_stored_metric_field_is_what_is_read(tmp_path: Path) -> None:
    sweep = tmp_path / "exp"
    write_cell(sweep, {"norm": "gn", "batch": 8}, 15.0, stored_median5=14.2)
    write_cell(sweep, {"norm": "gn", "batch": 4}, 15.0)
    cells = collect_runs(sweep).set_index("batch")
    assert cells.loc[8, "val_error_median5"] == 14.2  # not the history's 15.0
    assert cells.loc[4, "val_error_median5"] == 15.0


def test_collect_rejects_missing_or_empty_sweep_folders(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        collect_runs(tmp_path / "nope")
    (tmp_path / "empty" / "report").mkdir(parents=True)
    with pytest.raises(UserError, match="no run directories"):
        collect_runs(tmp_path / "empty")


# ----------------------------------------------------------------------------- paper


@pytest.mark.parametrize("name", list(PAPER_TABLES))
def test_paper_tables_load_with_sources(name: str) -> None:
    table = load_paper_table(name)
    assert len(table) >= 4
    assert table["source"].str.startswith("Wu & He 2018").all()
    assert table["val_error"].between(20, 40).all()


def test_paper_batch_table_and_its_difference_row() -> None:
    paper, sources = paper_table("batch")
    assert list(paper.columns) == [32, 16, 8, 4, 2]
    assert list(paper.index) == ["BN", "GN", DIFF_ROW]
    assert paper.loc["BN", 2] == 34.7
    # the paper's Table 2 difference row: GN - BN, 0.5 at 32, -10.6 at 2
    assert paper.loc[DIFF_ROW].round(1).tolist() == [0.5, 0.5, -0.8, -3.1, -10.6]
    assert sources == ["Wu & He 2018 (arXiv:1803.08494), Table 2 / Figure 1"]


def test_unknown_paper_table_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown paper table 'table9'"):
        load_paper_table("table9")


# ----------------------------------------------------------------------------- tables


def test_batch_sweep_table_layout_and_values(batch_sweep: Path) -> None:
    (table,) = build_tables(collect_runs(batch_sweep))
    assert table.key == "batch"
    assert list(table.mean.columns) == [32, 16, 8, 4, 2]
    assert list(table.mean.index) == ["BN", "GN", DIFF_ROW]
    assert table.mean.loc["BN", 16] == 10.5
    assert table.mean.loc["BN", 32] == 11.0
    assert table.std.loc["BN", 32] == pytest.approx(math.sqrt(2))
    assert table.n.loc["BN", 32] == 2
    assert table.display.loc["BN", 32] == "11.00 +- 1.41 (n=2)"
    assert table.display.loc["GN", 32] == "13.20 +- 0.28 (n=2)"
    assert table.display.loc["BN", 16] == "10.50"
    assert table.display.loc["BN", 2] == "diverged"
    assert table.display.loc["GN", 2] == "running"
    assert math.isnan(table.mean.loc["BN", 2])
    # difference row GN - BN, blank where a side has no number
    assert table.mean.loc[DIFF_ROW, 4] == pytest.approx(-1.0)
    assert table.display.loc[DIFF_ROW, 32] == "+2.20"
    assert table.display.loc[DIFF_ROW, 2] == ""
    # delta = ours - paper, also for the difference row
    assert table.delta.loc["BN", 16] == pytest.approx(10.5 - 23.7)
    assert table.delta.loc[DIFF_ROW, 4] == pytest.approx(-1.0 - (24.2 - 27.3))


@pytest.mark.parametrize(
    ("metric", "offset"), [("val_error_final", -0.5), ("val_error_best", -1.0)]
)
def test_final_and_best_metrics(batch_sweep: Path, metric: str, offset: float) -> None:
    table = build_table(collect_runs(batch_sweep), "batch", metric)
    assert table.mean.loc["BN", 16] == pytest.approx(10.5 + offset)
    assert METRICS[metric] in table.title


def test_the_report_uses_the_metric_the_cells_were_configured_with(tmp_path: Path) -> None:
    sweep = tmp_path / "short"
    for batch in (32, 2):
        cell = write_cell(sweep, {"norm": "gn", "batch": batch}, 10.0 + batch)
        config = cell / "config.yaml"
        config.write_text(config.read_text() + "metric: val_error_final\n")
    report = build_report(sweep, tmp_path / "out")
    assert report.metric == "val_error_final"
    assert (
        build_report(sweep, tmp_path / "out2", metric="val_error_best").metric == "val_error_best"
    )


def test_unknown_metric_is_a_user_error(batch_sweep: Path) -> None:
    with pytest.raises(UserError, match="unknown metric 'val_acc'"):
        build_report(batch_sweep, metric="val_acc")


def test_batch_columns_missing_from_the_paper_are_blank(tmp_path: Path) -> None:
    sweep = tmp_path / "wide"
    for batch, target in ((64, 9.0), (32, 10.0)):
        write_cell(sweep, {"norm": "bn", "batch": batch}, target)
    (table,) = build_tables(collect_runs(sweep))
    assert list(table.mean.columns) == [64, 32]
    assert list(table.mean.index) == ["BN"]  # no GN: no difference row
    assert math.isnan(table.delta.loc["BN", 64])
    assert table.delta.loc["BN", 32] == pytest.approx(10.0 - 23.6)


def test_failed_seed_beside_a_finished_one_is_named(tmp_path: Path) -> None:
    sweep = tmp_path / "mixed"
    write_cell(sweep, {"norm": "gn", "batch": 4, "seed": 0}, 12.0)
    write_cell(sweep, {"norm": "gn", "batch": 4, "seed": 1}, status="failed")
    write_cell(sweep, {"norm": "gn", "batch": 8, "seed": 0}, 12.5)
    (table,) = build_tables(collect_runs(sweep))
    assert table.display.loc["GN", 4] == "12.00 (1 failed)"


def test_cells_differing_in_another_swept_key_are_rows_not_seeds(tmp_path: Path) -> None:
    sweep = tmp_path / "lr"
    for lr, offset in (("0.1", 0.0), ("0.2", 5.0)):
        for norm, target in (("bn", 10.0), ("gn", 11.0)):
            for batch in (32, 2):
                overrides = {"norm": norm, "batch": batch, "dataset": "synthetic",
                             "optim.base_lr": lr}  # fmt: skip
                write_cell(sweep, overrides, target + offset)
    for i, cell in enumerate(sorted(sweep.iterdir())):  # the overrides are read from the records
        cell.rename(sweep / f"cell{i}")
    (table,) = build_tables(collect_runs(sweep))
    assert list(table.mean.index) == [
        "BN optim.base_lr=0.1", "BN optim.base_lr=0.2", "GN optim.base_lr=0.1",
        "GN optim.base_lr=0.2", f"{DIFF_ROW} optim.base_lr=0.1", f"{DIFF_ROW} optim.base_lr=0.2",
    ]  # fmt: skip
    assert table.mean.loc["GN optim.base_lr=0.2", 2] == pytest.approx(16.0)
    assert table.n.loc["GN optim.base_lr=0.2", 2] == 1  # not averaged with the other lr
    assert table.mean.loc[f"{DIFF_ROW} optim.base_lr=0.2", 32] == pytest.approx(1.0)
    assert len(plot_sweep(table, "val error").axes[0].get_lines()) >= 4


def test_ablation_sweep_gives_groups_and_channels_per_group_tables(tmp_path: Path) -> None:
    groups, group_size = build_tables(collect_runs(make_ablation_sweep(tmp_path)))
    assert (groups.key, group_size.key) == ("groups", "group_size")
    assert list(groups.mean.columns) == [64, 32, 1]  # LN is the G=1 endpoint
    assert groups.mean.loc["GN"].tolist() == [20.4, 20.0, 22.0]
    assert groups.delta.loc["GN", 32] == pytest.approx(20.0 - 24.1)
    assert groups.delta.loc["GN", 1] == pytest.approx(22.0 - 25.3)
    assert list(group_size.mean.columns) == [16, 4, 1]
    assert group_size.mean.loc["GN", 1] == 26.0
    assert group_size.delta.loc["GN", 4] == pytest.approx(20.6 - 24.8)
    assert list(group_size.paper.columns) == [64, 32, 16, 8, 4, 2, 1]


def test_norms_sweep_gives_the_table1_layout(tmp_path: Path) -> None:
    (table,) = build_tables(collect_runs(make_norms_sweep(tmp_path)))
    assert table.key == "norms"
    assert list(table.mean.columns) == ["BN", "LN", "IN", "GN", "GN+WS"]
    assert list(table.mean.index) == ["error", VS_BN_ROW]
    assert table.display.loc["error", "IN"] == "failed"
    assert table.mean.loc[VS_BN_ROW, "LN"] == pytest.approx(2.0)
    assert table.paper.loc[VS_BN_ROW, "LN"] == pytest.approx(1.7)
    assert table.delta.loc["error", "GN"] == pytest.approx(11.0 - 24.1)
    assert math.isnan(table.delta.loc["error", "GN+WS"])  # not in the paper
    assert "32 images per GPU" in table.title


# ----------------------------------------------------------------------------- plots and files


def test_batch_plot_reads_32_to_2_with_the_paper_on_a_second_axis(batch_sweep: Path) -> None:
    (table,) = build_tables(collect_runs(batch_sweep))
    ours_ax, paper_ax = plot_sweep(table, "val error").get_axes()
    assert ours_ax.get_xscale() == "log" and ours_ax.xaxis_inverted()
    assert [t.get_text() for t in ours_ax.get_xticklabels()] == ["2", "4", "8", "16", "32"]
    paper_lines = {line.get_label(): line for line in paper_ax.get_lines()}
    assert set(paper_lines) == {"BN (paper, right axis)", "GN (paper, right axis)"}
    assert paper_lines["BN (paper, right axis)"].get_linestyle() == "--"
    assert list(paper_lines["BN (paper, right axis)"].get_ydata()) == [23.6, 23.7, 24.8, 27.3, 34.7]
    diverged = [line for line in ours_ax.get_lines() if "diverged" in line.get_label()]
    assert [list(line.get_xdata()) for line in diverged] == [[2]]
    # One point of error spans the same height on both axes: the paper's 11-point rise is not
    # drawn as tall as a 1-point wobble of ours.
    (low, high), (paper_low, paper_high) = ours_ax.get_ylim(), paper_ax.get_ylim()
    assert high - low == pytest.approx(paper_high - paper_low)
    assert paper_high - paper_low >= 34.7 - 23.6


def test_write_atomic_keeps_the_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.md"
    target.write_text("old")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary file left behind


def test_report_files_are_written_and_non_empty(batch_report) -> None:
    names = {str(p.relative_to(batch_report.out_dir)) for p in batch_report.paths}
    assert {"report.md", "cells.csv", "batch_ours.csv", "batch_paper.csv", "batch_delta.csv",
            "error_vs_batch.png", "curves/batch=4_norm=gn_seed=0.png"} <= names  # fmt: skip
    assert len([n for n in names if n.startswith("curves/")]) == 12
    for path in batch_report.paths:
        assert path.stat().st_size > 0
    pngs = [p for p in batch_report.paths if p.suffix == ".png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    assert not list(batch_report.out_dir.rglob("*.tmp"))


def test_report_csvs_hold_the_tables(batch_report) -> None:
    ours = pd.read_csv(batch_report.out_dir / "batch_ours.csv", index_col=0)
    assert ours.loc["BN", "2"] == "diverged"
    cells = pd.read_csv(batch_report.out_dir / "cells.csv")
    assert len(cells) == 12


def test_markdown_report_content(batch_report) -> None:
    text = (batch_report.out_dir / "report.md").read_text()
    assert text.startswith("# normbench report: batch_sweep")
    assert "not comparable" in text
    assert text.count(COMMAND.format(name="batch_sweep")) == 1  # deduplicated
    assert "| BN | 11.00 +- 1.41 (n=2) |" in text
    assert "running/unfinished" in text and "batch=2,norm=gn,seed=0" in text
    assert "![" in text and "(error_vs_batch.png)" in text
    assert "torch: 2.5.0" in text and "testhost" in text
    assert "Table 2 / Figure 1" in text


def test_format_report_prints_the_rows(batch_report) -> None:
    text = format_report(batch_report)
    for expected in ("batch_sweep", "BN", "GN", DIFF_ROW, "diverged", "running",
                     "11.00 +- 1.41 (n=2)", "paper", "ours - paper", "report.md"):  # fmt: skip
        assert expected in text
    assert batch_report.unfinished == ["batch=2,norm=gn,seed=0"]


def test_default_out_dir_is_inside_the_sweep_and_is_not_read_as_a_cell(tmp_path: Path) -> None:
    sweep = make_norms_sweep(tmp_path)
    first = build_report(sweep)
    second = build_report(sweep)  # report/ now exists beside the cells
    assert first.out_dir == sweep / "report"
    assert len(second.cells) == len(first.cells) == 5
    assert (sweep / "report" / "norms_delta.csv").stat().st_size > 0


def test_number_frame_with_a_single_column_keeps_signs() -> None:
    from normbench.report.tables import format_number_frame

    frame = pd.DataFrame({"bn": [12.345, -0.5]}, index=["ours", "vs BN"])
    text = format_number_frame(frame, signed_rows=["vs BN"])
    assert text.loc["ours", "bn"] == "12.35" and text.loc["vs BN", "bn"] == "-0.50"


def _with_diagnostics(cell: Path, **errors: float) -> None:
    metrics = json.loads((cell / "metrics.json").read_text())
    metrics.update({f"val_error_{mode}": value for mode, value in errors.items()})
    metrics.update(bn_eval_stats="first", diagnostics_time_s=1.0)
    (cell / "metrics.json").write_text(json.dumps(metrics))


def test_bn_diagnostics_table_splits_the_penalty_and_is_written(tmp_path: Path) -> None:
    from normbench.report import diagnostics

    sweep = tmp_path / "diag"
    for seed, shift in ((0, 0.0), (1, 1.0)):
        for batch, first, batch_stats in ((32, 10.0, 9.5), (2, 20.0, 12.0)):
            cell = write_cell(sweep, {"norm": "bn", "batch": batch, "seed": seed}, first)
            _with_diagnostics(
                cell,
                ema_average=first + 1 + shift,
                ema_first=first + shift,
                precise=batch_stats + 0.5 + shift,
                batch=batch_stats + shift,
            )
        for batch in (32, 2):
            write_cell(sweep, {"norm": "gn", "batch": batch, "seed": seed}, 11.0 + shift)
    mean, std = diagnostics.diagnostics_table(collect_runs(sweep))
    assert list(mean.columns) == [32, 2]
    assert mean.at["BN ema_first", 2] == pytest.approx(20.5)
    assert std.at["BN ema_first", 2] == pytest.approx(0.7071, abs=1e-4)
    assert mean.at["BN batch", 32] == pytest.approx(10.0)
    # headline (eval_stats=first) minus batch statistics: 8 points at 2 per GPU, 0.5 at 32
    assert mean.at[f"BN {diagnostics.EVAL_COST_ROW}", 2] == pytest.approx(8.0)
    assert mean.at[f"BN {diagnostics.EVAL_COST_ROW}", 32] == pytest.approx(0.5)
    # GN has no batch statistics: its final-epoch error (history's last value) stands beside
    assert mean.at["GN (final epoch)", 32] == pytest.approx(11.0 - 0.5 + 0.5)

    report = build_report(sweep)
    names = {p.name for p in report.paths}
    assert {"diagnostics.csv", "bn_diagnostics.png"} <= names
    text = (sweep / "report" / "report.md").read_text()
    assert "Where BN's small-batch penalty comes from" in text and "+8.00" in text
    assert "BN diagnostics" in format_report(report)


def test_a_sweep_without_diagnostics_has_no_diagnostics_section(batch_report) -> None:
    assert not any(p.name == "diagnostics.csv" for p in batch_report.paths)


# ----------------------------------------------------------------------------- several tables


@pytest.fixture(scope="module")
def converged_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tables 1-3 in one folder; BN's cells measured the BN diagnostics."""
    sweep = make_converged_sweep(tmp_path_factory.mktemp("runs"))
    for cell in sweep.iterdir():
        if "norm=bn" in cell.name:
            _with_diagnostics(cell, ema_average=1.0, ema_first=1.0, precise=1.0, batch=1.0)
    return sweep


@pytest.fixture(scope="module")
def converged_report(converged_sweep: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("out") / "report"
    return build_report(converged_sweep, out, reference_dir=out / "no-reference")


def test_a_folder_of_tables_1_to_3_gives_every_layout_from_its_own_cells(
    converged_sweep: Path,
) -> None:
    tables = {t.key: t for t in build_tables(collect_runs(converged_sweep))}
    assert list(tables) == ["batch", "norms", "groups", "group_size"]
    batch = tables["batch"]  # BN and GN at GN's default setting; LN and IN ran at 32 only
    assert list(batch.mean.index) == ["BN", "GN", DIFF_ROW]
    assert list(batch.mean.columns) == [32, 8, 2]
    assert batch.n.loc["GN", 32] == 3  # the ablation's GN cells at 32 are not its seeds
    assert batch.mean.loc["GN", 32] == pytest.approx(11.1)
    norms = tables["norms"]  # at the largest batch, GN at its default
    assert list(norms.mean.columns) == ["BN", "LN", "IN", "GN"]
    assert norms.mean.loc["error", "GN"] == pytest.approx(11.1)
    assert "32 images per GPU" in norms.title
    groups = tables["groups"]  # GN's default (8 groups, from the batch sweep) and LN at G=1
    assert list(groups.mean.columns) == [16, 8, 4, 1]
    assert groups.mean.loc["GN"].tolist() == pytest.approx([11.6, 11.1, 11.9, 12.1])
    assert list(tables["group_size"].mean.columns) == [16, 4, 1]


def test_a_folder_of_tables_1_to_3_reads_bn_diagnostics_from_table_2_only(
    converged_report,
) -> None:
    assert [t.key for t in converged_report.tables] == ["batch", "norms", "groups", "group_size"]
    mean, _ = converged_report.diagnostics
    # GN at 32 is the batch sweep's GN (final epoch: 11.0 - 0.5 + seed / 10), not pooled with
    # the ablation's GN cells; LN and IN, at 32 only, are not Table 2's
    assert mean.at["GN (final epoch)", 32] == pytest.approx(10.6)
    assert not any(row.startswith(("LN", "IN")) for row in mean.index)


def test_a_folder_holding_only_a_reports_cells_csv_is_reported_from_it(
    converged_report, tmp_path: Path
) -> None:
    # A committed result (results/<name>/) keeps its report, not its run directories.
    first = converged_report
    committed = tmp_path / "results" / "fashion_mnist-converged"
    committed.mkdir(parents=True)
    cells = pd.read_csv(first.out_dir / "cells.csv").assign(path="runs/gone")
    cells.to_csv(committed / "cells.csv", index=False)
    again = build_report(committed)
    assert [t.key for t in again.tables] == [t.key for t in first.tables]
    for ours, theirs in zip(first.tables, again.tables, strict=True):
        pd.testing.assert_frame_equal(ours.display, theirs.display)
        pd.testing.assert_frame_equal(ours.delta, theirs.delta)
    paired = "paired_groups.csv"
    assert (committed / "report" / paired).read_text() == (first.out_dir / paired).read_text()


def test_the_report_writes_and_prints_the_paired_differences(converged_report) -> None:
    from normbench.report import stats

    out = converged_report.out_dir
    paired = pd.read_csv(out / "paired_batch.csv")
    assert {"claim", "difference", "n", "per_seed", "mean", "se", "ci95_low", "ci95_high",
            "paper", "verdict"} <= set(paired.columns)  # fmt: skip
    row = paired.set_index("difference").loc["GN at 2 - GN at 32"]
    assert (row["n"], row["verdict"]) == (3, stats.WITHIN_NOISE)
    for key in ("norms", "groups", "group_size"):
        assert (out / f"paired_{key}.csv").stat().st_size > 0
    text = (out / "report.md").read_text()
    assert "## Paired differences" in text
    assert "| GN flat | GN at 2 - GN at 32 | 0: +0.20, 1: +0.00, 2: -0.20 |" in text
    assert "BN's penalty beyond GN's, (BN at 2 - BN at 32) - (GN at 2 - GN at 32)" in text
    console = format_report(converged_report)
    assert "Paired differences over seeds" in console and "within noise" in console


def _reference_dir(converged_sweep: Path, root: Path) -> Path:
    """A committed converged result, as results/fashion_mnist-converged/cells.csv holds it."""
    reference = root / "results" / "fashion_mnist-converged"
    reference.mkdir(parents=True)
    collect_runs(converged_sweep).to_csv(reference / "cells.csv", index=False)
    return reference


METRIC = "val_error_median5"
REFERENCE_LABEL = "converged reference (results/fashion_mnist-converged, 3 seeds)"


def test_the_converged_reference_stands_beside_a_sweep_of_its_dataset(
    converged_sweep: Path, batch_sweep: Path, tmp_path: Path
) -> None:
    reference = _reference_dir(converged_sweep, tmp_path)
    report = build_report(batch_sweep, tmp_path / "out", reference_dir=reference)
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"**{REFERENCE_LABEL}**" in text
    assert "| BN | 10.10 +- 0.10 (n=3) | 11.10 +- 0.10 (n=3) | 14.10 +- 0.10 (n=3) |" in text
    assert REFERENCE_LABEL in format_report(report)
    # Table 1 of a norms sweep gets the reference's Table 1
    norms = make_norms_sweep(tmp_path)
    found = load_reference(collect_runs(norms), METRIC, norms, reference)
    assert list(found.tables["norms"].mean.columns) == ["BN", "LN", "IN", "GN"]


def test_no_reference_without_one_for_another_dataset_or_for_the_reference_itself(
    converged_sweep: Path, batch_sweep: Path, batch_report, tmp_path: Path
) -> None:
    # without the committed folder (normbench installed without the repository): none, silently
    assert load_reference(batch_report.cells, METRIC, batch_sweep, tmp_path / "nothing") is None
    assert "converged reference" not in (batch_report.out_dir / "report.md").read_text()
    reference = _reference_dir(converged_sweep, tmp_path)
    cells = collect_runs(batch_sweep)
    assert load_reference(cells, METRIC, batch_sweep, reference) is not None
    # the committed cell records themselves (run directories) serve as well as a cells.csv
    assert load_reference(cells, METRIC, batch_sweep, converged_sweep) is not None
    other = cells.assign(dataset="cifar10")
    assert load_reference(other, METRIC, batch_sweep, reference) is None
    itself = read_cells_csv(reference / "cells.csv")
    assert load_reference(itself, METRIC, reference, reference) is None
