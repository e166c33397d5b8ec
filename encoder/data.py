"""PTB-XL as in-memory arrays of prepared ECGs, selected by fold.

The whole subset (~2,000 ECGs x 12 x 1000 float32, ~100 MB) fits in memory, so training reads
arrays, not files; an optional cache file skips the ~20 s of WFDB reading on later runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecgsearch.ecg import ptbxl, signals


@dataclass(frozen=True)
class EcgArrays:
    """ECGs (n, 12, 1000) as the encoder trains on them and, per row, its id, patient, fold and labels.

    ``x`` is divided by each ECG's global RMS (``signals.unit_rms``: what the conv encoder reads);
    ``mv`` holds the prepared ECGs in mV (what the served model reads), when loaded; ``statements``
    every SCP statement code of each row (diagnostic, form and rhythm), where the source has them.
    """

    x: np.ndarray
    ecg_ids: np.ndarray
    patient_ids: list[int | None]
    folds: np.ndarray
    superclasses: list[frozenset[str]]
    mv: np.ndarray | None = None
    statements: list[frozenset[str]] | None = None
    rhythm_statements: frozenset[str] = frozenset()  # which statements of the source are rhythm statements

    def __len__(self) -> int:
        return len(self.ecg_ids)

    def select(self, mask: np.ndarray) -> EcgArrays:
        idx = np.flatnonzero(mask)
        return EcgArrays(
            x=self.x[idx],
            ecg_ids=self.ecg_ids[idx],
            patient_ids=[self.patient_ids[i] for i in idx],
            folds=self.folds[idx],
            superclasses=[self.superclasses[i] for i in idx],
            mv=None if self.mv is None else self.mv[idx],
            statements=None if self.statements is None else [self.statements[i] for i in idx],
            rhythm_statements=self.rhythm_statements,
        )

    def in_folds(self, folds: Iterable[int]) -> EcgArrays:
        return self.select(np.isin(self.folds, list(folds)))


def load_ptbxl(
    data_root: str | Path,
    *,
    folds: Iterable[int] | None = None,
    max_records: int | None = None,
    cache_dir: str | Path | None = None,
) -> EcgArrays:
    """PTB-XL rows (of ``folds``, the first ``max_records`` if given) that prepare cleanly, by ecg_id."""
    rows = ptbxl.read_table(Path(data_root) / "ptb-xl")
    if folds is not None:
        wanted = set(folds)
        rows = [r for r in rows if r.fold in wanted]
    rows = rows[:max_records]
    mv, unit, _ = prepare_rows(rows, cache_dir)
    keep = np.isfinite(mv).all(axis=(1, 2))
    return EcgArrays(
        x=unit,
        ecg_ids=np.array([r.ecg_id for r in rows]),
        patient_ids=[r.patient_id for r in rows],
        folds=np.array([r.fold for r in rows]),
        superclasses=[r.superclasses for r in rows],
        mv=mv,
        statements=[frozenset(r.scp_codes) for r in rows],
        rhythm_statements=ptbxl.rhythm_statements(Path(data_root) / "ptb-xl"),
    ).select(keep)


def label_sets(data: EcgArrays, kind: str = "statements") -> list[frozenset[str]]:
    """Each row's label set for the label-aware objective: ``"superclasses"`` (its diagnostic
    superclasses), or ``"statements"`` (every SCP statement plus its superclasses, marked
    ``superclass:``, since NORM names both). Empty where a row has no statements."""
    if kind == "superclasses":
        return list(data.superclasses)
    if kind != "statements":
        raise ValueError(f"label sets are 'statements' or 'superclasses', not {kind!r}")
    if data.statements is None:
        raise ValueError("these ECGs carry no statements")
    return [
        frozenset(codes) | frozenset(f"superclass:{c}" for c in classes)
        for codes, classes in zip(data.statements, data.superclasses, strict=True)
    ]


def multi_hot(sets: list[frozenset[str]], vocabulary: list[str]) -> np.ndarray:
    """(n, len(vocabulary)) uint8 indicator matrix of label sets; labels outside the vocabulary ignored."""
    column = {label: j for j, label in enumerate(vocabulary)}
    out = np.zeros((len(sets), len(vocabulary)), dtype=np.uint8)
    for i, labels in enumerate(sets):
        out[i, [column[c] for c in labels if c in column]] = 1
    return out


def prepare_rows(
    rows: list[ptbxl.PtbxlRow],
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(n, 12, 1000) prepared ECGs in mV, the same at unit RMS (``signals.load_for_training``), NaN
    where a row failed, and why each failed (not kept in the cache).

    The one PTB-XL corpus loader: training, the training report, ONNX parity inputs and the retrieval
    evaluation all prepare records here.
    """
    key = hashlib.sha256((signals.NORMALISATION + ",".join(str(r.path()) for r in rows)).encode())
    cache = Path(cache_dir) / f"ptbxl-{len(rows)}-{key.hexdigest()[:12]}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        both = np.load(cache)
        failed = ~np.isfinite(both[0]).all(axis=(1, 2))
        reasons = [{"ecg_id": rows[i].ecg_id, "reason": "failed to prepare"} for i in np.flatnonzero(failed)]
        return both[0], both[1], reasons
    both = np.full((2, len(rows), len(signals.LEADS), signals.MODEL_SAMPLES), np.nan, dtype=np.float32)
    rejected = []
    for i, row in enumerate(rows):
        try:
            both[0, i], both[1, i] = signals.load_for_training(row.path())
        except (signals.SignalError, OSError) as exc:  # a failed row stays NaN and is dropped
            rejected.append({"ecg_id": row.ecg_id, "reason": str(exc)})
        if log is not None and (i + 1) % 500 == 0:
            log(f"prepared {i + 1}/{len(rows)} records")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, both)
    return both[0], both[1], rejected
