"""What a neighbourhood summary may claim: one rule for when a diagnosis' ratio is worth pointing at.

A ratio (enrichment: the share of the k neighbours carrying a code over its share of the collection)
from one or two neighbours is noise: one neighbour with a rare code reads x109 at k = 10. A ratio is
therefore shown beside its count and base rate everywhere, and *highlighted* only when

- at least ``MIN_COUNT`` neighbours carry the code, and
- the 95% Wilson interval of that share lies wholly above the base rate (the ratio's interval
  excludes 1), treating the neighbours as a sample of ECGs like the query.

Every reader of a summary (the viewer, the CLI's ``--summary`` table) calls ``evidence`` and shows its
fields; none re-derives the rule. Plain Python: no numpy, no grpc.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

MIN_COUNT = 3  # neighbours carrying the code before its ratio may be highlighted
Z_95 = 1.959963984540054  # two-sided 95% normal quantile


class Concentration(Protocol):
    """What the rule reads of one summary row (``service.DiagnosisConcentration`` has these)."""

    count: int
    base_rate: float


@dataclass(frozen=True)
class Evidence:
    """One diagnosis among the neighbours, as a reader should show it."""

    count: int  # neighbours carrying the code
    n: int  # neighbours in all
    base_rate: float  # share of the collection carrying the code
    ratio: float | None  # (count / n) / base_rate; None when the code is not in the collection's counts
    low: float | None  # the ratio's 95% interval (Wilson interval of count / n, over base_rate)
    high: float | None
    highlighted: bool

    def text(self) -> str:
        """'3/10 neighbours · 4.2% of the collection · x7.1 (2.6-16.6)': count, base rate, ratio."""
        base = f"{self.base_rate:.1%} of the collection"
        if self.ratio is None or self.low is None or self.high is None:
            return f"{self.count}/{self.n} neighbours · not in the collection's counts"
        return (
            f"{self.count}/{self.n} neighbours · {base} · ×{self.ratio:.1f} ({self.low:.1f}–{self.high:.1f})"
        )


def wilson(count: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion count / n (0 <= count <= n, n > 0)."""
    if n <= 0 or not 0 <= count <= n:
        raise ValueError(f"need 0 <= count <= n and n > 0, got {count}/{n}")
    p = count / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def evidence(row: Concentration, n_neighbours: int) -> Evidence:
    """Count, base rate, ratio with its interval, and whether the ratio is highlighted (the one rule)."""
    count, base = row.count, row.base_rate
    if n_neighbours <= 0 or base <= 0:
        return Evidence(count, n_neighbours, base, None, None, None, False)
    low, high = wilson(count, n_neighbours)
    ratio = count / n_neighbours / base
    highlighted = count >= MIN_COUNT and low > base
    return Evidence(count, n_neighbours, base, ratio, low / base, high / base, highlighted)


RULE = (
    f"A ratio is highlighted only when at least {MIN_COUNT} neighbours carry the code and its 95% "
    "interval lies above 1 (the share among the neighbours is above the collection's beyond chance)."
)
