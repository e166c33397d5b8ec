"""The neighbourhood summary as a small SVG bar chart: each diagnosis among the neighbours against
its base rate in the whole collection, with the count and base rate beside every ratio; a ratio is
highlighted only by ``ecgsearch.search.summary``'s rule."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

from ecgsearch.search.summary import evidence

if TYPE_CHECKING:
    from ecgsearch.search.api import DiagnosisConcentration

MAX_ROWS = 8
ROW_PX = 34
LABEL_PX = 200
BAR_PX = 150
TEXT_PX = 120  # the ratio, and under it the count and base rate
NAME_CHARS = 28
NEIGHBOURS = "#1f5fbf"
BASE = "#b9c3cf"


def enrichment_chart(rows: Sequence[DiagnosisConcentration], n_neighbours: int) -> str:
    """Up to ``MAX_ROWS`` diagnoses, most frequent among the neighbours first: a dark bar for their share
    of the neighbours, a light bar for their share of the collection; beside them the count, the base
    rate and the ratio (enrichment) with its interval, in bold only where the summary rule holds."""
    shown = list(rows)[:MAX_ROWS]
    top = 44
    height = ROW_PX * len(shown) + top + 6
    width = LABEL_PX + BAR_PX + TEXT_PX
    parts = [
        f'<rect x="{LABEL_PX}" y="4" width="12" height="12" fill="{NEIGHBOURS}"/>'
        f'<text x="{LABEL_PX + 18}" y="15" font-size="13">share of the {n_neighbours} neighbours</text>',
        f'<rect x="{LABEL_PX}" y="24" width="12" height="8" fill="{BASE}"/>'
        f'<text x="{LABEL_PX + 18}" y="33" font-size="13">share of the collection</text>',
    ]
    for i, row in enumerate(shown):
        y = top + i * ROW_PX
        name = row.description
        name = name if len(name) <= NAME_CHARS else name[: NAME_CHARS - 1] + "…"
        seen = evidence(row, n_neighbours)
        ratio = f"×{seen.ratio:.1f}" if seen.ratio is not None else "not in base"
        weight = ' font-weight="700"' if seen.highlighted else ' fill="#4a5560"'
        parts.append(
            f'<g class="diagnosis" data-code="{escape(row.code)}" '
            f'data-count="{row.count}" data-highlighted="{str(seen.highlighted).lower()}">'
            f"<title>{escape(row.code)}: {escape(row.description)}; {escape(seen.text())}</title>"
            f'<text x="{LABEL_PX - 8}" y="{y + 15}" font-size="13" text-anchor="end">{escape(name)}</text>'
            f'<rect class="neighbours" x="{LABEL_PX}" y="{y + 2}" height="12" '
            f'width="{max(1.0, row.fraction * BAR_PX):.1f}" fill="{NEIGHBOURS}"/>'
            f'<rect class="base" x="{LABEL_PX}" y="{y + 16}" height="8" '
            f'width="{max(1.0, row.base_rate * BAR_PX):.1f}" fill="{BASE}"/>'
            f'<text class="ratio" x="{LABEL_PX + BAR_PX + 8}" y="{y + 13}" font-size="13"{weight}>'
            f"{ratio}</text>"
            f'<text class="counts" x="{LABEL_PX + BAR_PX + 8}" y="{y + 26}" font-size="11" fill="#4a5560">'
            f"{row.count}/{n_neighbours} · base {row.base_rate:.1%}</text></g>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="summary-chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img"><title>Diagnoses among the neighbours against '
        f"their base rate</title>{''.join(parts)}</svg>"
    )
