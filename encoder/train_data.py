"""What the training loop reads: PTB-XL folds in memory, or an archive of prepared shards, streamed.

Both give ``steps_per_epoch``, ``batches(epoch, start, g)`` (this process's batches of an epoch from
batch ``start`` on: float32 (b, 12, 1000) ECGs and, for the label-aware objective, their (b, L)
multi-hot label sets, else None), the validation split ``val`` and a ``description`` for the run summary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ecgsearch.ecg import ptbxl, shards, signals
from ecgsearch.encoder import distributed, stream
from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.data import EcgArrays, label_sets, load_ptbxl, multi_hot

Batch = tuple[torch.Tensor, torch.Tensor | None]


class InMemory:
    """PTB-XL folds as arrays: batches of a seeded permutation drawn, per epoch, from the loop's generator.

    ``arrays`` (train, val) replaces reading the folds (the cross-fitted evaluation loads PTB-XL once).
    With ``w_label`` or ``w_statement`` > 0 each batch carries its ECGs' label sets over the training
    rows' vocabulary, whose first columns are ``statement_vocabulary``: the labels with at least
    ``statement_min_count`` positives among the training rows (what the statement head predicts).
    """

    def __init__(
        self,
        config: EncoderConfig,
        data_root: str | Path,
        cache_dir: str | Path | None,
        arrays: tuple[EcgArrays, EcgArrays] | None = None,
    ) -> None:
        cap = config.max_records
        if arrays is None:
            self.train = load_ptbxl(data_root, folds=config.train_folds, max_records=cap, cache_dir=cache_dir)
            self.val = load_ptbxl(data_root, folds=[config.val_fold], max_records=cap, cache_dir=cache_dir)
        else:
            self.train, self.val = arrays
        self.x = torch.from_numpy(self.train.x)
        self.y: torch.Tensor | None = None
        self.description = {"dataset": "PTB-XL v1.0.3 subset, records100", "n_train": len(self.train)}
        self.statement_vocabulary: tuple[str, ...] = ()
        self.rhythm_columns: torch.Tensor | None = None  # label columns that are rhythm statements
        if config.w_label > 0 or config.w_statement > 0:
            sets = label_sets(self.train, config.label_sets)
            counts = Counter(label for s in sets for label in s)
            if config.w_statement > 0:
                self.statement_vocabulary = tuple(
                    sorted(c for c, n in counts.items() if n >= config.statement_min_count)
                )
            rest = sorted(set(counts) - set(self.statement_vocabulary))
            vocabulary = [*self.statement_vocabulary, *rest]
            self.y = torch.from_numpy(multi_hot(sets, vocabulary))
            if config.label_rhythm_share > 0:
                if not self.train.rhythm_statements:
                    raise ValueError(
                        "label_rhythm_share > 0 needs ECGs whose source names its rhythm statements"
                    )
                # sinus rhythm, shared by most ECGs, would spread the rhythm half over nearly every row
                rhythms = self.train.rhythm_statements - {ptbxl.SINUS_RHYTHM}
                self.rhythm_columns = torch.tensor([c in rhythms for c in vocabulary], dtype=torch.bool)
            self.description["labelled_train"] = sum(1 for s in sets if s)
            self.description["label_vocabulary"] = len(vocabulary)
            self.description["statement_vocabulary"] = len(self.statement_vocabulary)
        self.batch = config.batch_size
        self.steps_per_epoch = max(1, len(self.train) // config.batch_size)

    def batches(self, epoch: int, start: int, g: torch.Generator) -> Iterator[Batch]:
        if start:
            raise ValueError("the in-memory path resumes at epoch ends only; train from --shards instead")
        perm = torch.randperm(len(self.train), generator=g)
        for i in range(self.steps_per_epoch):
            rows = perm[i * self.batch : (i + 1) * self.batch]
            yield self.x[rows], None if self.y is None else self.y[rows]


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

    def batches(self, epoch: int, start: int, g: torch.Generator) -> Iterator[Batch]:
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
        for x in stream.loader(data, self.workers, self.pin):
            yield x, None


def archive_split(archive: shards.Archive, fold: int, limit: int) -> EcgArrays:
    """The first ``limit`` ECGs of one fold of an archive, in shard order, with patients and labels.

    Labels are the superclass sets where the archive has them (PTB-XL), else the diagnosis codes.
    """
    xs, superclasses, diagnoses = [], [], []
    patients: list[int | None] = []
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
