"""scripts/doubling_test.py: a cell passes when doubling its epochs moves its error by less than
its seed-to-seed standard deviation; a cell without its seeds or its check is pending."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from conftest import load_script


def _script():
    return load_script("doubling_test")


def _cells(*rows: tuple[str, int, int, int, float]) -> pd.DataFrame:
    """(norm, groups, seed, epochs, error) rows at 32 per GPU."""
    return pd.DataFrame(
        [{"norm_label": n, "batch": 32, "groups": g, "group_size": 0, "seed": s, "epochs": e,
          "val_error_median5": v} for n, g, s, e, v in rows]
    )  # fmt: skip


def test_a_cell_passes_when_doubling_moves_it_less_than_its_seed_std() -> None:
    doubling = _script()
    tables = _cells(("gn", 8, 0, 320, 15.0), ("gn", 8, 1, 320, 15.4), ("gn", 8, 2, 320, 14.6),
                    ("gn", 2, 0, 320, 20.0), ("ln", 0, 0, 320, 16.0), ("ln", 0, 1, 320, 16.1),
                    ("ln", 0, 2, 320, 16.2))  # fmt: skip
    check = _cells(("gn", 8, 0, 640, 14.8), ("ln", 0, 0, 640, 15.5), ("in", 0, 0, 640, 15.0))
    rows = {row["cell"]: row for row in doubling.doubling_rows(tables, check)}
    gn = rows["gn at 32 per GPU"]  # G = 2 is another cell: not mixed in
    assert gn["seeds (protocol)"] == "15.00, 15.40, 14.60"
    assert gn["std"] == pytest.approx(0.4) and gn["change"] == pytest.approx(-0.2)
    assert gn["passes"] == "yes" and gn["epochs"] == "320 -> 640"
    assert math.isnan(gn["SE"])  # one seed doubled: no spread of the change
    ln = rows["ln at 32 per GPU"]
    assert ln["change"] == pytest.approx(-0.5) and ln["passes"] == "no"
    assert ln["change / std"] == pytest.approx(5.0)
    missing = rows["in at 32 per GPU"]  # no seeds at the protocol's length yet
    assert missing["passes"] == "pending" and math.isnan(missing["std"])


def test_with_several_seeds_doubled_the_change_is_paired_by_seed_and_averaged() -> None:
    doubling = _script()
    tables = _cells(("bn", 8, 0, 320, 15.6), ("bn", 8, 1, 320, 15.8), ("bn", 8, 2, 320, 15.0))
    check = _cells(("bn", 8, 2, 640, 15.2), ("bn", 8, 0, 640, 15.2), ("bn", 8, 1, 640, 15.8))
    (row,) = doubling.doubling_rows(tables, check)
    assert row["changes"] == "-0.40, +0.00, +0.20"  # seeds 0, 1, 2, each against its own seed
    assert row["change"] == pytest.approx(-0.2 / 3)
    assert row["SE"] == pytest.approx(pd.Series([-0.4, 0.0, 0.2]).std() / 3**0.5)
    assert row["passes"] == "yes"  # |mean change| 0.07 < the seed std at 320 (0.42)
    assert row["doubled"] == "seed 0 15.20, seed 1 15.80, seed 2 15.20"
