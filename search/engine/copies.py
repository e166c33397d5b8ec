"""One ECG, one hit: which stored ECG a new (or queried) ECG is a copy of.

Candidates are the ECG's nearest stored neighbours by embedding (no cosine gate: a copy read at
another rate or through another format's filters can sit below any cosine a look-alike of another
patient also reaches). Each candidate is confirmed or not by its content fingerprint
(``ecg.fingerprint``: the waveforms match sample by sample after one scale per ECG and a lag within
+-0.3 s), stored with every point, so confirming reads nothing more than the search's own hits.

Ingest and pushes mark a copy ``duplicate_of`` its original, in any dataset, the same one included:
the first stored wins, and a copy of a copy points at the original. A search by ECG or by file uses
the same rule to say whether the query itself is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ecgsearch.ecg import fingerprint, views
from ecgsearch.ecg.schema import EcgPayload, SearchFilter, UnknownRecord

if TYPE_CHECKING:
    from ecgsearch.search.engine.store import Store

CANDIDATES = 5  # nearest neighbours confirmed per ECG (copies rank 1-2 among 2,200 real ECGs)


@dataclass(frozen=True)
class Match:
    """A stored ECG confirmed to be the same recording: its id, its original's id, the score."""

    record_id: str
    original: str
    score: float


def original_of(payload: EcgPayload) -> str:
    """The record a stored ECG stands for: its original when it is a copy, else itself."""
    return payload.duplicate_of or payload.record_id


def stored_matches(
    store: Store,
    vectors: np.ndarray,
    fingerprints: Sequence[str | None],
    *,
    k: int = CANDIDATES,
    filter: SearchFilter | None = None,
    threshold: float = fingerprint.COPY_THRESHOLD,
) -> list[list[Match]]:
    """Per row, the stored ECGs (among its ``k`` nearest matching ``filter``) that are the same
    recording, best score first; empty lists when the store is empty."""
    if store.count() == 0 or len(vectors) == 0:
        return [[] for _ in fingerprints]
    found = store.search_batch(vectors, k=k, filter=filter)
    out = []
    for hits, fp in zip(found, fingerprints, strict=True):
        scored = [(fingerprint.score_stored(fp, h.payload.fingerprint), h.payload) for h in hits]
        out.append(
            sorted(
                (Match(p.record_id, original_of(p), s) for s, p in scored if s >= threshold),
                key=lambda m: -m.score,
            )
        )
    return out


def mark_copies(
    payloads: Sequence[EcgPayload],
    vectors: np.ndarray,
    store: Store,
    *,
    k: int = CANDIDATES,
    threshold: float = fingerprint.COPY_THRESHOLD,
) -> int:
    """Set ``duplicate_of`` on each new payload that is a copy of an ECG stored before it or earlier in
    its batch; returns how many were marked. Candidates are its ``k`` nearest among both together (the
    best-scoring confirmed one names the original: the first stored, as a copy names its original).
    Payloads without a fingerprint are never marked nor candidates. Originals are looked for among the
    batch's own sites only: a copy never points at (and so is never hidden behind) an ECG its readers
    cannot see.

    Every fingerprint a candidate needs is decoded and made ready once for the batch (a stored ECG is
    often a candidate of several), and each ECG's candidates are scored together (``fingerprint.scores``).
    """
    sites = SearchFilter(sites=sorted({p.site for p in payloads}))
    matrix = np.asarray(vectors, dtype=np.float32)
    stored = store.search_batch(matrix, k=k, filter=sites) if store.count() else [[] for _ in payloads]
    within = matrix @ matrix.T
    # Each ECG's candidates in the order the rule reads them (nearest first), as (payload, print row):
    # the batch's prints first in the bank, then each stored fingerprint needed, once.
    rows: dict[str, int] = {}
    for p in payloads:
        if p.fingerprint:
            rows.setdefault(p.fingerprint, len(rows))
    candidates: list[list[tuple[EcgPayload, int]]] = []
    for i, p in enumerate(payloads):
        if not p.fingerprint:
            candidates.append([])
            continue
        near = [(h.score, h.payload) for h in stored[i] if h.payload.fingerprint]
        earlier = [int(j) for j in np.argsort(-within[i, :i])[:k] if payloads[j].site == p.site]
        near += [(float(within[i, j]), payloads[j]) for j in earlier if payloads[j].fingerprint]
        chosen = [candidate for _, candidate in sorted(near, key=lambda c: -c[0])[:k]]
        candidates.append([(c, rows.setdefault(c.fingerprint or "", len(rows))) for c in chosen])
    if not rows:
        return 0
    bank = fingerprint.ready(np.stack([fingerprint.decode(fp) for fp in rows]))
    marked = 0
    for p, mine in zip(payloads, candidates, strict=True):
        if not mine:
            continue
        got = fingerprint.scores(bank.take(rows[p.fingerprint or ""]), bank.take([r for _, r in mine]))
        best, original = threshold, None
        for (candidate, _), score in zip(mine, got.tolist(), strict=True):
            if score >= best:
                best, original = score, original_of(candidate)
        if original is not None and original != p.record_id:
            p.duplicate_of = original
            marked += 1
    return marked


def settle_copy_gains(
    payloads: Sequence[EcgPayload], named: views.ViewVectors, store: Store
) -> views.ViewVectors:
    """Withhold the voltage view of each marked copy whose gain disagrees with its original's and is the
    less plausible (``views.copy_gain_is_off``): one recording has one voltage. The original's voltage
    comes from the batch or, stored before, from the store (copies are few: one read each)."""
    batch = {p.record_id: i for i, p in enumerate(payloads)}
    off = []
    for i, p in enumerate(payloads):
        if p.duplicate_of is None or named.gain_suspect[i]:
            continue
        j = batch.get(p.duplicate_of)
        if j is not None:
            theirs = None if named.gain_suspect[j] else named.voltage[j]
        else:
            try:
                theirs = store.get_views(p.duplicate_of).get(views.VOLTAGE)
            except UnknownRecord:
                theirs = None
        if theirs is not None and views.copy_gain_is_off(named.voltage[i], np.asarray(theirs)):
            off.append(i)
    return named.withholding_voltage(off) if off else named
