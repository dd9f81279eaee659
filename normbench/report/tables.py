"""Tables in the paper's layouts, built from the per-cell DataFrame of collect.py.

Which layout a sweep gets is read from what varies among its cells:

- batch per GPU varies              -> paper Table 2: rows = norms, columns = 32, 16, 8, 4, 2 ...,
                                       plus the paper's difference row "GN - BN";
- GN's groups / channels per group   -> paper Table 3: columns = G (G=1 is LN) and channels per
  vary                                 group (1 is IN); ln and in cells fill those endpoints;
- otherwise (norms at one batch)     -> paper Table 1: one row, columns = norms, plus "vs BN".

Each of our tables sits beside the paper's table in the same layout and a delta table
(ours - paper) aligned on our rows and columns (NaN where the paper has no number).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from normbench.errors import UserError
from normbench.report.paper import load_paper_table, paper_sources

DEFAULT_METRIC = "val_error_median5"
METRICS: dict[str, str] = {
    "val_error_median5": "val error, median of the last 5 epochs",
    "val_error_final": "val error at the last epoch",
    "val_error_best": "best val error over epochs",
}
# The paper's Table 2 difference row is GN minus BN (0.5 at 32 images/GPU, -10.6 at 2).
DIFF_ROW = "GN - BN"
# The paper's Table 1 difference row: each norm minus BN.
VS_BN_ROW = "vs BN"
NORMS_ROW = "error"
# How a table cell reads when its seeds did not finish, in order of precedence.
NOT_DONE_WORDS = (("diverged", "diverged"), ("failed", "failed"), ("unfinished", "running"))
PAPER_NORM_ORDER = ("BN", "LN", "IN", "GN")


@dataclass(frozen=True)
class Table:
    """One of our tables in a paper layout, with the paper's numbers and the difference.

    ``mean`` (numbers), ``std`` (sample std over seeds), ``n`` (finished seeds) and ``display``
    (text as printed) share rows and columns, the difference row included (std NaN, n 0 there);
    ``paper`` is the paper's table in its own rows and columns; ``delta`` = ``mean`` - ``paper``
    on our rows and columns, NaN where the paper has no number.
    """

    key: str
    title: str
    column_name: str
    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    display: pd.DataFrame
    paper: pd.DataFrame
    delta: pd.DataFrame
    sources: list[str] = field(default_factory=list)


def check_metric(metric: str) -> None:
    """Raise UserError unless ``metric`` is one of METRICS."""
    if metric not in METRICS:
        raise UserError(f"unknown metric '{metric}' (allowed: {', '.join(METRICS)})")


def norm_row_label(norm_label: str) -> str:
    """Row label of a norm as the paper writes it: "gn+ws" -> "GN+WS"."""
    return str(norm_label).upper()


def _label_order(label: str) -> tuple[int, str]:
    """Paper norms first, in the paper's order, then the others alphabetically."""
    base = label.split(" ")[0]
    rank = PAPER_NORM_ORDER.index(base) if base in PAPER_NORM_ORDER else len(PAPER_NORM_ORDER)
    return rank, label


# Overrides that a layout already shows as rows, columns or seeds.
SHOWN_KEYS = frozenset({"norm", "batch", "seed", "norm.groups", "norm.group_size", "model.ws"})


def setting_suffixes(cells: pd.DataFrame) -> pd.Series:
    """ " key=value" for every other override that differs between cells (their `overrides`,
    JSON text; missing where a cell's record is older than them).

    Cells of a sweep over, say, ``optim.base_lr=0.1,0.2`` must never be averaged together as if
    they were seeds: the suffix keeps them in rows (or columns) of their own.
    """
    overrides = [json.loads(text) if isinstance(text, str) else {} for text in cells["overrides"]]
    keys = sorted({key for cell in overrides for key in cell} - SHOWN_KEYS)
    varying = [key for key in keys if len({cell.get(key) for cell in overrides}) > 1]
    suffixes = [
        "".join(f" {key}={cell[key]}" for key in varying if key in cell) for cell in overrides
    ]
    return pd.Series(suffixes, index=cells.index, dtype=object)


def _variant_labels(cells: pd.DataFrame) -> pd.Series:
    """Norm labels, with " G=16" / " C/G=8" added only where a norm has several group settings,
    and the other settings that vary between cells (see setting_suffixes)."""
    labels = cells["norm_label"].fillna(cells["norm"]).fillna("?").map(norm_row_label)
    result = labels.copy()
    for label, index in cells.groupby(labels).groups.items():
        settings = cells.loc[index, ["groups", "group_size"]].drop_duplicates()
        if len(settings) < 2:
            continue
        for i in index:
            groups, size = cells.at[i, "groups"], cells.at[i, "group_size"]
            suffix = f" C/G={size}" if not pd.isna(size) else f" G={groups}"
            result.at[i] = label + ("" if pd.isna(size) and pd.isna(groups) else suffix)
    return result + setting_suffixes(cells)


# ----------------------------------------------------------------------------- layouts
# Each layout maps cells to (row, col) entries; entries sharing both are seeds of one cell.


def _batch_entries(cells: pd.DataFrame) -> pd.DataFrame:
    entries = cells.assign(row=_variant_labels(cells), col=cells["batch"])
    return entries[entries["col"].notna()]


def _norms_entries(cells: pd.DataFrame) -> pd.DataFrame:
    return cells.assign(row=NORMS_ROW, col=_variant_labels(cells))


def _ablation_entries(gn: pd.DataFrame, endpoint: pd.DataFrame, column: str) -> pd.DataFrame:
    """GN cells at their ``column`` value plus the LN/IN endpoint cells at 1, all in GN's rows.

    An endpoint's label keeps its suffix: "ln+ws" lands in the row "GN+WS".
    """
    endpoint_labels = endpoint["norm_label"].fillna(endpoint["norm"]).str.slice(2)
    entries = pd.concat(
        [
            gn.assign(col=gn[column], row=gn["norm_label"].fillna("gn")),
            endpoint.assign(col=1, row="gn" + endpoint_labels),
        ]
    )
    return entries.assign(row=entries["row"].map(norm_row_label) + setting_suffixes(entries))


def _groups_entries(cells: pd.DataFrame) -> pd.DataFrame:
    """GN with a number of groups; LN is its G=1 endpoint."""
    gn = cells[(cells["norm"] == "gn") & cells["group_size"].isna() & cells["groups"].notna()]
    return _ablation_entries(gn, cells[cells["norm"] == "ln"], "groups")


def _group_size_entries(cells: pd.DataFrame) -> pd.DataFrame:
    """GN with a number of channels per group; IN is its 1-channel endpoint."""
    gn = cells[(cells["norm"] == "gn") & cells["group_size"].notna()]
    return _ablation_entries(gn, cells[cells["norm"] == "in"], "group_size")


def infer_layouts(cells: pd.DataFrame) -> list[str]:
    """Which paper layouts fit a sweep: ["batch"], ["groups", "group_size"] (or one), ["norms"]."""
    if cells["batch"].dropna().nunique() > 1:
        return ["batch"]
    gn_settings = cells.loc[cells["norm"] == "gn", ["groups", "group_size"]].drop_duplicates()
    if len(gn_settings) > 1:
        layouts = [
            key
            for key, entries in (("groups", _groups_entries), ("group_size", _group_size_entries))
            if len(entries(cells))
        ]
        if layouts:
            return layouts
    return ["norms"]


# ----------------------------------------------------------------------------- summaries


def _format_value(value: float) -> str:
    return f"{value:.2f}"


def summarize_cell(entries: pd.DataFrame, metric: str) -> tuple[float, float, int, str]:
    """Mean, sample std, number of finished seeds and display text of one table cell.

    Only finished seeds give numbers. With none, the cell reads "diverged", "failed" or
    "running"; seeds that did not finish beside finished ones are named after the number.
    """
    finished = entries[(entries["status"] == "finished") & entries[metric].notna()]
    values = finished[metric].astype(float)
    n = len(values)
    counts = entries["status"].value_counts()
    not_done = [(word, counts[status]) for status, word in NOT_DONE_WORDS if status in counts]
    if n == 0:
        return math.nan, math.nan, 0, not_done[0][0] if not_done else "n/a"
    notes = [f"{count} {word}" for word, count in not_done]
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    if n == 1:
        text = _format_value(mean) + (f" ({', '.join(notes)})" if notes else "")
    else:
        text = f"{_format_value(mean)} +- {_format_value(std)} (n={n}"
        text += "".join(f"; {note}" for note in notes) + ")"
    return mean, std, n, text


def _ordered_axes(entries: pd.DataFrame, key: str) -> tuple[list, list]:
    rows = sorted(entries["row"].unique(), key=_label_order)
    cols = list(entries["col"].unique())
    if key == "norms":
        cols = sorted(cols, key=_label_order)
    else:  # numeric axes read from large to small, as in the paper (32 -> 2, 64 -> 1)
        cols = sorted((int(c) for c in cols), reverse=True)
    return rows, cols


def _with_difference_row(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Add the paper's difference row: "GN - BN" (batch layout) or "vs BN" (norms layout)."""
    if key == "batch":  # one difference row per setting that has both norms
        diffs = [
            (frame.loc[row] - frame.loc["BN" + row[2:]]).to_frame(DIFF_ROW + row[2:]).T
            for row in frame.index
            if row.startswith("GN") and not row.startswith("GN+") and "BN" + row[2:] in frame.index
        ]
        return pd.concat([frame, *diffs])
    if key == "norms" and "BN" in frame.columns and NORMS_ROW in frame.index:
        diff = frame.loc[NORMS_ROW] - frame.loc[NORMS_ROW, "BN"]
        diff["BN"] = math.nan  # the paper prints "-" under BN
        return pd.concat([frame, diff.to_frame(VS_BN_ROW).T])
    return frame


def _paper_entries(key: str) -> tuple[pd.DataFrame, list[str]]:
    """The paper's numbers for a layout as (row, col, value) entries, with their sources."""
    if key == "batch":
        table = load_paper_table("table2_batch")
        entries = table.assign(row=table["norm"].map(norm_row_label), col=table["batch_per_gpu"])
    elif key == "norms":
        table = load_paper_table("table1_norms")
        entries = table.assign(row=NORMS_ROW, col=table["norm"].map(norm_row_label))
    elif key == "groups":
        table = load_paper_table("table3_groups")
        entries = table.assign(row="GN", col=table["groups"])
    else:
        table = load_paper_table("table3_group_size")
        entries = table.assign(row="GN", col=table["channels_per_group"])
    return entries[["row", "col", "val_error"]], paper_sources(table)


def paper_table(key: str) -> tuple[pd.DataFrame, list[str]]:
    """The paper's table in the layout ``key`` (with its difference row) and its sources."""
    entries, sources = _paper_entries(key)
    rows, cols = _ordered_axes(entries, key)
    frame = entries.pivot_table(index="row", columns="col", values="val_error", aggfunc="first")
    frame = frame.reindex(index=rows, columns=cols).astype(float)
    frame.index.name, frame.columns.name = None, None
    return _with_difference_row(frame, key), sources


LAYOUTS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str, str]] = {
    "batch": (_batch_entries, "images per GPU", "Sensitivity to batch size (paper Table 2)"),
    "norms": (_norms_entries, "norm", "Normalization methods (paper Table 1)"),
    "groups": (_groups_entries, "groups G", "Number of groups G; G=1 is LN (paper Table 3, top)"),
    "group_size": (
        _group_size_entries,
        "channels per group",
        "Channels per group; 1 is IN (paper Table 3, bottom)",
    ),
}


def build_table(cells: pd.DataFrame, key: str, metric: str = DEFAULT_METRIC) -> Table:
    """Our table in the paper layout ``key`` (see LAYOUTS) beside the paper's, with the delta."""
    check_metric(metric)
    entry_fn, column_name, title = LAYOUTS[key]
    entries = entry_fn(cells)
    rows, cols = _ordered_axes(entries, key)
    shape = {"index": pd.Index(rows, dtype=object), "columns": pd.Index(cols, dtype=object)}
    mean = pd.DataFrame(np.nan, **shape)
    std = pd.DataFrame(np.nan, **shape)
    n = pd.DataFrame(0, **shape)
    display = pd.DataFrame("", **shape)
    for (row, col), group in entries.groupby(["row", "col"]):
        col = col if key == "norms" else int(col)
        mean.at[row, col], std.at[row, col], n.at[row, col], display.at[row, col] = summarize_cell(
            group, metric
        )
    mean = _with_difference_row(mean, key)
    for extra in mean.index.difference(display.index):
        display.loc[extra] = [
            "" if pd.isna(v) else f"{v:+.2f}" for v in mean.loc[extra, display.columns]
        ]
    paper, sources = paper_table(key)
    delta = mean - paper.reindex(index=mean.index, columns=mean.columns)
    batches = sorted(entries["batch"].dropna().unique(), reverse=True)
    if key != "batch" and batches:
        title += f", {', '.join(str(b) for b in batches)} images per GPU"
    return Table(
        key=key,
        title=f"{title}: {METRICS[metric]} (%)",
        column_name=column_name,
        mean=mean,
        std=std.reindex(mean.index),
        n=n.reindex(mean.index, fill_value=0),
        display=display,
        paper=paper,
        delta=delta,
        sources=sources,
    )


def build_tables(cells: pd.DataFrame, metric: str = DEFAULT_METRIC) -> list[Table]:
    """All tables that fit a sweep (see infer_layouts)."""
    check_metric(metric)
    return [build_table(cells, key, metric) for key in infer_layouts(cells)]


def format_number_frame(frame: pd.DataFrame, signed_rows: Iterable[str] = ()) -> pd.DataFrame:
    """Numbers as text for printing: 2 decimals, a sign in ``signed_rows``, blank where missing."""
    signed = set(signed_rows)

    def text(value: object, row: object) -> str:
        if pd.isna(value):
            return ""
        return f"{value:+.2f}" if row in signed else f"{value:.2f}"

    columns = {col: [text(v, row) for row, v in frame[col].items()] for col in frame.columns}
    return pd.DataFrame(columns, index=frame.index, columns=frame.columns, dtype=object)


def markdown_table(frame: pd.DataFrame, corner: str = "") -> str:
    """A GitHub Markdown table of a text DataFrame (index as the first column)."""
    header = [corner, *(str(c) for c in frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values in frame.iterrows():
        lines.append("| " + " | ".join([str(label), *(str(v) for v in values)]) + " |")
    return "\n".join(lines)
