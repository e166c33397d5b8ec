"""Hostile and unusual input for the SCP-ECG, Philips XLI and EDF readers: every damaged structure ends
quickly in a ReaderError naming a field (never a crash, a hang or the file's personal data), and
SCP-ECG features the reader does not implement are refused by name.

SCP-ECG records are rebuilt here from section bodies (``_record``), so a test can change one field of
the real sample, or write a record with custom Huffman tables, and still have a consistent structure.
"""

from __future__ import annotations

import base64
import binascii
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from cpu_cost import cheapest, cpu

from ecgsearch.ecg.readers import ReaderError, read_ecg

SCP = "scp_ecgtoolkit_Example.scp"
PERSONAL = ("Clark", "SBJ-123")
READS = 3  # a damaged file costs at most this many readings of the slowest real sample file
slowest_real_read: list[float] = []  # CPU seconds, measured once per run (``_slowest_real_read``)


@pytest.fixture(scope="module", autouse=True)
def _slowest_real_read(data_dir: Path) -> None:
    """The reference of every bound below: the CPU cost of reading the slowest of the real sample files."""
    costs = []
    for path in sorted(p for p in (data_dir / "hospital").iterdir() if p.is_file()):
        data = path.read_bytes()
        try:
            read_ecg(data)
        except ReaderError:
            continue  # SOURCES.tsv, LICENSES
        costs.append(cheapest(lambda data=data: read_ecg(data)))
    assert len(costs) >= 10
    slowest_real_read[:] = [max(costs)]


def _within_bound(seconds: float, what: str) -> None:
    assert seconds <= READS * slowest_real_read[0], (
        f"{what} cost {seconds:.3f} CPU s, over {READS} readings of the slowest real file "
        f"({slowest_real_read[0]:.3f} s each)"
    )


@pytest.fixture(scope="module")
def scp_bytes(data_dir: Path) -> bytes:
    return (data_dir / "hospital" / SCP).read_bytes()


@pytest.fixture(scope="module")
def scp_sections(scp_bytes: bytes) -> dict[int, bytes]:
    return _bodies(scp_bytes)


def _u16(x: int) -> bytes:
    return x.to_bytes(2, "little")


def _u32(x: int) -> bytes:
    return x.to_bytes(4, "little")


def _bodies(data: bytes) -> dict[int, bytes]:
    """Section bodies by id, read with the bare minimum (the sample is well-formed)."""
    out = {}
    end = 6 + int.from_bytes(data[10:14], "little")
    for pos in range(22, end, 10):
        sid = int.from_bytes(data[pos : pos + 2], "little")
        length = int.from_bytes(data[pos + 2 : pos + 6], "little")
        start = int.from_bytes(data[pos + 6 : pos + 10], "little") - 1
        if sid and length:
            out[sid] = data[start + 16 : start + length]
    return out


def _section(sid: int, body: bytes, reserved: bytes = b"\x00" * 6) -> bytes:
    rest = _u16(sid) + _u32(16 + len(body)) + bytes([20, 20]) + reserved + body
    return _u16(binascii.crc_hqx(rest, 0xFFFF)) + rest


def _record(bodies: dict[int, bytes]) -> bytes:
    """A consistent SCP-ECG record (CRCs included) from section bodies 1-11."""
    pointers, blobs, index = [], [], 6 + 16 + 10 * 12 + 1
    for sid in range(1, 12):
        if sid in bodies:
            blob = _section(sid, bodies[sid])
            pointers.append(_u16(sid) + _u32(len(blob)) + _u32(index))
            blobs.append(blob)
            index += len(blob)
        else:
            pointers.append(_u16(sid) + _u32(0) + _u32(0))
    section0 = _section(0, _u16(0) + _u32(16 + 10 * 12) + _u32(7) + b"".join(pointers), b"SCPECG")
    rest = _u32(6 + len(section0) + sum(map(len, blobs))) + section0 + b"".join(blobs)
    return _u16(binascii.crc_hqx(rest, 0xFFFF)) + rest


def _refused(data: bytes, field: str | None = None, match: str | None = None) -> ReaderError:
    """ReaderError at the cost of a few real readings (``READS``), naming ``field``, carrying nothing
    personal and no chained cause."""
    with cpu() as spent, pytest.raises(ReaderError) as err:
        read_ecg(data)
    _within_bound(spent.seconds, f"refusing ({err.value})")
    if field is not None:
        assert err.value.field == field, str(err.value)
    if match is not None:
        assert re.search(match, err.value.reason), str(err.value)
    assert not any(p in str(err.value) for p in PERSONAL)
    assert err.value.__cause__ is None
    return err.value


# --- SCP-ECG -----------------------------------------------------------------------------------


def test_the_rebuilt_sample_reads_like_the_file(scp_bytes, scp_sections):
    rebuilt = read_ecg(_record(scp_sections))
    np.testing.assert_array_equal(rebuilt.signal, read_ecg(scp_bytes).signal)


def test_truncated_records_and_sections(scp_bytes, scp_sections):
    _refused(scp_bytes[:100], "record size")
    _refused(scp_bytes[:30], "record size")
    cut = bytearray(scp_bytes[:20_000])
    cut[2:6] = _u32(len(cut))  # a consistent size, but sections 6 and 7 now lie past the end
    _refused(bytes(cut), "section 6", "past the end")
    for sid in (1, 3, 6, 7):
        short = dict(scp_sections)
        short[sid] = scp_sections[sid][: len(scp_sections[sid]) // 3]
        _refused(_record(short))


def test_a_section_length_or_position_past_the_end(scp_bytes):
    pointer = scp_bytes.index(_u16(6) + _u32(30084))  # section 6's entry in section 0
    for patch, at in ((_u32(10**9), pointer + 2), (_u32(2**32 - 1), pointer + 6), (_u32(0), pointer + 6)):
        data = bytearray(scp_bytes)
        data[at : at + 4] = patch
        _refused(bytes(data), "section 6", "past the end")
    data = bytearray(scp_bytes)
    data[pointer + 6 : pointer + 10] = _u32(int.from_bytes(scp_bytes[pointer - 4 : pointer], "little"))
    _refused(bytes(data), "section 6", "another section")  # points at section 5's header


def test_huffman_tables_with_absurd_counts(scp_sections):
    code = bytes([1, 1, 1]) + _u16(0) + _u32(0)  # '0' is the value 0
    for section2 in (
        b"",
        _u16(0),  # no table
        _u16(60_000),  # more tables than any writer uses
        _u16(1),  # one table, then nothing
        _u16(1) + _u16(65_535) + code,  # 65,535 codes declared, one stored
        _u16(1) + _u16(0),  # a table without codes
        _u16(2) + _u16(1) + code + _u16(40_000) + code * 3,
        _u16(1) + _u16(1) + bytes([0, 0, 1]) + _u16(0) + _u32(0),  # a 0-bit code
        _u16(1) + _u16(1) + bytes([40, 40, 1]) + _u16(0) + _u32(0),  # a 40-bit prefix
        _u16(1) + _u16(1) + bytes([1, 200, 1]) + _u16(0) + _u32(0),  # 199 value bits
    ):
        _refused(_record(scp_sections | {2: section2}), "section 2")


def test_huffman_streams_that_do_not_decode(scp_sections):
    incomplete = _u16(1) + _u16(1) + bytes([2, 2, 1]) + _u16(5) + _u32(0b11)  # only '11' is a code
    _refused(_record(scp_sections | {2: incomplete}), "section 6", "starts no Huffman code")
    switch = _u16(1) + _u16(2) + bytes([1, 1, 0]) + _u16(7) + _u32(0)  # '0' switches to table 7
    switch += bytes([1, 1, 1]) + _u16(0) + _u32(1)  # '1' is the value 0
    _refused(_record(scp_sections | {2: switch}), "section 6", "switch to Huffman table 7")
    six = bytearray(scp_sections[6])
    six[6:8] = _u16(3)  # lead 1 keeps 3 bytes of its data: 5000 samples cannot fit
    _refused(_record(scp_sections | {6: bytes(six)}), "section 6", "cannot fit")


@pytest.mark.parametrize(("count", "field"), [(0, "channels"), (17, "channels"), (255, "channels")])
def test_lead_counts_out_of_range(scp_sections, count, field):
    """Section 3 holds the lead count in one byte: 255 is the largest a file can claim."""
    three = bytearray(scp_sections[3])
    three[0] = count
    _refused(_record(scp_sections | {3: bytes(three)}), field)


def test_lead_ranges_and_rhythm_header(scp_sections):
    three = bytearray(scp_sections[3])
    for lead in range(12):
        three[2 + 9 * lead + 4 : 2 + 9 * lead + 8] = _u32(4_000_000_000)  # every lead ends at sample 4e9
    _refused(_record(scp_sections | {3: bytes(three)}), "duration")
    three = bytearray(scp_sections[3])
    three[2:6] = _u32(0)  # sample numbers start at 1
    _refused(_record(scp_sections | {3: bytes(three)}), "section 3")
    three = bytearray(scp_sections[3])
    three[2 + 9 : 2 + 9 + 8] = _u32(5001) + _u32(10_000)  # lead 2 recorded after lead 1
    _refused(_record(scp_sections | {3: bytes(three)}), "section 3", "in sequence")
    for at, value, field in ((0, 0, "section 6"), (2, 0, "section 6"), (2, 1, "sampling_rate")):
        six = bytearray(scp_sections[6])
        six[at : at + 2] = _u16(value)  # amplitude multiplier 0, interval 0, interval 1 us (1 MHz)
        _refused(_record(scp_sections | {6: bytes(six)}), field)
    six = bytearray(scp_sections[6])
    six[4] = 3
    _refused(_record(scp_sections | {6: bytes(six)}), "section 6", "difference encoding 3")


def test_unsupported_features_are_refused_by_name(scp_sections):
    three = bytearray(scp_sections[3])
    three[1] |= 0x01
    _refused(_record(scp_sections | {3: bytes(three)}), "section 3", "reference beat subtraction")
    six = bytearray(scp_sections[6])
    six[5] = 1
    _refused(_record(scp_sections | {6: bytes(six)}), "section 6", "bimodal compression")
    without_six = {k: v for k, v in scp_sections.items() if k != 6}
    _refused(_record(without_six), "section 6", "missing")


def test_section1_with_overrunning_tags(scp_sections):
    one = bytearray(scp_sections[1])
    one[1:3] = _u16(60_000)  # the first tag (the name) claims 60,000 bytes
    _refused(_record(scp_sections | {1: bytes(one)}), "section 1")


def _huffman_bits(values: list[int]) -> bytes:
    """Encode with the custom tables of ``test_custom_huffman_tables_decode_like_ecgdatakit``."""
    bits = ""
    in_second = False
    for v in values:
        if -128 <= v < 128 and v not in (0, 1, -1):
            bits += ("" if in_second else "1111") + "0" + format(v & 0xFF, "08b")
            in_second = True
            continue
        if in_second:
            bits += "1"  # back to table 1
            in_second = False
        bits += {0: "0", 1: "10", -1: "110"}.get(v) or "1110" + format(v & 0xFFFF, "016b")
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def _code(prefix: str, total: int, mode: int, value: int) -> bytes:
    """A section 2 code structure; the prefix is stored first bit in bit 0."""
    return (
        bytes([len(prefix), total, mode])
        + value.to_bytes(2, "little", signed=True)
        + _u32(int(prefix[::-1], 2))
    )


def test_custom_huffman_tables_decode_like_ecgdatakit(tmp_path):
    """Two custom tables with a table switch, 16-bit and 8-bit value codes, first differences."""
    from ecgdatakit.parsing.parsers.scp_ecg import SCPECGParser

    rng = np.random.default_rng(7)
    n = 700
    amplitudes = np.cumsum(rng.integers(-300, 300, size=(2, n)), axis=1)
    diffs = np.concatenate([amplitudes[:, :1], np.diff(amplitudes, axis=1)], axis=1)
    diffs[:, 50:80] = rng.integers(-1, 2, size=(2, 30))  # small steps use table 1's short codes
    amplitudes = np.cumsum(diffs, axis=1)
    assert np.abs(amplitudes).max() < 2**15  # no 16-bit wrap-around in this test
    table1 = [_code("0", 1, 1, 0), _code("10", 2, 1, 1), _code("110", 3, 1, -1)]
    table1 += [_code("1110", 20, 1, 0), _code("1111", 4, 0, 2)]
    table2 = [_code("0", 9, 1, 0), _code("1", 1, 0, 1)]
    section2 = _u16(2) + _u16(len(table1)) + b"".join(table1) + _u16(len(table2)) + b"".join(table2)
    section3 = bytes([2, 0x04]) + (_u32(1) + _u32(n) + bytes([1])) + (_u32(1) + _u32(n) + bytes([2]))
    streams = [_huffman_bits([int(v) for v in lead]) for lead in diffs]
    section6 = _u16(5000) + _u16(2000) + bytes([1, 0]) + b"".join(_u16(len(s)) for s in streams)
    record = _record({2: section2, 3: section3, 6: section6 + b"".join(streams)})
    ecg = read_ecg(record)
    assert ecg.lead_names == ("I", "II") and ecg.sampling_rate_hz == 500.0
    np.testing.assert_allclose(ecg.signal, amplitudes * 0.005, atol=1e-6)  # 5000 nV per unit
    path = tmp_path / "custom.scp"
    path.write_bytes(record)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = SCPECGParser().parse(path).to_physical().convert_units("mV")
    np.testing.assert_array_equal(
        ecg.signal, np.stack([lead.samples for lead in ref.leads]).astype(np.float32)
    )


def test_random_damage_reads_or_is_refused_quickly(scp_bytes):
    """Bytes flipped anywhere in the record: either a reading or a ReaderError, each at the cost of a few
    real readings."""
    rng = random.Random(1064)
    slowest = 0.0
    for _ in range(40):
        data = bytearray(scp_bytes)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data)) if rng.random() < 0.5 else rng.randrange(700)  # headers often
            data[at] = rng.randrange(256)
        with cpu() as spent:
            try:
                read_ecg(bytes(data))
            except ReaderError as err:
                assert not any(p in str(err) for p in PERSONAL)
        slowest = max(slowest, spent.seconds)
    _within_bound(slowest, "the slowest damaged record")


# --- Philips XLI -------------------------------------------------------------------------------------


def _philips(data_dir: Path) -> str:
    return (data_dir / "hospital" / "philips_v1.04_ad4d3d80-d165.xml").read_bytes().decode("utf-16")


def _with_waveform(text: str, raw: bytes) -> bytes:
    start = text.index(">", text.index("<parsedwaveforms")) + 1
    end = text.index("</parsedwaveforms>")
    return (text[:start] + base64.b64encode(raw).decode() + text[end:]).encode("utf-16")


def _xli(text: str) -> bytes:
    start = text.index(">", text.index("<parsedwaveforms")) + 1
    return base64.b64decode("".join(text[start : text.index("</parsedwaveforms>")].split()))


def test_xli_blocks_that_point_backwards_or_past_the_end(data_dir):
    text = _philips(data_dir)
    raw = _xli(text)
    for size in (-8, -1, len(raw)):
        _refused(_with_waveform(text, _u32(size % 2**32) + raw[4:]), "parsedwaveforms", "past the data")
    _refused(_with_waveform(text, raw[:4000]), "parsedwaveforms")
    garbage = _u32(64) + raw[4:8] + bytes(range(64))  # one block of bytes that are not LZW of deltas
    _refused(_with_waveform(text, garbage * 12), "parsedwaveforms")


def test_xli_blocks_cannot_expand_past_the_declared_duration(data_dir):
    text = _philips(data_dir)
    short = text.replace('durationperchannel="11000"', 'durationperchannel="1000"', 1)
    _refused(short.encode("utf-16"), "parsedwaveforms", "past the declared duration")
    huge = text.replace('samplespersecond="500"', 'samplespersecond="1000"', 1)
    huge = huge.replace('durationperchannel="11000"', 'durationperchannel="599000"', 1)
    _refused(huge.encode("utf-16"), "parsedwaveforms", "at most 4000000")


# --- EDF ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def edf_bytes(data_dir: Path) -> bytes:
    return (data_dir / "hospital" / "edf_contec_0000050.edf").read_bytes()


def _edf_patch(data: bytes, at: int, value: bytes) -> bytes:
    out = bytearray(data)
    out[at : at + len(value)] = value
    return bytes(out)


def test_edf_header_numbers_must_be_numbers(edf_bytes):
    _refused(_edf_patch(edf_bytes, 236, b"lots    "), "number of data records")
    _refused(_edf_patch(edf_bytes, 252, b"99  "), "channels")
    _refused(_edf_patch(edf_bytes, 252, b"0   "), "channels")
    _refused(_edf_patch(edf_bytes, 184, b"256     "), "header length")
    _refused(_edf_patch(edf_bytes, 244, b"0       "), "data record duration")
    _refused(_edf_patch(edf_bytes, 244, b"nan     "), "data record duration")
    spr = 256 + 12 * (16 + 80 + 8 * 5 + 80)  # the samples-per-record fields
    _refused(_edf_patch(edf_bytes, spr, b"2       "), "samples per record", "different rates")
    _refused(_edf_patch(edf_bytes, spr, b"-1      "), "samples per record")
    dim = 256 + 12 * (16 + 80)
    _refused(_edf_patch(edf_bytes, dim, b"degC    "), "dimension")
    pmax = 256 + 12 * (16 + 80 + 8 + 8)
    _refused(_edf_patch(edf_bytes, pmax, b"-1000.00"), "physical range")


def test_edf_with_an_open_record_count_reads_the_complete_records(edf_bytes):
    """-1 data records: a recorder that was not closed; the complete records are read, a partial
    last record is left out."""
    whole = read_ecg(edf_bytes)
    open_ended = _edf_patch(edf_bytes, 236, b"-1      ")[: len(edf_bytes) - 30]
    ecg = read_ecg(open_ended)
    assert ecg.signal.shape == (12, 37855 - 2)
    np.testing.assert_array_equal(ecg.signal, whole.signal[:, :-2])
