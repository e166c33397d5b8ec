"""Where ECGs come from: a PTB-XL folder, a manifest CSV or a folder of WFDB records -> Records.

Enumeration is lazy and cheap (no signal is read), so a source of any size streams; ``load`` does the
expensive part (read, prepare, build the payload) and runs in worker processes, so everything it takes
and returns is picklable.

Identity follows the data conventions: an ECG is ``<dataset>:<native id>``. PTB-XL is ingested from its
metadata table, one ECG per ``ecg_id`` whatever files exist; a Challenge-style record is named by its
header's file name, its dataset by its parent folder. Privacy: only pseudonymous ids, age, sex, dates
and diagnosis codes reach a payload; no other header text is ever copied.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ecgsearch.encoder import ptbxl, signals
from ecgsearch.search.codes import normalise_snomed, scp_to_normalised
from ecgsearch.search.schema import EcgPayload

PTBXL_DATASET = "ptbxl"
PTBXL_TABLE = "ptbxl_database.csv"
AGE_CAP = 90  # ages above 89 are stored as 90 with age_over_89, as PTB-XL de-identifies them


class SourceError(ValueError):
    """A source that cannot be enumerated at all (missing folder, malformed manifest)."""


@dataclass(frozen=True)
class Metadata:
    """What a source knows about an ECG beside its signal (no free text by construction)."""

    patient_id: str | None = None
    diagnoses: tuple[str, ...] = ()
    source_codes: tuple[str, ...] = ()
    scp_likelihoods: tuple[tuple[str, float], ...] = ()
    superclasses: tuple[str, ...] = ()
    age: int | None = None
    age_over_89: bool = False
    sex: str | None = None
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class Candidate:
    """An ECG found in a source, not yet read. ``meta`` None means: parse the header comments."""

    record_id: str
    dataset: str
    path: Path  # record path without extension
    source_path: str  # relative to the source, stored in the payload
    meta: Metadata | None = None


@dataclass(frozen=True)
class Record:
    """A prepared ECG, ready to embed: (12, 1000) float32 and its payload."""

    signal: np.ndarray = field(repr=False)
    payload: EcgPayload


def enumerate_source(
    source: str | Path, *, dataset: str | None = None, prefer_hr: bool = False
) -> Iterator[Candidate]:
    """Lazily list the ECGs of a PTB-XL folder, a manifest CSV or a folder of WFDB records."""
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise SourceError(f"{source}: expected a folder or a manifest .csv file")
        return _manifest(source, dataset)
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder or manifest")
    if (source / PTBXL_TABLE).is_file():
        return _ptbxl(source, dataset or PTBXL_DATASET, prefer_hr)
    return _wfdb_folder(source, dataset)


def in_shard(record_id: str, index: int, count: int) -> bool:
    """Stable split by record id (1-based shard ``index`` of ``count``): same answer on every machine."""
    digest = hashlib.sha256(record_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count == index - 1


def select(
    candidates: Iterable[Candidate], *, shard: tuple[int, int] | None = None, limit: int | None = None
) -> Iterator[Candidate]:
    """Keep this shard's records, then at most ``limit`` of them, still lazily."""
    kept = 0
    for candidate in candidates:
        if limit is not None and kept >= limit:
            return
        if shard is None or in_shard(candidate.record_id, *shard):
            kept += 1
            yield candidate


def load(candidate: Candidate) -> Record:
    """Read, prepare and describe one ECG; raises SignalError naming the record on any trouble."""
    raw = signals.read_wfdb(candidate.path)
    signal = signals.prepare(raw)
    meta = candidate.meta or _meta_from_comments(raw, candidate.source_path)
    payload = EcgPayload(
        record_id=candidate.record_id,
        dataset=candidate.dataset,
        patient_id=meta.patient_id,
        diagnoses=list(meta.diagnoses),
        source_codes=list(meta.source_codes),
        scp_likelihoods=dict(meta.scp_likelihoods),
        superclasses=list(meta.superclasses),
        age=meta.age,
        age_over_89=meta.age_over_89,
        sex=meta.sex,
        sampling_rate_hz=raw.fs,
        duration_s=round(raw.signal.shape[1] / raw.fs, 3),
        recorded_at=meta.recorded_at,
        source_path=candidate.source_path,
    )
    return Record(signal=signal, payload=payload)


# --- PTB-XL -------------------------------------------------------------------------------------


def _ptbxl(root: Path, dataset: str, prefer_hr: bool) -> Iterator[Candidate]:
    for row in ptbxl.read_table(root):
        path = row.path(prefer_hr)
        yield Candidate(
            record_id=f"{dataset}:{row.ecg_id}",
            dataset=dataset,
            path=path,
            source_path=_relative(path, root),
            meta=_ptbxl_meta(row),
        )


def _ptbxl_meta(row: ptbxl.PtbxlRow) -> Metadata:
    codes = sorted(row.scp_codes)
    age, over = _age(row.age, over_89_marker=True)
    return Metadata(
        patient_id=None if row.patient_id is None else str(row.patient_id),
        diagnoses=tuple(_unique(scp_to_normalised(c) for c in codes)),
        source_codes=tuple(f"SCP:{c}" for c in codes),
        scp_likelihoods=tuple((c, float(row.scp_codes[c])) for c in codes),
        superclasses=tuple(s for s in ptbxl.SUPERCLASSES if s in row.superclasses),
        age=age,
        age_over_89=over,
        sex=row.sex,
        recorded_at=row.recorded_at,
    )


# --- manifests and folders of WFDB records -----------------------------------------------------


def _manifest(path: Path, dataset: str | None) -> Iterator[Candidate]:
    base = path.parent
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if "path" not in (reader.fieldnames or []):
            raise SourceError(f"{path}: manifest needs a 'path' column (optional: record_id, dataset)")
        for line, row in enumerate(reader, start=2):
            raw = (row.get("path") or "").strip()
            if not raw:
                raise SourceError(f"{path}:{line}: empty path")
            record = Path(raw)
            record = record if record.is_absolute() else base / record
            if record.suffix.lower() in {".hea", ".dat", ".mat"}:
                record = record.with_suffix("")
            name = (row.get("dataset") or "").strip() or dataset or record.parent.name
            native = (row.get("record_id") or "").strip() or record.name
            record_id = native if ":" in native else f"{name}:{native}"
            yield Candidate(record_id, name, record, _relative(record, base))


def _wfdb_folder(root: Path, dataset: str | None) -> Iterator[Candidate]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        for name in sorted(files):
            if name.endswith(".hea"):
                record = here / name[: -len(".hea")]
                ds = dataset or (here.name if here != root else root.name)
                yield Candidate(f"{ds}:{record.name}", ds, record, _relative(record, root))


def _meta_from_comments(raw: signals.RawEcg, record: str) -> Metadata:
    """Challenge header comments (``Age:``, ``Sex:``, ``Dx:``) -> metadata; every other line is ignored."""
    fields: dict[str, str] = {}
    for line in raw.comments:
        key, sep, value = line.strip().lstrip("#").partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    age, over = _age(_parse_age(fields.get("age", "")), over_89_marker=False)
    codes = [c.strip() for c in fields.get("dx", "").split(",") if c.strip()]
    for code in codes:
        if not code.isdigit():
            raise signals.UnreadableRecord(record, f"Dx code {code!r} is not a SNOMED CT concept id")
    return Metadata(
        diagnoses=tuple(_unique(normalise_snomed(c) for c in codes)),
        source_codes=tuple(f"SNOMED:{c}" for c in codes),
        age=age,
        age_over_89=over,
        sex={"male": "M", "m": "M", "female": "F", "f": "F"}.get(fields.get("sex", "").lower()),
        recorded_at=raw.recorded_at,
    )


def _parse_age(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value >= 0 else None


def _age(age: int | None, *, over_89_marker: bool) -> tuple[int | None, bool]:
    """(age, age_over_89): PTB-XL's 300 and any age above 89 become 90 with the flag set."""
    if age is None or (age > 130 and not (over_89_marker and age == ptbxl.AGE_OVER_89)):
        return None, False
    if age > 89:
        return AGE_CAP, True
    return age, False


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
