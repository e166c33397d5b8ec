"""A synthetic archive of any size, made from a small prepared archive by seeded augmentation.

For throughput and memory figures at archive scale when no large archive is at hand: every synthetic
ECG is a real prepared ECG of the base archive (the shared PTB-XL records) with its own per-lead gain,
circular time shift, baseline wander and noise. Each keeps its source ECG's patient pseudonym, fold and
labels, so the validation fold holds copies of validation ECGs only. They are labelled as synthetic
(dataset ``synthetic``, ids ``synthetic:<n>``) and are for measuring the machinery, never for quality.
Shard k draws from a generator seeded with (seed, k): a rerun continues after the complete shards and
writes the same archive. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ecgsearch.ecg import shards, signals

DATASET = "synthetic"


def _base(archive: shards.Archive) -> tuple[np.ndarray, np.ndarray, dict[str, list]]:
    """Every row of the (small) base archive in memory, with folds and metadata columns."""
    xs, folds = [], []
    meta: dict[str, list] = {"patient": [], "superclasses": [], "diagnoses": []}
    for i in range(len(archive.shards)):
        xs.append(np.asarray(archive.signals(i)))
        folds.append(archive.folds(i))
        m = archive.meta(i)
        for key in meta:
            meta[key] += m[key]
    return np.concatenate(xs), np.concatenate(folds), meta


def augment_rows(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per ECG and lead: gain 0.8-1.2, wander up to 0.2 at 0.05-0.5 Hz, noise 0.05; per ECG a circular
    shift of 0-999 samples (prepared ECGs have unit RMS, so these are relative amplitudes)."""
    n, leads, t = x.shape
    out = np.empty_like(x)
    shifts = rng.integers(0, t, (n,))
    for i in range(n):
        out[i] = np.roll(x[i], shifts[i], axis=1)
    out *= rng.uniform(0.8, 1.2, (n, leads, 1)).astype(np.float32)
    time = np.arange(t, dtype=np.float32) / signals.MODEL_FS
    freq = rng.uniform(0.05, 0.5, (n, leads, 1)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (n, leads, 1)).astype(np.float32)
    amp = rng.uniform(0, 0.2, (n, leads, 1)).astype(np.float32)
    out += amp * np.sin(2 * np.pi * freq * time + phase)
    out += rng.standard_normal((n, leads, t), dtype=np.float32) * np.float32(0.05)
    return out


def synthesise(
    base_root: str | Path,
    out: str | Path,
    count: int,
    *,
    seed: int = 0,
    shard_size: int = 4096,
    on_shard: Callable[[int], None] | None = None,
) -> shards.Archive:
    """Write ``count`` synthetic ECGs drawn from the archive at ``base_root`` into an archive at ``out``."""
    base = shards.open_archive(base_root)
    source = {"synthetic_from": base.source or Path(base_root).name, "seed": seed, "count": count}
    writer = shards.ShardWriter(out, shard_size, source)
    x, folds, meta = _base(base)
    for k in range(len(writer.shards), -(-count // shard_size)):
        rng = np.random.default_rng([seed, k])
        first, n = k * shard_size, min(shard_size, count - k * shard_size)
        pick = rng.integers(0, len(x), n)
        columns = {
            "record_id": [f"{DATASET}:{first + i}" for i in range(n)],
            "dataset": [DATASET] * n,
            "source_row": pick.tolist(),
            **{key: [values[p] for p in pick] for key, values in meta.items()},
        }
        writer.write(augment_rows(x[pick], rng), folds[pick], columns, [])
        if on_shard is not None:
            on_shard(len(writer.shards))
    return shards.open_archive(out)
