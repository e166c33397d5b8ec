"""Our WFDB reader (ecg/wfdb_io.py) gives exactly what wfdb.rdrecord gives, and refuses the rest cleanly.

wfdb is the reference here (a dev dependency); the reader itself must never import it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import wfdb
from cpu_cost import cheapest, cpu

from ecgsearch.ecg import signals, wfdb_io
from ecgsearch.ecg.signals import RawEcg, UnreadableRecord

FOLDERS = ("ptb-xl/records100", "ptb-xl/records500", "cinc2021", "challenge")
EXPECTED_COUNTS = {"ptb-xl/records100": 1987, "ptb-xl/records500": 488, "cinc2021": 50, "challenge": 179}


def _shared_records(data_dir: Path) -> dict[str, list[Path]]:
    return {
        folder: sorted(p.with_suffix("") for p in (data_dir / folder).rglob("*.hea")) for folder in FOLDERS
    }


def _rdrecord_with_header_fix(path: Path) -> wfdb.Record:
    """wfdb.rdrecord, with the '.mat'-suffixed record name of Challenge headers fixed in a scratch copy."""
    try:
        return wfdb.rdrecord(str(path))
    except wfdb.io.header.HeaderSyntaxError:
        pass
    text = path.with_suffix(".hea").read_text(errors="replace").splitlines()
    first = text[0].split()
    first[0] = first[0].removesuffix(".mat")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / first[0]
        scratch.with_suffix(".hea").write_text("\n".join([" ".join(first), *text[1:]]) + "\n")
        for line in text[1:]:
            if line.strip() and not line.startswith("#"):
                name = line.split()[0]
                target = Path(tmp) / name
                if not target.exists() and (path.parent / name).exists():
                    target.symlink_to((path.parent / name).resolve())
        return wfdb.rdrecord(str(scratch))


def _assert_same_as_wfdb(ours: RawEcg, path: Path) -> str:
    """Compare with wfdb field by field; returns 'bit-equal' or 'close' (max abs diff <= 1e-12)."""
    ref = _rdrecord_with_header_fix(path)
    expected = ref.p_signal.T
    assert ours.fs == float(ref.fs), path
    assert ours.leads == tuple(ref.sig_name), path
    assert ours.units == tuple(ref.units), path
    assert ours.comments == tuple(ref.comments), path
    assert ours.recorded_at == ref.base_datetime, path
    assert ours.signal.dtype == np.float64 and ours.signal.shape == expected.shape, path
    np.testing.assert_array_equal(np.isnan(ours.signal), np.isnan(expected), err_msg=str(path))
    if np.array_equal(ours.signal, expected, equal_nan=True):
        return "bit-equal"
    finite = ~np.isnan(expected)
    assert np.max(np.abs(ours.signal[finite] - expected[finite])) <= 1e-12, path
    return "close"


def test_read_wfdb_is_reexported_by_signals() -> None:
    assert signals.read_wfdb is wfdb_io.read_wfdb


@pytest.mark.slow
def test_every_shared_record_equals_wfdb(data_dir: Path) -> None:
    groups = _shared_records(data_dir)
    assert {folder: len(paths) for folder, paths in groups.items()} == EXPECTED_COUNTS
    outcome = {"bit-equal": 0, "close": 0}
    for paths in groups.values():
        for path in paths:
            outcome[_assert_same_as_wfdb(signals.read_wfdb(path), path)] += 1
    assert sum(outcome.values()) == sum(EXPECTED_COUNTS.values())


def test_shared_records_from_every_folder_equal_wfdb(data_dir: Path) -> None:
    """The fast tier of the test above: ~30 records, every folder and every Challenge source."""
    groups = _shared_records(data_dir)
    picked = (
        groups["ptb-xl/records100"][::300] + groups["ptb-xl/records500"][::100] + groups["cinc2021"][::10]
    )
    by_source: dict[str, list[Path]] = {}
    for path in groups["challenge"]:
        by_source.setdefault(path.parent.name, []).append(path)
    assert len(by_source) == 7
    for paths in by_source.values():
        picked += paths[:1] + paths[-1:]
    picked.append(data_dir / "challenge" / "georgia" / "E00001")  # '.mat' record name, 4880/mV gain
    assert 25 <= len(picked) <= 40
    for path in picked:
        _assert_same_as_wfdb(signals.read_wfdb(path), path)


def test_georgia_quirks(data_dir: Path) -> None:
    path = data_dir / "challenge" / "georgia" / "E00001"
    assert path.with_suffix(".hea").read_text().split()[0] == "E00001.mat"
    raw = signals.read_wfdb(path)
    assert raw.signal.shape == (12, 5000) and raw.units == ("mV",) * 12
    assert raw.recorded_at is None  # '05-May-2020' is not a WFDB date; wfdb leaves it unset too
    assert signals.read_wfdb(str(path) + ".mat").signal.shape == (12, 5000)  # a path with the extension


def _real_signal(data_dir: Path, n: int = 1001) -> wfdb.Record:
    """Twelve leads of a real 500 Hz ECG, an odd number of samples (a half 212 block), a few NaNs."""
    rec = wfdb.rdrecord(str(data_dir / "ptb-xl" / "records500" / "00000" / "00001_hr"), sampto=n)
    rec.p_signal[5, 1] = rec.p_signal[n - 1, 11] = rec.p_signal[100, 0] = np.nan
    return rec


@pytest.mark.parametrize("fmt", ["16", "212", "80", "24", "32"])
def test_formats_written_by_wfdb(data_dir: Path, tmp_path: Path, fmt: str) -> None:
    rec = _real_signal(data_dir)
    wfdb.wrsamp(
        "r",
        fs=rec.fs,
        units=rec.units,
        sig_name=rec.sig_name,
        p_signal=rec.p_signal,
        fmt=[fmt] * rec.n_sig,
        comments=["Age: 56", "Dx: 426783006"],
        base_date=datetime(2020, 5, 17).date(),
        base_time=datetime(2020, 5, 17, 13, 4, 5, 250000).time(),
        write_dir=str(tmp_path),
    )
    ours = signals.read_wfdb(tmp_path / "r")
    _assert_same_as_wfdb(ours, tmp_path / "r")
    assert np.isnan(ours.signal).sum() == 3
    assert ours.recorded_at == datetime(2020, 5, 17, 13, 4, 5, 250000)
    assert ours.comments == ("Age: 56", "Dx: 426783006")


def test_format_61_big_endian(data_dir: Path, tmp_path: Path) -> None:
    """wrsamp cannot write format 61: write format 16 with it, then swap the bytes and the header's format."""
    rec = _real_signal(data_dir)
    wfdb.wrsamp(
        "r",
        fs=rec.fs,
        units=rec.units,
        sig_name=rec.sig_name,
        p_signal=rec.p_signal,
        fmt=["16"] * rec.n_sig,
        write_dir=str(tmp_path),
    )
    data = tmp_path / "r.dat"
    data.write_bytes(np.fromfile(data, dtype="<i2").astype(">i2").tobytes())
    header = (tmp_path / "r.hea").read_text().replace("r.dat 16 ", "r.dat 61 ")
    (tmp_path / "r.hea").write_text(header)
    assert header.count(" 61 ") == rec.n_sig
    ours = signals.read_wfdb(tmp_path / "r")
    _assert_same_as_wfdb(ours, tmp_path / "r")
    assert np.isnan(ours.signal).sum() == 3


def test_format_8_first_differences(data_dir: Path, tmp_path: Path) -> None:
    """wrsamp cannot write format 8 (first differences from the header's initial value): write it here."""
    rec = _real_signal(data_dir)
    digital = np.round(np.nan_to_num(rec.p_signal[:, :3]) * 50).astype(np.int32)
    diffs = np.clip(np.diff(digital, axis=0, prepend=digital[:1]), -128, 127).astype(np.int8)
    (tmp_path / "r.dat").write_bytes(diffs.tobytes())
    lines = [f"r 3 500 {len(diffs)} 08:30:00 01/02/2003"]
    lines += [f"r.dat 8 50(-3)/mV 8 0 {digital[0, i]} 0 0 {rec.sig_name[i]}" for i in range(3)]
    (tmp_path / "r.hea").write_text("\n".join(lines) + "\n")
    ours = signals.read_wfdb(tmp_path / "r")
    _assert_same_as_wfdb(ours, tmp_path / "r")
    assert not np.isnan(ours.signal).any()  # format 8 has no invalid-sample value
    np.testing.assert_array_equal(ours.signal[:, 0], (np.cumsum(diffs, axis=0)[0] + digital[0] + 3) / 50)


def test_several_files_offsets_and_formats(data_dir: Path, tmp_path: Path) -> None:
    """One record over three signal files (16 with two signals, 212, 24), two of them after byte offsets."""
    rec = _real_signal(data_dir)
    four = wfdb.Record(
        record_name="multi",
        p_signal=rec.p_signal[:, :4],
        fs=rec.fs,
        fmt=["16", "16", "212", "24"],
        units=rec.units[:4],
        sig_name=rec.sig_name[:4],
        comments=["two files"],
    )
    four.set_d_features(do_adc=True, single_fmt=False)
    four.set_defaults()
    four.file_name = ["a.dat", "a.dat", "b.dat", "c.dat"]
    four.byte_offset = [24, 24, None, 8]
    four.wrsamp(write_dir=str(tmp_path))
    assert "a.dat 16+24" in (tmp_path / "multi.hea").read_text()
    ours = signals.read_wfdb(tmp_path / "multi")
    _assert_same_as_wfdb(ours, tmp_path / "multi")
    assert np.isnan(ours.signal).sum() == 2


def test_several_format_16_files(data_dir: Path, tmp_path: Path) -> None:
    rec = _real_signal(data_dir)
    lines = [f"r 12 {rec.fs} {rec.sig_len}"]
    for i in range(rec.n_sig):
        wfdb.wrsamp(
            f"s{i}",
            fs=rec.fs,
            units=rec.units[i : i + 1],
            sig_name=rec.sig_name[i : i + 1],
            p_signal=rec.p_signal[:, i : i + 1],
            fmt=["16"],
            write_dir=str(tmp_path),
        )
        lines.append((tmp_path / f"s{i}.hea").read_text().splitlines()[1])
    (tmp_path / "r.hea").write_text("\n".join(lines) + "\n")
    ours = signals.read_wfdb(tmp_path / "r")
    _assert_same_as_wfdb(ours, tmp_path / "r")
    assert ours.signal.shape == (12, rec.sig_len) and np.isnan(ours.signal).sum() == 3


# --- hostile and unsupported records: UnreadableRecord naming the record and the feature, quickly ----

GOOD_LINE = "r.dat 16 200/mV 16 0 0 0 0 I"


def _write(tmp: Path, header: str | bytes, data: bytes | None = np.zeros(40, "<i2").tobytes()) -> Path:
    (tmp / "r.hea").write_bytes(header.encode() if isinstance(header, str) else header)
    if data is not None:
        (tmp / "r.dat").write_bytes(data)
    return tmp / "r"


HOSTILE = {
    "sig_len 10^12": (f"r 1 500 1000000000000\n{GOOD_LINE}\n", "limit"),
    "sig_len 10^8 over a small file": (f"r 1 500 100000000\n{GOOD_LINE}\n", "truncated"),
    "n_sig 0": ("r 0 500 10\n", "no signals"),
    "n_sig 10^6": (f"r 1000000 500 10\n{GOOD_LINE}\n", "declares 1000000 signals"),
    "more signals than the limit": ("r 2000 500 10\n" + f"{GOOD_LINE}\n" * 2000, "limit of 1024"),
    "negative byte offset": ("r 1 500 10\nr.dat 16+-24 200/mV 16 0 0 0 0 I\n", "'16+-24'"),
    "malformed gain": ("r 1 500 10\nr.dat 16 200,5/mV 16 0 0 0 0 I\n", "'200,5/mV'"),
    "empty header": ("", "empty header"),
    "comments only": ("# Age: 40\n# Sex: F\n", "empty header"),
    "malformed record line": (f"r.x 1 500 10\n{GOOD_LINE}\n", "malformed record line"),
    "malformed base time": (f"r 1 500 10 25:61:00\n{GOOD_LINE}\n", "base time"),
    "malformed base date": (f"r 1 500 10 10:00:00 31/02/2020\n{GOOD_LINE}\n", "base time or date"),
    "multi-segment": ("r/2 1 500 20\nseg1 10\nseg2 10\n", "multi-segment"),
    "FLAC 508": ("r 1 500 10\nr.dat 508 200/mV 8 0 0 0 0 I\n", "format 508 (FLAC-compressed)"),
    "FLAC 516": ("r 1 500 10\nr.dat 516 200/mV 16 0 0 0 0 I\n", "format 516 (FLAC-compressed)"),
    "FLAC 524": ("r 1 500 10\nr.dat 524 200/mV 24 0 0 0 0 I\n", "format 524 (FLAC-compressed)"),
    "format 310": ("r 1 500 10\nr.dat 310 200/mV 10 0 0 0 0 I\n", "format 310"),
    "format 160": ("r 1 500 10\nr.dat 160 200/mV 16 0 0 0 0 I\n", "format 160"),
    "format 999": ("r 1 500 10\nr.dat 999 200/mV 16 0 0 0 0 I\n", "format 999"),
    "null signal": ("r 1 500 10\n~ 16 200/mV 16 0 0 0 0 I\n", "null signal"),
    "two samples per frame": ("r 1 500 10\nr.dat 16x2 200/mV 16 0 0 0 0 I\n", "2 samples per frame"),
    "skew": ("r 1 500 10\nr.dat 16:3 200/mV 16 0 0 0 0 I\n", "skew 3"),
    "formats mixed in one file": (
        f"r 2 500 10\n{GOOD_LINE}\nr.dat 212 200/mV 12 0 0 0 0 II\n",
        "mixes formats",
    ),
    "missing signal file": ("r 1 500 10\nother.dat 16 200/mV 16 0 0 0 0 I\n", "other.dat is missing"),
    "truncated signal file": (f"r 1 500 41\n{GOOD_LINE}\n", "truncated signal file r.dat: 82 bytes expected"),
    "offset past the end": ("r 1 500 10\nr.dat 16+4096 200/mV 16 0 0 0 0 I\n", "after a 4096-byte offset"),
    "empty signal file inferred length": ("r 1 500\nr.dat 16+80 200/mV 16 0 0 0 0 I\n", "no samples"),
    "zero samples": (f"r 1 500 0\n{GOOD_LINE}\n", "no samples"),
    "huge number": (f"r 1 {'9' * 5000} 10\n{GOOD_LINE}\n", "cannot read WFDB record"),
    "header over 1 MiB": (f"r 1 500 10\n{GOOD_LINE}\n" + "#" * (1 << 20), "larger than 1048576 bytes"),
    "non-ASCII junk": (bytes(random.Random(7).randrange(256) for _ in range(4000)), ""),
    "binary zeros": (b"\x00" * 512, ""),
}


# A header, hostile or damaged, costs at most this many readings of a real 10 s record (about 60 ms of
# CPU in all): bounded work, judged against the same run's real reading instead of a wall clock.
READS = 100


@pytest.fixture(scope="module")
def real_read_cost(data_dir: Path) -> float:
    """CPU seconds of reading the slower of two real records (PTB-XL 100 Hz, Georgia 500 Hz), warm."""
    return max(
        cheapest(lambda record=record: signals.read_wfdb(data_dir / record))
        for record in ("ptb-xl/records100/00000/00001_lr", "challenge/georgia/E00001")
    )


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_headers_are_refused_quickly(tmp_path: Path, case: str, real_read_cost: float) -> None:
    header, feature = HOSTILE[case]
    path = _write(tmp_path, header)
    with cpu() as spent, pytest.raises(UnreadableRecord) as err:
        signals.read_wfdb(path)
    assert spent.seconds <= READS * real_read_cost, (spent.seconds, real_read_cost)
    message = str(err.value)
    assert err.value.record == str(path) and message.startswith(f"{path}: ")
    assert "\n" not in message and feature in message, message


def test_missing_header_and_truncated_real_files(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UnreadableRecord, match="no header file nothing.hea"):
        signals.read_wfdb(tmp_path / "nothing")
    for source in ("ptb-xl/records100/00000/00001_lr", "challenge/georgia/E00001"):
        src = data_dir / source
        data = next(p for p in src.parent.glob(src.name + ".*") if p.suffix != ".hea")
        (tmp_path / f"{src.name}.hea").write_bytes(src.with_suffix(".hea").read_bytes())
        (tmp_path / data.name).write_bytes(data.read_bytes()[: data.stat().st_size // 2])
        with pytest.raises(UnreadableRecord, match=f"truncated signal file {data.name}"):
            signals.read_wfdb(tmp_path / src.name)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
def test_fifos_and_folders_are_not_read(tmp_path: Path) -> None:
    """A FIFO would block the reader forever and a device would never end: only regular files are read."""
    os.mkfifo(tmp_path / "r.dat")
    path = _write(tmp_path, f"r 1 500 10\n{GOOD_LINE}\n", data=None)
    with pytest.raises(UnreadableRecord, match="r.dat is not a regular file"):
        signals.read_wfdb(path)
    os.mkfifo(tmp_path / "f.hea")
    with pytest.raises(UnreadableRecord, match="f.hea is not a regular file"):
        signals.read_wfdb(tmp_path / "f")
    (tmp_path / "d.dat").mkdir()
    (tmp_path / "d.hea").write_text("d 1 500 10\nd.dat 16 200/mV 16 0 0 0 0 I\n")
    with pytest.raises(UnreadableRecord, match="d.dat is not a regular file"):
        signals.read_wfdb(tmp_path / "d")


def test_mutated_real_headers_read_or_refuse_never_crash(
    data_dir: Path, tmp_path: Path, real_read_cost: float
) -> None:
    """Seeded random edits of real headers: each one reads, or raises UnreadableRecord, at a bounded cost."""
    sources = [data_dir / "ptb-xl/records100/00000/00001_lr", data_dir / "challenge/georgia/E00001"]
    rng = random.Random(2021)
    alphabet = "0123456789 \t\n#+-x:./()~eE" + "abc\x00\xff"
    refused = 0
    for trial in range(300):
        src = sources[trial % 2]
        text = list(src.with_suffix(".hea").read_text())
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(text))
            action = rng.randrange(3)
            if action == 0:
                text[i] = rng.choice(alphabet)
            elif action == 1:
                text.insert(i, rng.choice(alphabet))
            else:
                del text[i]
        folder = tmp_path / str(trial)
        folder.mkdir()
        data = next(p for p in src.parent.glob(src.name + ".*") if p.suffix != ".hea")
        (folder / data.name).symlink_to(data)
        (folder / f"{src.name}.hea").write_bytes("".join(text).encode("utf-8", errors="replace"))
        with cpu() as spent:
            try:
                signals.read_wfdb(folder / src.name)
            except UnreadableRecord as err:
                refused += 1
                assert "\n" not in str(err)
        assert spent.seconds <= READS * real_read_cost, (trial, spent.seconds, real_read_cost)
    assert 0 < refused < 300


def test_reading_does_not_import_wfdb(data_dir: Path) -> None:
    code = (
        "import sys\n"
        "from ecgsearch.ecg import signals\n"
        f"signals.read_wfdb({str(data_dir / 'ptb-xl/records100/00000/00001_lr')!r})\n"
        f"signals.read_wfdb({str(data_dir / 'challenge/georgia/E00001')!r})\n"
        "assert 'wfdb' not in sys.modules, 'wfdb was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
