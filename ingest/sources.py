"""Where ECGs come from: a PTB-XL folder, a manifest CSV or a folder of WFDB records and hospital
exports (every format of ``ecg.formats``, mixed) -> Records.

Enumeration is lazy and cheap (no signal is read), so a source of any size streams; ``load`` does the
expensive part (read, prepare, build the payload) and runs in worker processes, so everything it takes
and returns is picklable.

Identity follows the data conventions: an ECG is ``<dataset>:<native id>``, the dataset's own
identifier of the ECG, never where the file happens to lie:

- PTB-XL (a folder holding ``ptbxl_database.csv``): ``ptbxl:<ecg_id>``, one ECG per row of the table
  whatever files exist (100 and 500 Hz files are one ECG);
- a folder of WFDB records (the Challenge layout): ``<dataset>:<record name>``; the dataset is
  ``--dataset`` if given, else the name of the folder holding the header, skipping the Challenge's
  group folders (``g1``, ``g2``...), so ``training/georgia/g1/E00001.hea`` is ``georgia:E00001``;
- a manifest: its ``record_id`` and ``dataset`` columns, else as for a folder.

Ids and dataset names must be in the one safe set (``schema.check_record_id``, ``check_dataset_name``:
letters, digits, ``._:-``, bounded length); a source that yields any other (a folder named
``<img src=x onerror=...>``, a manifest cell with blanks or quotes) fails enumeration with the field and
where it came from named (manifest line, folder), before anything is stored.

Two different ECGs that still end up with one id are caught at ingest by their content hash
(``identity``). Privacy: only pseudonyms, age, sex, dates and diagnosis codes reach a payload; no other
header text is ever copied. ``source_path`` is stored only as the dataset names the file, relative to
the source folder (PTB-XL, WFDB folders, manifest rows without their own ``record_id``); a manifest row
naming its record, or a path outside the manifest's folder, stores none, since such paths (hospital
exports named by MRN) can carry personal data. WFDB record names are taken to be public dataset
identifiers. Hospital exports are not: their files are named after MRNs and patients, so a folder's
non-WFDB files are recognised by content (``readers.sniff`` on the first 8 KiB; ``.hea`` is WFDB) and
get their id from the file's own identifier or content hash when read (``search.intake``), never from
the file name, and store no source path. Until read they carry a provisional id (a hash of their path
inside the source) that only shards them; a read failure names the file by the SHA-256 of its bytes.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from ecgsearch.ecg import fingerprint, formats, intake, ptbxl, signals
from ecgsearch.ecg.codes import normalise_snomed, scp_to_normalised
from ecgsearch.ecg.identity import Pseudonymizer, content_hash
from ecgsearch.ecg.readers import ReaderError, read_ecg, sniff
from ecgsearch.ecg.schema import EcgPayload, Sex, UnsafeId, check_dataset_name, check_record_id

PTBXL_DATASET = "ptbxl"
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
    sex: Sex | None = None
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class Candidate:
    """An ECG found in a source, not yet read. ``meta`` None means: parse the header comments."""

    record_id: str
    dataset: str
    path: Path  # record path without extension
    source_path: str | None  # relative to the source, stored in the payload; None: not to be stored
    meta: Metadata | None = None
    file_format: str | None = None  # a hospital export (sniffed format): its id is known once read


@dataclass(frozen=True)
class Record:
    """A prepared ECG, ready to embed: (12, 1000) float32 and its payload. ``raw``: the signal as read,
    kept for hospital exports only, whose files GetEcg cannot find again (they store no path)."""

    signal: np.ndarray = field(repr=False)
    payload: EcgPayload
    raw: signals.RawEcg | None = field(default=None, repr=False)


def enumerate_source(
    source: str | Path, *, dataset: str | None = None, prefer_hr: bool = False
) -> Iterator[Candidate]:
    """Lazily list the ECGs of a PTB-XL folder, a manifest CSV or a folder of WFDB records.

    SourceError for a source that cannot be listed, or (when reached) an id or dataset name outside
    the safe set."""
    source = Path(source)
    if dataset is not None:
        _checked(f"{PTBXL_DATASET}:1", dataset, "--dataset")
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return _manifest(source, dataset)
        if source.suffix.lower() == ".hea":
            ds = dataset or _dataset_of(source.parent, source.parent)
            record_id = _checked(f"{ds}:{source.stem}", ds, ascii(source.name), "the folder's name")
            return iter([Candidate(record_id, ds, source.with_suffix(""), None)])
        ds = dataset or _dataset_of(source.parent, source.parent)
        _checked(f"{ds}:file", ds, ascii(source.name), "the folder's name")
        found = _hospital_file(source, source.parent, ds)
        if found is None:
            raise SourceError(
                "expected a folder, a manifest .csv, a WFDB .hea or an ECG file of a known format"
            )
        return iter([found])
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder or manifest")
    if ptbxl.has_table(source):
        return _ptbxl(source, dataset or PTBXL_DATASET, prefer_hr)
    return _wfdb_folder(source, dataset)


def _checked(record_id: str, dataset: str, where: str, dataset_from: str | None = None) -> str:
    """``record_id`` when it and ``dataset`` are in the safe set; else SourceError naming ``where`` and
    the field (``dataset_from``: where the dataset name came from), never the value."""
    try:
        check_dataset_name(dataset, f"dataset ({dataset_from})" if dataset_from else "dataset")
        return check_record_id(record_id)
    except UnsafeId as exc:
        raise SourceError(f"{where}: {exc}") from None


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


def read(candidate: Candidate) -> signals.RawEcg:
    """The ECG as stored; an unreadable file raises UnreadableRecord saying what is wrong with it."""
    try:
        return signals.read_wfdb(candidate.path)
    except signals.UnreadableRecord as exc:
        reason = diagnose_wfdb(candidate.path)
        if reason is None:
            raise
        raise signals.UnreadableRecord(candidate.record_id, reason) from exc


def load(
    candidate: Candidate,
    pseudonyms: Pseudonymizer | None = None,
    raw: signals.RawEcg | None = None,
    signal: np.ndarray | None = None,
) -> Record:
    """Read (unless given), prepare (unless ``signal`` is ``raw`` prepared) and describe one ECG;
    raises SignalError on any trouble.

    ``pseudonyms`` None keys patient pseudonyms with this process's random key (tests, benchmarks);
    ingest passes the site's."""
    pseudonyms = pseudonyms or Pseudonymizer.for_this_process()
    raw = read(candidate) if raw is None else raw
    signal = signals.prepare(raw) if signal is None else signal
    meta = candidate.meta or _meta_from_comments(raw, candidate.record_id)
    payload = EcgPayload(
        record_id=candidate.record_id,
        dataset=candidate.dataset,
        patient_id=pseudonyms.of(candidate.dataset, meta.patient_id, candidate.record_id),
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
        content_hash=hash_of(raw),
        fingerprint=fingerprint.encode(signal),
    )
    return Record(signal=signal, payload=payload)


def hash_of(raw: signals.RawEcg) -> str:
    """The content hash of an ECG as read (see ``identity.content_hash``)."""
    return content_hash(raw.signal, raw.fs, raw.leads, raw.units)


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
            column = (row.get("dataset") or "").strip()
            name = column or dataset or _dataset_of(record.parent, base)
            given = (row.get("record_id") or "").strip()
            native = given or record.name
            record_id = native if ":" in native else f"{name}:{native}"
            origin = "the dataset column" if column else "--dataset" if dataset else "the folder's name"
            record_id = _checked(record_id, name, f"{path}:{line}", origin)
            # A row naming its own record keeps its file name out of the payload (it may be personal).
            yield Candidate(record_id, name, record, None if given else _relative(record, base))


_GROUP_FOLDER = re.compile(r"^g\d+$")  # the Challenge splits each dataset into g1, g2, ... folders


def _dataset_of(folder: Path, root: Path) -> str:
    """The dataset a folder's records belong to: its name, or its parent's for a Challenge group folder."""
    for here in (folder, *folder.parents):
        if not _GROUP_FOLDER.match(here.name) or here == root:
            return here.name
    return folder.name


# Files a folder of ECGs also holds that are never ECGs (unless a format we read uses the extension);
# anything else without a WFDB header beside it is sniffed. An unknown content is skipped silently,
# except under the extensions of ecg.formats, where it is a reject (a damaged export must not vanish
# from the report).
_NOT_ECG = {".tsv", ".csv", ".txt", ".md", ".json", ".pdf", ".html", ".py", ".sh", ".zip", ".gz"}
_NOT_ECG -= formats.EXTENSIONS
_WFDB_SIGNAL = {".dat", ".mat"}


def _wfdb_folder(root: Path, dataset: str | None) -> Iterator[Candidate]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        for name in sorted(files):
            ds = dataset or _dataset_of(here, root)
            where = ascii(_relative(here / name, root) or name)
            origin = "--dataset" if dataset else "the folder's name"
            if name.endswith(".hea"):
                record = here / name[: -len(".hea")]
                record_id = _checked(f"{ds}:{record.name}", ds, where, origin)
                yield Candidate(record_id, ds, record, _relative(record, root))
                continue
            path = here / name
            suffix = os.path.splitext(name)[1]
            if name.startswith(".") or suffix.lower() in _NOT_ECG:
                continue
            if suffix.lower() in _WFDB_SIGNAL:  # WFDB signal files: read through their header
                continue
            _checked(f"{ds}:file", ds, where, origin)
            found = _hospital_file(path, root, ds)
            if found is not None:
                yield found


def _hospital_file(path: Path, root: Path, dataset: str) -> Candidate | None:
    """A candidate for a file of a hospital format (by content), or None for a file that is no ECG."""
    try:
        with path.open("rb") as handle:
            head = handle.read(formats.SNIFF_BYTES)
    except OSError:
        head = b""
    try:
        fmt = sniff(head)
    except ReaderError:
        if path.suffix.lower() not in formats.EXTENSIONS:
            return None
        fmt = "unknown"
    where = _relative(path, root) or path.name
    provisional = hashlib.sha256(where.encode()).hexdigest()[:16]
    return Candidate(f"{dataset}:file-{provisional}", dataset, path, None, file_format=fmt)


def file_label(candidate: Candidate) -> str:
    """How a report names a hospital file that could not be stored: the SHA-256 of its bytes (find it
    with ``sha256sum``), never its name."""
    try:
        digest = hashlib.sha256(candidate.path.read_bytes()).hexdigest()[:16]
    except OSError:
        return f"{candidate.dataset}:file-unreadable"
    return f"{candidate.dataset}:file-sha256-{digest}"


def load_file(candidate: Candidate, pseudonyms: Pseudonymizer | None = None) -> Record:
    """Read a hospital export, prepare its ECG (first 10 s, as for long WFDB records) and describe it."""
    pseudonyms = pseudonyms or Pseudonymizer.for_this_process()
    ecg = read_ecg(candidate.path)
    digest = intake.hash_of(ecg)
    payload = intake.payload_of(ecg, dataset=candidate.dataset, pseudonyms=pseudonyms, digest=digest)
    raw = intake.raw_of(ecg, payload.record_id)
    signal = signals.prepare(raw)
    payload.fingerprint = fingerprint.encode(signal)
    return Record(signal=signal, payload=payload, raw=raw)


_CHALLENGE_SEX: dict[str, Sex] = {"male": "M", "m": "M", "female": "F", "f": "F"}  # header "# Sex:" spellings


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
            raise signals.UnreadableRecord(record, f"Dx code {code[:20]!r} is not a SNOMED CT concept id")
    return Metadata(
        diagnoses=tuple(_unique(normalise_snomed(c) for c in codes)),
        source_codes=tuple(f"SNOMED:{c}" for c in codes),
        age=age,
        age_over_89=over,
        sex=_CHALLENGE_SEX.get(fields.get("sex", "").lower()),
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


def _relative(path: Path, root: Path) -> str | None:
    """The path inside ``root`` (POSIX), or None for one outside it: never an absolute path."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return None


# --- what is wrong with an unreadable WFDB record ----------------------------------------------

_BITS_PER_SAMPLE = {"8": 8, "80": 8, "16": 16, "61": 16, "160": 16, "212": 12, "24": 24, "32": 32}


def diagnose_wfdb(path: Path) -> str | None:
    """Say in words why a WFDB record cannot be read (empty header, missing or truncated signal file),
    or None when the header and file sizes look sound (the reader's own message is kept then)."""
    header = path.with_suffix(".hea")
    try:
        text = header.read_bytes().decode("ascii", errors="replace")
    except OSError:
        return f"cannot read header file {header.name}"
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        return "empty header"
    fields = lines[0].split()
    if len(fields) < 2 or not fields[1].isdigit():
        return "malformed header: the record line does not give the number of signals"
    n_sig = int(fields[1])
    if len(lines) - 1 != n_sig:
        return f"malformed header: declares {n_sig} signals but describes {len(lines) - 1}"
    if n_sig == 0:
        return "header declares no signals"
    n_samples = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else None
    files: dict[str, tuple[int, int]] = {}  # file -> (signals in it, bits per frame)
    offsets: dict[str, int] = {}
    for line in lines[1:]:
        parts = line.split()
        if len(parts) < 2:
            return "malformed header: a signal line without a format"
        fmt, _, offset = parts[1].partition("+")
        fmt = fmt.split("x")[0].split(":")[0]
        bits = _BITS_PER_SAMPLE.get(fmt)
        if bits is None:
            return None
        count, frame = files.get(parts[0], (0, 0))
        files[parts[0]] = (count + 1, frame + bits)
        offsets[parts[0]] = int(offset) if offset.isdigit() else 0
    for name, (count, frame_bits) in files.items():
        data = path.parent / name
        if not data.is_file():
            return f"signal file {name} is missing"
        if n_samples is None:
            continue
        size = data.stat().st_size - offsets[name]
        expected = n_samples * count
        if size * 8 < n_samples * frame_bits:
            held = max(size, 0) * 8 // frame_bits * count
            return f"truncated signal: expected {expected} samples, file has {held}"
    return None
