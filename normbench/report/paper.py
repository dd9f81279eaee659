"""The Group Normalization paper's numbers (Wu & He 2018), shipped as CSV package data.

Every row of ``normbench/paper/*.csv`` carries its ``source`` (paper table), so a report can cite
what it compares against. The classification tables' values are ResNet-50 ImageNet top-1
validation errors in percent, the median of the last 5 epochs, 8 GPUs; coco_detection's are
Mask R-CNN's COCO APs in percent (its own columns say which).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from normbench.errors import UserError

# name -> what the table holds; the file is normbench/paper/<name>.csv
PAPER_TABLES: dict[str, str] = {
    "table1_norms": "BN, LN, IN, GN at 32 images/GPU",
    "table2_batch": "BN and GN at 32, 16, 8, 4, 2 images/GPU",
    "table3_groups": "GN with a given number of groups G at 32 images/GPU",
    "table3_group_size": "GN with a given number of channels per group at 32 images/GPU",
}
# The detection table (normbench.report.detection): COCO APs, not val errors.
DETECTION_TABLES: dict[str, str] = {
    "coco_detection": "Mask R-CNN box and mask AP on COCO: BN*, BN, SyncBN, GN, GN from scratch",
}


def load_paper_table(name: str) -> pd.DataFrame:
    """Return one of the paper's tables in long form (one row per number, with its source)."""
    if name not in PAPER_TABLES and name not in DETECTION_TABLES:
        allowed = ", ".join([*PAPER_TABLES, *DETECTION_TABLES])
        raise UserError(f"unknown paper table '{name}' (allowed: {allowed})")
    # one joinpath per level: Python 3.10 takes a single name
    csv = resources.files("normbench").joinpath("paper").joinpath(f"{name}.csv")
    with csv.open("r", encoding="utf-8") as f:
        return pd.read_csv(f)


def paper_sources(table: pd.DataFrame) -> list[str]:
    """The distinct sources cited by the rows of a paper table, in file order."""
    return list(dict.fromkeys(table["source"]))
