"""The report of a sweep: a pure function of its run directories (runs/<experiment>/<cell>/).

    report = build_report(Path("runs/batch_sweep"))      # writes runs/batch_sweep/report/
    print(format_report(report))

Writes report.md, cells.csv, per layout <key>_ours.csv / <key>_paper.csv / <key>_delta.csv,
paired_<key>.csv (the paper's claims as paired differences over seeds, :mod:`.stats`),
error_vs_<key>.png, curves/<cell>.png, and for a sweep of many norms over batch sizes the zoo
figures of :mod:`normbench.report.zoo`. A folder of detection cells gets the detection table
instead (:mod:`normbench.report.detection`: the paper's COCO layout beside its numbers, paired
differences, the AP plot). A folder that holds a committed report's cells.csv instead of run
directories (results/<name>/) is reported from that file. Run directories are
only read; every output file is written to a temporary name and renamed into place, so a crash
never leaves half a file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from normbench.errors import UserError
from normbench.metrics import DETECTION_NAMES
from normbench.report import diagnostics, stats
from normbench.report.collect import collect_runs, read_history
from normbench.report.committed import REFERENCE_DIR, Reference, load_reference, read_sweep
from normbench.report.detection import (
    PLOT_FILE,
    DetectionTable,
    build_detection_table,
    detection_markdown,
    paper_text,
    write_detection,
)
from normbench.report.plots import figure_png, plot_sweep, plot_training_curves
from normbench.report.tables import (
    DEFAULT_METRIC,
    DIFF_ROW,
    METRICS,
    VS_BN_ROW,
    Table,
    build_table,
    check_metric,
    format_number_frame,
    layout_cells,
    markdown_table,
)
from normbench.report.zoo import zoo_figures, zoo_markdown
from normbench.track.rundir import atomic_write_bytes

__all__ = [
    "Report",
    "Table",
    "build_report",
    "collect_runs",
    "format_report",
    "write_atomic",
]

COMPARABILITY_NOTE = (
    "Absolute errors are not comparable with the paper's: the paper trains ResNet-50 on "
    "ImageNet for 100 epochs, a CPU sweep trains a small ResNet on a mini dataset. What should "
    "reproduce is the shape of the curves (BN's error rising as images per GPU shrink, GN "
    "staying flat; the ordering of the norms; GN's insensitivity to the group setting), so "
    "read the delta tables for the difference rows and the trends, not for the absolute offset."
)
STATUS_WORDS = {
    "finished": "finished",
    "diverged": "diverged",
    "failed": "failed",
    "unfinished": "running/unfinished",
}


@dataclass(frozen=True)
class Report:
    """What build_report read and wrote."""

    experiment: str
    sweep_dir: Path
    out_dir: Path
    metric: str
    cells: pd.DataFrame
    tables: list[Table]
    commands: list[str]
    paths: list[Path]
    # The BN diagnostics table (mean, std over seeds); None when no cell measured them.
    diagnostics: tuple[pd.DataFrame, pd.DataFrame] | None = None
    # The paper's claims per table key, as paired differences over seeds.
    claims: dict[str, list[stats.Paired]] = field(default_factory=dict)
    # The committed converged result in the same layouts; None where there is none to show.
    reference: Reference | None = None
    # A folder of detection cells: its table (``tables`` is then empty).
    detection: DetectionTable | None = None

    @property
    def unfinished(self) -> list[str]:
        """Cells without metrics.json (running, or killed before finishing)."""
        return self.cells.loc[self.cells["status"] == "unfinished", "cell"].tolist()


# ----------------------------------------------------------------------------- writing


def write_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` all or nothing (temporary file, fsync, rename)."""
    atomic_write_bytes(path, data)
    return path


def _safe_name(cell: str) -> str:
    """A file name for a cell ("batch=4,norm=gn" -> "batch=4_norm=gn")."""
    return re.sub(r"[^\w=.+-]+", "_", cell)


# ----------------------------------------------------------------------------- content


def _experiment_name(cells: pd.DataFrame, sweep_dir: Path) -> str:
    names = cells["experiment"].dropna()
    return str(names.mode().iloc[0]) if len(names) else sweep_dir.name


def _commands(cells: pd.DataFrame) -> list[str]:
    """The training commands recorded in metrics.json, one per distinct command."""
    return list(dict.fromkeys(cells["command"].dropna()))


def _versions(cells: pd.DataFrame) -> dict[str, list[str]]:
    """Package -> the distinct versions recorded across cells."""
    found: dict[str, list[str]] = {}
    for text in cells["versions"].dropna():
        for package, version in json.loads(text).items():
            found.setdefault(package, [])
            if str(version) not in found[package]:
                found[package].append(str(version))
    return found


def _data_note(cells: pd.DataFrame) -> str:
    """The first line's warning when cells trained on the synthetic set (the fallback where
    Fashion-MNIST is missing, or chosen): its mini protocol does not converge (55-71 % error),
    so its numbers show that the machinery runs, not what the paper claims."""
    if "synthetic" not in set(cells["dataset"].dropna()):
        return ""
    return " -- synthetic data: these numbers test the machinery only"


def _status_line(cells: pd.DataFrame) -> str:
    counts = cells["status"].value_counts()
    return ", ".join(f"{counts.get(s, 0)} {w}" for s, w in STATUS_WORDS.items())


def _problem_lines(cells: pd.DataFrame) -> list[str]:
    """One line per cell that did not finish: running/unfinished, diverged or failed."""
    lines = []
    for row in cells[cells["status"] != "finished"].itertuples():
        if row.status == "unfinished":
            epochs = "?" if pd.isna(row.epochs) else row.epochs
            detail = f"{row.epochs_done}/{epochs} epochs in history.csv"
        elif row.status == "diverged":
            detail = f"at step {row.diverged_at_step}" if not pd.isna(row.diverged_at_step) else ""
        else:
            detail = str(row.error or "")
        lines.append(f"{row.cell}: {STATUS_WORDS[row.status]}" + (f" ({detail})" if detail else ""))
    return lines


def _skipped_line(cells: pd.DataFrame) -> list[str]:
    """Which cells trained without some images (dataset.bad_images=skip), and how many."""
    skipped = cells[cells["skipped_images"].fillna(0) > 0]
    if skipped.empty:
        return []
    counts = ", ".join(f"{row.cell}: {row.skipped_images}" for row in skipped.itertuples())
    return [f"unreadable images skipped (trained and evaluated without them): {counts}"]


def _table_texts(table: Table, reference: Reference | None) -> dict[str, pd.DataFrame]:
    """Our table, the paper's, the delta and the converged reference (where the report has one
    in this layout) as text frames, ready to print."""
    texts = {
        "ours": table.display,
        "paper": format_number_frame(table.paper, signed_rows=[DIFF_ROW, VS_BN_ROW]),
        "ours - paper": format_number_frame(table.delta, signed_rows=table.delta.index),
    }
    if reference is not None and table.key in reference.tables:
        texts[reference.label] = reference.tables[table.key].display
    return texts


PAIRED_NOTE = (
    "Each of the paper's claims, computed from our cells seed by seed: A - B for every seed "
    "that finished both (seed s of two cells drew the same data subset and random streams), "
    f"the mean over seeds and its {round(100 * stats.LEVEL)}% Student-t interval (n - 1 "
    "degrees of freedom: with 2 or 3 seeds it is wide, and numbers are printed only to the "
    "precision it allows). *within noise*: the interval holds 0, so these seeds do not tell "
    "the two apart; one seed gives no interval. `paper`: the paper's difference for the same "
    "entries."
)


def _short_title(table: Table) -> str:
    return table.title.split(":")[0]


def _machine_lines(cells: pd.DataFrame) -> list[str]:
    lines = []
    for column, label in (
        ("host", "hosts"),
        ("git_commit", "git commits"),
        ("devices", "devices"),
        ("gpus", "GPUs (emulated or real)"),
    ):
        values = list(dict.fromkeys(str(v) for v in cells[column].dropna()))
        if values:
            lines.append(f"- {label}: {', '.join(values)}")
    for package, versions in _versions(cells).items():
        note = " (differs across cells)" if len(versions) > 1 else ""
        lines.append(f"- {package}: {', '.join(versions)}{note}")
    return lines


def _markdown_head(report: Report) -> list[str]:
    """The title and the cells' status: every report's first lines."""
    cells = report.cells
    return [
        f"# normbench report: {report.experiment}{_data_note(cells)}",
        "",
        f"Sweep folder: `{report.sweep_dir}`, {len(cells)} cells ({_status_line(cells)}).",
        *(f"{line[0].upper()}{line[1:]}." for line in _skipped_line(cells)),
    ]


def _markdown_problems(cells: pd.DataFrame) -> list[str]:
    problems = _problem_lines(cells)
    if not problems:
        return []
    return ["## Cells that did not finish", "", *(f"- `{p}`" for p in problems), ""]


def _markdown_tail(report: Report) -> list[str]:
    """The commands, the machines and the versions: every report's last sections."""
    out = ["## Commands", "", "```"] + (report.commands or ["(none recorded)"]) + ["```", ""]
    return out + [
        "## Machine and versions",
        "",
        *(_machine_lines(report.cells) or ["(none recorded)"]),
        "",
    ]


def render_markdown(report: Report, images: dict[str, str], curves: dict[str, str]) -> str:
    """The Markdown report; ``images`` maps a table key and ``curves`` a cell to a PNG path."""
    cells = report.cells
    out = [
        *_markdown_head(report),
        f"Metric: `{report.metric}` ({METRICS[report.metric]}), top-1 error in percent; "
        "several seeds read `mean +- std (n=seeds)` with the sample std; "
        "cells that did not finish read `diverged`, `failed` or `running`.",
        "",
        f"> {COMPARABILITY_NOTE}",
        "",
        *_markdown_problems(cells),
    ]
    for line in stats.penalty_lines(report.claims.get("batch", [])):
        out += [f"{line}.", ""]
    out += _diagnostics_markdown(report, images)
    for table in report.tables:
        out += [f"## {table.title}", ""]
        for name, frame in _table_texts(table, report.reference).items():
            out += [f"**{name}**", "", markdown_table(frame, table.column_name), ""]
        out += [f"Paper source: {'; '.join(table.sources)}.", ""]
        if table.key in images:
            out += [f"![{table.title}]({images[table.key]})", ""]
    if any(report.claims.values()):
        out += ["## Paired differences", "", PAIRED_NOTE, ""]
        for table in report.tables:
            if report.claims.get(table.key):
                frame = stats.display_frame(report.claims[table.key])
                out += [f"### {_short_title(table)}", "", markdown_table(frame, "claim"), ""]
    if curves:
        out += ["## Training curves", ""]
        out += [f"![{cell}]({path})" for cell, path in curves.items()] + [""]
    return "\n".join(out + _markdown_tail(report))


def render_detection_markdown(report: Report) -> str:
    """The Markdown report of a folder of detection cells."""
    assert report.detection is not None
    out = [*_markdown_head(report), "", *_markdown_problems(report.cells)]
    out += [detection_markdown(report.detection, image=PLOT_FILE), ""]
    return "\n".join(out + _markdown_tail(report))


def _diagnostics_markdown(report: Report, images: dict[str, str]) -> list[str]:
    cells, found = report.cells, report.diagnostics
    if found is None:
        return []
    out = [
        "## Where BN's small-batch penalty comes from (BN diagnostics)",
        "",
        "Val error (%) of each cell's final weights, evaluated with each kind of BN statistics: "
        + "; ".join(f"`{m}`: {label}" for m, label in diagnostics.MODE_LABELS.items())
        + ". The eval-statistics row is the part of BN's error the test-time statistics add "
        "(headline mode minus batch statistics); what remains at small batches against GN is "
        "what training at that batch size learned.",
        "",
        markdown_table(diagnostics.display_frame(*found), "images per GPU"),
        "",
    ]
    cost = diagnostics.cost_line(cells)
    out += [f"{cost[0].upper()}{cost[1:]}.", ""] if cost else []
    if "diagnostics" in images:
        out += [f"![BN diagnostics]({images['diagnostics']})", ""]
    return out


def format_report(report: Report) -> str:
    """A plain-text summary of a report for the terminal."""
    cells = report.cells
    lines = [
        f"normbench report: {report.experiment} (metric {report.metric}){_data_note(cells)}",
        f"cells: {_status_line(cells)}",
        *_skipped_line(cells),
        *_problem_lines(cells),
    ]
    if report.detection is not None:
        lines += _detection_text(report.detection)
    lines += stats.penalty_lines(report.claims.get("batch", []))
    if report.diagnostics is not None:
        frame = diagnostics.display_frame(*report.diagnostics).rename_axis(columns="images per GPU")
        lines += ["", "BN diagnostics: val error of the final weights by evaluation statistics",
                  frame.to_string(na_rep="")]  # fmt: skip
    for table in report.tables:
        lines += ["", table.title]
        for name, frame in _table_texts(table, report.reference).items():
            frame = frame.rename_axis(index=name, columns=table.column_name)
            lines += [f"{name}:", frame.to_string(na_rep=""), ""]
    for table in report.tables:
        if report.claims.get(table.key):
            lines += [f"Paired differences over seeds ({round(100 * stats.LEVEL)}% t-interval), "
                      f"{_short_title(table)}:",
                      stats.display_frame(report.claims[table.key]).to_string(), ""]  # fmt: skip
    report_md = [p for p in report.paths if p.name == "report.md"]
    if report_md:
        lines.append(f"written: {report_md[0]} ({len(report.paths)} files)")
    return "\n".join(lines)


def _detection_text(table: DetectionTable) -> list[str]:
    """The detection table, the paper's and the paired differences, for the terminal."""
    lines = ["", "Mask R-CNN box and mask AP (%), ours:", table.display.to_string(na_rep="")]
    lines += ["", "paper:", paper_text(table).to_string(na_rep="")]
    if table.claims:
        lines += ["", f"Paired differences over seeds ({round(100 * stats.LEVEL)}% t-interval):",
                  stats.display_frame(table.claims).to_string()]  # fmt: skip
    return [*lines, ""]


def build_detection_report(
    sweep_dir: Path, out_dir: Path, cells: pd.DataFrame, metric: str | None
) -> Report:
    """The report of a folder of detection cells (see build_report): cells.csv, the detection
    table's files (normbench.report.detection) and report.md."""
    if metric is not None and metric not in DETECTION_NAMES:
        raise UserError(
            f"metric={metric} is not a detection metric (allowed: {', '.join(DETECTION_NAMES)})"
        )
    others = cells.loc[~cells["metric"].isin(DETECTION_NAMES), "cell"].tolist()
    if others:
        raise UserError(
            f"{sweep_dir} holds classification cells ({others[0]}) beside detection cells: "
            "report each experiment's folder on its own"
        )
    table = build_detection_table(cells)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_atomic(out_dir / "cells.csv", cells.to_csv(index=False).encode())]
    paths += write_detection(table, out_dir)
    report = Report(
        experiment=_experiment_name(cells, sweep_dir),
        sweep_dir=sweep_dir,
        out_dir=out_dir,
        metric=metric or DETECTION_NAMES[0],
        cells=cells,
        tables=[],
        commands=_commands(cells),
        paths=paths,
        detection=table,
    )
    markdown = render_detection_markdown(report).encode()
    report.paths.append(write_atomic(out_dir / "report.md", markdown))
    return report


def build_report(
    sweep_dir: Path,
    out_dir: Path | None = None,
    metric: str | None = None,
    reference_dir: Path = REFERENCE_DIR,
) -> Report:
    """Read every cell of ``sweep_dir`` and write the report into ``out_dir``.

    ``out_dir`` defaults to ``sweep_dir/"report"``; it is skipped when reading cells. ``metric``
    defaults to the one the cells were configured with (config.yaml ``metric``) when they agree,
    else the median of the last 5 epochs. ``reference_dir`` is the committed converged result
    shown beside tables of the same dataset (see :mod:`.committed`).
    """
    if metric is not None and metric not in DETECTION_NAMES:
        check_metric(metric)
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir is not None else sweep_dir / "report"
    cells = read_sweep(sweep_dir, exclude=[out_dir])
    if "pretrained" in cells.columns:  # collected only from detection cells
        return build_detection_report(sweep_dir, out_dir, cells, metric)
    if metric is not None:
        check_metric(metric)  # a detection metric, for classification cells
    if metric is None:
        configured = cells["metric"].dropna().unique()
        metric = str(configured[0]) if len(configured) == 1 else DEFAULT_METRIC
        check_metric(metric)
    layouts = layout_cells(cells)
    tables = [build_table(part, key, metric) for key, part in layouts.items()]
    claims = {table.key: stats.layout_claims(table) for table in tables}
    (out_dir / "curves").mkdir(parents=True, exist_ok=True)
    paths = [write_atomic(out_dir / "cells.csv", cells.to_csv(index=False).encode())]
    images: dict[str, str] = {}
    for table in tables:
        for part, frame in (("ours", table.display), ("paper", table.paper),
                            ("delta", table.delta)):  # fmt: skip
            csv = frame.to_csv().encode()
            paths.append(write_atomic(out_dir / f"{table.key}_{part}.csv", csv))
        csv = stats.claims_frame(claims[table.key]).to_csv(index=False).encode()
        paths.append(write_atomic(out_dir / f"paired_{table.key}.csv", csv))
        if table.key != "norms":  # Table 1's layout has no numeric axis to plot against
            name = f"error_vs_{table.key}.png"
            png = figure_png(plot_sweep(table, METRICS[metric]))
            paths.append(write_atomic(out_dir / name, png))
            images[table.key] = name
    # Table 2's cells: in a folder of several tables, the others' cells at one batch would
    # join its columns as if they were seeds.
    found = diagnostics.diagnostics_table(layouts.get("batch", cells))
    if found is not None:
        mean, std = found
        csv = pd.concat({"mean": mean, "std": std}).to_csv().encode()
        paths.append(write_atomic(out_dir / "diagnostics.csv", csv))
        png = figure_png(diagnostics.plot_diagnostics(mean, std))
        paths.append(write_atomic(out_dir / "bn_diagnostics.png", png))
        images["diagnostics"] = "bn_diagnostics.png"
    zoo = zoo_figures(tables, METRICS[metric])  # empty unless the sweep is a norm zoo
    paths += [write_atomic(out_dir / name, png) for name, (_, png) in zoo.items()]
    curves: dict[str, str] = {}
    for row in cells.itertuples():
        history = read_history(Path(row.path))
        if history is not None and len(history):
            name = f"curves/{_safe_name(row.cell)}.png"
            title = row.cell + ("" if row.status == "finished" else f" ({row.status})")
            figure = plot_training_curves(title, history)
            paths.append(write_atomic(out_dir / name, figure_png(figure, tight=False)))
            curves[row.cell] = name
    report = Report(
        experiment=_experiment_name(cells, sweep_dir),
        sweep_dir=sweep_dir,
        out_dir=out_dir,
        metric=metric,
        cells=cells,
        tables=tables,
        commands=_commands(cells),
        paths=paths,
        diagnostics=found,
        claims=claims,
        reference=load_reference(cells, metric, sweep_dir, reference_dir),
    )
    markdown = render_markdown(report, images, curves) + zoo_markdown(zoo)
    report.paths.append(write_atomic(out_dir / "report.md", markdown.encode()))
    return report
