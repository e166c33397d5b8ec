"""``ingest SOURCE --service HOST:PORT``: send a source's ECGs through a running service's UpsertEcgs.

The serving process owns its embedded store, so a folder reaches a live collection through it: the
service names, pseudonymises, embeds and stores each ECG by the same rules as ``ingest`` (a rerun
sends everything again and gets "skipped" back for what is stored). Hospital exports are sent as
their bytes (never their names); WFDB and PTB-XL records as raw samples with their record name as
native id (and PTB-XL's patient id, which the service pseudonymises). Header diagnoses, ages and sexes
of WFDB/PTB-XL sources are not sent: ingest those into the store directly.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ecgsearch.ecg.signals import SignalError
from ecgsearch.ingest.pipeline import REJECT_COLUMNS, Reject
from ecgsearch.ingest.sources import Candidate, file_label, read
from ecgsearch.search.api import EcgFile, EcgQuery, UpsertItem
from ecgsearch.search.client import EcgSearchClient
from ecgsearch.search.serving.push import MAX_ITEMS

MAX_BATCH_BYTES = 8 * 1024 * 1024  # half the service's default message limit
BYTES_PER_SAMPLE = 4


@dataclass
class PushSummary:
    """What the service did with each ECG sent."""

    sent: int = 0
    stored: int = 0
    skipped: int = 0
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.rejected == 0


@dataclass
class _Item:
    label: str
    dataset: str
    item: UpsertItem
    size: int


def push_source(
    candidates: Iterable[Candidate],
    client: EcgSearchClient,
    *,
    on_batch: Callable[[PushSummary], None] | None = None,
) -> PushSummary:
    """Send every candidate in batches (one dataset, at most MAX_ITEMS and MAX_BATCH_BYTES each)."""
    summary = PushSummary()
    batch: list[_Item] = []

    def flush() -> None:
        if not batch:
            return
        results = client.upsert([b.item for b in batch], dataset=batch[0].dataset)
        for sent, result in zip(batch, results, strict=True):
            summary.sent += 1
            if result.status == "stored":
                summary.stored += 1
            elif result.status == "skipped":
                summary.skipped += 1
            else:
                summary.rejected += 1
                summary.rejects.append(
                    Reject(record=result.record_id or sent.label, path="", reason=result.reason)
                )
        batch.clear()
        if on_batch:
            on_batch(summary)

    for found in _items(candidates, summary):
        size = sum(b.size for b in batch)
        if batch and (
            len(batch) >= MAX_ITEMS
            or found.dataset != batch[0].dataset
            or size + found.size > MAX_BATCH_BYTES
        ):
            flush()
        batch.append(found)
    flush()
    return summary


def _items(candidates: Iterable[Candidate], summary: PushSummary) -> Iterator[_Item]:
    for c in candidates:
        try:
            if c.file_format is not None:
                content = c.path.read_bytes()
                yield _Item(file_label(c), c.dataset, UpsertItem(file=EcgFile(content)), len(content))
                continue
            raw = read(c)
        except (OSError, SignalError) as exc:
            summary.sent += 1
            summary.rejected += 1
            reason = exc.reason if isinstance(exc, SignalError) else f"cannot read ({type(exc).__name__})"
            label = file_label(c) if c.file_format is not None else c.record_id
            summary.rejects.append(Reject(record=label, path="", reason=reason))
            continue
        native = c.record_id.split(":", 1)[1]
        ecg = EcgQuery(raw.signal, raw.fs, raw.leads, raw.units)
        key = c.meta.patient_id if c.meta is not None and c.meta.patient_id else ""
        size = raw.signal.size * BYTES_PER_SAMPLE
        yield _Item(c.record_id, c.dataset, UpsertItem(ecg=ecg, native_id=native, patient_key=key), size)


def write_rejects(summary: PushSummary, path: Path) -> None:
    """The rejects report, in ingest's columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REJECT_COLUMNS)
        for r in summary.rejects:
            writer.writerow([r.record, r.path, r.reason])
