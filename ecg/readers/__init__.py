"""Read the ECG files hospital systems export, choosing the reader by content, not by extension.

The formats, their content tests and their reader modules are one table, ``ecg.formats``.
``read_ecg(path_or_bytes, format_hint=None) -> ReadEcg``: GE MUSE XML, Philips Sierra/PhilipsECG XML
(1.03, 1.04, 1.04.01; UTF-8 or UTF-16), HL7 aECG, DICOM 12-lead / General ECG waveform, SCP-ECG and
EDF/EDF+. The result holds the leads as the file stores them in mV (``complete_leads`` gives the 12
in model order), the sampling rate, the format name, a non-personal ``native_id`` where the file has
one (DICOM SOPInstanceUID, aECG document id), and an ``EcgHeader`` of non-personal fields plus
``patient_key`` (the source's raw patient id, only for the caller to pseudonymise; hidden from repr).
Every failure is a ``ReaderError(ValueError)`` naming a field, never the file name or personal data.
Bounds (``ecg.bounds``, shared with preparation and the service): at most 50 MiB, 16 channels, 10
minutes of samples, 50-10000 Hz; Philips XLI at most 4 million samples (its LZW decoder is pure
Python, ~0.4 us a byte).

Libraries (versions pinned in pyproject.toml; measured on the 16 files in shared/data/hospital):
- defusedxml 0.7.1 (PSF, 128 kB): every XML parse; entity declarations (billion laughs, external
  entities) are refused before anything else sees the bytes.
- pydicom 3.0.2 (MIT, pure Python, 15 MB): DICOM; the multiplex group is scaled here so that the
  padding value is never turned into gaps (ECG Toolkit's file has 1,269 real zero samples).
- sierraecg 0.4.0 (MIT, 64 kB, needs only numpy + defusedxml): the Philips reference XLI decoder (LZW
  and delta decoding); ``philips_waves`` frames its blocks and bounds their size, the header fields
  are read here from the defusedxml tree.
- Own code, numpy + stdlib only, where the format is small or no library is both maintained and
  light: MUSE XML (base64 int16), HL7 aECG (SLIST_PQ digits), EDF/EDF+ (int16 records, ~170 lines)
  and SCP-ECG (sections 0-3, 6 and 7: default and custom Huffman tables, first/second differences;
  reference-beat subtraction, bimodal compression and v3 section 12 are refused by name).
Tests compare every reader with a reference library sample for sample: ecgdatakit 2.0.3 (MUSE, aECG,
SCP-ECG), sierraecg (Philips), edfio 0.4.18 (EDF), pydicom. ecgdatakit served the SCP-ECG, aECG,
Philips and EDF readers until its wheel proved 64 MB installed, almost all of it a denoiser weight
file (``deepfade_exp_1_ddp.pt``, 61 MiB) never loaded here: it is a dev-only test reference now, and
no serving module may import it (tests/test_layout.py).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from ecgsearch.ecg.bounds import MAX_FILE_BYTES as MAX_BYTES
from ecgsearch.ecg.formats import BY_NAME
from ecgsearch.ecg.formats import NAMES as FORMATS
from ecgsearch.ecg.readers.leads import complete_leads
from ecgsearch.ecg.readers.sniff import sniff
from ecgsearch.ecg.readers.types import (
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


def _reader(fmt: str) -> Callable[[bytes], ReadEcg]:
    """The format's reader (ecg.formats names its module), imported on first use: pydicom and
    sierraecg load only when a file of theirs arrives."""
    module = importlib.import_module(f"{__name__}.{BY_NAME[fmt].reader}")
    read: Callable[[bytes], ReadEcg] = module.read
    return read
