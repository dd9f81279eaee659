"""Put re-run cells into a results folder whose run directories are gone, and rebuild its report.

    python scripts/merge_rerun_cells.py results/fashion_mnist-zoo /tmp/zoo-dbn/fashion_mnist-zoo

A results folder keeps a sweep's report, not its run directories, so `normbench report` cannot
rebuild it after some cells are run again. Its cells.csv is one row per cell as the report read
it; this replaces the rows of the cells found in the re-run sweep folder (the same cell names)
by those cells' records, then writes what `normbench report` writes from the merged rows: the
tables, figures, diagnostics and report.md (whose Commands and Machine sections then name both
runs). Curves are redrawn for the re-run cells only; the others keep their PNGs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from normbench.report import Report, diagnostics, render_markdown, write_atomic
from normbench.report.collect import FLOAT_COLUMNS, INT_COLUMNS, collect_runs, read_history
from normbench.report.plots import figure_png, plot_sweep, plot_training_curves
from normbench.report.tables import METRICS, build_tables
from normbench.report.zoo import zoo_figures, zoo_markdown


def merged_cells(folder: Path, rerun: pd.DataFrame) -> pd.DataFrame:
    """The folder's cells.csv with each re-run cell's row replaced, in the folder's order."""
    old = pd.read_csv(folder / "cells.csv").set_index("cell")
    new = rerun.set_index("cell")
    missing = sorted(set(new.index) - set(old.index))
    if missing:
        raise SystemExit(f"re-run cells not in {folder / 'cells.csv'}: {', '.join(missing)}")
    cells = old.reindex(columns=new.columns).astype(object)
    cells.loc[new.index] = new.astype(object)
    cells = cells.reset_index()
    for column in INT_COLUMNS:
        cells[column] = pd.to_numeric(cells[column]).astype("Int64")
    for column in FLOAT_COLUMNS:
        cells[column] = pd.to_numeric(cells[column]).astype(float)
    return cells


def curve_name(cell: str) -> str:
    """The curves/ file `normbench report` writes for a cell."""
    return "curves/" + cell.replace(",", "_") + ".png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="results folder (report.md, cells.csv)")
    parser.add_argument("rerun", type=Path, help="sweep folder of the re-run cells")
    args = parser.parse_args()
    rerun = collect_runs(args.rerun, exclude=[args.rerun / "report"])
    folder, cells = args.folder, merged_cells(args.folder, rerun)
    metric = str(cells["metric"].dropna().unique()[0])
    tables = build_tables(cells, metric)
    write_atomic(folder / "cells.csv", cells.to_csv(index=False).encode())
    images = {}
    for table in tables:
        for part, frame in (("ours", table.display), ("paper", table.paper),
                            ("delta", table.delta)):  # fmt: skip
            write_atomic(folder / f"{table.key}_{part}.csv", frame.to_csv().encode())
        if table.key != "norms":
            images[table.key] = f"error_vs_{table.key}.png"
            png = figure_png(plot_sweep(table, METRICS[metric]))
            write_atomic(folder / images[table.key], png)
    found = diagnostics.diagnostics_table(cells)
    if found is not None:
        csv = pd.concat({"mean": found[0], "std": found[1]}).to_csv().encode()
        write_atomic(folder / "diagnostics.csv", csv)
        png = figure_png(diagnostics.plot_diagnostics(*found))
        write_atomic(folder / "bn_diagnostics.png", png)
        images["diagnostics"] = "bn_diagnostics.png"
    zoo = zoo_figures(tables, METRICS[metric])
    for name, (_, png) in zoo.items():
        write_atomic(folder / name, png)
    for row in rerun.itertuples():
        figure = plot_training_curves(row.cell, read_history(Path(row.path)))
        write_atomic(folder / curve_name(row.cell), figure_png(figure, tight=False))
    curves = {c: curve_name(c) for c in cells["cell"] if (folder / curve_name(c)).is_file()}
    # The sweep folders the cells were read from, the original one and the re-run's.
    sweeps = ", ".join(dict.fromkeys(str(Path(path).parent) for path in cells["path"]))
    report = Report(
        experiment=str(cells["experiment"].mode().iloc[0]), sweep_dir=Path(sweeps),
        out_dir=folder, metric=metric, cells=cells, tables=tables,
        commands=list(dict.fromkeys(cells["command"].dropna())), paths=[], diagnostics=found,
    )  # fmt: skip
    markdown = render_markdown(report, images, curves) + zoo_markdown(zoo)
    write_atomic(folder / "report.md", markdown.encode())


if __name__ == "__main__":
    main()
