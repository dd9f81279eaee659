"""The zoo figures: every norm at every batch per GPU, beside the paper's numbers where it has them.

A sweep over three or more norms and two or more batch sizes (``experiment=mini-zoo``) gets, on
top of the paper-layout tables, two figures built from its batch table:

- ``zoo_heatmap.png``: norm x images per GPU, val error annotated in every cell (a cell that did
  not finish reads diverged / failed / running), and beside it the paper's numbers in the same
  layout: BN and GN over the batch axis (Table 2), LN and IN at 32 images per GPU (Table 1);
- ``zoo_error_vs_batch.png``: one line per norm (ours, left axis), the paper's as dashed lines
  and points on the right axis. As in :mod:`normbench.report.plots`, both axes span the same
  number of points, so equal slopes look equal whatever the offset between the two scales.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from normbench.report.paper import load_paper_table
from normbench.report.plots import _curve_rows, _equal_spans, figure_png
from normbench.report.tables import Table, norm_row_label

HEATMAP = "zoo_heatmap.png"
LINES = "zoo_error_vs_batch.png"
MIN_NORMS = 3  # fewer norms are the paper's Table 2 layout, which plots.py already draws
PAPER_ORDER = ("BN", "GN", "LN", "IN")


def zoo_paper_table() -> pd.DataFrame:
    """The paper's errors as norm x images per GPU: Table 2 (BN, GN) and Table 1 (LN, IN at 32)."""
    batch = load_paper_table("table2_batch")
    norms = load_paper_table("table1_norms")
    entries = pd.concat([batch, norms[~norms["norm"].isin(batch["norm"])]])
    frame = entries.pivot_table(
        index=entries["norm"].map(norm_row_label), columns="batch_per_gpu", values="val_error"
    )
    frame = frame.reindex(index=list(PAPER_ORDER), columns=sorted(frame.columns, reverse=True))
    frame.index.name, frame.columns.name = None, None
    return frame.astype(float)


def is_zoo(table: Table) -> bool:
    """Whether a table is a zoo: the batch layout with at least MIN_NORMS norms and 2 batches."""
    rows, columns = _curve_rows(table.mean), table.mean.columns
    return table.key == "batch" and len(rows) >= MIN_NORMS and len(columns) >= 2


def _heatmap(ax: Axes, values: pd.DataFrame, texts: pd.DataFrame, title: str) -> None:
    """One annotated heatmap panel; NaN cells stay blank apart from their text."""
    data = values.to_numpy(dtype=float)
    shown = data[~np.isnan(data)]
    low, high = (shown.min(), shown.max()) if shown.size else (0.0, 1.0)
    cmap = colormaps["RdYlGn_r"].with_extremes(bad="#eeeeee")  # grey: no number
    ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=low, vmax=max(high, low + 1e-9))
    ax.set_xticks(range(len(values.columns)), [str(c) for c in values.columns])
    ax.set_yticks(range(len(values.index)), [str(r) for r in values.index])
    ax.set_xlabel("images per GPU")
    ax.set_title(title, fontsize=10)
    middle = (low + high) / 2
    for (i, j), text in np.ndenumerate(texts.to_numpy()):
        dark = not math.isnan(data[i, j]) and abs(data[i, j] - middle) > 0.3 * (high - low)
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "k")


def _cell_texts(table: Table, rows: list[str]) -> pd.DataFrame:
    """A number per finished cell (one decimal), the table's word for one that did not finish."""
    texts = table.display.loc[rows].copy()
    for row in rows:
        for col in texts.columns:
            value = table.mean.at[row, col]
            texts.at[row, col] = f"{value:.1f}" if not pd.isna(value) else texts.at[row, col]
    return texts


def plot_zoo_heatmap(table: Table, metric_label: str) -> Figure:
    """Ours (norm x images per GPU) beside the paper's numbers in the same layout."""
    rows = _curve_rows(table.mean)
    ours = table.mean.loc[rows].astype(float)
    paper = zoo_paper_table().reindex(columns=ours.columns)
    paper_texts = paper.map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    height = 1.2 + 0.38 * len(rows)
    figure = Figure(figsize=(4.0 + 1.0 * len(ours.columns), height))
    left, right = figure.subplots(1, 2)
    _heatmap(left, ours, _cell_texts(table, rows), f"ours: {metric_label} (%)")
    _heatmap(right, paper, paper_texts, "paper: ResNet-50 ImageNet (%)")
    figure.tight_layout()
    return figure


def plot_zoo_lines(table: Table, metric_label: str) -> Figure:
    """Error vs images per GPU, one line per norm; the paper's on the right axis, dashed."""
    figure = Figure(figsize=(7.2, 4.6))
    ax = figure.add_subplot()
    paper_ax = ax.twinx()
    paper = zoo_paper_table()
    rows = _curve_rows(table.mean)
    colours = colormaps["tab20"].resampled(max(len(rows), 2))
    markers = "osD^v<>phX*"
    handles = []
    for i, row in enumerate(rows):
        values = table.mean.loc[row].astype(float).dropna()
        errors = table.std.loc[row].reindex(values.index).astype(float).fillna(0.0)
        colour = colours(i)
        handles.append(
            ax.errorbar(
                [int(c) for c in values.index], values.values, yerr=errors.values,
                color=colour, marker=markers[i % len(markers)], capsize=2, label=f"{row} (ours)",
            )
        )  # fmt: skip
        if row in paper.index:
            points = paper.loc[row].dropna()
            (line,) = paper_ax.plot(
                [int(c) for c in points.index], points.values, linestyle="--", marker="x",
                color=colour, alpha=0.8, label=f"{row} (paper, right axis)",
            )  # fmt: skip
            handles.append(line)
    ticks = sorted({int(c) for c in table.mean.columns} | {int(c) for c in paper.columns})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("images per GPU")
    ax.set_ylabel(f"ours: {metric_label} (%)")
    paper_ax.set_ylabel("paper: ResNet-50 ImageNet val error (%)")
    _equal_spans(ax, paper_ax)
    ax.grid(True, alpha=0.3)
    ax.set_title("Which norm at which batch size", fontsize=10)
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, ncol=2, loc="best")
    figure.tight_layout()
    return figure


def zoo_figures(tables: list[Table], metric_label: str) -> dict[str, tuple[str, bytes]]:
    """file name -> (title, PNG bytes) of the zoo figures; empty unless a table is a zoo."""
    zoo = next((t for t in tables if is_zoo(t)), None)
    if zoo is None:
        return {}
    return {
        HEATMAP: (
            "Every norm at every batch size",
            figure_png(plot_zoo_heatmap(zoo, metric_label)),
        ),
        LINES: (
            "Error vs images per GPU, every norm",
            figure_png(plot_zoo_lines(zoo, metric_label)),
        ),
    }


def zoo_markdown(figures: dict[str, tuple[str, bytes]]) -> str:
    """The report's zoo section (empty without zoo figures)."""
    if not figures:
        return ""
    lines = ["## Which norm at which batch size", ""]
    lines += [
        "Paper numbers: BN and GN over images per GPU (Table 2), LN and IN at 32 (Table 1); "
        "the other norms have none in the GN paper.",
        "",
    ]
    for name, (title, _) in figures.items():
        lines += [f"![{title}]({name})", ""]
    return "\n".join(lines)
