"""The doubling test of a protocol (results/tuning.md): is each tested cell converged?

A cell passes when training it twice as long (the check folder: one seed at 2x the epochs) moves
its error by less than its seed-to-seed standard deviation at the protocol's length (the tables'
folder: several seeds). Both folders are read from their committed records; a cell whose seeds
or check have not finished yet is listed as pending.

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
    """One row per check cell: its seeds at the protocol's length, the check, the verdict."""
    rows = []
    for _, doubled in check.sort_values(SAME_CELL).iterrows():
        same = tables
        for key in SAME_CELL:
            same = same[same[key] == doubled[key]]
        seeds = same.sort_values("seed")
        values = seeds[METRIC].tolist()
        std = pd.Series(values).std() if len(values) >= 2 else math.nan
        base = seeds.loc[seeds["seed"] == doubled["seed"], METRIC]
        change = doubled[METRIC] - base.iloc[0] if len(base) else math.nan
        verdict = "pending" if math.isnan(change) or math.isnan(std) else (
            "yes" if abs(change) < std else "no"
        )  # fmt: skip
        rows.append({
            "cell": f"{doubled['norm_label']} at {doubled['batch']} per GPU",
            "epochs": f"{int(seeds['epochs'].iloc[0]) if len(seeds) else '?'} -> "
                      f"{int(doubled['epochs'])}",
            "seeds (protocol)": ", ".join(f"{v:.2f}" for v in values) or "-",
            "std": std,
            f"seed {int(doubled['seed'])}, doubled": doubled[METRIC],
            "change": change,
            "change / std": abs(change) / std if std else math.nan,
            "passes": verdict,
        })  # fmt: skip
    return rows


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
    print(markdown_table(table.map(lambda v: f"{v:.2f}" if isinstance(v, float) else v), "cell"))


if __name__ == "__main__":
    main()
