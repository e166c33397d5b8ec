"""The neighbourhood summary as a small SVG bar chart: each diagnosis among the neighbours against
its base rate in the whole collection."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ecgsearch.search.service import DiagnosisConcentration

MAX_ROWS = 8
ROW_PX = 34
LABEL_PX = 200
BAR_PX = 150
NAME_CHARS = 28
NEIGHBOURS = "#1f5fbf"
BASE = "#b9c3cf"


def enrichment_chart(rows: Sequence[DiagnosisConcentration], n_neighbours: int) -> str:
    """Up to ``MAX_ROWS`` diagnoses, most frequent among the neighbours first: a dark bar for their share
    of the neighbours, a light bar for their share of the collection, and the ratio (enrichment)."""
    shown = list(rows)[:MAX_ROWS]
    top = 44
    height = ROW_PX * len(shown) + top + 6
    width = LABEL_PX + BAR_PX + 70
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
        ratio = f"×{row.enrichment:.1f}" if row.base_rate > 0 else "not in base"
        parts.append(
            f'<g class="diagnosis" data-code="{escape(row.code)}"><title>{escape(row.code)}: '
            f"{escape(row.description)}; {row.count} of {n_neighbours} neighbours "
            f"({row.fraction:.0%}), {row.base_rate:.1%} of the collection</title>"
            f'<text x="{LABEL_PX - 8}" y="{y + 15}" font-size="13" text-anchor="end">{escape(name)}</text>'
            f'<rect class="neighbours" x="{LABEL_PX}" y="{y + 2}" height="12" '
            f'width="{max(1.0, row.fraction * BAR_PX):.1f}" fill="{NEIGHBOURS}"/>'
            f'<rect class="base" x="{LABEL_PX}" y="{y + 16}" height="8" '
            f'width="{max(1.0, row.base_rate * BAR_PX):.1f}" fill="{BASE}"/>'
            f'<text x="{LABEL_PX + BAR_PX + 8}" y="{y + 15}" font-size="13">{ratio}</text></g>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="summary-chart" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img"><title>Diagnoses among the neighbours against '
        f"their base rate</title>{''.join(parts)}</svg>"
    )
