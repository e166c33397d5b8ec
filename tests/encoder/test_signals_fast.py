"""The numpy reading path in signals.read_wfdb gives exactly what wfdb.rdrecord gives, and is taken."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.encoder import signals


def _records(data_dir: Path) -> dict[str, list[Path]]:
    ptb100 = sorted(p.with_suffix("") for p in (data_dir / "ptb-xl" / "records100").glob("*/*.hea"))
    ptb500 = sorted(p.with_suffix("") for p in (data_dir / "ptb-xl" / "records500").glob("*/*.hea"))
    return {
        "ptb-xl/records100": ptb100[:: max(1, len(ptb100) // 150)][:150],
        "ptb-xl/records500": ptb500[:20] + ptb500[20 :: max(1, len(ptb500) // 20)],
        "cinc2021": sorted(p.with_suffix("") for p in (data_dir / "cinc2021").glob("*.hea")),
        "challenge": sorted(p.with_suffix("") for p in (data_dir / "challenge").rglob("*.hea")),
    }


def _assert_same(fast: signals.RawEcg, slow: signals.RawEcg) -> None:
    assert fast.record == slow.record
    assert fast.leads == slow.leads
    assert fast.units == slow.units
    assert fast.fs == slow.fs
    assert fast.comments == slow.comments
    assert fast.recorded_at == slow.recorded_at
    assert fast.signal.dtype == slow.signal.dtype == np.float64
    assert fast.signal.shape == slow.signal.shape
    np.testing.assert_array_equal(np.isnan(fast.signal), np.isnan(slow.signal))
    np.testing.assert_allclose(fast.signal, slow.signal, rtol=1e-12, atol=0, equal_nan=True)


def _no_fallback(path: Path, record: str) -> signals.RawEcg:
    raise AssertionError(f"{record} went through wfdb")


def test_every_real_record_reads_fast_and_matches_wfdb(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    groups = _records(data_dir)
    assert len(groups["ptb-xl/records100"]) == 150
    assert len(groups["ptb-xl/records500"]) >= 35
    assert len(groups["cinc2021"]) == 50
    assert len(groups["challenge"]) == 179
    fast_count = {}
    for group, paths in groups.items():
        fast_count[group] = 0
        for path in paths:
            slow = signals._read_with_wfdb(path, str(path))
            fast = signals._read_fast(path, str(path))
            assert fast is not None, f"{path} did not take the fast path"
            fast_count[group] += 1
            _assert_same(fast, slow)
    # read_wfdb itself never reaches wfdb for these records.
    monkeypatch.setattr(signals, "_read_with_wfdb", _no_fallback)
    for paths in groups.values():
        for path in paths[:10]:
            _assert_same(signals.read_wfdb(path), signals._read_fast(path, str(path)))
    assert fast_count == {group: len(paths) for group, paths in groups.items()}


def test_georgia_header_quirk_and_dates(data_dir: Path) -> None:
    georgia = data_dir / "challenge" / "georgia" / "E00001"
    assert georgia.with_suffix(".hea").read_text().split()[0] == "E00001.mat"
    raw = signals._read_fast(georgia, str(georgia))
    assert raw is not None and raw.signal.shape == (12, 5000) and raw.units == ("mV",) * 12
    assert raw.recorded_at is None  # '05-May-2020' is not a WFDB date; wfdb leaves it unset too


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
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_synthetic_fields_match_wfdb(tmp_path: Path, case: str) -> None:
    header, prefix = SYNTHETIC[case]
    digital = np.arange(-9, 9, dtype=np.int16).reshape(6, 3) * 1111
    digital[2, 1] = digital[4, 0] = -32768
    path = _write_record(tmp_path, "r", header, digital, prefix)
    fast = signals._read_fast(path, str(path))
    assert fast is not None
    _assert_same(fast, signals._read_with_wfdb(path, str(path)))
    assert np.isnan(fast.signal[1, 2]) and np.isnan(fast.signal[0, 4]) and np.isnan(fast.signal).sum() == 2


@pytest.mark.parametrize(
    "line",
    [
        "r.dat 212 200/mV 12 0 0 0 0 I",  # another format
        "r.dat 16x2 200/mV 12 0 0 0 0 I",  # two samples per frame
        "r.dat 16:1 200/mV 12 0 0 0 0 I",  # skew
    ],
)
def test_other_layouts_go_through_wfdb(tmp_path: Path, line: str) -> None:
    path = _write_record(tmp_path, "r", f"r 1 100 8\n{line}\n", np.zeros(16, dtype=np.int16))
    assert signals._read_fast(path, str(path)) is None


def test_multi_file_records_go_through_wfdb(tmp_path: Path) -> None:
    header = "r 2 100 4\nr.dat 16 200/mV 16 0 0 0 0 I\ns.dat 16 200/mV 16 0 0 0 0 II\n"
    path = _write_record(tmp_path, "r", header, np.arange(4))
    (tmp_path / "s.dat").write_bytes(np.arange(4, dtype="<i2").tobytes())
    assert signals._read_fast(path, str(path)) is None
    assert signals.read_wfdb(path).signal.shape == (2, 4)


@pytest.mark.parametrize("source", ["ptb-xl/records100/00000/00001_lr", "challenge/georgia/E00001"])
def test_truncated_file_is_unreadable(data_dir: Path, tmp_path: Path, source: str) -> None:
    src = data_dir / source
    data = next(p for p in src.parent.glob(src.name + ".*") if p.suffix != ".hea")
    shutil.copy(src.with_suffix(".hea"), tmp_path / f"{src.name}.hea")
    (tmp_path / data.name).write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    path = tmp_path / src.name
    assert signals._read_fast(path, str(path)) is None
    with pytest.raises(signals.UnreadableRecord) as err:
        signals.read_wfdb(path)
    assert err.value.record == str(path)
