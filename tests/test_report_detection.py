"""normbench.report.detection: the Mask R-CNN table in the paper's layout, from hand-made cells."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from normbench.errors import UserError
from normbench.report import paper as paper_module
from normbench.report import stats
from normbench.report.detection import (
    METRIC_LABELS,
    PLOT_FILE,
    build_detection_table,
    detection_markdown,
    norm_label,
    write_detection,
)
from normbench.train.coco_eval import METRICS

T_95_2DF = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom

# Box and mask AP of seeds 0, 1, 2 per (norm, pretrained). GN - BN* per seed: box 2, 2.5, 1.5
# (mean 2, sd 0.5); GN - SyncBN: box 1, -1, 1 (interval holds 0).
BOX_MASK = {
    ("frozen_bn", True): ([30.0, 31.0, 32.5], [27.0, 28.0, 29.0]),
    ("bn", True): ([25.0, 26.0, 24.0], [22.0, 23.0, 21.0]),
    ("syncbn", True): ([31.0, 34.5, 33.0], [28.0, 29.0, 30.0]),
    ("gn", True): ([32.0, 33.5, 34.0], [29.0, 29.5, 31.0]),
    ("gn", False): ([31.0, 32.0, 33.5], [28.0, 28.5, 30.5]),
}


def make_cells(keep=lambda norm, pretrained: True) -> pd.DataFrame:
    """One row per cell; AP50 = AP + 20 and AP75 = AP + 2, so every column is told apart."""
    records = []
    for (norm, pretrained), (box, mask) in reversed(BOX_MASK.items()):  # not the paper's order
        if not keep(norm, pretrained):
            continue
        for seed, (b, m) in enumerate(zip(box, mask, strict=True)):
            records.append(
                {"norm": norm, "seed": seed, "pretrained": pretrained, "batch": 2,
                 "box_ap": b, "box_ap50": b + 20, "box_ap75": b + 2,
                 "mask_ap": m, "mask_ap50": m + 20, "mask_ap75": m + 2}
            )  # fmt: skip
    return pd.DataFrame.from_records(records)


@pytest.fixture(autouse=True)
def coco_paper_table(monkeypatch):
    """The table name as normbench.report.paper will register it (until then, here)."""
    monkeypatch.setitem(paper_module.PAPER_TABLES, "coco_detection", "GN paper's COCO table")


def claim(table, a: str, b: str, metric_label: str) -> stats.Paired:
    """The claim a - b on one metric ("AP box"; its name may add the paper's setting)."""
    (found,) = [
        c for c in table.claims if (c.a, c.b) == (a, b) and c.claim.split(" (")[0] == metric_label
    ]
    return found


def test_rows_are_the_papers_labels_in_its_order():
    table = build_detection_table(make_cells())
    assert list(table.mean.index) == ["BN*", "BN", "SyncBN", "GN", "GN from scratch"]
    assert list(table.mean.columns) == list(METRICS)
    assert list(table.display.columns) == list(METRIC_LABELS.values())
    assert norm_label("frozen_bn") == "BN*" and norm_label("gn", False) == "GN from scratch"
    assert norm_label("gn+ws") == "GN+WS"


def test_means_stds_and_counts_over_seeds():
    table = build_detection_table(make_cells())
    gn_box = pd.Series([32.0, 33.5, 34.0])
    assert table.mean.at["GN", "box_ap"] == pytest.approx(gn_box.mean())
    assert table.std.at["GN", "box_ap"] == pytest.approx(gn_box.std(ddof=1))
    assert table.mean.at["GN", "box_ap50"] == pytest.approx(gn_box.mean() + 20)
    assert table.mean.at["BN*", "mask_ap75"] == pytest.approx(30.0)
    assert (table.n == 3).all().all()
    assert table.display.at["GN", "AP box"] == "33.17 +- 1.04 (n=3)"
    assert table.per_seed.loc[("SyncBN", 1), "box_ap"] == 34.5
    assert list(table.per_seed.index[:3]) == [("BN*", 0), ("BN*", 1), ("BN*", 2)]


def test_a_blank_pretrained_entry_is_from_scratch():
    """Cells read back from a committed cells.csv: a path where pretrained, a blank (NaN) for
    from scratch; a blank must not count as pretrained."""
    cells = make_cells(lambda norm, pretrained: norm == "gn")
    cells["pretrained"] = cells["pretrained"].map(lambda p: "runs/pre/cell" if p else math.nan)
    table = build_detection_table(cells)
    assert list(table.mean.index) == ["GN", "GN from scratch"]
    assert table.mean.at["GN from scratch", "box_ap"] == pytest.approx((31.0 + 32.0 + 33.5) / 3)


def test_paired_differences_over_seeds_with_the_papers():
    table = build_detection_table(make_cells())
    gn_bn_star = claim(table, "GN", "BN*", "AP box")
    assert gn_bn_star.seeds == (0, 1, 2)
    assert gn_bn_star.values == pytest.approx((2.0, 2.5, 1.5))
    half = T_95_2DF * 0.5 / math.sqrt(3)
    assert gn_bn_star.interval == pytest.approx((2.0 - half, 2.0 + half))
    assert gn_bn_star.verdict == "GN higher than BN*"
    assert gn_bn_star.paper == pytest.approx(38.8 - 37.7)  # R-50-C4, the paper's Table 4
    assert "R-50-C4" in gn_bn_star.claim
    mask = claim(table, "GN", "BN*", "AP mask")
    assert mask.values == pytest.approx((2.0, 1.5, 2.0))
    assert mask.paper == pytest.approx(33.6 - 32.8)
    sync = claim(table, "GN", "SyncBN", "AP box")
    assert sync.values == pytest.approx((1.0, -1.0, 1.0))
    assert sync.verdict == stats.WITHIN_NOISE
    assert math.isnan(sync.paper)  # the paper has no SyncBN row
    scratch = claim(table, "GN from scratch", "GN", "AP box")
    assert scratch.paper == pytest.approx(39.5 - 40.8)  # the only setting with a scratch row
    assert "R-50-FPN, 3x" in scratch.claim
    assert len(table.claims) == 8  # 4 comparisons x (box, mask)


def test_the_papers_rows_are_beside_ours():
    table = build_detection_table(make_cells())
    assert table.paper.at["BN* (R-50-C4)", "box_ap50"] == 57.9
    assert table.paper.at["GN (R-50-FPN, 2x)", "mask_ap"] == 35.7
    assert table.paper.at["GN from scratch (R-50-FPN, 3x)", "box_ap"] == 39.5
    assert math.isnan(table.paper.at["GN (R-50-FPN, 2x)", "box_ap50"])  # not given: empty
    assert any("Table 4" in s for s in table.sources)
    assert any("Detectron" in s for s in table.sources)
    text = detection_markdown(table)
    assert "| BN* (R-50-C4) | 37.7 | 57.9 | 40.9 | 32.8 | 54.3 | 34.7 |" in text
    assert "| GN | 33.17 +- 1.04 (n=3) |" in text
    assert "| GN, seed 1 | 33.50 | 53.50 | 35.50 |" in text
    assert "GN - BN*" in text and stats.WITHIN_NOISE in text
    assert f"]({PLOT_FILE})" in text


def test_files_and_the_bar_plot_are_written(tmp_path):
    table = build_detection_table(make_cells())
    paths = write_detection(table, tmp_path / "report")
    names = {p.name for p in paths}
    assert names == {"detection_ours.csv", "detection_seeds.csv", "detection_paper.csv",
                     "paired_detection.csv", PLOT_FILE}  # fmt: skip
    assert all(p.is_file() for p in paths)
    assert (tmp_path / "report" / PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paired = pd.read_csv(tmp_path / "report" / "paired_detection.csv")
    assert len(paired) == 8


def test_missing_rows_are_left_out_with_their_comparisons(tmp_path):
    cells = make_cells(keep=lambda norm, pretrained: pretrained and norm != "syncbn")
    table = build_detection_table(cells)
    assert list(table.mean.index) == ["BN*", "BN", "GN"]
    assert {(c.a, c.b) for c in table.claims} == {("GN", "BN*"), ("GN", "BN")}
    assert "GN from scratch (R-50-FPN, 3x)" in detection_markdown(table)  # the paper's still
    write_detection(table, tmp_path)
    assert (tmp_path / PLOT_FILE).is_file()


def test_seeds_that_did_not_finish_are_named_not_counted():
    cells = make_cells().assign(status="finished")
    unfinished = (cells["norm"] == "gn") & cells["pretrained"] & (cells["seed"] == 2)
    cells.loc[unfinished, "status"] = "unfinished"
    cells.loc[unfinished, list(METRICS)] = math.nan
    table = build_detection_table(cells)
    assert table.n.at["GN", "box_ap"] == 2
    assert table.display.at["GN", "AP box"] == "32.75 +- 1.06 (n=2; 1 running)"
    assert claim(table, "GN", "BN*", "AP box").seeds == (0, 1)
    assert ("GN", 2) not in table.per_seed.index


def test_rows_without_a_finished_seed_read_why_and_pair_with_nothing(tmp_path):
    cells = make_cells().assign(status="finished")
    bn = cells["norm"] == "bn"
    cells.loc[bn, "status"] = "diverged"
    cells.loc[bn, list(METRICS)] = math.nan
    table = build_detection_table(cells)
    assert table.display.loc["BN"].tolist() == ["diverged"] * 6
    assert table.mean.loc["BN"].isna().all() and (table.n.loc["BN"] == 0).all()
    assert claim(table, "GN", "BN", "AP box").verdict == stats.NO_PAIR
    write_detection(table, tmp_path)  # the plot names the row instead of drawing its bars
    none_done = build_detection_table(cells.assign(status="unfinished"))
    assert (none_done.display == "running").all().all() and none_done.per_seed.empty
    write_detection(none_done, tmp_path / "none")
    assert "running" in detection_markdown(none_done)


def test_other_settings_get_rows_of_their_own_and_are_compared_within():
    low = make_cells(keep=lambda norm, pretrained: norm in ("gn", "frozen_bn") and pretrained)
    high = low.assign(batch=8, box_ap=low["box_ap"] + 1)
    cells = pd.concat([low, high], ignore_index=True)
    # the pretrained override names the rows already; an lr that varies would split them too
    cells["overrides"] = [
        json.dumps({"norm": n, "model.pretrained": True, "seed": int(s)})
        for n, s in zip(cells["norm"], cells["seed"], strict=True)
    ]
    table = build_detection_table(cells)
    assert list(table.mean.index) == [
        "BN* at 2 images/GPU", "BN* at 8 images/GPU", "GN at 2 images/GPU", "GN at 8 images/GPU",
    ]  # fmt: skip
    pairs = {(c.a, c.b) for c in table.claims}
    assert pairs == {("GN at 2 images/GPU", "BN* at 2 images/GPU"),
                     ("GN at 8 images/GPU", "BN* at 8 images/GPU")}  # fmt: skip


def test_no_cells_is_a_user_error():
    with pytest.raises(UserError, match="no detection cells"):
        build_detection_table(make_cells().iloc[:0])


def test_the_paper_table_loads_with_a_source_per_row():
    table = paper_module.load_paper_table("coco_detection")
    assert len(table) == 7 and table["source"].notna().all()
    assert set(table["norm"]) == {"frozen_bn", "gn"}
    assert table.loc[table["pretrained"] == False, "box_ap"].tolist() == [39.5]  # noqa: E712
