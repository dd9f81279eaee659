"""Tables in the paper's layouts, built from the per-cell DataFrame of collect.py.

Which layouts a sweep gets is read from what varies among its cells (:func:`layout_cells`; one
folder may hold several tables' cells, as the converged experiment writes Tables 1-3 into one):

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

from normbench.config import Config
from normbench.errors import UserError
from normbench.metrics import LABELS
from normbench.report.paper import load_paper_table, paper_sources

# The metrics a table may show, by name, with their labels (normbench.metrics); the one shown
# when the cells' configs name none or several: the config's default.
METRICS = LABELS
DEFAULT_METRIC = Config.metric
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
    on our rows and columns, NaN where the paper has no number. ``seeds`` holds the finished
    seeds' values (index: seed; columns: (row, col) of ``mean``), which paired statistics read;
    ``default`` is the column of GN's default group setting in a group ablation (None elsewhere,
    or where no cell ran the default).
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
    seeds: pd.DataFrame = field(default_factory=pd.DataFrame)
    default: int | None = None


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


GROUP_OVERRIDES = ("norm.groups", "norm.group_size")


def _group_overridden(cells: pd.DataFrame) -> pd.Series:
    """Whether a cell's overrides set GN's group setting; True where no overrides are recorded
    (a record older than them cannot say that it ran the default)."""

    def overridden(text: object) -> bool:
        return not isinstance(text, str) or any(key in json.loads(text) for key in GROUP_OVERRIDES)

    return cells["overrides"].map(overridden).astype(bool)


def _group_setting(cells: pd.DataFrame) -> pd.Series:
    """GN's group setting of each cell as text ("8/<NA>": 8 groups), NA included."""
    return cells["groups"].map(str) + "/" + cells["group_size"].map(str)


def _batch_spans(cells: pd.DataFrame) -> pd.Series:
    """Per cell, how many batch sizes its curve (norm, group setting, other settings) ran at."""
    label = cells["norm_label"].fillna(cells["norm"]).fillna("?")
    curve = label + " " + _group_setting(cells) + setting_suffixes(cells)
    return cells.groupby(curve)["batch"].transform("nunique")


def _ablation_cells(cells: pd.DataFrame, spans: pd.Series) -> pd.Series:
    """GN cells of a group ablation: run at one batch size only, with a group setting of their
    own, where GN runs several settings; at the largest batch that holds such cells."""
    gn = cells["norm"] == "gn"
    varied = _group_setting(cells)[gn].groupby(cells.loc[gn, "batch"]).transform("nunique") > 1
    found = gn & (spans == 1) & _group_overridden(cells)
    found &= varied.reindex(cells.index, fill_value=False).astype(bool)
    return found & (cells["batch"] == cells.loc[found, "batch"].max())


def layout_cells(cells: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The paper layouts that fit a sweep and the cells each is built from, in LAYOUTS order.

    - groups / group_size (Table 3): when GN cells of a group ablation exist (see
      _ablation_cells), every GN, LN and IN cell at the ablation's batch;
    - norms (Table 1): the other cells at the largest batch, when BN is there beside a norm
      other than BN and GN that ran at no other batch (LN and IN beside a BN-vs-GN batch
      sweep); and all cells when no other layout fits;
    - batch (Table 2): the cells neither of those takes for itself, when their batch varies.

    A folder of one table's cells gets that table from all its cells, as before folders held
    several tables.
    """
    spans = _batch_spans(cells)
    ablation = _ablation_cells(cells, spans)
    found: dict[str, pd.DataFrame] = {}
    if ablation.any():
        at_batch = cells[cells["batch"] == cells.loc[ablation, "batch"].max()]
        for key in ("groups", "group_size"):
            if len(LAYOUTS[key][0](at_batch)):
                found[key] = at_batch
    rest = cells[~ablation]
    top = rest[rest["batch"] == rest["batch"].max()]
    labels = top["norm_label"].fillna(top["norm"]).map(norm_row_label)
    only_here = top.index[(spans[top.index] == 1) & ~labels.isin(["BN", "GN"])]
    with_norms = (labels == "BN").any() and len(only_here) > 0
    batch_cells = rest.drop(only_here) if with_norms else rest
    if batch_cells["batch"].nunique() > 1:
        found["batch"] = batch_cells
    if with_norms or not found:
        found["norms"] = top if with_norms else cells
    return {key: found[key] for key in LAYOUTS if key in found}


def default_setting(cells: pd.DataFrame, key: str) -> int | None:
    """GN's default groups (key "groups") or channels per group ("group_size"): the setting of
    the GN cells whose overrides leave it alone; None where no such cell has that setting."""
    default = cells[(cells["norm"] == "gn") & ~_group_overridden(cells)]
    if key == "groups":
        default = default[default["group_size"].isna()]
    values = default[key].dropna()
    return int(values.mode().iloc[0]) if len(values) else None


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
    entries = entries.assign(col=entries["col"] if key == "norms" else entries["col"].astype(int))
    rows, cols = _ordered_axes(entries, key)
    shape = {"index": pd.Index(rows, dtype=object), "columns": pd.Index(cols, dtype=object)}
    mean = pd.DataFrame(np.nan, **shape)
    std = pd.DataFrame(np.nan, **shape)
    n = pd.DataFrame(0, **shape)
    display = pd.DataFrame("", **shape)
    for (row, col), group in entries.groupby(["row", "col"]):
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
        seeds=_seed_values(entries, metric),
        default=default_setting(cells, key) if key in ("groups", "group_size") else None,
    )


def _seed_values(entries: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The finished seeds' values: index seed, columns (row, col)."""
    done = entries[(entries["status"] == "finished") & entries[metric].notna()]
    done = done[done["seed"].notna()]
    return done.pivot_table(index="seed", columns=["row", "col"], values=metric, aggfunc="mean")


def build_tables(cells: pd.DataFrame, metric: str = DEFAULT_METRIC) -> list[Table]:
    """All tables that fit a sweep, each from its own cells (see layout_cells)."""
    check_metric(metric)
    return [build_table(part, key, metric) for key, part in layout_cells(cells).items()]


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
