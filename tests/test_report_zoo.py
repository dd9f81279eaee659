"""The zoo report: heatmap and error-vs-batch figures of a sweep over many norms and batches."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fixtures_report import ZOO_TARGETS, make_batch_sweep, make_zoo_sweep

from normbench.report import build_report
from normbench.report.tables import build_table
from normbench.report.zoo import (
    HEATMAP,
    LINES,
    is_zoo,
    plot_zoo_heatmap,
    zoo_figures,
    zoo_paper_table,
)


@pytest.fixture(scope="module")
def zoo_report(tmp_path_factory: pytest.TempPathFactory):
    sweep = make_zoo_sweep(tmp_path_factory.mktemp("runs"))
    return build_report(sweep, tmp_path_factory.mktemp("out") / "report")


def test_the_paper_table_holds_bn_gn_over_batch_and_ln_in_at_32() -> None:
    paper = zoo_paper_table()
    assert list(paper.index) == ["BN", "GN", "LN", "IN"]
    assert list(paper.columns) == [32, 16, 8, 4, 2]
    assert paper.loc["BN", 2] == 34.7 and paper.loc["GN", 2] == 24.1
    assert (paper.loc["LN", 32], paper.loc["IN", 32]) == (25.3, 28.4)
    assert paper.loc[["LN", "IN"], [16, 8, 4, 2]].isna().all().all()


def test_a_zoo_report_writes_both_figures_and_links_them(zoo_report) -> None:
    names = {p.name for p in zoo_report.paths}
    assert {HEATMAP, LINES} <= names
    for name in (HEATMAP, LINES):
        assert (zoo_report.out_dir / name).read_bytes()[:4] == b"\x89PNG"
    markdown = (zoo_report.out_dir / "report.md").read_text()
    assert f"]({HEATMAP})" in markdown and f"]({LINES})" in markdown


def test_the_zoo_table_has_every_norm_and_gn_ws_as_its_own_row(zoo_report) -> None:
    table = next(t for t in zoo_report.tables if t.key == "batch")
    assert is_zoo(table)
    rows = set(table.mean.index)
    assert {norm.upper() for norm in ZOO_TARGETS} | {"GN+WS"} <= rows
    assert table.mean.at["GN+WS", 8] == 10.9
    assert table.mean.at["ITERNORM", 2] == 13.0
    assert (
        pd.isna(table.mean.at["EVONORM_B0", 2]) and table.display.at["EVONORM_B0", 2] == "diverged"
    )


def test_the_heatmap_annotates_every_cell_ours_and_the_papers(zoo_report) -> None:
    table = next(t for t in zoo_report.tables if t.key == "batch")
    figure = plot_zoo_heatmap(table, "val error")
    ours, paper = figure.axes[0], figure.axes[1]
    texts = {t.get_text() for t in ours.texts}
    assert {"14.0", "11.1", "13.0", "diverged"} <= texts
    rows = [label.get_text() for label in ours.get_yticklabels()]
    assert len(ours.texts) == len(rows) * 3  # every (norm, batch) cell has a text
    assert {"34.7", "23.6", "25.3", "28.4"} <= {t.get_text() for t in paper.texts}


def test_a_two_norm_batch_sweep_gets_no_zoo_figures(tmp_path: Path) -> None:
    sweep = make_batch_sweep(tmp_path)
    report = build_report(sweep, tmp_path / "out")
    assert not {HEATMAP, LINES} & {p.name for p in report.paths}
    assert zoo_figures([build_table(report.cells, "batch")], "val error") == {}
