"""The BN diagnostics table and plot: BN's small-batch penalty taken apart.

Every cell with per-GPU batch statistics measured its final network's val error under four
evaluation modes (normbench.train.diagnostics). Laid out over images per GPU beside the
batch-independent norms (GN, ...), they separate what the test-time statistics cost from what
training at that batch size learned:

- ``ema_first`` / ``ema_average``: the moving averages BN evaluates with (GPU 0's / the mean);
- ``precise``: population statistics recomputed with the final weights (PreciseBN);
- ``batch``: each val batch normalized by its own statistics, as in training.

The rows "eval statistics" (headline mode minus ``batch``) and "vs GN" (``batch`` minus the
batch-independent norm) are the two parts of BN's gap at each batch size. All numbers are
val errors of the final weights, so batch-independent norms are shown at their final epoch too.
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from normbench.report.tables import norm_row_label, summarize_cell

MODES = ("ema_average", "ema_first", "precise", "batch")
MODE_LABELS = {
    "ema_average": "moving averages, mean over GPUs",
    "ema_first": "moving averages of GPU 0",
    "precise": "PreciseBN (population statistics)",
    "batch": "batch statistics (as in training)",
}
COLUMNS = [f"val_error_{mode}" for mode in MODES]
EVAL_COST_ROW = "eval statistics (headline - batch)"


def has_diagnostics(cells: pd.DataFrame) -> bool:
    return all(c in cells for c in COLUMNS) and cells[COLUMNS].notna().any().any()


def diagnostics_table(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(mean, std over seeds) with rows "<norm> <mode>", the batch-independent norms' final
    error and the split of the penalty, columns = images per GPU (large to small); None when no
    cell has diagnostics. Only finished cells count."""
    if not has_diagnostics(cells) or cells["batch"].isna().all():
        return None
    done = cells[cells["status"] == "finished"]
    labels = done["norm_label"].fillna(done["norm"]).map(norm_row_label)
    measured = done[COLUMNS].notna().any(axis=1)
    rows: dict[str, pd.Series] = {}
    spread: dict[str, pd.Series] = {}

    def add(name: str, frame: pd.DataFrame, column: str) -> None:
        stats = {
            int(batch): summarize_cell(group, column)[:2] for batch, group in frame.groupby("batch")
        }
        rows[name] = pd.Series({b: m for b, (m, _) in stats.items()})
        spread[name] = pd.Series({b: s for b, (_, s) in stats.items()})

    for label in sorted(labels[measured].unique()):
        frame = done[measured & (labels == label)]
        for mode in MODES:
            add(f"{label} {mode}", frame, f"val_error_{mode}")
    for label in sorted(labels[~measured].unique()):
        add(f"{label} (final epoch)", done[~measured & (labels == label)], "val_error_final")
    mean = pd.DataFrame(rows).T
    std = pd.DataFrame(spread).T
    for label in sorted(labels[measured].unique()):
        headline = done.loc[measured & (labels == label), "bn_eval_stats"].dropna()
        mode = f"ema_{headline.iloc[0]}" if len(headline) else "ema_average"
        if f"{label} {mode}" in mean.index:
            mean.loc[f"{label} {EVAL_COST_ROW}"] = (
                mean.loc[f"{label} {mode}"] - mean.loc[f"{label} batch"]
            )
    columns = sorted(mean.columns, reverse=True)
    return mean.reindex(columns=columns), std.reindex(index=mean.index, columns=columns)


def display_frame(mean: pd.DataFrame, std: pd.DataFrame) -> pd.DataFrame:
    """Text: "mean +- std" where seeds give a std, signed for the difference rows."""

    def text(row: str, column: int) -> str:
        value, spread = mean.at[row, column], std.at[row, column]
        if pd.isna(value):
            return ""
        if EVAL_COST_ROW in row:
            return f"{value:+.2f}"
        return f"{value:.2f}" + ("" if pd.isna(spread) else f" +- {spread:.2f}")

    return pd.DataFrame(
        [[text(r, c) for c in mean.columns] for r in mean.index],
        index=mean.index,
        columns=mean.columns,
    )


def plot_diagnostics(mean: pd.DataFrame, std: pd.DataFrame) -> Figure:
    """Val error vs images per GPU: one line per BN evaluation mode, batch-free norms dashed."""
    figure = Figure(figsize=(6.4, 4.2))
    ax = figure.add_subplot()
    for i, row in enumerate(r for r in mean.index if EVAL_COST_ROW not in r):
        values = mean.loc[row].astype(float)
        errors = std.loc[row].reindex(values.index).astype(float).fillna(0.0)
        shown = values.notna()
        mode = row.split(" ", 1)[1]
        label = f"{row.split(' ', 1)[0]}: {MODE_LABELS.get(mode, mode)}"
        ax.errorbar(
            [int(c) for c in values.index[shown]], values[shown], yerr=errors[shown],
            marker="o", capsize=3, color=f"C{i % 10}", label=label,
            linestyle="-" if mode in MODE_LABELS else "--",
        )  # fmt: skip
    ticks = [int(c) for c in mean.columns]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("images per GPU")
    ax.set_ylabel("val error of the final weights (%)")
    ax.set_title("Where BN's small-batch penalty comes from", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def cost_line(cells: pd.DataFrame) -> str | None:
    """How much the diagnostics cost, relative to training, over the cells that ran them."""
    ran = cells[cells["diagnostics_time_s"].notna() & cells["wall_time_s"].notna()]
    if ran.empty:
        return None
    share = ran["diagnostics_time_s"] / (ran["wall_time_s"] - ran["diagnostics_time_s"])
    worst = share.max()
    return (
        f"diagnostics cost {100 * share.mean():.1f}% of a cell's time on average "
        f"(at most {100 * worst:.1f}%)"
        if not math.isnan(worst)
        else None
    )
