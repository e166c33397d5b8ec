"""Hospital exports through ``ecgsearch ingest``: every sample stored, nothing identifying kept anywhere.

The privacy test greps every byte the ingest leaves behind (the store directory with its WAL and
segments, the rejects report) and everything it said (stdout, stderr, log records at DEBUG) for each
identifying string SOURCES.tsv names per file, and for the file names themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from hospital_phi import IDENTIFYING, file_text
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.ecg.schema import MEASUREMENTS
from ecgsearch.search.engine.store import open_store

N_SAMPLES = 16
# hl7aecg_fda_subject1_0.xml is the HL7 example with only the subject id and times changed: the same
# document id and identical samples, so it is the same ECG as hl7aecg_Example_aECG.xml (skipped).
SAME_ECG_AS_STORED = 1


def _ingest(args: list[str], caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    result = CliRunner().invoke(app, ["ingest", *args])
    return result


@pytest.fixture(scope="module")
def hospital(data_dir: Path) -> Path:
    return data_dir / "hospital"


def test_every_sample_is_stored_and_nothing_identifying_is_kept(
    hospital: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    store_dir = tmp_path / "store"
    rejects = tmp_path / "rejects.csv"
    result = _ingest(
        [str(hospital), "--store", str(store_dir), "--workers", "0", "--rejects", str(rejects)], caplog
    )
    assert result.exit_code == 0, result.output
    store = open_store(path=store_dir)
    try:
        assert store.count() == N_SAMPLES - SAME_ECG_AS_STORED
        payloads = [h.payload for h in store.search(np.ones(store.info().dim, np.float32), k=50)]
    finally:
        store.close()
    assert "ingested 15, skipped 1" in result.output
    assert {p.source_format for p in payloads} == {
        "muse-xml",
        "philips-xml",
        "hl7-aecg",
        "dicom",
        "scp-ecg",
        "edf",
    }
    assert all(p.source_path is None and p.recorded_at is None and p.patient_id for p in payloads)
    edf = next(p for p in payloads if p.source_format == "edf")
    assert edf.duration_s == pytest.approx(47.3, abs=0.05)  # stored whole; embedded from its first 10 s
    philips = [p for p in payloads if p.source_format == "philips-xml"]
    assert len(philips) == 4 and {"PHILIPS:SR", "PHILIPS:SB"} <= {c for p in philips for c in p.source_codes}
    assert {"426783006", "426177001"} <= {d for p in philips for d in p.diagnoses}
    assert all(p.acquired_month is None or len(p.acquired_month) == 7 for p in payloads)
    assert sum(p.qrs_ms is not None for p in payloads) == 14  # every file but the EDF and its aECG twin's

    seen: list[tuple[str, str]] = []
    for name, strings in IDENTIFYING.items():
        text = file_text(hospital / name)
        for s in strings:
            assert s in text or s.encode() in (hospital / name).read_bytes(), f"{s!r} is not in {name}"
        seen += [(name, s) for s in strings] + [(name, name), (name, Path(name).stem)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any("wal" in str(p).lower() for p in files)  # the write-ahead log is among the files read
    blobs = {str(p): p.read_bytes() for p in files}
    said = result.output + (result.stderr if result.stderr_bytes is not None else "") + caplog.text
    for name, s in seen:
        needles = {s.encode(), s.encode("utf-16-le")}
        for where, blob in blobs.items():
            assert not any(n in blob for n in needles), f"{s!r} of {name} found in {where}"
        assert s not in said, f"{s!r} of {name} found in the command's output or logs"


def test_a_second_ingest_stores_nothing_new(hospital: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    args = [str(hospital), "--store", str(tmp_path / "store"), "--workers", "0", "--quiet"]
    assert _ingest(args, caplog).exit_code == 0
    again = _ingest(args, caplog)
    assert again.exit_code == 0, again.output
    assert "ingested 0, skipped 16" in again.output


def test_a_damaged_export_is_a_reject_named_by_its_hash(tmp_path: Path, hospital: Path, caplog):
    folder = tmp_path / "exports"
    folder.mkdir()
    name = "muse_musephi_ecg1.xml"
    data = (hospital / name).read_bytes()
    (folder / "SMITH_JOHN_MRN0042.xml").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an ECG")
    rejects = tmp_path / "rejects.csv"
    result = _ingest(
        [str(folder), "--store", str(tmp_path / "store"), "--workers", "0", "--rejects", str(rejects)], caplog
    )
    assert result.exit_code != 0
    report = next(tmp_path.glob("rejects*.csv")).read_text()
    assert "hospital" not in report and "exports:file-sha256-" in report
    assert "SMITH" not in report + result.output + caplog.text and "MRN0042" not in report + result.output


def test_measurement_fields_are_numbers_with_range_indexes():
    from ecgsearch.search.engine.store import PAYLOAD_INDEXES

    assert all(PAYLOAD_INDEXES[m] == "float" for m in MEASUREMENTS)


def test_embed_takes_a_hospital_folder(hospital: Path, tmp_path: Path):
    out = tmp_path / "hospital.npz"
    result = CliRunner().invoke(app, ["embed", str(hospital), "--out", str(out)])
    assert result.exit_code == 0, result.output
    written = np.load(out)
    ids = list(written["record_ids"])
    assert len(ids) == N_SAMPLES and not any("muse_" in i or "philips_" in i for i in ids)
    vectors = written["vectors"]
    # the aECG example and the FDA's copy: one id, one vector
    twins = [i for i, name in enumerate(ids) if name == "hospital:61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"]
    assert len(twins) == 2 and float(vectors[twins[0]] @ vectors[twins[1]]) > 0.9999
