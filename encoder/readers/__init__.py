"""Read the ECG files hospital systems export, choosing the reader by content, not by extension.

``read_ecg(path_or_bytes, format_hint=None) -> ReadEcg``: GE MUSE XML, Philips Sierra/PhilipsECG XML
(1.03, 1.04, 1.04.01; UTF-8 or UTF-16), HL7 aECG, DICOM 12-lead / General ECG waveform, SCP-ECG and
EDF/EDF+. The result holds the leads as the file stores them in mV (``complete_leads`` gives the 12
in model order), the sampling rate, the format name, a non-personal ``native_id`` where the file has
one (DICOM SOPInstanceUID, aECG document id), and an ``EcgHeader`` of non-personal fields plus
``patient_key`` (the source's raw patient id, only for the caller to pseudonymise; hidden from repr).
Every failure is a ``ReaderError(ValueError)`` naming a field, never the file name or personal data.
Bounds: at most 50 MB, 16 channels, 10 minutes of samples, 50-20000 Hz.

Libraries (versions pinned in pyproject.toml; measured on the 16 files in shared/data/hospital):
- defusedxml 0.7.1 (PSF): every XML parse; entity declarations (billion laughs, external entities)
  are refused before any other library sees the bytes.
- MUSE XML by hand (base64 + defusedxml, ~150 lines): no library adds anything; tests compare it
  sample for sample with ecgdatakit's MUSE parser.
- pydicom 3.0.2 (MIT, pure Python): DICOM; the multiplex group is scaled here so that the padding
  value is never turned into gaps (ecgdatakit's DICOM reader turns ECG Toolkit's real zeros, 1,269
  samples, into NaN).
- ecgdatakit 2.0.3 (Apache-2.0; needs only numpy, defusedxml, xmltodict): the one maintained Python
  decoder for SCP-ECG (Huffman, differences); also HL7 aECG, Philips XLI (equal to sierraecg 0.4.0,
  the reference decoder, on all four samples) and EDF (equal to edfio 0.4.18 and pyedflib 0.1.42 on
  the sample). Cost: its wheel carries a 64 MB denoiser weight file we never load (65 MB installed);
  one dependency for four formats outweighs that. sierraecg and edfio stay test-only references.
"""

from __future__ import annotations

import os
from pathlib import Path

from ecgsearch.encoder.readers.leads import complete_leads
from ecgsearch.encoder.readers.sniff import sniff
from ecgsearch.encoder.readers.types import (
    FORMATS,
    MAX_BYTES,
    EcgHeader,
    Measurements,
    ReadEcg,
    ReaderError,
)

__all__ = [
    "FORMATS",
    "EcgHeader",
    "Measurements",
    "ReadEcg",
    "ReaderError",
    "complete_leads",
    "read_ecg",
    "sniff",
]


def read_ecg(path_or_bytes: str | os.PathLike[str] | bytes, format_hint: str | None = None) -> ReadEcg:
    """Read one ECG file (a path or its bytes). The content decides the format; a ``format_hint``
    (one of FORMATS) must agree with it, so a mislabelled upload is refused rather than misread."""
    data = _load(path_or_bytes)
    if format_hint is not None and format_hint not in FORMATS:
        raise ReaderError("format_hint", f"unknown format; expected one of {', '.join(FORMATS)}")
    fmt = sniff(data)
    if format_hint is not None and format_hint != fmt:
        raise ReaderError("format_hint", f"content is {fmt}, not {format_hint}")
    return _reader(fmt)(data)


def _load(path_or_bytes: str | os.PathLike[str] | bytes) -> bytes:
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
    else:
        path = Path(path_or_bytes)
        try:
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise ReaderError("file", f"{size} bytes exceeds {MAX_BYTES} bytes")
            data = path.read_bytes()
        except OSError as exc:
            raise ReaderError("file", f"cannot read ({type(exc).__name__})") from None
    if len(data) > MAX_BYTES:
        raise ReaderError("file", f"{len(data)} bytes exceeds {MAX_BYTES} bytes")
    if not data:
        raise ReaderError("file", "empty")
    return data


def _reader(fmt: str):
    from ecgsearch.encoder.readers import aecg, dicom, edf, muse, philips, scp

    return {
        "muse-xml": muse.read,
        "philips-xml": philips.read,
        "hl7-aecg": aecg.read,
        "dicom": dicom.read,
        "scp-ecg": scp.read,
        "edf": edf.read,
    }[fmt]
