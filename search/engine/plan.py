"""How one filtered search runs, chosen from the filter's estimated matching count.

A pure function of counts and settings, so the decision is unit-tested without an engine:

- ``hnsw``: no filter, or a near-total one (keeping at least ``hnsw_min_fraction`` of points, such as
  the service's rule that drops copies, ``duplicate_of`` empty): the engine's own HNSW search with the
  filter checked as it walks, without ACORN. Almost every node passes, so the walk is the unfiltered
  one (through the service at 200k, 98.5% kept: recall@10 0.997, results/recall_200k_service.json);
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
import threading
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
    hnsw_min_fraction: float = 0.9


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
    if fraction >= limits.hnsw_min_fraction and total > limits.postfilter_max_limit:
        return Plan("hnsw", estimate, total)
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


class PlanTally:
    """How many searches took each plan (how many of them filtered), and the engine's estimate for the
    latest filtered one: matching points of ``total``.

    The embedded store records every search here; the server reports it (``ecgsearch stats``), so
    an operator sees which plan the service's own filters take, not the bare store's.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}  # kind: [searches, filtered searches]
        self._latest: dict[str, Plan] = {}  # kind: the latest filtered search's plan

    def record(self, plan: Plan) -> None:
        with self._lock:
            counts = self._counts.setdefault(plan.kind, [0, 0])
            counts[0] += 1
            if plan.estimate is not None:
                counts[1] += 1
                self._latest[plan.kind] = plan

    def rows(self) -> dict[str, dict[str, int | None]]:
        """Per plan kind: ``count``, ``filtered`` (of them with a filter), and the latest filtered one's
        ``estimate`` and ``total`` points (None: none was filtered)."""
        with self._lock:
            rows: dict[str, dict[str, int | None]] = {}
            for kind, (n, filtered) in sorted(self._counts.items()):
                latest = self._latest.get(kind)
                rows[kind] = {
                    "count": n,
                    "filtered": filtered,
                    "estimate": latest.estimate if latest else None,
                    "total": latest.total if latest else None,
                }
            return rows
