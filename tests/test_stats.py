"""Paired differences over seeds (normbench.report.stats) and the claims a report makes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fixtures_report import make_converged_sweep, write_cell

from normbench.report import stats
from normbench.report.collect import collect_runs
from normbench.report.tables import build_tables

# Student's t, 97.5% quantile, 2 degrees of freedom (any printed t table).
T_975_DF2 = 4.302652729749464


def _paired(values: list[float], a: str = "A", b: str = "B") -> stats.Paired:
    return stats.Paired("claim", a, b, tuple(range(len(values))), tuple(values))


def test_three_seeds_give_the_hand_computed_mean_se_and_t_interval() -> None:
    paired = _paired([1.0, 2.0, 4.0])
    # mean 7/3; sample variance ((4/3)^2 + (1/3)^2 + (5/3)^2) / 2 = 7/3
    se = math.sqrt(7 / 3) / math.sqrt(3)
    assert (paired.n, paired.mean, paired.se) == (3, pytest.approx(7 / 3), pytest.approx(se))
    low, high = paired.interval
    assert low == pytest.approx(7 / 3 - T_975_DF2 * se)
    assert high == pytest.approx(7 / 3 + T_975_DF2 * se)
    # the interval (-1.46, +6.13) straddles 0
    assert paired.verdict == stats.WITHIN_NOISE
    # half-width 3.8: one decimal, the interval rather than a standard error, every seed shown
    assert stats.mean_text(paired) == "+2.3 [-1.5, +6.1]"
    assert stats.seeds_text(paired) == "0: +1.0, 1: +2.0, 2: +4.0"


@pytest.mark.parametrize(
    ("values", "verdict"),
    [
        ([1.0, 1.2, 0.9], "A higher than B"),  # interval +0.65 .. +1.41
        ([-1.0, -1.2, -0.9], "A lower than B"),
        ([1.0, -0.2, 0.4], stats.WITHIN_NOISE),  # interval -1.09 .. +1.89
        ([2.0], stats.ONE_SEED),
        ([], stats.NO_PAIR),
    ],
)
def test_the_verdict_says_within_noise_only_when_the_interval_holds_zero(
    values: list[float], verdict: str
) -> None:
    assert _paired(values).verdict == verdict


def test_one_seed_has_no_interval_and_prints_two_decimals() -> None:
    paired = _paired([21.2])
    assert math.isnan(paired.se) and all(math.isnan(end) for end in paired.interval)
    assert stats.mean_text(paired) == "+21.20"


def test_precision_follows_the_interval() -> None:
    # Three seeds 0.05 apart still give an interval of +-0.12: two decimals, no more.
    assert stats.mean_text(_paired([21.15, 21.2, 21.25])) == "+21.20 [+21.08, +21.32]"
    # Seeds 10 points apart: whole points.
    assert stats.mean_text(_paired([0.0, 10.0, 20.0])) == "+10 [-15, +35]"


def test_more_than_five_seeds_are_counted_not_listed() -> None:
    assert stats.seeds_text(_paired([1.0] * 6)) == "(6 seeds)"
    assert stats.seeds_text(_paired([1.0] * 5)).count(":") == 5


@pytest.fixture(scope="module")
def converged_tables(tmp_path_factory: pytest.TempPathFactory) -> dict:
    sweep = make_converged_sweep(tmp_path_factory.mktemp("runs"))
    return {table.key: table for table in build_tables(collect_runs(sweep))}


def _claims(table, claim: str) -> dict[str, stats.Paired]:
    return {p.difference: p for p in stats.layout_claims(table) if p.claim == claim}


def test_batch_claims_gn_flat_bn_rises_sign_change_and_penalty(converged_tables) -> None:
    table = converged_tables["batch"]
    flat = _claims(table, "GN flat")
    assert list(flat) == ["GN at 8 - GN at 32", "GN at 2 - GN at 32"]
    # GN 2 - GN 32 per seed: +0.2, 0, -0.2
    assert flat["GN at 2 - GN at 32"].values == pytest.approx((0.2, 0.0, -0.2))
    assert flat["GN at 2 - GN at 32"].verdict == stats.WITHIN_NOISE
    assert flat["GN at 2 - GN at 32"].paper == pytest.approx(0.0)  # 24.1 - 24.1
    rises = _claims(table, "BN rises")["BN at 2 - BN at 32"]
    assert rises.mean == pytest.approx(4.0) and rises.verdict == "BN at 2 higher than BN at 32"
    assert rises.paper == pytest.approx(34.7 - 23.6)
    sign = _claims(table, "sign change")
    assert list(sign) == ["GN at 32 - BN at 32", "GN at 8 - BN at 8", "GN at 2 - BN at 2"]
    assert sign["GN at 2 - BN at 2"].verdict == "GN at 2 lower than BN at 2"
    (penalty,) = _claims(table, stats.PENALTY_CLAIM).values()
    assert penalty.difference == "(BN at 2 - BN at 32) - (GN at 2 - GN at 32)"
    assert penalty.values == pytest.approx((3.8, 4.0, 4.2))
    assert penalty.se == pytest.approx(0.2 / math.sqrt(3))
    (line,) = stats.penalty_lines(stats.layout_claims(table))
    assert "+4.00 [+3.50, +4.50]" in line and "0: +3.80, 1: +4.00, 2: +4.20" in line
    assert "+-" not in line


def test_bn_penalty_beyond_gn_pairs_seeds(tmp_path: Path) -> None:
    sweep = tmp_path / "paired"
    # seed s: BN 10 -> 14 + s, GN 11 -> 11 + s/2: penalties 4, 4.5, 5
    for seed in range(3):
        for norm, high, low in (("bn", 10.0, 14.0 + seed), ("gn", 11.0, 11.0 + seed / 2)):
            write_cell(sweep, {"norm": norm, "batch": 32, "seed": seed}, high)
            write_cell(sweep, {"norm": norm, "batch": 2, "seed": seed}, low)
    (table,) = build_tables(collect_runs(sweep))
    (penalty,) = _claims(table, stats.PENALTY_CLAIM).values()
    assert (penalty.mean, penalty.n) == (pytest.approx(4.5), 3)
    assert penalty.se == pytest.approx(0.5 / math.sqrt(3))
    # 3 seeds: the interval, to the tenth it supports, not "+4.50 +- 0.29"
    assert stats.mean_text(penalty) == "+4.5 [+3.3, +5.7]"


def test_seeds_pair_only_where_both_cells_finished(tmp_path: Path) -> None:
    sweep = tmp_path / "unpaired"
    for seed, status in ((0, "finished"), (1, "finished"), (2, "diverged")):
        write_cell(sweep, {"norm": "bn", "batch": 32, "seed": seed}, 10.0 + seed)
        write_cell(sweep, {"norm": "bn", "batch": 2, "seed": seed}, 12.0, status=status)
    (table,) = build_tables(collect_runs(sweep))
    rises = _claims(table, "BN rises")["BN at 2 - BN at 32"]
    assert rises.seeds == (0, 1) and rises.values == pytest.approx((2.0, 1.0))


def test_norms_claims_each_norm_minus_bn_and_the_papers_order(converged_tables) -> None:
    table = converged_tables["norms"]
    vs_bn = _claims(table, "vs BN")
    assert list(vs_bn) == ["LN - BN", "IN - BN", "GN - BN"]
    assert vs_bn["LN - BN"].mean == pytest.approx(2.0)
    assert vs_bn["LN - BN"].paper == pytest.approx(25.3 - 23.6)
    order = _claims(table, "order BN < GN < LN < IN")
    assert list(order) == ["LN - GN", "IN - LN"]  # GN - BN is already a vs-BN claim


def test_ablation_claims_against_the_best_and_the_default(converged_tables) -> None:
    groups = converged_tables["groups"]
    assert groups.default == 8  # GN without a group override; the paper's 32 was not run
    best = _claims(groups, "vs best (= our default)")
    assert list(best) == ["GN G=16 - GN G=8", "GN G=4 - GN G=8", "GN G=1 - GN G=8"]
    assert best["GN G=16 - GN G=8"].mean == pytest.approx(0.5)
    size = converged_tables["group_size"]
    assert list(_claims(size, "vs best")) == ["GN C/G=16 - GN C/G=4", "GN C/G=1 - GN C/G=4"]
    default = _claims(size, "vs paper's default")
    assert list(default) == ["GN C/G=4 - GN C/G=16", "GN C/G=1 - GN C/G=16"]
    assert default["GN C/G=4 - GN C/G=16"].paper == pytest.approx(24.8 - 24.2)
