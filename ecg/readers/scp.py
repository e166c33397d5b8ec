"""SCP-ECG (EN 1064 / ISO 11073-91064) decoded here: record structure, section 3 lead definitions and
section 6 rhythm data (Huffman codes from section 2, first or second differences); the header comes
from sections 1 and 7 (``scp_header``), the Huffman decoding from ``scp_huffman``.

A record is a CRC and a 32-bit size, then sections, each with a 16-byte header (CRC, id, length,
versions); section 0 lists where the others are. All integers are little-endian. The CRCs are not
enforced (writers get them wrong; the structure is checked instead). Not supported, refused by name:
reference-beat subtraction (rhythm stored as residuals after subtracting the section 5 beat at the
section 4 QRS positions), bimodal compression (decimated rhythm), long-term data in section 12 (v3),
and leads recorded in sequence rather than simultaneously. Tests compare the samples with ecgdatakit
2.0.3's decoder and feed hostile structures that must end in a ReaderError.
"""

from __future__ import annotations

import numpy as np

from ecgsearch.ecg.readers import scp_header, scp_huffman
from ecgsearch.ecg.readers.types import (
    MAX_RATE_HZ,
    MIN_RATE_HZ,
    ReadEcg,
    ReaderError,
    check_channels,
    check_duration,
    make_read_ecg,
)
from ecgsearch.ecg.readers.units import sampling_rate, to_mv

_SECTION_HEADER = 16
_MAX_POINTERS = 1000
_USED = {1, 2, 3, 6, 7, 12}  # 12 only to name it when refused; 4, 5, 8-11 are not read
# Section 3 lead codes (EN 1064 table): 1-30, their calibration twins 31-60, then 61-78 and the
# calibration twins of V8-J at 79-85. Other codes are named by number.
_CODES_1 = "I II V1 V2 V3 V4 V5 V6 V7 V2R V3R V4R V5R V6R V7R X Y Z CC5 CM5 LA RA LL fI fE fC fA fM fF fH"
_CODES_61 = "III aVR aVL aVF -aVR V8 V9 V8R V9R D A J Defib ExtPace A1 A2 A3 A4"
_NAMES = (
    {1 + k: name for k, name in enumerate(_CODES_1.split())}
    | {31 + k: f"{name}-cal" for k, name in enumerate(_CODES_1.split())}
    | {61 + k: name for k, name in enumerate(_CODES_61.split())}
    | {79 + k: f"{name}-cal" for k, name in enumerate(_CODES_61.split()[5:12])}
)


def read(data: bytes) -> ReadEcg:
    sections, protocol = _sections(data)
    if 6 not in sections:
        if 12 in sections:
            raise ReaderError("section 12", "long-term rhythm data (SCP-ECG v3) is not supported")
        raise ReaderError("section 6", "missing: no rhythm data")
    if 3 not in sections:
        raise ReaderError("section 3", "missing: no lead definitions")
    codes, n, flags = _leads(sections[3])
    if flags & 0x01:
        raise ReaderError("section 3", "reference beat subtraction (sections 4 and 5) is not supported")
    tables = scp_huffman.tables(sections[2]) if 2 in sections else None
    avm_nv, rate, counts = _rhythm(sections[6], len(codes), n, tables, protocol)
    signal = to_mv(counts, avm_nv / 1000.0, 0.0, "uV", "section 6")
    names = [_NAMES.get(code, f"lead code {code}") for code in codes]
    return make_read_ecg(signal, names, rate, "scp-ecg", scp_header.header(sections.get(1), sections.get(7)))


def _sections(data: bytes) -> tuple[dict[int, bytes], int]:
    """Bodies of the sections read here by id, and the protocol version (20 = 2.0) from section 0's
    header. Pointers to sections not read (4, 5, 8-11, manufacturer sections) are not checked."""
    if len(data) < 6 + _SECTION_HEADER:
        raise ReaderError("record", "too short for an SCP-ECG record")
    size = int.from_bytes(data[2:6], "little")
    if size > len(data):
        raise ReaderError("record size", "larger than the file (truncated)")
    if size < 6 + _SECTION_HEADER:
        raise ReaderError("record size", "too small")
    data = data[:size]
    section0 = int.from_bytes(data[10:14], "little")
    if int.from_bytes(data[8:10], "little") != 0 or not _SECTION_HEADER <= section0 <= size - 6:
        raise ReaderError("section 0", "missing at byte 7, or its length points past the end")
    if (section0 - _SECTION_HEADER) // 10 > _MAX_POINTERS:
        raise ReaderError("section 0", f"more than {_MAX_POINTERS} section pointers")
    bodies: dict[int, bytes] = {}
    for pos in range(6 + _SECTION_HEADER, 6 + section0 - 9, 10):
        sid = int.from_bytes(data[pos : pos + 2], "little")
        length = int.from_bytes(data[pos + 2 : pos + 6], "little")
        start = int.from_bytes(data[pos + 6 : pos + 10], "little") - 1  # stored 1-based
        if sid not in _USED or length == 0:
            continue
        if sid in bodies:
            raise ReaderError("section 0", f"section {sid} listed twice")
        if start < 0 or length < _SECTION_HEADER or start + length > size:
            raise ReaderError(f"section {sid}", "its length or position points past the end of the record")
        if int.from_bytes(data[start + 2 : start + 4], "little") != sid:
            raise ReaderError(f"section {sid}", "section 0 points to another section's header")
        declared = int.from_bytes(data[start + 4 : start + 8], "little")
        length = max(_SECTION_HEADER, min(length, declared))  # the shorter when they disagree
        bodies[sid] = data[start + _SECTION_HEADER : start + length]
    return bodies, data[15]


def _leads(body: bytes) -> tuple[list[int], int, int]:
    """Section 3: lead codes, samples per lead and the flags byte (bit 0: reference beat subtracted)."""
    if len(body) < 2:
        raise ReaderError("section 3", "too short")
    n_leads, flags = body[0], body[1]
    check_channels(n_leads)
    if 2 + 9 * n_leads > len(body):
        raise ReaderError("section 3", f"{n_leads} leads declared, the section holds {(len(body) - 2) // 9}")
    ranges, codes = set(), []
    for i in range(n_leads):
        pos = 2 + 9 * i
        first = int.from_bytes(body[pos : pos + 4], "little")
        last = int.from_bytes(body[pos + 4 : pos + 8], "little")
        if first < 1 or last < first:
            raise ReaderError("section 3", f"lead {i + 1} has an empty or invalid sample range")
        ranges.add((first, last))
        codes.append(body[pos + 8])
    if len(ranges) != 1:
        raise ReaderError("section 3", "leads recorded in sequence, not simultaneously, are not supported")
    first, last = ranges.pop()
    return codes, last - first + 1, flags


def _rhythm(
    body: bytes, n_leads: int, n: int, tables: list[scp_huffman.Table] | None, protocol: int
) -> tuple[int, float, np.ndarray]:
    """Section 6: amplitude multiplier (nV), sampling rate and the (leads, samples) integer values."""
    if len(body) < 6 + 2 * n_leads:
        raise ReaderError("section 6", "too short for its lead table")
    avm, interval_us = int.from_bytes(body[0:2], "little"), int.from_bytes(body[2:4], "little")
    mode, bimodal = body[4], body[5]
    if avm == 0 or interval_us == 0:
        raise ReaderError("section 6", "amplitude multiplier or sample interval is 0")
    rate = sampling_rate(1_000_000 / interval_us)
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise ReaderError("sampling_rate", f"{rate:g} Hz is outside {MIN_RATE_HZ:g}-{MAX_RATE_HZ:g} Hz")
    check_duration(n, rate)
    if mode not in (0, 1, 2):
        raise ReaderError("section 6", f"unknown difference encoding {mode}")
    if bimodal and protocol < 30:  # the byte is reserved from version 3.0
        raise ReaderError("section 6", "bimodal compression (decimated rhythm data) is not supported")
    sizes = [int.from_bytes(body[6 + 2 * i : 8 + 2 * i], "little") for i in range(n_leads)]
    pos = 6 + 2 * n_leads
    if pos + sum(sizes) > len(body):
        raise ReaderError("section 6", "lead data lengths point past the end of the section")
    rows = []
    for i, size in enumerate(sizes):
        chunk = body[pos : pos + size]
        pos += size
        if tables is not None:
            values = scp_huffman.decode(chunk, n, tables, i + 1)
        elif size < 2 * n:
            raise ReaderError("section 6", f"lead {i + 1} holds {size // 2} samples, {n} expected")
        else:
            values = np.frombuffer(chunk, dtype="<i2", count=n).astype(np.int64)
        rows.append(scp_huffman.undo_differences(values, mode))
    return avm, rate, np.stack(rows)
