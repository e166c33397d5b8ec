"""Synthetic ECG-like embeddings and payloads for scale benchmarks (no data set here is large).

Why this shape: real embeddings are clustered (rhythms, morphologies), cluster sizes are heavy-tailed
(sinus rhythm is common, WPW is not), and each cluster spreads along a few directions rather than
isotropically. Uniform random vectors would make HNSW look either trivially easy or hopeless.

Everything derives from one seed and is generated chunk by chunk (memory stays bounded); for sizes
that are multiples of the chunk (50,000) the first n points of a larger set are exactly the n-point
set, so 100k/300k/1M are nested.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# (code, name, overall prevalence): SNOMED CT ids as the store normalises them. WPW is the ~1% code.
CODES: tuple[tuple[str, str, float], ...] = (
    ("426783006", "SR", 0.60),
    ("164865005", "MI", 0.10),
    ("164934002", "TAb", 0.15),
    ("164873001", "LVH", 0.09),
    ("164889003", "AF", 0.08),
    ("270492004", "IAVB", 0.04),
    ("59118001", "RBBB", 0.04),
    ("164909002", "LBBB", 0.02),
    ("10370003", "PR", 0.015),
    ("74390002", "WPW", 0.01),
)
RARE_CODE = "74390002"
CHUNK = 50_000


@dataclass(frozen=True)
class Mixture:
    """The fixed generative model: clusters on the sphere with low-rank spread."""

    centres: np.ndarray  # (K, dim) unit vectors
    weights: np.ndarray  # (K,) heavy-tailed cluster probabilities
    spread: np.ndarray  # (K,) noise scale per cluster
    bases: np.ndarray  # (K, rank, dim) directions each cluster varies along
    code_boost: np.ndarray  # (K, n_codes) prevalence multiplier per cluster (mean ~1)
    age_shift: np.ndarray  # (K,) cluster-dependent mean age offset
    seed: int
    isotropic: float = 0.35

    @property
    def dim(self) -> int:
        return int(self.centres.shape[1])


@dataclass(frozen=True)
class Payloads:
    """Columnar synthetic payloads: a bool matrix over CODES, integer age, sex ('F' is True)."""

    codes: np.ndarray  # (n, n_codes) bool
    age: np.ndarray  # (n,) int16
    female: np.ndarray  # (n,) bool

    def __len__(self) -> int:
        return len(self.age)

    def slice(self, start: int, stop: int) -> Payloads:
        return Payloads(self.codes[start:stop], self.age[start:stop], self.female[start:stop])

    def diagnoses(self, i: int) -> list[str]:
        return [CODES[j][0] for j in np.flatnonzero(self.codes[i])]


def mixture(dim: int = 256, *, clusters: int = 2000, rank: int = 16, seed: int = 0) -> Mixture:
    """The generative model for one seed; ``clusters`` sizes follow a Zipf-like law (exponent 1.1)."""
    rng = np.random.default_rng([seed, 0])
    centres = _unit(rng.standard_normal((clusters, dim)))
    weights = np.arange(1, clusters + 1, dtype=np.float64) ** -1.1
    weights = rng.permutation(weights / weights.sum())
    spread = rng.uniform(0.8, 1.4, clusters)
    bases = rng.standard_normal((clusters, rank, dim)).astype(np.float32) / np.sqrt(rank * dim)
    boost = rng.lognormal(0.0, 1.0, (clusters, len(CODES)))
    boost /= (weights[:, None] * boost).sum(axis=0, keepdims=True)
    age_shift = rng.normal(0.0, 8.0, clusters)
    return Mixture(centres.astype(np.float32), weights, spread, bases, boost, age_shift, seed)


def chunks(
    mix: Mixture, n: int, *, stream: int = 1, chunk: int = CHUNK
) -> Iterator[tuple[np.ndarray, Payloads]]:
    """Yield (unit vectors float32, payloads) chunk by chunk; ``stream`` separates data from queries."""
    for index, start in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng([mix.seed, stream, index])
        yield _draw(mix, rng, min(chunk, n - start))


def generate(mix: Mixture, n: int, *, stream: int = 1, chunk: int = CHUNK) -> tuple[np.ndarray, Payloads]:
    """All n points at once (n * dim * 4 bytes of memory)."""
    vectors = np.empty((n, mix.dim), dtype=np.float32)
    return vectors, _fill(vectors, mix, stream=stream, chunk=chunk)


def _fill(vectors: np.ndarray, mix: Mixture, *, stream: int = 1, chunk: int = CHUNK) -> Payloads:
    """Draw ``len(vectors)`` points chunk by chunk into ``vectors`` (an array or a memory map)."""
    parts = []
    start = 0
    for x, p in chunks(mix, len(vectors), stream=stream, chunk=chunk):
        vectors[start : start + len(x)] = x
        parts.append(p)
        start += len(x)
    return concat(parts)


def generate_mapped(mix: Mixture, n: int, folder: Path) -> tuple[np.ndarray, Payloads]:
    """``generate``'s data stream kept on disk: vectors memory-mapped read-only, payload columns loaded.

    At millions of points the vectors (n * dim * 4 bytes) would otherwise sit in the benchmark's own
    heap beside the store it measures; mapped, they are page cache the kernel may drop. The files are
    named by dim, seed and n, written once (under a temporary name, then renamed) and reused by later
    runs of the same size, so a long benchmark resumes without drawing them again.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"synthetic-d{mix.dim}-seed{mix.seed}-n{n}"
    vectors_path, columns_path = stem.with_suffix(".npy"), stem.with_suffix(".columns.npz")
    if not (vectors_path.is_file() and columns_path.is_file()):
        partial = stem.with_suffix(".partial.npy")
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, mix.dim))
        columns = _fill(out, mix)
        out.flush()
        del out
        partial_columns = stem.with_suffix(".partial.columns.npz")
        np.savez(partial_columns, codes=columns.codes, age=columns.age, female=columns.female)
        partial_columns.replace(columns_path)
        partial.replace(vectors_path)
    with np.load(columns_path) as stored:
        columns = Payloads(stored["codes"], stored["age"], stored["female"])
    return np.load(vectors_path, mmap_mode="r"), columns


def queries(mix: Mixture, n: int) -> tuple[np.ndarray, Payloads]:
    """Queries from the same distribution as the data, but never data points themselves."""
    return generate(mix, n, stream=2)


def concat(parts: list[Payloads]) -> Payloads:
    if not parts:
        return Payloads(np.zeros((0, len(CODES)), bool), np.zeros(0, np.int16), np.zeros(0, bool))
    return Payloads(
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.age for p in parts]),
        np.concatenate([p.female for p in parts]),
    )


def _draw(mix: Mixture, rng: np.random.Generator, n: int) -> tuple[np.ndarray, Payloads]:
    k = rng.choice(len(mix.weights), size=n, p=mix.weights)
    rank = mix.bases.shape[1]
    z = rng.standard_normal((n, rank)).astype(np.float32)
    x = rng.standard_normal((n, mix.dim)).astype(np.float32) * (mix.isotropic / np.sqrt(mix.dim))
    order = np.argsort(k, kind="stable")
    bounds = np.flatnonzero(np.diff(k[order])) + 1
    for group in np.split(order, bounds):
        c = k[group[0]]
        x[group] += z[group] @ mix.bases[c]
    x = mix.centres[k] + x * mix.spread[k, None].astype(np.float32)
    prevalence = np.array([p for _, _, p in CODES])
    p_codes = np.clip(prevalence[None, :] * mix.code_boost[k], 0.0, 0.95)
    codes = rng.random((n, len(CODES))) < p_codes
    age = np.clip(np.rint(rng.normal(60.0 + mix.age_shift[k], 16.0)), 18, 95).astype(np.int16)
    female = rng.random(n) < 0.48
    return _unit(x).astype(np.float32), Payloads(codes, age, female)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
