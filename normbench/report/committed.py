"""Committed results: a report's cells.csv read back, and the converged reference.

A result copied under ``results/<name>/`` keeps its report (tables, plots, cells.csv) but not
its run directories, so the report of such a folder is rebuilt from its cells.csv.

The converged result (``results/fashion_mnist-converged-8px``: the paper's Tables 1-3 on the
converged protocol of results/tuning.md, 3 seeds) is what a user's own sweep on the same
dataset is read against: the report shows its numbers in the same layouts beside ours and the
paper's. It is read from the repository, from its committed cell records (or a cells.csv where
only that is kept); normbench installed without the repository has none and shows none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from normbench.report.collect import (
    CELL_COLUMNS,
    FLOAT_COLUMNS,
    INT_COLUMNS,
    collect_runs,
    find_cells,
)
from normbench.report.tables import Table, build_tables

CELLS_CSV = "cells.csv"
REFERENCE_DIR = Path(__file__).resolve().parents[2] / "results" / "fashion_mnist-converged-8px"


def read_cells_csv(path: Path) -> pd.DataFrame:
    """A report's cells.csv as collect_runs gives it: every column of CELL_COLUMNS (blank where
    an older report did not write it), numbers typed alike."""
    frame = pd.read_csv(path).reindex(columns=CELL_COLUMNS)
    for column in INT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in FLOAT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column]).astype(float)
    return frame


def read_sweep(sweep_dir: Path, exclude: Iterable[Path] = ()) -> pd.DataFrame:
    """The cells of a sweep folder: its run directories, or the cells.csv of a folder that holds
    a committed report instead of them."""
    sweep_dir = Path(sweep_dir)
    if not find_cells(sweep_dir, exclude) and (sweep_dir / CELLS_CSV).is_file():
        return read_cells_csv(sweep_dir / CELLS_CSV)
    return collect_runs(sweep_dir, exclude)


@dataclass(frozen=True)
class Reference:
    """The converged result's tables (by layout key), and how the report names them."""

    label: str
    tables: dict[str, Table]


def load_reference(
    cells: pd.DataFrame, metric: str, sweep_dir: Path, directory: Path = REFERENCE_DIR
) -> Reference | None:
    """The reference's tables when ``directory`` holds cells (run directories or a cells.csv)
    of the dataset ``cells`` ran on; None without them, for another dataset, or when the sweep
    is the reference itself."""
    directory = Path(directory)
    own_report = [directory / "report"]  # where `normbench report` writes, not a cell
    if not directory.is_dir() or Path(sweep_dir).resolve() == directory.resolve():
        return None
    if not find_cells(directory, own_report) and not (directory / CELLS_CSV).is_file():
        return None
    reference = read_sweep(directory, own_report)
    datasets = set(cells["dataset"].dropna())
    if not datasets or datasets != set(reference["dataset"].dropna()):
        return None
    seeds = reference.loc[reference["status"] == "finished", "seed"].nunique()
    name = f"{directory.parent.name}/{directory.name}"
    tables = {table.key: table for table in build_tables(reference, metric)}
    return Reference(label=f"converged reference ({name}, {seeds} seeds)", tables=tables)
