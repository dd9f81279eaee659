"""Paired differences over seeds: the statistics behind each claim the report makes.

Two entries of a table (say GN at 2 and GN at 32 images per GPU) are compared seed by seed:
seed s of both cells drew the same data subset and random streams, so the per-seed difference
cancels what the seeds share, and its spread over seeds is the noise of the comparison. For n
paired seeds the report gives the per-seed differences, their mean, the standard error and a
95% Student-t interval with n - 1 degrees of freedom. With 2 or 3 seeds that interval is wide
(t = 12.7 and 4.3 standard errors), and that is the point: three seeds cannot pin a difference
to a twentieth of a point, so the numbers are printed to the precision the interval allows. A
claim whose interval contains 0 reads "within noise"; one seed gives no interval at all.

Each layout's claims are the paper's (see :func:`layout_claims`); every claim is a contrast, a
signed sum of table entries taken per seed, so a difference of differences (BN's small-batch
penalty beyond GN's) is computed like a plain difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from normbench.report.tables import DIFF_ROW, NORMS_ROW, Table

LEVEL = 0.95
WITHIN_NOISE = "within noise"
ONE_SEED = "one seed: no interval"
NO_PAIR = "no seed finished both"
MAX_SEEDS_SHOWN = 5
# The paper's defaults of its group ablation (Table 3): the column it reads the others against.
PAPER_DEFAULT = {"groups": 32, "group_size": 16}
# Table 1's order of the norms, lowest error first.
PAPER_ORDER = ("BN", "GN", "LN", "IN")
PENALTY_CLAIM = "BN's penalty beyond GN's"


@dataclass(frozen=True)
class Paired:
    """One claim: ``a - b`` per seed, with its mean, standard error and t-interval.

    ``seeds`` and ``values`` hold the per-seed differences of the seeds where every entry the
    claim reads finished; ``paper`` is the paper's difference for the same entries (NaN where
    the paper has none).
    """

    claim: str
    a: str
    b: str
    seeds: tuple[int, ...]
    values: tuple[float, ...]
    paper: float = math.nan

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def sides(self) -> tuple[str, str]:
        """A and B as text, each in parentheses where it is a difference itself."""
        a, b = (f"({side})" if " - " in side else side for side in (self.a, self.b))
        return a, b

    @property
    def difference(self) -> str:
        return " - ".join(self.sides)

    @property
    def mean(self) -> float:
        return t_interval(self.values)[0]

    @property
    def se(self) -> float:
        return t_interval(self.values)[1]

    @property
    def interval(self) -> tuple[float, float]:
        return t_interval(self.values)[2:]

    @property
    def verdict(self) -> str:
        """ "within noise" when the interval holds 0, else which side is higher, in words."""
        if self.n == 0:
            return NO_PAIR
        if self.n == 1:
            return ONE_SEED
        low, high = self.interval
        if low <= 0 <= high or math.isnan(low):
            return WITHIN_NOISE
        a, b = self.sides
        return f"{a} {'higher' if self.mean > 0 else 'lower'} than {b}"


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float, float]:
    """Mean, standard error and the two ends of the Student-t interval of ``values``.

    The standard error and the interval are NaN below two values: one seed has no spread.
    """
    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    series = pd.Series(values, dtype=float)
    mean = float(series.mean())
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    se = float(series.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf((1 + level) / 2, df=n - 1)) * se
    return mean, se, mean - half, mean + half


def decimals(paired: Paired) -> int:
    """Decimals the interval supports: two significant digits of its half-width, none for a
    half-width of 10 or more, at most 2 (the errors' own resolution: 0.01 points is one image
    in 10000)."""
    low, high = paired.interval
    half = (high - low) / 2
    if not half > 0:  # NaN (one seed) or a zero spread
        return 2
    return min(2, max(0, 1 - math.floor(math.log10(half))))


def contrast(
    table: Table, plus: Sequence[tuple], minus: Sequence[tuple]
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Per seed, the sum of the ``plus`` entries minus the ``minus`` entries, (row, col) each,
    over the seeds where all of them finished."""
    entries = [*plus, *minus]
    if any(entry not in table.seeds.columns for entry in entries):
        return (), ()
    values = table.seeds[entries].dropna()
    total = values[list(plus)].sum(axis=1) - values[list(minus)].sum(axis=1)
    return tuple(int(s) for s in total.index), tuple(float(v) for v in total)


def paper_contrast(table: Table, plus: Sequence[tuple], minus: Sequence[tuple]) -> float:
    """The same contrast over the paper's table (rows by their paper label: "GN x" -> "GN")."""

    def value(entry: tuple) -> float:
        row, col = entry
        base = str(row).split(" ")[0]
        found = table.paper.reindex(index=[base], columns=[col]).iloc[0, 0]
        return float(found)

    return sum(value(e) for e in plus) - sum(value(e) for e in minus)


def compare(table: Table, claim: str, a: tuple, b: tuple) -> Paired:
    """The claim ``a - b`` over two (row, col) entries of ``table``."""
    seeds, values = contrast(table, [a], [b])
    return Paired(
        claim=claim,
        a=entry_label(table, a),
        b=entry_label(table, b),
        seeds=seeds,
        values=values,
        paper=paper_contrast(table, [a], [b]),
    )


def entry_label(table: Table, entry: tuple) -> str:
    """How a claim names a table entry: "GN at 2", "LN", "GN G=16", "GN C/G=4"."""
    row, col = entry
    if table.key == "norms":
        return str(col)
    if table.key == "batch":
        return f"{row} at {col}"
    return f"{row} {'G' if table.key == 'groups' else 'C/G'}={col}"


# ----------------------------------------------------------------------------- the paper's claims


def _bn_gn_pairs(table: Table) -> list[tuple[str | None, str | None]]:
    """(GN row, BN row) per setting suffix (rows "GN lr=0.2" and "BN lr=0.2"), None if absent."""
    rows = [str(r) for r in table.mean.index if not str(r).startswith(DIFF_ROW)]
    suffixes = dict.fromkeys(r[2:] for r in rows if r[:2] in ("GN", "BN") and r[2:3] != "+")
    return [
        tuple(f"{norm}{s}" if f"{norm}{s}" in rows else None for norm in ("GN", "BN"))
        for s in suffixes
    ]


def batch_claims(table: Table) -> list[Paired]:
    """Table 2: GN flat (GN at b minus GN at the largest batch), BN rises (the same for BN),
    the sign change (GN - BN at each batch) and BN's penalty beyond GN's, from the largest to
    the smallest batch."""
    cols = [int(c) for c in table.mean.columns]
    if not cols:
        return []
    high, low = max(cols), min(cols)
    claims = []
    for gn, bn in _bn_gn_pairs(table):
        for row, claim in ((gn, "GN flat"), (bn, "BN rises")):
            if row is not None:
                claims += [compare(table, claim, (row, b), (row, high)) for b in cols if b != high]
        if gn is None or bn is None:
            continue
        claims += [compare(table, "sign change", (gn, b), (bn, b)) for b in cols]
        if low != high:
            plus, minus = [(bn, low), (gn, high)], [(bn, high), (gn, low)]
            seeds, values = contrast(table, plus, minus)
            claims.append(
                Paired(
                    claim=PENALTY_CLAIM,
                    a=f"{bn} at {low} - {bn} at {high}",
                    b=f"{gn} at {low} - {gn} at {high}",
                    seeds=seeds,
                    values=values,
                    paper=paper_contrast(table, plus, minus),
                )
            )
    return claims


def norms_claims(table: Table) -> list[Paired]:
    """Table 1: each norm minus BN, and the paper's order BN < GN < LN < IN as adjacent pairs."""
    cols = list(table.mean.columns)
    pairs = [(col, "BN") for col in cols if col != "BN" and "BN" in cols]
    claims = [compare(table, "vs BN", (NORMS_ROW, a), (NORMS_ROW, b)) for a, b in pairs]
    present = [norm for norm in PAPER_ORDER if norm in cols]
    for b, a in zip(present, present[1:], strict=False):
        if (a, b) not in pairs:
            order = " < ".join(PAPER_ORDER)
            claims.append(compare(table, f"order {order}", (NORMS_ROW, a), (NORMS_ROW, b)))
    return claims


def ablation_claims(table: Table) -> list[Paired]:
    """Table 3: each setting minus the best setting of our table (lowest mean error), and minus
    the paper's default (G=32, 16 channels per group) where we ran it, else our default."""
    claims = []
    cols = list(table.mean.columns)
    paper_default = PAPER_DEFAULT[table.key]
    default = paper_default if paper_default in cols else table.default
    which = "paper's" if default == paper_default else "our"
    for row in table.mean.index:
        means = table.mean.loc[row, cols].astype(float)
        best = means.idxmin() if means.notna().any() else None
        if best is not None:
            claim = f"vs best (= {which} default)" if best == default else "vs best"
            claims += [compare(table, claim, (row, c), (row, best)) for c in cols if c != best]
        if default in cols and default != best:
            claims += [
                compare(table, f"vs {which} default", (row, c), (row, default))
                for c in cols
                if c != default
            ]
    return claims


CLAIMS = {
    "batch": batch_claims,
    "norms": norms_claims,
    "groups": ablation_claims,
    "group_size": ablation_claims,
}


def layout_claims(table: Table) -> list[Paired]:
    """The paper's claims for the layout of ``table``, computed from our seeds."""
    return CLAIMS[table.key](table)


# ----------------------------------------------------------------------------- text


def mean_text(paired: Paired) -> str:
    """The mean with its interval, to the precision the interval supports."""
    if paired.n == 0:
        return ""
    d = decimals(paired)
    if paired.n == 1:
        return f"{paired.mean:+.{d}f}"
    low, high = paired.interval
    return f"{paired.mean:+.{d}f} [{low:+.{d}f}, {high:+.{d}f}]"


def seeds_text(paired: Paired) -> str:
    """The per-seed differences ("seed: value"), shown for up to MAX_SEEDS_SHOWN seeds."""
    if paired.n > MAX_SEEDS_SHOWN:
        return f"({paired.n} seeds)"
    d = decimals(paired)
    return ", ".join(f"{s}: {v:+.{d}f}" for s, v in zip(paired.seeds, paired.values, strict=True))


CSV_COLUMNS = (
    "claim", "difference", "n", "seeds", "per_seed", "mean", "se",
    f"ci{round(100 * LEVEL)}_low", f"ci{round(100 * LEVEL)}_high", "paper", "verdict",
)  # fmt: skip


def claims_frame(claims: Sequence[Paired]) -> pd.DataFrame:
    """The claims as numbers, one row each (the CSV the report writes; CSV_COLUMNS)."""
    rows = [
        (p.claim, p.difference, p.n, " ".join(str(s) for s in p.seeds),
         " ".join(f"{v:g}" for v in p.values), p.mean, p.se, *p.interval, p.paper, p.verdict)
        for p in claims
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def display_frame(claims: Sequence[Paired]) -> pd.DataFrame:
    """The claims as text, ready to print (index: the claim)."""
    rows = {
        "difference": [p.difference for p in claims],
        "per seed": [seeds_text(p) for p in claims],
        f"mean [{round(100 * LEVEL)}% CI]": [mean_text(p) for p in claims],
        "paper": ["" if math.isnan(p.paper) else f"{p.paper:+.1f}" for p in claims],
        "verdict": [p.verdict for p in claims],
    }
    return pd.DataFrame(rows, index=pd.Index([p.claim for p in claims], name="claim"))


def penalty_lines(claims: Sequence[Paired]) -> list[str]:
    """One line per penalty claim, for the head of the report."""
    return [
        f"{PENALTY_CLAIM}, {p.difference}, paired by seed: {mean_text(p)} ({_spread_text(p)})"
        + ("" if p.n == 1 else f": {p.verdict}")  # one seed: the spread already says so
        for p in claims
        if p.claim == PENALTY_CLAIM and p.n > 0
    ]


def _spread_text(paired: Paired) -> str:
    if paired.n == 1:
        return ONE_SEED
    level = round(100 * LEVEL)
    return f"{level}% t-interval over {paired.n} seeds; per seed {seeds_text(paired)}"
