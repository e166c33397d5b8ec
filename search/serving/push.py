"""Adding ECGs to a live service: hospital systems push each new ECG, the serving process writes it.

The serving process is the one owner of an embedded store, so writes go through it rather than
through a second ``ingest`` process. The rules are ingest's: an ECG is named as ingest names it
(``intake`` for files; ``<dataset>:<native id>`` or its content hash for raw ECGs), the same id with
the same content hash is skipped, another hash under a taken id is rejected (the stored ECG is
kept), the payload holds only what ingest would store, and patient ids become the site's keyed
pseudonyms. Every pushed ECG's signal is kept as read, content-addressed beside the store
(``<archive>/<hash[:2]>/<hash>.npz``), so ``GetEcg`` can return it later whatever happens to the
sender's file. New points are searchable at once: Qdrant scans points not yet indexed exactly.

Writes are serialised by one lock: pushes are rare next to searches, and one writer keeps "check
the stored hashes, then upsert" free of races between two pushes of one ECG.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecgsearch.ecg import fingerprint, intake, schema, signals, views
from ecgsearch.ecg.identity import Pseudonymizer, content_hash
from ecgsearch.ecg.readers import ReaderError, read_ecg
from ecgsearch.ecg.schema import EcgPayload
from ecgsearch.search.api import Pushed
from ecgsearch.search.engine.copies import mark_copies, settle_copy_gains

if TYPE_CHECKING:
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.store import Store

MAX_ITEMS = 64  # per UpsertEcgs call
MAX_NATIVE_ID_CHARS = schema.MAX_NATIVE_ID_CHARS
MAX_PATIENT_KEY_CHARS = 256
DEFAULT_DATASET = "pushed"
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Prepared:
    """One item made ready to store: payload, the model's input, and the signal as read to archive."""

    payload: EcgPayload
    signal: np.ndarray
    raw: signals.RawEcg


class Archive:
    """Signals of pushed ECGs as read, one compressed ``.npz`` per content hash (written atomically)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError("content hash: expected 64 lower-case hex digits")
        return self.root / digest[:2] / f"{digest}.npz"

    def save(self, digest: str, raw: signals.RawEcg) -> Path:
        path = self.path(digest)
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez_compressed(
                    handle,
                    signal=np.asarray(raw.signal, dtype=np.float32),
                    fs=np.float64(raw.fs),
                    leads=np.array(raw.leads),
                    units=np.array(raw.units),
                )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def load(self, digest: str, record: str) -> signals.RawEcg:
        path = self.path(digest)
        with np.load(path, allow_pickle=False) as z:
            return signals.RawEcg(
                record=record,
                signal=z["signal"],
                fs=float(z["fs"]),
                leads=tuple(str(x) for x in z["leads"]),
                units=tuple(str(x) for x in z["units"]),
            )


class Writer:
    """Validate, name, pseudonymise, embed, archive and store pushed ECGs (see the module doc)."""

    def __init__(self, store: Store, embedder: Embedder, pseudonyms: Pseudonymizer, archive: Archive) -> None:
        self.store = store
        self.embedder = embedder
        self.pseudonyms = pseudonyms
        self.archive = archive
        self._lock = threading.Lock()

    def prepare_file(self, content: bytes, format_hint: str | None, dataset: str) -> Prepared:
        """A file's ECG as ingest would store it; ReaderError or SignalError when it cannot be."""
        ecg = read_ecg(content, format_hint)
        digest = intake.hash_of(ecg)
        payload = intake.payload_of(ecg, dataset=dataset, pseudonyms=self.pseudonyms, digest=digest)
        raw = intake.raw_of(ecg, payload.record_id)
        prepared = signals.prepare(raw)
        update = {"archived": True, "fingerprint": fingerprint.encode(prepared)}
        return Prepared(payload.model_copy(update=update), prepared, raw)

    def prepare_raw(self, raw: signals.RawEcg, dataset: str, native_id: str, patient_key: str) -> Prepared:
        """A raw ECG (already bounded by the service) named by the sender's id or its content hash."""
        digest = content_hash(raw.signal, raw.fs, raw.leads, raw.units)
        native = native_id.strip()
        record_id = f"{dataset}:{native}" if native else f"{dataset}:sha256-{digest[: intake.ID_HASH_CHARS]}"
        raw = signals.RawEcg(record_id, raw.signal, raw.fs, raw.leads, raw.units)
        prepared = signals.prepare(raw)
        payload = EcgPayload(
            record_id=record_id,
            dataset=dataset,
            patient_id=self.pseudonyms.of(dataset, intake.patient_key(patient_key), record_id),
            sampling_rate_hz=float(raw.fs),
            duration_s=round(raw.signal.shape[1] / raw.fs, 3),
            content_hash=digest,
            fingerprint=fingerprint.encode(prepared),
            archived=True,
        )
        return Prepared(payload, prepared, raw)

    def store_prepared(self, items: Sequence[Prepared | Pushed]) -> list[Pushed]:
        """Store the prepared items not stored yet; results in item order (rejections passed through)."""
        with self._lock:
            ready = [p for p in items if isinstance(p, Prepared)]
            held = self.store.content_hashes([p.payload.record_id for p in ready]) if ready else {}
            outcome: dict[int, Pushed] = {}
            new: list[Prepared] = []
            for i, item in enumerate(items):
                if not isinstance(item, Prepared):
                    continue
                p = item.payload
                if p.record_id in held:
                    if held[p.record_id] == p.content_hash:
                        outcome[i] = Pushed(p.record_id, "skipped")
                    else:
                        outcome[i] = Pushed(
                            p.record_id,
                            "rejected",
                            f"id collision: a different ECG is already stored as this id (content hash "
                            f"{(held[p.record_id] or '')[:12]}, this one {(p.content_hash or '')[:12]}); "
                            "the stored one is kept",
                        )
                    continue
                held[p.record_id] = p.content_hash
                new.append(item)
                outcome[i] = Pushed(p.record_id, "stored")
            if new:
                vectors, named = views.embed_views(self.embedder, np.stack([p.signal for p in new]))
                mark_copies([p.payload for p in new], vectors, self.store)  # ingest's rules
                named = settle_copy_gains([p.payload for p in new], named, self.store)
                for fresh in new:  # the signal first: a stored point always finds its archive
                    self.archive.save(fresh.payload.content_hash or "", fresh.raw)
                self.store.upsert(named.flagged([p.payload for p in new]), vectors, named.rows())
        return [outcome[i] if isinstance(item, Prepared) else item for i, item in enumerate(items)]


def check_dataset(dataset: str) -> str:
    """The dataset name of pushed ECGs: default 'pushed', else the safe set of ``schema.check_dataset_name``
    (``UnsafeId``, a ValueError, says 'dataset: <rule>')."""
    return schema.check_dataset_name(dataset.strip() or DEFAULT_DATASET)


def check_native_id(native_id: str) -> str:
    """The sending system's non-personal id of the ECG, blank (the content hash names it) or in the safe
    set of ``schema.check_native_id`` (``UnsafeId`` says 'native_id: <rule>')."""
    native = native_id.strip()
    return schema.check_native_id(native) if native else native


def reader_reason(exc: ReaderError) -> str:
    return f"{exc.field}: {exc.reason}"
