"""scripts/bench_results.py: a short run's epoch times carried over a full schedule, and the
pairing of a full entry's cells with the short run's."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.fixture(autouse=True)
def _scripts_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it imports its siblings, as when run as a script


def _script():
    return load_script("bench_results")


def _history(*rows: tuple[float, bool]) -> list[dict[str, str]]:
    """(seconds, validated) per epoch, as csv.DictReader reads history.csv."""
    return [{"time_s": str(s), "val_error": "12.5" if v else "nan"} for s, v in rows]


def test_epoch_times_leave_out_the_first_epoch_and_split_validated_ones() -> None:
    bench = _script()
    history = _history((5.0, False), (1.0, False), (1.2, False), (2.0, True), (2.2, True))
    times = bench.epoch_times(history, wall_s=20.0)
    assert times.train_epoch_s == pytest.approx(1.1)
    assert times.validated_epoch_s == pytest.approx(2.1)
    # Outside the epochs: 20 - 11.4 s, plus the first epoch's extra over a training epoch.
    assert times.setup_s == pytest.approx(20.0 - 11.4 + (5.0 - 1.1))
    # 320 epochs, 36 validated: the setup once, then each kind of epoch at its own price.
    assert times.full_cell_s(320, 36) == pytest.approx(times.setup_s + 284 * 1.1 + 36 * 2.1)


def test_a_short_run_without_both_kinds_of_epoch_is_refused() -> None:
    bench = _script()
    with pytest.raises(ValueError, match="training-only and validated"):
        bench.epoch_times(_history((5.0, False), (1.0, True), (1.0, True)), wall_s=10.0)


def test_validated_epochs_follow_the_trainers_schedule() -> None:
    bench = _script()
    assert bench.validated_epochs(320, 10) == 32 + 4  # every 10th, and 316..319 besides 320
    assert bench.validated_epochs(20, 10) == 6  # 10, then 16..20
    assert bench.validated_epochs(3, 1) == 3


def test_cells_pair_across_what_the_short_run_changes_and_nothing_else() -> None:
    bench = _script()
    every_seed = ("epochs",)
    full = bench.cell_key({"batch": "2", "norm": "bn", "seed": "2"}, every_seed)
    assert full == bench.cell_key({"batch": "2", "epochs": "12", "norm": "bn", "seed": "2"},
                                  every_seed)  # fmt: skip
    assert full != bench.cell_key({"batch": "2", "epochs": "12", "norm": "bn", "seed": "0"},
                                  every_seed)  # fmt: skip
    first_seed = ("epochs", "seed")
    assert bench.cell_key({"batch": "2", "norm": "bn", "seed": "2"}, first_seed) == bench.cell_key(
        {"batch": "2", "epochs": "20", "norm": "bn", "seed": "0"}, first_seed
    )
    assert bench.cell_key({"norm": "bn", "seed": "2"}, first_seed) != bench.cell_key(
        {"norm": "gn", "seed": "2"}, first_seed
    )


def test_makespan_runs_the_longest_first_and_leaves_a_core_idle_at_the_end() -> None:
    bench = _script()
    assert bench.makespan([10.0, 10.0, 10.0], 2) == pytest.approx(20.0)  # the third runs alone
    assert bench.makespan([1.0, 1.0, 2.0], 2) == pytest.approx(2.0)  # 2 | 1 + 1
    assert bench.makespan([3.0, 1.0], 4) == pytest.approx(3.0)
