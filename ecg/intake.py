"""A hospital file's ECG -> what may be stored: its record id, its signal as read, its payload.

Ingest (``ingest.sources``) and the service's push (``search.serving.push``) both build stored ECGs from a
reader's ``ReadEcg`` here, so a file pushed to a live service and the same file ingested from a folder
get one id, one content hash and one payload.

Record id of a file: ``<dataset>:<native id>`` when the file carries its own non-personal identifier
(an HL7 aECG document id); ``<dataset>:uid-<sha256(native id)[:24]>`` when that identifier holds a
run of 12 or more digits (DICOM UIDs embed acquisition times and device serials); otherwise
``<dataset>:sha256-<content hash[:24]>``. Never the file name: hospital exports are named after
medical record numbers and patient names.

Two files with one id and one content hash are one ECG, stored once (the second is "skipped", as any
re-export of a stored ECG is): so ``hl7aecg_fda_subject1_0.xml``, the FDA's copy of the HL7 example
with only the subject id and times changed (same document id, identical samples), is the example's
ECG, not a second one. Copies under different ids (one recording exported as aECG, SCP-ECG and DICOM)
are separate points, the later ones stored with ``duplicate_of`` naming the first (by content, as for
every source: ``search.engine.copies``).

Payload: only what may leave the file (``EcgHeader.public_fields``): age (over 89 as 90), sex,
acquisition year-month, vendor and device model, the machine's measurements, and statement codes as
``<VENDOR>:<code>`` with a diagnosis where the mapping is clear (``codes.vendor_statements``). The
patient pseudonym is keyed by the site secret on the header's patient key; a blank key, or a mask
made of one repeated character ('00000000', 'xxxxxx', '---', '9999'), is no key: the ECG then gets a
pseudonym of its own rather than one shared by every masked export.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, TypeGuard

from ecgsearch.ecg import signals
from ecgsearch.ecg.codes import vendor_statements
from ecgsearch.ecg.identity import Pseudonymizer, content_hash
from ecgsearch.ecg.readers import ReadEcg
from ecgsearch.ecg.schema import MEASUREMENTS, EcgPayload, Sex

ID_HASH_CHARS = 24  # 96 bits: a collision would still be caught by the content hash
_TIMESTAMP_LIKE = re.compile(r"\d{12,}")
_PLAIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_TEXT = 64


def raw_of(ecg: ReadEcg, record: str) -> signals.RawEcg:
    """The ECG as read, in the form ``signals.prepare`` and ``content_hash`` take (mV, file lead order)."""
    n = ecg.signal.shape[0]
    return signals.RawEcg(
        record=record,
        signal=ecg.signal,
        fs=float(ecg.sampling_rate_hz),
        leads=tuple(ecg.lead_names),
        units=("mV",) * n,
    )


def hash_of(ecg: ReadEcg) -> str:
    """The content hash of a file's ECG as read (see ``identity.content_hash``)."""
    return content_hash(
        ecg.signal, float(ecg.sampling_rate_hz), ecg.lead_names, ("mV",) * len(ecg.lead_names)
    )


def record_id_of(dataset: str, native_id: str | None, digest: str) -> str:
    """The file's record id (see the module doc)."""
    native = (native_id or "").strip()
    if native and _PLAIN_ID.match(native) and not _TIMESTAMP_LIKE.search(native):
        return f"{dataset}:{native}"
    if native:
        return f"{dataset}:uid-{hashlib.sha256(native.encode()).hexdigest()[:ID_HASH_CHARS]}"
    return f"{dataset}:sha256-{digest[:ID_HASH_CHARS]}"


def patient_key(raw_key: str | None) -> str | None:
    """The header's patient id, or None when blank or a mask of one repeated character."""
    key = (raw_key or "").strip()
    if not key or len(set(key.lower())) == 1:
        return None
    return key


def payload_of(
    ecg: ReadEcg, *, dataset: str, pseudonyms: Pseudonymizer, digest: str | None = None
) -> EcgPayload:
    """The stored payload of a file's ECG: id, pseudonym, header fields; nothing else of the file."""
    digest = digest or hash_of(ecg)
    record_id = record_id_of(dataset, ecg.native_id, digest)
    header = ecg.header
    diagnoses, source_codes = vendor_statements(ecg.format, header.statement_codes)
    age = header.age_years
    measured = {name: getattr(header.measurements, name) for name in MEASUREMENTS}
    measures: dict[str, Any] = {k: float(v) for k, v in measured.items() if v is not None}
    return EcgPayload(
        record_id=record_id,
        dataset=dataset,
        patient_id=pseudonyms.of(dataset, patient_key(header.patient_key), record_id),
        diagnoses=diagnoses,
        source_codes=source_codes,
        age=age,
        age_over_89=age is not None and age >= 90,
        sex=header.sex if _is_sex(header.sex) else None,
        sampling_rate_hz=float(ecg.sampling_rate_hz),
        duration_s=round(ecg.duration_s, 3),
        source_format=ecg.format,
        acquired_month=header.acquired_month,
        vendor=_short(header.vendor),
        device_model=_short(header.device_model),
        content_hash=digest,
        **measures,
    )


def _is_sex(value: object) -> TypeGuard[Sex]:
    return value in ("M", "F")


def _short(text: str | None) -> str | None:
    text = (text or "").strip()
    return text[:MAX_TEXT] or None
