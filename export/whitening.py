"""A served linear map that keeps an ECG's neighbours when the same ECG is read a little differently.

Why: a query's 10th and 11th neighbours are near ties, so a move too small to matter clinically (the
recording started 0.16 s later, another sampling phase, the 500 Hz file instead of the 100 Hz one)
reorders them even though the vector moves by a cosine of 0.99+. Those moves push the vector along
a few directions. Whitening the served vector with the covariance of the moves, shrunk toward the
identity, stretches the directions that moves leave alone and squeezes the ones they push (within-class
covariance normalisation, as speaker verification uses it). It is fitted on the training folds'
ECGs and their moved reads only, and it is one matrix product at the end of the graph.

The moves fitted here are deliberately not the ones the evaluation judges (``bench.retrieval``:
0.16 s and 0.24 s later starts): later starts of 0.05-0.45 s, circular shifts of 3-35 samples, and
the record's 500 Hz file where PTB-XL has one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from ecgsearch.ecg import ptbxl, signals
from ecgsearch.export.runtime import normalise_rows

# 100 Hz samples dropped from the start (the rest zero-padded to 10 s, as any 8-10 s recording is)
LATER_STARTS = (5, 12, 20, 28, 37, 45)
CIRCULAR_SHIFTS = (3, 11, 19, 27, 35)  # 100 Hz samples, the prepared signal rolled

Embed = Callable[[np.ndarray], np.ndarray]  # prepared ECGs (n, 12, 1000) in mV -> served vectors (n, d)


def moved_reads(
    rows: Sequence[ptbxl.PtbxlRow], mv: np.ndarray
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Each move of the ``rows`` (whose prepared reads are ``mv``) in turn: (name, row indices, prepared
    moved reads). One move at a time, so only one set of moved reads is held. A record whose moved read
    cannot be prepared is left out of that move."""
    raws = [signals.read_wfdb(row.path()) for row in rows]
    for n in LATER_STARTS:
        yield (f"later_start_{n}", *_prepared([raw.starting_at(n) for raw in raws]))
    for n in CIRCULAR_SHIFTS:
        yield f"circular_{n}", np.arange(len(rows)), np.roll(mv, n, axis=2)
    high = [(i, row.path(prefer_hr=True)) for i, row in enumerate(rows)]
    high = [(i, path) for i, path in high if path != rows[i].path()]
    if high:
        idx, reads = _prepared([signals.read_wfdb(path) for _, path in high])
        yield "500hz_file", np.array([high[j][0] for j in idx]), reads


def _prepared(raws: Sequence[signals.RawEcg]) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the raws that prepared, their prepared reads)."""
    done = [(i, x) for i, x in enumerate(signals.prepare_batch(raws)) if isinstance(x, np.ndarray)]
    if not done:
        return np.zeros(0, dtype=int), np.empty((0, len(signals.LEADS), signals.MODEL_SAMPLES), np.float32)
    return np.array([i for i, _ in done]), np.stack([x for _, x in done])


def move_covariance(
    embed: Embed, base: np.ndarray, moves: Iterable[tuple[str, np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, dict[str, int]]:
    """Mean outer product of (moved read's unit vector - the read's unit vector ``base``) over every move,
    and how many reads each move gave."""
    total, count, counts = np.zeros((base.shape[1], base.shape[1])), 0, {}
    for name, idx, reads in moves:
        counts[name] = len(idx)
        if len(idx):
            d = unit(embed(reads)) - base[idx]
            total += d.T @ d
            count += len(d)
    if not count:
        raise ValueError("no moved read could be prepared: the whitening has nothing to fit")
    return total / count, counts


def unit(vectors: np.ndarray) -> np.ndarray:
    """Served vectors as the runtime serves them (unit rows), in float64 for the covariance."""
    return normalise_rows(vectors, np.float64)


def whitening_matrix(covariance: np.ndarray, shrink: float, columns: int | None = None) -> np.ndarray:
    """(C + shrink * mean eigenvalue * I)^(-1/2), its gains scaled to a mean of 1: symmetric, and the
    runtime's L2 normalisation after it is all that serving adds. ``columns``: whiten only the first
    that many columns (their block of C), the identity on the rest."""
    if not shrink > 0:
        raise ValueError(f"the whitening's shrinkage must be > 0, not {shrink}")
    if columns is not None and columns < len(covariance):
        matrix = np.eye(len(covariance))
        matrix[:columns, :columns] = whitening_matrix(covariance[:columns, :columns], shrink)
        return matrix
    values, vectors = np.linalg.eigh(covariance)
    floor = shrink * max(float(np.mean(values)), 1e-12)
    gains = (np.maximum(values, 0.0) + floor) ** -0.5
    return (vectors * (gains / gains.mean())) @ vectors.T


def fit(
    embed: Embed, rows: Sequence[ptbxl.PtbxlRow], mv: np.ndarray, shrink: float, columns: int | None = None
) -> tuple[np.ndarray, dict]:
    """The whitening of ``embed``'s vectors fitted on ``rows`` (prepared reads ``mv``), and its card entry;
    ``columns``: of the first that many columns only (``whitening_matrix``)."""
    covariance, counts = move_covariance(embed, unit(embed(mv)), moved_reads(rows, mv))
    card = {
        "shrink": shrink,
        "columns": "all" if columns is None else f"the first {columns}",
        "ecgs": len(rows),
        "moves": counts,
        "mean_move_variance": float(np.trace(covariance) / len(covariance)),
        "note": (
            "the served vector times (C + shrink * mean eigenvalue of C * I)^(-1/2), C the covariance of how "
            "the unit vector moves between an ECG's read and its moved reads: later starts by "
            f"{', '.join(map(str, LATER_STARTS))} samples at 100 Hz, circular shifts by "
            f"{', '.join(map(str, CIRCULAR_SHIFTS))} samples, and the 500 Hz file's read where it exists"
        ),
    }
    return whitening_matrix(covariance, shrink, columns), card
