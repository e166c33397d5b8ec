"""What the training loop reads: PTB-XL folds in memory, or an archive of prepared shards, streamed.

Both give ``steps_per_epoch``, ``batches(epoch, start, g)`` (this process's batches of an epoch from
batch ``start`` on, float32 (b, 12, 1000)), the validation split ``val`` and a ``description`` for the
run summary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ecgsearch.encoder import distributed, shards, signals, stream
from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.data import EcgArrays, load_ptbxl


class InMemory:
    """PTB-XL folds as arrays: batches of a seeded permutation drawn, per epoch, from the loop's generator."""

    def __init__(self, config: EncoderConfig, data_root: str | Path, cache_dir: str | Path | None) -> None:
        cap = config.max_records
        self.train = load_ptbxl(data_root, folds=config.train_folds, max_records=cap, cache_dir=cache_dir)
        self.val = load_ptbxl(data_root, folds=[config.val_fold], max_records=cap, cache_dir=cache_dir)
        self.x = torch.from_numpy(self.train.x)
        self.batch = config.batch_size
        self.steps_per_epoch = max(1, len(self.train) // config.batch_size)
        self.description = {"dataset": "PTB-XL v1.0.3 subset, records100", "n_train": len(self.train)}

    def batches(self, epoch: int, start: int, g: torch.Generator) -> Iterator[torch.Tensor]:
        if start:
            raise ValueError("the in-memory path resumes at epoch ends only; train from --shards instead")
        perm = torch.randperm(len(self.train), generator=g)
        for i in range(self.steps_per_epoch):
            yield self.x[perm[i * self.batch : (i + 1) * self.batch]]


class Streamed:
    """An archive of prepared shards, read by DataLoader workers; this process's slice of each batch."""

    def __init__(
        self,
        config: EncoderConfig,
        root: str | Path,
        world: distributed.World,
        workers: int,
        pin: bool,
        val_records: int,
    ) -> None:
        self.archive = shards.open_archive(root)
        self.config, self.world, self.workers, self.pin = config, world, workers, pin
        self.steps_per_epoch = stream.steps_per_epoch(self.archive, config.train_folds, config.batch_size)
        if self.steps_per_epoch < 1:
            raise shards.ArchiveError(
                f"{root}: fewer than one batch ({config.batch_size}) of ECGs in folds {config.train_folds}"
            )
        self.val = archive_split(self.archive, config.val_fold, val_records)
        n_train = int(self.archive.rows_in(config.train_folds).sum())
        self.description = {
            "dataset": f"prepared archive {Path(root).name} ({self.archive.source.get('source', '?')})",
            "n_train": n_train,
            "shards": len(self.archive.shards),
            "rows": len(self.archive),
        }

    def batches(self, epoch: int, start: int, g: torch.Generator) -> Iterator[torch.Tensor]:
        data = stream.ShardStream(
            self.archive,
            self.config.train_folds,
            seed=self.config.seed,
            epoch=epoch,
            global_batch=self.config.batch_size,
            rank=self.world.rank,
            world=self.world.size,
            start=start,
        )
        yield from stream.loader(data, self.workers, self.pin)


def archive_split(archive: shards.Archive, fold: int, limit: int) -> EcgArrays:
    """The first ``limit`` ECGs of one fold of an archive, in shard order, with patients and labels.

    Labels are the superclass sets where the archive has them (PTB-XL), else the diagnosis codes.
    """
    xs, patients, superclasses, diagnoses = [], [], [], []
    for i in range(len(archive.shards)):
        if len(patients) >= limit:
            break
        rows = archive.selected(i, [fold])[: limit - len(patients)]
        if not len(rows):
            continue
        meta = archive.meta(i)
        xs.append(np.asarray(archive.signals(i)[rows]))
        patients += [meta["patient"][r] for r in rows]
        superclasses += [frozenset(meta["superclasses"][r]) for r in rows]
        diagnoses += [frozenset(meta["diagnoses"][r]) for r in rows]
    labels = superclasses if any(superclasses) else diagnoses
    n = len(patients)
    mv = np.concatenate(xs) if xs else np.zeros((0, 12, 1000), np.float32)
    return EcgArrays(signals.unit_rms(mv), np.arange(n), patients, np.full(n, fold), labels, mv=mv)
