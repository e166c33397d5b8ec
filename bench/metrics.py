"""Metric functions of the benchmark and the retrieval evaluation: plain numpy, known-answer tested.

Kept free of engines and files so the numbers in results/ can be checked by hand on tiny inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import signal as sps

from ecgsearch.bench.results import percentiles

MISSING = -1


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] & truth[:k]| / |truth[:k]|; ids of -1 are padding.

    A query whose filtered subset holds fewer than k points is scored against the points it has;
    queries with no true neighbour at all are left out (nothing to find).
    """
    scores = []
    for f, t in zip(np.asarray(found)[:, :k], np.asarray(truth)[:, :k], strict=True):
        want = set(t[t != MISSING].tolist())
        if want:
            scores.append(len(want & set(f[f != MISSING].tolist())) / len(want))
    return float(np.mean(scores)) if scores else float("nan")


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99 in milliseconds and sequential queries per second."""
    s = np.asarray(seconds, dtype=np.float64)
    p = percentiles(s, (50, 99))
    return {
        "p50_ms": p["p50"],
        "p99_ms": p["p99"],
        "mean_ms": float(s.mean() * 1e3),
        "qps": float(len(s) / s.sum()) if s.sum() > 0 else float("inf"),
    }


def exact_topk(
    queries: np.ndarray, vectors: np.ndarray, k: int, *, mask: np.ndarray | None = None, chunk: int = 50_000
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (ids, scores), best first, over rows where ``mask`` holds.

    Ids are -1 where fewer than k rows qualify.
    """
    return exact_topk_multi(queries, vectors, k, {"": mask}, chunk=chunk)[""]


def exact_topk_multi(
    queries: np.ndarray,
    vectors: np.ndarray,
    k: int,
    masks: dict[str, np.ndarray | None],
    *,
    chunk: int = 50_000,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``exact_topk`` for several row masks at once: one matmul per data chunk serves every mask.

    Chunks over the data so memory stays at queries x chunk, whatever the number of rows.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best = {
        name: (np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), MISSING, np.int64))
        for name in masks
    }
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start : start + chunk], dtype=np.float32)
        scores = q @ block.T
        ids = np.broadcast_to(np.arange(start, start + len(block)), scores.shape)
        for name, mask in masks.items():
            s, i = scores, ids
            if mask is not None:
                keep_cols = np.flatnonzero(np.asarray(mask[start : start + len(block)], dtype=bool))
                s, i = scores[:, keep_cols], ids[:, keep_cols]
            if s.shape[1] > k:  # shrink the block to its own top-k before merging
                part = np.argpartition(-s, k - 1, axis=1)[:, :k]
                s, i = np.take_along_axis(s, part, axis=1), np.take_along_axis(i, part, axis=1)
            all_s = np.concatenate([best[name][0], s], axis=1)
            all_i = np.concatenate([best[name][1], i], axis=1)
            keep = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
            best[name] = (np.take_along_axis(all_s, keep, axis=1), np.take_along_axis(all_i, keep, axis=1))
    out = {}
    for name, (s, i) in best.items():
        order = np.argsort(-s, axis=1, kind="stable")
        s = np.take_along_axis(s, order, axis=1)
        i = np.take_along_axis(i, order, axis=1)
        i[~np.isfinite(s)] = MISSING
        out[name] = (i, s)
    return out


def neighbours_excluding_patient(
    emb: np.ndarray,
    patient_ids: Sequence[object],
    k: int,
    query_idx: np.ndarray,
    *,
    euclidean: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-NN of each query row among all rows, leaving out the query's own patient.

    (ids, similarities); rows are unit vectors. Without the exclusion, retrieval measures
    re-identification of the patient rather than clinical similarity. ``euclidean`` ranks by
    Euclidean distance instead (similarity = minus the squared distance), as a kNN on measured
    features should.
    """
    # An unknown patient is a patient of its own row, never one shared 'None' patient.
    codes: dict[tuple[str, object], int] = {}
    pid = np.array(
        [
            codes.setdefault(("patient", p) if p is not None else ("row", i), len(codes))
            for i, p in enumerate(patient_ids)
        ]
    )
    x = np.asarray(emb, dtype=np.float64)
    sims = x[query_idx] @ x.T
    if euclidean:
        sims = 2 * sims - (x**2).sum(axis=1)[None, :] - (x[query_idx] ** 2).sum(axis=1)[:, None]
    sims[pid[query_idx][:, None] == pid[None, :]] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(sims, top, axis=1)


def precision_at_k(has_code: np.ndarray, neighbours: np.ndarray, query_idx: np.ndarray) -> dict[str, float]:
    """Of the queries carrying a code, the mean fraction of their neighbours carrying it too.

    ``has_code`` is a bool per row of the search space; ``neighbours`` the (n_queries, k) ids.
    Enrichment divides by the base rate: the code's frequency in the search space.
    """
    has_code = np.asarray(has_code, dtype=bool)
    positive = has_code[query_idx]
    base = float(has_code.mean()) if len(has_code) else float("nan")
    if not positive.any():
        return {"queries": 0, "base_rate": base, "precision": float("nan"), "enrichment": float("nan")}
    precision = float(has_code[neighbours[positive]].mean())
    return {
        "queries": int(positive.sum()),
        "base_rate": base,
        "precision": precision,
        "enrichment": precision / base if base > 0 else float("nan"),
    }


def bootstrap_mean(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, 2.5th, 97.5th percentile of the bootstrap means): resampling the values with replacement.

    NaN values are dropped first; an empty input gives NaNs. A fixed seed makes the interval
    reproducible run to run.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def binned_curve(similarity: np.ndarray, difference: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Mean |difference| per similarity quantile bin (lowest similarity first); NaN pairs are dropped.

    The thesis' check that closer embeddings mean closer metadata: the curve should fall as
    similarity rises.
    """
    s = np.asarray(similarity, dtype=np.float64)
    d = np.abs(np.asarray(difference, dtype=np.float64))
    ok = np.isfinite(s) & np.isfinite(d)
    s, d = s[ok], d[ok]
    if len(s) == 0:
        return []
    order = np.argsort(s, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part):
            out.append(
                {
                    "similarity_mean": float(s[part].mean()),
                    "similarity_min": float(s[part].min()),
                    "similarity_max": float(s[part].max()),
                    "abs_difference_mean": float(d[part].mean()),
                    "pairs": int(len(part)),
                }
            )
    return out


def heart_rate(lead: np.ndarray, fs: float, *, min_beats: int = 4) -> float | None:
    """Heart rate (beats/min) from one lead, or None when no plausible rhythm is found.

    Pan-Tompkins in miniature: 5-15 Hz band-pass, derivative, square, 150 ms moving integral, then
    peaks at least 250 ms apart (refractory period; caps at 240 bpm) above a robust threshold.
    The rate is 60 / median RR, so a few missed or extra beats do not move it.
    """
    x = np.asarray(lead, dtype=np.float64)
    if x.ndim != 1 or len(x) < fs * 2 or not np.isfinite(x).all() or x.std() == 0:
        return None
    high = min(15.0, 0.45 * fs)
    sos = sps.butter(2, [5.0, high], btype="bandpass", fs=fs, output="sos")
    energy = np.gradient(sps.sosfiltfilt(sos, x)) ** 2
    width = max(1, int(round(0.15 * fs)))
    integrated = np.convolve(energy, np.ones(width) / width, mode="same")
    threshold = 0.3 * np.percentile(integrated, 99)
    peaks, _ = sps.find_peaks(integrated, height=threshold, distance=max(1, int(round(0.25 * fs))))
    if len(peaks) < min_beats:
        return None
    rate = 60.0 * fs / float(np.median(np.diff(peaks)))
    return rate if 30.0 <= rate <= 240.0 else None
