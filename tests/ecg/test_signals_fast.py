"""signals.read_wfdb (the numpy reader of ecg/wfdb_io.py) reads header fields exactly as wfdb does.

Hand-written headers exercise the defaults and quirks one by one; tests/ecg/test_wfdb_io.py
compares whole real records and wfdb-written formats, and covers hostile headers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from ecgsearch.ecg import signals


def _wfdb_reference(path: Path) -> signals.RawEcg:
    rec = wfdb.rdrecord(str(path))
    return signals.RawEcg(
        record=str(path),
        signal=rec.p_signal.T,
        fs=float(rec.fs),
        leads=tuple(rec.sig_name),
        units=tuple(rec.units),
        comments=tuple(rec.comments),
        recorded_at=rec.base_datetime,
    )


def _assert_same(ours: signals.RawEcg, ref: signals.RawEcg) -> None:
    assert ours.record == ref.record
    assert ours.leads == ref.leads
    assert ours.units == ref.units
    assert ours.fs == ref.fs
    assert ours.comments == ref.comments
    assert ours.recorded_at == ref.recorded_at
    assert ours.signal.dtype == ref.signal.dtype == np.float64
    assert ours.signal.shape == ref.signal.shape
    np.testing.assert_array_equal(np.isnan(ours.signal), np.isnan(ref.signal))
    np.testing.assert_array_equal(ours.signal, ref.signal)  # bit-equal, NaN where wfdb has NaN


def _write_record(tmp: Path, name: str, header: str, digital: np.ndarray, prefix: bytes = b"") -> Path:
    (tmp / f"{name}.hea").write_text(header)
    (tmp / f"{name}.dat").write_bytes(prefix + digital.astype("<i2").tobytes())
    return tmp / name


SYNTHETIC = {
    # gain 0 = 200, baseline from adc_zero, missing units, date and time, invalid samples
    "defaults": (
        "r 3 250 6 10:11:12 02/03/2004\n"
        "r.dat 16 0 12 5 0 0 0 I\n"
        "r.dat 16 100(-3)/uV 16 0 0 0 0 II\n"
        "r.dat 16 200/mV 12 0 0 0 0 V1\n",
        b"",
    ),
    "offset": (
        "r 3 500/1000(7) 6 12:00:00.25 31/12/1999\n"
        "r.dat 16x1+24 1000.0(0)/mV 16 0 1 0 0 I\n"
        "r.dat 16x1+24 1000.0(0)/mV 16 0 1 0 0 II\n"
        "r.dat 16x1+24 2.5e2(4)/mV 16 0 1 0 0 aVR\n"
        "# Age: 40\n#Dx: \n",
        b"\x01" * 24,
    ),
    # no sampling rate (250), no length (from the file size), a line without gain (200), a name with a space
    "inferred": (
        "r 3\nr.dat 16 200 12 0 0 0 0 I\nr.dat 16 0 16 0 0 0 0 II\nr.dat 16 200 12 0 0 0 0 V1 lead\n# a\n",
        b"",
    ),
    # a time without a date: no recorded_at
    "time only": (
        "r 3 360 6 9:05\nr.dat 16 200 12 0 0 0 0 I\nr.dat 16 200 12 0 0 0 0 II\nr.dat 16 1 12 0 0 0 0 V\n",
        b"",
    ),
    # a rate within 1e-8 of an integer is that integer; tabs, CRLF line ends, a comment before the record
    "rate and layout": (
        "# first\r\nr\t3\t500.000000001\t6\r\nr.dat\t16\t200/mV\t16\t0\t0\t0\t0\tI\r\n"
        "r.dat 16 200/mV 16 0 0 0 0 II\r\nr.dat 16 200/mV 16 0 0 0 0 III\r\n",
        b"",
    ),
    # the record named with '.mat' appended (Challenge headers): wfdb refuses it, the reference reads a fix
    "mat name": (
        "r.mat 3 500 6\nr.dat 16+24 200/mV 16 0 0 0 0 I\nr.dat 16+24 200/mV 16 0 0 0 0 II\n"
        "r.dat 16+24 200/mV 16 0 0 0 0 III\n",
        b"\x02" * 24,
    ),
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_synthetic_fields_match_wfdb(tmp_path: Path, case: str) -> None:
    header, prefix = SYNTHETIC[case]
    digital = np.arange(-9, 9, dtype=np.int16).reshape(6, 3) * 1111
    digital[2, 1] = digital[4, 0] = -32768
    path = _write_record(tmp_path, "r", header, digital, prefix)
    ours = signals.read_wfdb(path)
    if case == "mat name":
        (tmp_path / "r.hea").write_text(header.replace("r.mat", "r", 1))
    _assert_same(ours, _wfdb_reference(path))
    assert np.isnan(ours.signal[1, 2]) and np.isnan(ours.signal[0, 4]) and np.isnan(ours.signal).sum() == 2


def test_path_with_extension_and_dotted_name(tmp_path: Path) -> None:
    """'a.b' is a record name, not 'a' with an extension; '.hea' on the path is dropped."""
    digital = np.arange(8, dtype=np.int16)
    path = _write_record(tmp_path, "a.b", "ab 1 100 8\nab.dat 16 200/mV 12 0 0 0 0 I\n", digital)
    (tmp_path / "ab.dat").write_bytes(digital.tobytes())
    raw = signals.read_wfdb(path)
    assert raw.signal.shape == (1, 8) and raw.record == str(path)
    assert signals.read_wfdb(str(path) + ".hea").signal.shape == (1, 8)


def test_signal_without_name_or_gain(tmp_path: Path) -> None:
    """The shortest signal line: gain 200, baseline 0, mV; wfdb names the signal None, we name it ''."""
    path = _write_record(tmp_path, "r", "r 1 100 8\nr.dat 16\n", np.arange(8))
    raw = signals.read_wfdb(path)
    assert raw.leads == ("",) and raw.units == ("mV",)
    ref = wfdb.rdrecord(str(path))
    assert ref.sig_name == [None]
    np.testing.assert_array_equal(raw.signal, ref.p_signal.T)
    np.testing.assert_array_equal(raw.signal[0], np.arange(8) / 200)


@pytest.mark.parametrize(
    ("line", "feature"),
    [
        ("r.dat 16x2 200/mV 12 0 0 0 0 I", "2 samples per frame are not supported"),
        ("r.dat 16:1 200/mV 12 0 0 0 0 I", "skew 1 is not supported"),
        ("~ 16 200/mV 12 0 0 0 0 I", "null signal"),
    ],
)
def test_unsupported_layouts_are_refused(tmp_path: Path, line: str, feature: str) -> None:
    path = _write_record(tmp_path, "r", f"r 1 100 8\n{line}\n", np.zeros(16, dtype=np.int16))
    with pytest.raises(signals.UnreadableRecord, match=feature) as err:
        signals.read_wfdb(path)
    assert err.value.record == str(path)


def test_format_212_and_several_files_are_read(tmp_path: Path) -> None:
    """Layouts the old numpy path left to wfdb: now read here, the same as wfdb."""
    path = _write_record(tmp_path, "r", "r 1 100 8\nr.dat 212 200/mV 12 0 0 0 0 I\n", np.arange(8))
    _assert_same(signals.read_wfdb(path), _wfdb_reference(path))
    header = "r 2 100 4\nr.dat 16 200/mV 16 0 0 0 0 I\ns.dat 16 200/mV 16 0 0 0 0 II\n"
    path = _write_record(tmp_path, "r", header, np.arange(4))
    (tmp_path / "s.dat").write_bytes(np.arange(4, dtype="<i2").tobytes())
    assert signals.read_wfdb(path).signal.shape == (2, 4)
    _assert_same(signals.read_wfdb(path), _wfdb_reference(path))
