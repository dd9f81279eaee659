"""Plots of a sweep (matplotlib, Agg canvas; no pyplot state, so nothing leaks between calls).

- error vs batch per GPU (log2 x axis read 32 -> 2 left to right, as the paper's Figure 1), and
  error vs groups / channels per group for the ablation: one solid line per norm (ours, with the
  std over seeds as error bars), the paper's curve dashed in the same colour.
  The paper's curve goes on a secondary (right) y axis: a CPU mini dataset and ImageNet give
  errors on different scales, and on one shared axis one of the two curves would be squashed
  flat. What is comparable is the shape (BN rising at small batch, GN flat), and two axes keep
  both shapes readable; both span the same number of points, so equal slopes look equal and our
  noise is not magnified against the paper's effect. The legend and the right axis label say
  which numbers are the paper's.
- training curves of one cell: train and val error per epoch from history.csv.
"""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from normbench.report.tables import DIFF_ROW, VS_BN_ROW, Table


def figure_png(figure: Figure, tight: bool = True) -> bytes:
    """The figure rendered as PNG bytes (so the caller can write them atomically).

    ``tight`` crops to the drawn content, at the cost of a second rendering pass; small figures
    with fixed margins (one per cell, many per report) skip it.
    """
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight" if tight else None)
    return buffer.getvalue()


def _curve_rows(frame: pd.DataFrame) -> list[str]:
    """The rows of a table that are curves (not the paper's difference rows)."""
    return [row for row in frame.index if not str(row).startswith((DIFF_ROW, VS_BN_ROW))]


def _equal_spans(*axes: Axes) -> None:
    """Give every y axis the widest span in points, each centred on its own data, so one point
    of error looks the same on both axes: ours is never magnified against the paper's."""
    limits = [a.get_ylim() for a in axes]
    span = max(high - low for low, high in limits)
    for a, (low, high) in zip(axes, limits, strict=True):
        middle = (low + high) / 2
        a.set_ylim(middle - span / 2, middle + span / 2)


def plot_sweep(table: Table, metric_label: str) -> Figure:
    """Error vs the table's numeric columns (batch per GPU, G or channels per group)."""
    figure = Figure(figsize=(6.4, 4.2))
    ax = figure.add_subplot()
    colours = [f"C{i}" for i in range(10)]
    paper_rows = [r for r in _curve_rows(table.paper) if r in table.mean.index]
    paper_ax = ax.twinx() if paper_rows else None
    handles = []
    for i, row in enumerate(_curve_rows(table.mean)):
        colour = colours[i % len(colours)]
        values = table.mean.loc[row].astype(float)
        errors = table.std.loc[row].reindex(values.index).astype(float)
        shown = values.notna()
        handles.append(
            ax.errorbar(
                [int(c) for c in values.index[shown]],
                values[shown],
                yerr=errors[shown].fillna(0.0),
                color=colour,
                marker="o",
                capsize=3,
                label=f"{row} (ours)",
            )
        )
        texts = table.display.loc[row]
        failed = [int(c) for c in values.index if texts[c] in ("diverged", "failed")]
        if failed:
            # Drawn on the top edge (axes coordinates), so a diverged cell is visible but
            # does not stretch the error axis.
            (marks,) = ax.plot(
                failed,
                [1.0] * len(failed),
                "x",
                color=colour,
                markersize=9,
                clip_on=False,
                transform=ax.get_xaxis_transform(),
                label=f"{row} diverged/failed",
            )
            handles.append(marks)
        if paper_ax is not None and row in paper_rows:
            paper = table.paper.loc[row].dropna()
            (line,) = paper_ax.plot(
                [int(c) for c in paper.index],
                paper.values,
                linestyle="--",
                marker=".",
                color=colour,
                alpha=0.7,
                label=f"{row} (paper, right axis)",
            )
            handles.append(line)
    ticks = sorted(
        {int(c) for c in table.mean.columns}
        | ({int(c) for c in table.paper.columns} if paper_rows else set())
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()  # large to small, left to right, as the paper's Figure 1 and tables
    ax.set_xlabel(table.column_name)
    ax.set_ylabel(f"ours: {metric_label} (%)")
    if paper_ax is not None:
        paper_ax.set_ylabel("paper: ResNet-50 ImageNet val error (%)")
        _equal_spans(ax, paper_ax)
    ax.set_title(table.title.split(":")[0], fontsize=10)
    ax.grid(True, alpha=0.3)
    labels = [h.get_label() for h in handles]
    ax.legend(handles, labels, fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def plot_training_curves(title: str, history: pd.DataFrame) -> Figure:
    """Train and val error per epoch of one cell (fixed margins: render with tight=False)."""
    figure = Figure(figsize=(5.0, 3.4))
    figure.subplots_adjust(left=0.13, right=0.97, bottom=0.15, top=0.9)
    ax = figure.add_subplot()
    for column, style in (("train_error", "-"), ("val_error", "-o")):
        if column in history.columns:
            # Only the epochs measured (with eval_every > 1, val error has gaps), joined.
            measured = history[history[column].notna()]
            ax.plot(
                measured["epoch"],
                measured[column],
                style,
                markersize=3,
                label=column.replace("_", " "),
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("error (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return figure
