"""The doubling test of a protocol (results/tuning.md): is each tested cell converged?

A cell passes when training it twice as long (the check folder: one or more seeds at 2x the
epochs) moves its error, paired by seed and averaged over the seeds doubled, by less than its
seed-to-seed standard deviation at the protocol's length (the tables' folder: several seeds).
Both folders are read from their committed records; a cell whose seeds or check have not
finished yet is listed as pending.

    python scripts/doubling_test.py results/fashion_mnist-converged-8px \\
        results/fashion_mnist-converged-8px-check
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from normbench.report.collect import collect_runs  # noqa: E402
from normbench.report.tables import markdown_table  # noqa: E402

METRIC = "val_error_median5"
# What identifies a cell across the two lengths (GN's groups: Table 3's cells are GN too).
SAME_CELL = ["norm_label", "batch", "groups", "group_size"]


def finished(folder: Path) -> pd.DataFrame:
    cells = collect_runs(folder)
    cells = cells[cells["status"] == "finished"].copy()
    cells[["groups", "group_size"]] = cells[["groups", "group_size"]].fillna(0)  # None: unset
    return cells


def doubling_rows(tables: pd.DataFrame, check: pd.DataFrame) -> list[dict[str, object]]:
    """One row per checked cell: its seeds at the protocol's length, its doubled seeds, the
    change paired by seed (mean +- SE over the seeds doubled) and the verdict on the mean."""
    rows = []
    for cell, doubled in check.sort_values([*SAME_CELL, "seed"]).groupby(SAME_CELL, sort=False):
        same = tables
        for key, value in zip(SAME_CELL, cell, strict=True):
            same = same[same[key] == value]
        base = same.sort_values("seed").set_index("seed")[METRIC]
        std = base.std() if len(base) >= 2 else math.nan
        changes = pd.Series(
            [row[METRIC] - base[row["seed"]] for _, row in doubled.iterrows()
             if row["seed"] in base.index]
        )  # fmt: skip
        change = changes.mean() if len(changes) else math.nan
        verdict = "pending" if math.isnan(change) or math.isnan(std) else (
            "yes" if abs(change) < std else "no"
        )  # fmt: skip
        rows.append({
            "cell": f"{cell[0]} at {cell[1]} per GPU",
            "epochs": f"{int(same['epochs'].iloc[0]) if len(same) else '?'} -> "
                      f"{int(doubled['epochs'].iloc[0])}",
            "seeds (protocol)": ", ".join(f"{v:.2f}" for v in base) or "-",
            "std": std,
            "doubled": ", ".join(f"seed {int(r['seed'])} {r[METRIC]:.2f}"
                                 for _, r in doubled.iterrows()),
            "changes": ", ".join(f"{c:+.2f}" for c in changes) or "-",
            "change": change,
            "SE": changes.std() / math.sqrt(len(changes)) if len(changes) >= 2 else math.nan,
            "change / std": abs(change) / std if std else math.nan,
            "passes": verdict,
        })  # fmt: skip
    return rows


def shown(value: object) -> object:
    """A number to two decimals, '-' for one not measured (NaN)."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.2f}"
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", type=Path, help="the protocol's folder (several seeds)")
    parser.add_argument("check", type=Path, help="the same cells at twice the epochs")
    args = parser.parse_args()
    rows = doubling_rows(finished(args.tables), finished(args.check))
    if not rows:
        print("no finished check cell yet")
        return
    table = pd.DataFrame(rows).set_index("cell")
    print(markdown_table(table.map(shown), "cell"))


if __name__ == "__main__":
    main()
