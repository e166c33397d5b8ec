"""Neighbour agreement: how often an ECG's nearest neighbours share one of its labels. numpy only.

The query's own patient is left out of its neighbours, so the number measures clinical similarity,
not re-identification of a patient's other recordings.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np


def neighbour_agreement_per_query(
    emb: np.ndarray,
    label_sets: Sequence[frozenset | set],
    patient_ids: Sequence[Hashable | None],
    k: int = 10,
    query_mask: np.ndarray | Sequence[bool] | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Per row: fraction of its k nearest neighbours (cosine) whose label set intersects its own.

    Candidates are every row except the query itself and every row of the query's patient
    (``None`` patient ids match nobody). Rows that are not queries (``query_mask`` False) or have an
    empty label set get NaN. With fewer than k candidates, the fraction is over those there are.
    """
    x = np.asarray(emb, dtype=np.float64)
    n = x.shape[0]
    if len(label_sets) != n or len(patient_ids) != n:
        raise ValueError("emb, label_sets and patient_ids must have one entry per row")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mask = np.ones(n, dtype=bool) if query_mask is None else np.asarray(query_mask, dtype=bool)
    patients = _patient_codes(patient_ids)
    labels = [frozenset(s) for s in label_sets]
    out = np.full(n, np.nan)
    queries = np.flatnonzero(mask & np.array([len(s) > 0 for s in labels]))
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        sim = x[q] @ x.T
        sim[patients[q][:, None] == patients[None, :]] = -np.inf
        sim[np.arange(len(q)), q] = -np.inf
        kk = min(k, n)
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk] if kk < n else np.argsort(-sim, axis=1)
        for row, qi in enumerate(q):
            cand = [j for j in top[row] if np.isfinite(sim[row, j])]
            cand = sorted(cand, key=lambda j: -sim[row, j])[:k]
            if cand:
                out[qi] = np.mean([bool(labels[qi] & labels[j]) for j in cand])
    return out


def neighbour_agreement(
    emb: np.ndarray,
    label_sets: Sequence[frozenset | set],
    patient_ids: Sequence[Hashable | None],
    k: int = 10,
    query_mask: np.ndarray | Sequence[bool] | None = None,
) -> float:
    """Mean over queries with a non-empty label set of the k-neighbour label agreement (see above).

    Returns NaN when there is no such query.
    """
    scores = neighbour_agreement_per_query(emb, label_sets, patient_ids, k=k, query_mask=query_mask)
    valid = scores[np.isfinite(scores)]
    return float(valid.mean()) if len(valid) else float("nan")


def _patient_codes(patient_ids: Sequence[Hashable | None]) -> np.ndarray:
    """One integer per distinct patient; each ``None`` gets a code of its own."""
    codes: dict[Hashable, int] = {}
    out = np.empty(len(patient_ids), dtype=np.int64)
    for i, p in enumerate(patient_ids):
        out[i] = codes.setdefault(("patient", p) if p is not None else ("row", i), len(codes))
    return out
