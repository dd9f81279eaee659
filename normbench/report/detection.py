"""The detection table: Mask R-CNN's box and mask AP per norm, beside the GN paper's COCO table.

The paper (Wu & He 2018, Sec. 6.1) fine-tunes Mask R-CNN from ImageNet checkpoints with 2
images per GPU, so BN's statistics come from 2 images: BN* (BN frozen into a per-channel linear
layer, the detection default), BN and SyncBN (statistics over all GPUs) against GN, and GN
trained from scratch. Rows come from the cells' ``norm`` and ``pretrained``; columns are COCO's
AP, AP50 and AP75 of boxes and of masks, ``mean +- std (n=seeds)``.

Absolute APs of a CPU mini (scenes of Fashion-MNIST items) and of COCO do not compare; the
differences between norms do, so each of the paper's comparisons (GN - BN*, GN - BN,
GN - SyncBN, GN from scratch - GN) is computed seed by seed with its 95% t-interval
(:mod:`normbench.report.stats`) beside the paper's own difference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from normbench.errors import UserError
from normbench.report import stats
from normbench.report.paper import load_paper_table, paper_sources
from normbench.report.plots import figure_png
from normbench.report.tables import markdown_table, norm_row_label, setting_suffixes, summarize_cell
from normbench.track.rundir import atomic_write_bytes
from normbench.train.coco_eval import METRICS

PAPER_TABLE = "coco_detection"
# The paper's column headings (AP^bbox, AP^bbox_50, ...), in the order of METRICS.
METRIC_LABELS = dict(
    zip(
        METRICS,
        ("AP box", "AP50 box", "AP75 box", "AP mask", "AP50 mask", "AP75 mask"),
        strict=True,
    )
)
NORM_LABELS = {"frozen_bn": "BN*", "bn": "BN", "syncbn": "SyncBN", "gn": "GN"}
SCRATCH = "from scratch"
# The paper's rows, in its order; other norms follow alphabetically.
ROW_ORDER = ("BN*", "BN", "SyncBN", "GN", f"GN {SCRATCH}")
# The paper's comparisons (a - b), each on box and on mask AP.
COMPARISONS = (("GN", "BN*"), ("GN", "BN"), ("GN", "SyncBN"), (f"GN {SCRATCH}", "GN"))
COMPARED_METRICS = ("box_ap", "mask_ap")
PLOT_FILE = "detection_ap.png"

NOTE = (
    "Absolute APs are not comparable with the paper's: the paper fine-tunes ResNet-50 Mask "
    "R-CNN on COCO (118k images, 80 categories), a CPU mini trains a small one on scenes of "
    "Fashion-MNIST items. What should reproduce is the order of the rows and the sign of the "
    "differences (GN above BN* and BN at 2 images per GPU, GN from scratch close to fine-tuned "
    "GN): read the paired differences."
)
PAIRED_NOTE = (
    "A - B for every seed that finished both, the mean over seeds and its "
    f"{round(100 * stats.LEVEL)}% Student-t interval; *within noise*: the interval holds 0. "
    "`paper`: the paper's difference, from the setting the claim names (the first in the "
    "paper's table that has both rows)."
)


@dataclass(frozen=True)
class DetectionTable:
    """Our detection table beside the paper's.

    ``mean``, ``std`` (sample std over seeds) and ``n`` (finished seeds) have our rows and the
    columns :data:`METRICS`; ``display`` is the same as text with :data:`METRIC_LABELS` as
    columns; ``per_seed`` holds each finished seed's numbers (index: row, seed); ``paper`` the
    paper's rows (labelled with their backbone and schedule) and ``sources`` their citations;
    ``claims`` the paired differences.
    """

    mean: pd.DataFrame
    std: pd.DataFrame
    n: pd.DataFrame
    display: pd.DataFrame
    per_seed: pd.DataFrame
    paper: pd.DataFrame
    sources: list[str]
    claims: list[stats.Paired]


def norm_label(norm: str, pretrained: bool = True) -> str:
    """A row's label as the paper writes it: "frozen_bn" -> "BN*"; "GN from scratch"."""
    label = NORM_LABELS.get(norm, norm_row_label(norm))
    return label if pretrained else f"{label} {SCRATCH}"


def is_pretrained(value: object) -> bool:
    """A cell's ``pretrained`` entry as a flag: a checkpoint path or True; None, NaN (a blank in
    a committed cells.csv), "" or False is from scratch."""
    return bool(value) and not pd.isna(value)


def _row_rank(label: str) -> tuple[int, str]:
    """The paper's rows first, in its order (the longest one a label starts with), then the
    others alphabetically."""
    ranks = [
        (len(row), i)
        for i, row in enumerate(ROW_ORDER)
        if label == row or label.startswith(f"{row} ")
    ]
    return (max(ranks)[1] if ranks else len(ROW_ORDER)), label


def _unshown(overrides: object) -> object:
    """A cell's overrides (JSON text) without the pretrained setting, which the rows show."""
    if not isinstance(overrides, str):
        return overrides
    kept = {k: v for k, v in json.loads(overrides).items() if k.split(".")[-1] != "pretrained"}
    return json.dumps(kept, sort_keys=True)


def _entries(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells with ``base`` (norm label), ``setting`` (what else tells rows apart: the
    batch where several ran, other overrides that vary) and ``row`` = base + setting."""
    base = [
        norm_label(n, is_pretrained(p))
        for n, p in zip(cells["norm"], cells["pretrained"], strict=True)
    ]
    setting = pd.Series("", index=cells.index, dtype=object)
    if cells["batch"].nunique() > 1:
        setting = " at " + cells["batch"].astype(str) + " images/GPU"
    if "overrides" in cells.columns:
        setting = setting + setting_suffixes(
            cells.assign(overrides=cells["overrides"].map(_unshown))
        )
    status = cells["status"] if "status" in cells.columns else "finished"
    entries = cells.assign(base=base, setting=setting, status=status)
    return entries.assign(row=entries["base"] + entries["setting"])


def _summaries(entries: pd.DataFrame, rows: list[str]) -> tuple[pd.DataFrame, ...]:
    """Mean, std, n and display text per (row, metric) (tables.summarize_cell)."""
    shape = {"index": pd.Index(rows, dtype=object), "columns": pd.Index(METRICS, dtype=object)}
    mean, std = pd.DataFrame(np.nan, **shape), pd.DataFrame(np.nan, **shape)
    n, display = pd.DataFrame(0, **shape), pd.DataFrame("", **shape)
    for row, group in entries.groupby("row"):
        for metric in METRICS:
            found = summarize_cell(group, metric)
            mean.at[row, metric], std.at[row, metric], n.at[row, metric] = found[:3]
            display.at[row, metric] = found[3]
    return mean, std, n, display.rename(columns=METRIC_LABELS)


def _per_seed(entries: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """The finished seeds' numbers, index (row, seed), in row order then seed order."""
    done = entries[(entries["status"] == "finished") & entries["seed"].notna()]
    per_seed = done.assign(seed=done["seed"].astype(int)).groupby(["row", "seed"])[list(METRICS)]
    per_seed = per_seed.mean()
    order = sorted(per_seed.index, key=lambda key: (rows.index(key[0]), key[1]))
    return per_seed.reindex(pd.MultiIndex.from_tuples(order, names=["row", "seed"]))


def paper_rows(paper: pd.DataFrame) -> pd.DataFrame:
    """The paper's table with ``base`` (row label), ``setting`` ("R-50-FPN, 2x") and ``row``
    ("GN (R-50-FPN, 2x)") added, in file order."""
    base = [
        norm_label(n, is_pretrained(p))
        for n, p in zip(paper["norm"], paper["pretrained"], strict=True)
    ]
    schedule = paper["schedule"].fillna("").astype(str)
    setting = paper["backbone"].astype(str) + schedule.map(lambda s: f", {s}" if s else "")
    rows = paper.assign(base=base, setting=setting)
    return rows.assign(row=rows["base"] + " (" + rows["setting"] + ")")


def paper_difference(paper: pd.DataFrame, a: str, b: str, metric: str) -> tuple[float, str]:
    """The paper's ``a - b`` on ``metric`` and the setting it is read from: the first setting
    of the paper's table that has both rows; (NaN, "") where none has."""
    rows = paper_rows(paper)
    for setting, group in rows.groupby("setting", sort=False):
        values = group.set_index("base")[metric].dropna()
        if a in values.index and b in values.index:
            return float(values[a] - values[b]), str(setting)
    return math.nan, ""


def _claims(
    per_seed: pd.DataFrame, entries: pd.DataFrame, paper: pd.DataFrame
) -> list[stats.Paired]:
    """The paper's comparisons, per setting that holds both rows, on box and mask AP."""
    rows = set(entries["row"])
    claims = []
    for setting in dict.fromkeys(entries["setting"]):
        for a, b in COMPARISONS:
            a_row, b_row = a + setting, b + setting
            if a_row not in rows or b_row not in rows:
                continue
            for metric in COMPARED_METRICS:
                seeds, values = _paired_values(per_seed, metric, a_row, b_row)
                difference, source = paper_difference(paper, a, b, metric)
                where = f" (paper: {source})" if source else ""
                claims.append(
                    stats.Paired(
                        claim=f"{METRIC_LABELS[metric]}{where}",
                        a=a_row,
                        b=b_row,
                        seeds=seeds,
                        values=values,
                        paper=difference,
                    )
                )
    return claims


def _paired_values(
    per_seed: pd.DataFrame, metric: str, a: str, b: str
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Per seed that finished both rows, ``a - b`` on ``metric``."""
    by_seed = per_seed[metric].unstack("row").reindex(columns=[a, b]).dropna()
    difference = by_seed[a] - by_seed[b]
    return tuple(int(s) for s in difference.index), tuple(float(v) for v in difference)


def build_detection_table(cells: pd.DataFrame, paper: pd.DataFrame | None = None) -> DetectionTable:
    """Our table from detection cells (one row per cell: ``norm``, ``seed``, ``pretrained``,
    ``batch``, the :data:`METRICS`; ``status`` and ``overrides`` where collected), beside
    ``paper`` (default: the package's coco_detection table).

    Seeds that did not finish are left out of the numbers and named in the text, as in the
    classification tables.
    """
    if cells.empty:
        raise UserError("no detection cells to report (each needs norm, seed, pretrained, batch)")
    paper = load_paper_table(PAPER_TABLE) if paper is None else paper
    entries = _entries(cells)
    rows = sorted(entries["row"].unique(), key=_row_rank)
    mean, std, n, display = _summaries(entries, rows)
    per_seed = _per_seed(entries, rows)
    labelled = paper_rows(paper)
    return DetectionTable(
        mean=mean,
        std=std,
        n=n,
        display=display,
        per_seed=per_seed,
        paper=labelled.set_index("row")[list(METRICS)],
        sources=paper_sources(paper),
        claims=_claims(per_seed, entries, paper),
    )


# ----------------------------------------------------------------------------- text


def _numbers_text(frame: pd.DataFrame, decimals: int) -> pd.DataFrame:
    """Numbers as text with METRIC_LABELS as columns, blank where missing."""
    text = frame.map(lambda v: "" if pd.isna(v) else f"{v:.{decimals}f}")
    return text.rename(columns=METRIC_LABELS)


def per_seed_text(table: DetectionTable) -> pd.DataFrame:
    """The per-seed numbers as text, one line per (row, seed)."""
    text = _numbers_text(table.per_seed, 2)
    text.index = pd.Index([f"{row}, seed {seed}" for row, seed in table.per_seed.index])
    return text


def paper_text(table: DetectionTable) -> pd.DataFrame:
    """The paper's rows as text, to its own precision (one decimal)."""
    return _numbers_text(table.paper, 1)


def detection_markdown(table: DetectionTable, image: str | None = PLOT_FILE) -> str:
    """The report's detection section; ``image``: the bar plot's path relative to report.md."""
    out = [
        "## Detection: Mask R-CNN box and mask AP (paper Sec. 6.1, Table 4)",
        "",
        "COCO AP in percent (IoU 0.50:0.95), AP50 and AP75 of boxes and of masks, by "
        "pycocotools; several seeds read `mean +- std (n=seeds)` with the sample std.",
        "",
        f"> {NOTE}",
        "",
        "**ours**",
        "",
        markdown_table(table.display, "norm"),
        "",
    ]
    if not table.per_seed.empty:
        out += ["**ours, per seed**", "", markdown_table(per_seed_text(table), "norm, seed"), ""]
    out += ["**paper**", "", markdown_table(paper_text(table), "norm (setting)"), ""]
    out += [f"Paper sources: {'; '.join(table.sources)}.", ""]
    if table.claims:
        frame = stats.display_frame(table.claims)
        out += ["### Paired differences", "", PAIRED_NOTE, "", markdown_table(frame, "claim"), ""]
    if image is not None:
        out += [f"![Mask R-CNN box and mask AP]({image})", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- plot and files


def plot_detection(table: DetectionTable) -> Figure:
    """Box and mask AP per row: bars at the mean, error bars one std, each seed a dot."""
    figure = Figure(figsize=(max(4.0, 1.2 * len(table.mean) + 2), 3.8))
    ax = figure.add_subplot()
    width = 0.38
    positions = np.arange(len(table.mean))
    for i, (metric, name) in enumerate((("box_ap", "box"), ("mask_ap", "mask"))):
        x = positions + (i - 0.5) * width
        ax.bar(
            x,
            table.mean[metric],  # a row with no finished seed (NaN) gets no bar
            width,
            yerr=table.std[metric].fillna(0.0),  # one seed: no spread to show
            capsize=3,
            color=f"C{i}",
            alpha=0.8,
            ecolor="0.35",
            label=f"{name} AP",
        )
        for xi, row in zip(x, table.mean.index, strict=True):
            seeds = _seed_values(table.per_seed, row, metric)
            # spread over the bar so the dots stay clear of the error bar
            spread = np.linspace(-width / 4, width / 4, len(seeds)) if len(seeds) > 1 else 0.0
            ax.plot(
                xi + spread * np.ones(len(seeds)),
                seeds,
                "o",
                markersize=3.5,
                markerfacecolor="white",
                markeredgecolor="black",
                zorder=3,
            )
    for position, row in zip(positions, table.mean.index, strict=True):
        if table.mean.loc[row].isna().all():  # say why a row has no bars ("diverged")
            ax.text(position, 0, table.display.loc[row].iloc[0], ha="center", va="bottom")
    ax.set_xticks(positions, list(table.mean.index), rotation=20 if len(positions) > 4 else 0)
    ax.set_ylabel("AP (%)")
    ax.set_title("Mask R-CNN: box and mask AP (mean, std over seeds; dots: seeds)", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _seed_values(per_seed: pd.DataFrame, row: str, metric: str) -> list[float]:
    if row not in per_seed.index.get_level_values("row"):
        return []
    return per_seed.loc[row, metric].dropna().tolist()


def write_detection(table: DetectionTable, out_dir: Path) -> list[Path]:
    """Write the table's files into ``out_dir`` (each atomically): detection_ours.csv,
    detection_seeds.csv, detection_paper.csv, paired_detection.csv and the bar plot."""
    files = (
        ("detection_ours.csv", table.display.to_csv().encode()),
        ("detection_seeds.csv", table.per_seed.to_csv().encode()),
        ("detection_paper.csv", table.paper.to_csv().encode()),
        ("paired_detection.csv", stats.claims_frame(table.claims).to_csv(index=False).encode()),
        (PLOT_FILE, figure_png(plot_detection(table))),
    )
    paths = [Path(out_dir) / name for name, _ in files]
    for path, (_, data) in zip(paths, files, strict=True):
        atomic_write_bytes(path, data)
    return paths
