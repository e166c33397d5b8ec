"""How one filtered search runs, chosen from the filter's estimated matching count.

A pure function of counts and settings, so the decision is unit-tested without an engine:

- ``hnsw``: no filter, plain HNSW;
- ``exact``: few matching points (at most ``exact_max_points``, and not a broad filter): score
  every one of them. The engine enumerates them through the payload index, so the cost follows the
  matching count, not the collection size, and recall is exact at any scale. The bound is a
  count measured as latency (an int8 scan with float32 rescoring), never bytes: a byte threshold
  lets the matching set of a rare diagnosis outgrow it as the collection grows, and ACORN then
  loses neighbours;
- ``postfilter``: a broad filter (keeping at least ``postfilter_min_fraction`` of points): an
  unfiltered HNSW search for ``k / fraction x safety`` candidates (capped), kept where the filter
  holds; when fewer than k survive the caller falls back to ACORN;
- ``acorn``: everything between: filtered HNSW with ACORN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

PlanKind = Literal["hnsw", "exact", "postfilter", "acorn"]


@dataclass(frozen=True)
class PlanLimits:
    """The thresholds a plan is chosen by (a collection keeps them in its IndexSettings)."""

    exact_max_points: int
    postfilter_min_fraction: float
    postfilter_safety: float
    postfilter_max_limit: int


@dataclass(frozen=True)
class Plan:
    """The chosen way to run one search; ``limit`` and ``ef`` are set for ``postfilter``."""

    kind: PlanKind
    estimate: int | None = None  # estimated matching points (None: no filter)
    total: int | None = None  # points in the collection
    limit: int | None = None  # candidates asked of the unfiltered search (postfilter)
    ef: int | None = None  # HNSW candidates for that search (postfilter)
    fallback: int = 0  # query rows that found fewer than k after post-filtering and ran ACORN


def choose(*, k: int, estimate: int | None, total: int, limits: PlanLimits, search_ef: int) -> Plan:
    """The plan for a top-k search whose filter matches about ``estimate`` of ``total`` points.

    ``estimate`` None means no filter. An estimate of 0 is still searched exactly: estimates can
    be low, and an exact search of an empty set costs nothing.
    """
    if estimate is None:
        return Plan("hnsw", None, total)
    estimate = max(0, min(estimate, total))
    fraction = estimate / total if total else 0.0
    broad = fraction >= limits.postfilter_min_fraction
    # A broad filter is post-filtered even under the exact bound (a few hundred candidates cost less
    # than scanning a large share), except in a collection no larger than the candidates themselves.
    if estimate <= limits.exact_max_points and not (broad and total > limits.postfilter_max_limit):
        return Plan("exact", estimate, total)
    if broad:
        limit = math.ceil(k / fraction * limits.postfilter_safety)
        limit = max(k, min(limit, limits.postfilter_max_limit))
        return Plan("postfilter", estimate, total, limit=limit, ef=max(search_ef, limit))
    return Plan("acorn", estimate, total)
