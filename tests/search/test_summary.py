"""The one rule for highlighting a diagnosis' ratio among the neighbours (``search.summary``)."""

from __future__ import annotations

import pytest

from ecgsearch.search.api import DiagnosisConcentration
from ecgsearch.search.summary import MIN_COUNT, evidence, wilson


def _row(count: int, n: int, base_rate: float) -> DiagnosisConcentration:
    fraction = count / n
    return DiagnosisConcentration(
        code="164889003",
        description="atrial fibrillation",
        count=count,
        fraction=fraction,
        base_rate=base_rate,
        enrichment=fraction / base_rate if base_rate else 0.0,
    )


def test_wilson_interval_known_answers() -> None:
    # By hand: 3/10 -> centre (0.3 + 1.96^2/20) / (1 + 1.96^2/10) = 0.3555, half-width 0.2477.
    assert wilson(3, 10) == pytest.approx((0.1078, 0.6032), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson(11, 10)


@pytest.mark.parametrize(
    ("count", "n", "base_rate", "highlighted"),
    [
        (1, 10, 0.0092, False),  # the x109 from one neighbour with a rare code
        (1, 5, 0.0046, False),  # x218 at k = 5
        (2, 10, 0.001, False),  # a large ratio from two neighbours: still below the minimum count
        (MIN_COUNT, 10, 0.05, True),  # three of ten where one in twenty is expected
        (6, 10, 0.53, False),  # x1.1: three or more, but within chance of the base rate
        (3, 10, 0.2, False),  # x1.5 from three: the interval includes 1
        (9, 10, 0.5, True),
    ],
)
def test_a_ratio_is_highlighted_only_from_three_neighbours_beyond_chance(
    count: int, n: int, base_rate: float, highlighted: bool
) -> None:
    seen = evidence(_row(count, n, base_rate), n)
    assert seen.highlighted is highlighted
    assert seen.ratio == pytest.approx(count / n / base_rate)
    assert seen.low is not None and seen.high is not None and seen.low < seen.ratio < seen.high
    assert (seen.low > 1) or not highlighted
    assert f"{count}/{n} neighbours" in seen.text() and f"{base_rate:.1%} of the collection" in seen.text()


def test_a_code_without_a_base_rate_has_no_ratio_and_is_never_highlighted() -> None:
    seen = evidence(_row(5, 10, 0.0), 10)
    assert (seen.ratio, seen.highlighted) == (None, False) and "5/10 neighbours" in seen.text()


def test_the_service_decides_the_highlight_once_and_the_wire_carries_it() -> None:
    """``service.summarise`` fills interval and decision by ``evidence``; a proto round trip keeps them, so
    an API client reads the same decision as the CLI and the viewer."""
    from ecgsearch.ecg.schema import CollectionInfo, EcgPayload, Hit
    from ecgsearch.search import wire
    from ecgsearch.search.serving.service import summarise

    af, norm, rare = "164889003", "426783006", "164909002"
    carried = [[af, norm]] * 4 + [[norm]] * 5 + [[rare]]  # AF in 4 of 10 where 5% carry it
    hits = [
        Hit(
            record_id=f"t:{i}",
            score=0.9,
            payload=EcgPayload(record_id=f"t:{i}", dataset="t", diagnoses=dx, sampling_rate_hz=500),
        )
        for i, dx in enumerate(carried)
    ]
    counts = {af: 50, norm: 600, rare: 2}
    info = CollectionInfo(
        name="c", count=1000, dim=8, model_version="m", backend="edge", indexed=True, diagnosis_counts=counts
    )
    summary = summarise(hits, info)
    rows = {r.code: r for r in summary.diagnoses}
    assert rows[af].highlighted and not rows[norm].highlighted  # x8 from four; x1.5 within chance
    assert not rows[rare].highlighted and rows[rare].enrichment == pytest.approx(50.0)  # x50 from one
    back = wire.summary_from_proto(wire.summary_to_proto(summary))
    assert back == summary
    for row in back.diagnoses:
        seen = evidence(row, 10)
        assert (row.enrichment_low, row.enrichment_high, row.highlighted) == (
            seen.low,
            seen.high,
            seen.highlighted,
        )
