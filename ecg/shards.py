"""An archive of prepared ECGs on disk: numpy shards plus an index, and the seeded order training reads.

Why this format: ``shard-NNNNNN.npy`` holds up to ``shard_size`` prepared ECGs (n, 12, 1000) float32 in
numpy's own format, which ``np.load(mmap_mode="r")`` maps without reading, so a reader touches only the
rows it asks for and memory does not grow with the archive; it needs no library beyond numpy (Zarr or
WebDataset tar shards would add one, and tar shards can only be read in order). Beside each shard:
``shard-NNNNNN.fold.npy`` (int16 fold of every row, what the training order needs) and
``shard-NNNNNN.json`` (record id, dataset, patient pseudonym, labels, and the records rejected while
preparing it). ``index.json`` lists the complete shards with their row counts per fold.

A shard is complete when its ``.npy`` exists: the two small files are renamed into place first, the
signals last, each from a temporary name, so a killed writer leaves no half shard, and a rerun keeps the
complete shards and rewrites from the first missing one (``ShardWriter``).

No torch and no ingest here: this module only writes and reads arrays.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecgsearch.ecg import signals

FORMAT = "ecgsearch-prepared-ecgs"
VERSION = 1
INDEX = "index.json"
SUFFIXES = (".fold.npy", ".json", ".npy")  # the files of one shard, in the order they are written


class ArchiveError(ValueError):
    """A folder that is not a readable archive of prepared ECGs, or one written for other settings."""


@dataclass(frozen=True)
class ShardInfo:
    """One complete shard: its file stem, how many rows it holds, and rows per fold."""

    name: str
    rows: int
    candidates: int  # how many source records it covers (rows + rejected), so a rerun can skip them
    folds: dict[int, int]


@dataclass(frozen=True)
class Archive:
    """The index of an archive: where it is, its shards, and what was prepared into it."""

    root: Path
    shard_size: int
    shards: tuple[ShardInfo, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(s.rows for s in self.shards)

    def rows_in(self, folds: Sequence[int]) -> np.ndarray:
        """Rows of each shard whose fold is one of ``folds`` (from the index, no shard is opened)."""
        wanted = set(folds)
        return np.array([sum(c for f, c in s.folds.items() if f in wanted) for s in self.shards], np.int64)

    def signals(self, shard: int) -> np.ndarray:
        """The shard's ECGs, memory-mapped read-only: nothing is read until rows are indexed."""
        return np.load(self.root / f"{self.shards[shard].name}.npy", mmap_mode="r")

    def folds(self, shard: int) -> np.ndarray:
        return np.load(self.root / f"{self.shards[shard].name}.fold.npy")

    def meta(self, shard: int) -> dict[str, Any]:
        return json.loads((self.root / f"{self.shards[shard].name}.json").read_text())

    def selected(self, shard: int, folds: Sequence[int]) -> np.ndarray:
        """Row numbers of the shard whose fold is one of ``folds``, in order."""
        return np.flatnonzero(np.isin(self.folds(shard), list(folds)))


def open_archive(root: str | Path) -> Archive:
    """Read ``index.json``; raises ArchiveError naming the folder when it is not an archive."""
    root = Path(root)
    try:
        data = json.loads((root / INDEX).read_text())
    except (OSError, ValueError) as exc:
        raise ArchiveError(f"{root}: no readable {INDEX} of prepared ECGs ({type(exc).__name__})") from None
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ArchiveError(f"{root}: {INDEX} is not format {FORMAT} version {VERSION}")
    if data.get("normalisation") != signals.NORMALISATION:
        raise ArchiveError(f"{root}: prepared with another normalisation; prepare the source again")
    shards = tuple(
        ShardInfo(s["name"], s["rows"], s["candidates"], {int(k): v for k, v in s["folds"].items()})
        for s in data["shards"]
    )
    return Archive(root, int(data["shard_size"]), shards, data.get("source", {}))


def _replace(path: Path, write: Any) -> None:
    """Write through a temporary file, then rename it into place (atomic on one file system)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Appends shards to an archive folder; a rerun with the same shard size resumes after the last one.

    ``done_candidates`` says how many source records the complete shards cover, so the caller skips them.
    """

    def __init__(self, root: str | Path, shard_size: int, source: dict[str, Any] | None = None) -> None:
        if shard_size < 1:
            raise ArchiveError(f"shard size must be >= 1, not {shard_size}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.source = source or {}
        self.shards: list[ShardInfo] = []
        if (self.root / INDEX).is_file():
            archive = open_archive(self.root)
            if archive.shard_size != shard_size:
                raise ArchiveError(
                    f"{self.root} was prepared with shard size {archive.shard_size}, not {shard_size}"
                )
            if archive.source and self.source and archive.source != self.source:
                raise ArchiveError(f"{self.root} holds another source; prepare into an empty folder")
            # keep the listed shards up to the first one with a file missing (removed by hand, say)
            for info in archive.shards:
                if not all((self.root / f"{info.name}{ext}").is_file() for ext in SUFFIXES):
                    break
                self.shards.append(info)
        for stale in self.root.glob("shard-*.tmp"):
            stale.unlink()

    @property
    def done_candidates(self) -> int:
        return sum(s.candidates for s in self.shards)

    def write(
        self, x: np.ndarray, folds: np.ndarray, meta: dict[str, list[Any]], rejects: list[dict[str, str]]
    ) -> ShardInfo:
        """Store one shard: rows ``x`` (n, 12, 1000), their folds and metadata columns, and its rejects."""
        n = len(x)
        if x.shape[1:] != (len(signals.LEADS), signals.MODEL_SAMPLES) or x.dtype != np.float32:
            raise ArchiveError(f"shard rows must be (n, 12, 1000) float32, not {x.shape} {x.dtype}")
        if len(folds) != n or any(len(v) != n for v in meta.values()):
            raise ArchiveError("every metadata column needs one value per row")
        name = f"shard-{len(self.shards):06d}"
        fold_arr = np.asarray(folds, dtype=np.int16)
        body = {"rows": n, **meta, "rejects": rejects}
        writers = (
            lambda h: np.save(h, fold_arr),
            lambda h: h.write(json.dumps(body).encode()),
            lambda h: np.save(h, np.ascontiguousarray(x)),
        )
        for suffix, write in zip(SUFFIXES, writers, strict=True):
            _replace(self.root / f"{name}{suffix}", write)
        values, counts = np.unique(fold_arr, return_counts=True)
        per_fold = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
        info = ShardInfo(name, n, n + len(rejects), per_fold)
        self.shards.append(info)
        self._write_index()
        return info

    def _write_index(self) -> None:
        index = {
            "format": FORMAT,
            "version": VERSION,
            "leads": list(signals.LEADS),
            "samples": signals.MODEL_SAMPLES,
            "normalisation": signals.NORMALISATION,
            "shard_size": self.shard_size,
            "source": self.source,
            "rows": sum(s.rows for s in self.shards),
            "shards": [
                {"name": s.name, "rows": s.rows, "candidates": s.candidates, "folds": s.folds}
                for s in self.shards
            ],
        }
        _replace(self.root / INDEX, lambda h: h.write(json.dumps(index, indent=1).encode()))


# --- the training order ------------------------------------------------------------------------


def epoch_positions(
    archive: Archive, folds: Sequence[int], seed: int, epoch: int, block: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The epoch's sample order, one block of shards at a time: (shard numbers, row numbers).

    The shard order is a seeded permutation per epoch; the selected rows of ``block`` consecutive shards
    of it are shuffled together. It depends on (seed, epoch) only, never on how many processes or
    workers read it, and it holds one block of row numbers at a time, whatever the archive's size.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(archive.shards))
    for b in range(0, len(order), block):
        group = order[b : b + block]
        rows = [archive.selected(int(s), folds) for s in group]
        shard_of = np.repeat(group, [len(r) for r in rows])
        row_of = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        perm = rng.permutation(len(row_of))
        yield shard_of[perm], row_of[perm]


def epoch_batches(
    archive: Archive, folds: Sequence[int], seed: int, epoch: int, batch: int, block: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive full batches of the epoch's order (the incomplete last one is dropped)."""
    shard_buf = np.zeros(0, np.int64)
    row_buf = np.zeros(0, np.int64)
    for shards, rows in epoch_positions(archive, folds, seed, epoch, block):
        shard_buf = np.concatenate([shard_buf, shards])
        row_buf = np.concatenate([row_buf, rows])
        while len(shard_buf) >= batch:
            yield shard_buf[:batch], row_buf[:batch]
            shard_buf, row_buf = shard_buf[batch:], row_buf[batch:]


def read_rows(archive: Archive, shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """ECGs at (shard, row) pairs, in the order given; each shard is mapped only while it is read."""
    out = np.empty((len(rows), len(signals.LEADS), signals.MODEL_SAMPLES), np.float32)
    for s in np.unique(shards):
        where = np.flatnonzero(shards == s)
        mapped = archive.signals(int(s))
        order = np.argsort(rows[where], kind="stable")  # ascending rows read the file forwards
        out[where[order]] = mapped[rows[where][order]]
        del mapped
    return out
