"""normbench.metrics: one definition of the numbers a cell is judged by, and one policy for an
epoch without a measurement, shared by the loop, the report and W&B."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY, run_here

from normbench.config import Config
from normbench.metrics import LABELS, NAMES, median_last, val_error_metrics
from normbench.report.collect import read_cell
from normbench.report.tables import DEFAULT_METRIC, METRICS
from normbench.train.loop import is_evaluated, summarize

NAN = float("nan")


def test_median_last_takes_the_median_of_the_last_values() -> None:
    assert median_last([50.0, 40.0, 30.0, 20.0, 10.0, 35.0]) == 30.0
    assert median_last([50.0, 40.0, 30.0, 20.0, 10.0, 35.0], n=2) == 22.5
    assert median_last([3.0, NAN, 1.0]) == 2.0  # an epoch without a measurement is left out
    assert math.isnan(median_last([]))


def test_val_error_metrics() -> None:
    assert val_error_metrics([30, 12, 11, 10, 9, 9.5]) == {
        "val_error_final": 9.5,
        "val_error_best": 9.0,
        "val_error_median5": 10.0,
    }
    assert all(math.isnan(v) for v in val_error_metrics([NAN]).values())


def _history_rows(val_errors: list[float]) -> list[dict[str, float]]:
    return [
        {"epoch": epoch, "train_error": 1.0, "val_error": error}
        for epoch, error in enumerate(val_errors, start=1)
    ]


def _finished_cell_without_metrics(tmp_path: Path, val_errors: list[float]) -> Path:
    """A finished cell whose metrics.json predates its val error fields: the report computes
    them from history.csv."""
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "metrics.json").write_text(json.dumps({"status": "finished"}))
    rows = "\n".join(f"{epoch},{error}" for epoch, error in enumerate(val_errors, start=1))
    (cell / "history.csv").write_text(f"epoch,val_error\n{rows}\n")
    return cell


@pytest.mark.parametrize(
    "val_errors",
    [
        [30.0, 12.0, 11.0, 10.0, 9.0, 9.5],
        [30.0, 12.0, 11.0, NAN, 10.0, 9.0, 9.5],  # an epoch that measured nothing (NaN)
        [30.0, 12.0, 11.0, 10.0, 9.0, NAN],  # ... as the last one
        [NAN, 12.0, 11.0],
    ],
)
def test_the_loop_and_the_report_compute_the_same_metrics(tmp_path, val_errors) -> None:
    """The loop's metrics.json and the report's fallback from history.csv give one headline,
    whatever epochs lack a value."""
    loop = summarize(_history_rows(val_errors))
    report = read_cell(_finished_cell_without_metrics(tmp_path, val_errors))
    for name in NAMES:
        assert loop[name] == report[name], name
    measured = [e for e in val_errors if not math.isnan(e)]
    assert loop["val_error_median5"] == median_last(measured)
    assert loop["val_error_final"] == measured[-1]
    assert loop["val_error_best"] == min(measured)


def test_the_report_and_the_config_name_the_metrics_of_normbench_metrics() -> None:
    assert METRICS == LABELS and tuple(METRICS) == NAMES
    # A report without a configured metric shows the config's default: the paper's headline.
    assert DEFAULT_METRIC == Config.metric == "val_error_median5"
    assert "median of the last 5 epochs" in LABELS[DEFAULT_METRIC]


@pytest.mark.parametrize(
    ("epochs", "every", "evaluated"),
    [
        (12, 1, list(range(1, 13))),
        (12, 5, [5, 8, 9, 10, 11, 12]),  # every 5th and each of the last 5
        (3, 10, [1, 2, 3]),  # fewer epochs than the median needs: all of them
    ],
)
def test_which_epochs_are_validated(epochs, every, evaluated) -> None:
    assert [e for e in range(1, epochs + 1) if is_evaluated(e, epochs, every)] == evaluated


def test_eval_every_and_val_batch_change_no_trained_weight_and_no_headline(
    tmp_path, capsys
) -> None:
    """Validating every 3rd epoch (and the last 5) with another batch: the same training, the
    same val errors where measured, empty val columns elsewhere, the same headline."""
    common = [*TINY, "dataset.train_size=64", "dataset.val_size=40", "epochs=7"]
    runs = {}
    for name, extra in (("every", []), ("sparse", ["eval_every=3", "val_batch=7"])):
        out = tmp_path / name
        result = run_here(["train", *common, *extra, f"out_dir={out}"], capsys)
        assert result.returncode == 0, result.stdout + result.stderr
        (cell,) = (p.parent for p in out.glob("*/*/metrics.json"))
        metrics = json.loads((cell / "metrics.json").read_text())
        runs[name] = (pd.read_csv(cell / "history.csv"), metrics)
    (every, every_metrics), (sparse, sparse_metrics) = runs["every"], runs["sparse"]
    assert sparse["train_loss"].tolist() == every["train_loss"].tolist()
    measured = sparse["val_error"].notna()
    assert sparse.loc[measured, "epoch"].tolist() == [3, 4, 5, 6, 7]
    assert sparse.loc[measured, "val_error"].tolist() == pytest.approx(
        every.loc[measured, "val_error"].tolist()
    )
    assert sparse_metrics["val_error_median5"] == pytest.approx(every_metrics["val_error_median5"])
