"""Training batches streamed from an archive of prepared ECGs (``encoder.shards``) by DataLoader workers.

The order is ``shards.epoch_batches``: a function of (seed, epoch) alone. Batch j of an epoch is read by
worker (j - start) mod W and the DataLoader hands batches over round-robin, in order, so the batches
reach the training loop in the same sequence whatever the number of workers; starting at batch
``start`` continues an epoch exactly where a checkpoint left it. With several processes every process
walks the same global batches and reads only its own slice of rows (rank r: rows r*b .. (r+1)*b - 1 of
each global batch of ``world * b``), so together they read each global batch once.

Memory: a worker holds one block of row numbers and the batch it is reading; shards are memory-mapped
only while a batch is read from them, so neither grows with the archive.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ecgsearch.ecg.shards import Archive, epoch_batches, read_rows
from ecgsearch.ecg.signals import unit_rms

BLOCK = 16  # shards whose rows are shuffled together (16 x 4096 = 65,536 ECGs by default)


class ShardStream(IterableDataset):
    """One epoch's batches (float32 (b, 12, 1000), unit RMS) for one process, from batch ``start`` on."""

    def __init__(
        self,
        archive: Archive,
        folds: Sequence[int],
        *,
        seed: int,
        epoch: int,
        global_batch: int,
        rank: int = 0,
        world: int = 1,
        start: int = 0,
        block: int = BLOCK,
    ) -> None:
        if global_batch % world:
            raise ValueError(f"batch size {global_batch} is not a multiple of {world} processes")
        self.archive, self.folds = archive, tuple(folds)
        self.seed, self.epoch, self.start, self.block = seed, epoch, start, block
        self.global_batch, self.rank, self.local = global_batch, rank, global_batch // world

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        mine = slice(self.rank * self.local, (self.rank + 1) * self.local)
        batches = epoch_batches(
            self.archive, self.folds, self.seed, self.epoch, self.global_batch, self.block
        )
        for j, (shards, rows) in enumerate(batches):
            if j >= self.start and (j - self.start) % workers == worker:
                # archives hold mV; the encoder trains on each ECG divided by its global RMS
                yield torch.from_numpy(unit_rms(read_rows(self.archive, shards[mine], rows[mine])))


def steps_per_epoch(archive: Archive, folds: Sequence[int], global_batch: int) -> int:
    """Full global batches in an epoch (the order drops the incomplete last one)."""
    return int(archive.rows_in(folds).sum()) // global_batch


def loader(stream: ShardStream, workers: int, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over the stream: ``workers`` processes read ahead, batches arrive in order."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if workers else None,
        in_order=True,
    )
