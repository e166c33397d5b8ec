"""No identifying string that SOURCES.tsv names for a sample reaches a reader's result, repr or logs.

Each string below is one SOURCES.tsv lists in the file's phi_fields_present column (names, patient
ids, birth dates, institutions, device serials, overreader names, free-text statements); the test
first checks that the string really is in the file, so it cannot pass by looking for nothing.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from ecgsearch.encoder.readers import read_ecg

IDENTIFYING: dict[str, list[str]] = {
    "muse_musephi_ecg1.xml": ["JAX01234", "TEST 05", "Doe, John", "123456", "FIRST", "LAST", "13:15:18"],
    "muse_musephi_ecg3.xml": ["01234567", "TEST 03", "FIRST", "LAST", "13:05:16"],
    "muse_guangxi_sinus_rhythm.xml": ["00000000", "Anonymous", "01-01-1900", "开放性骨折", "10:35:17"],
    "philips_v1.03_129DYPRG.xml": ["1112010721168bdc", "GE EMS", "Sinus bradycardia"],
    "philips_v1.04_3191723_ZZDEMOPTONLY.xml": ["ZZDEMOPTONLY", "ADULT", "1950-01-01", "EKG1715"],
    "philips_v1.04_ad4d3d80-d165.xml": [
        "1976-01-01",
        "EKG16296",
        "134742",
        "ELECTROLYTE",
        "SINUS BRADYCARDIA",
    ],
    "philips_v1.04.01_2020-5-18_15-48-11.xml": ["xxxxxx", "1951-01-01", "US71621374", "PLACE"],
    "hl7aecg_Example_aECG.xml": ["Clark", "SBJ-123", "19530508", "River City", "dizzy"],
    "hl7aecg_fda_subject1_0.xml": ["Clark", "subject1", "19530508", "River City"],
    "dicom_pydicom_waveform_ecg.dcm": ["642341", "19710123", "Galliera", "RITMO SINUSALE", "03028041970546"],
    "dicom_ecgtoolkit_Example.dcm": ["Clark", "SBJ-123", "19530508"],
    "dicom_ecg2dcm_guangxi_sinus_rhythm.dcm": ["Anonymized", "000001", "4111023765947888"],
    "scp_ecgtoolkit_Example.scp": ["Clark", "SBJ-123"],
    "edf_contec_0000050.edf": ["0000050", "dd-MMM-yyyy"],
    "muse_braveheart_example1.xml": [],
    "muse_braveheart_example4.xml": [],
}
PATIENT_KEYS = {
    "muse_musephi_ecg1.xml": "JAX01234",
    "philips_v1.04_3191723_ZZDEMOPTONLY.xml": "9999",
    "hl7aecg_Example_aECG.xml": "SBJ-123",
    "dicom_pydicom_waveform_ecg.dcm": "642341",
    "scp_ecgtoolkit_Example.scp": "SBJ-123",
}


def _file_text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def test_the_list_covers_every_sample(data_dir: Path):
    names = {p.name for p in (data_dir / "hospital").iterdir() if p.suffix != ".tsv" and p.is_file()}
    assert names == set(IDENTIFYING)


@pytest.mark.parametrize("name", sorted(IDENTIFYING))
def test_identifying_strings_stay_in_the_file(data_dir: Path, name: str, caplog: pytest.LogCaptureFixture):
    path = data_dir / "hospital" / name
    text = _file_text(path)
    for s in IDENTIFYING[name]:
        assert s in text or s.encode() in path.read_bytes(), f"{s!r} is not in {name}: fix the list"
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ecg = read_ecg(path)
    exposed = "\n".join(
        [repr(ecg), str(ecg), repr(ecg.header), str(ecg.header.public_fields()), str(ecg.native_id)]
        + [str(w.message) for w in caught]
        + [caplog.text]
    )
    for s in IDENTIFYING[name]:
        assert s.lower() not in exposed.lower(), f"{s!r} from {name} leaked"
    assert name not in exposed and path.stem not in exposed
    key = ecg.header.patient_key
    assert "patient_key" not in repr(ecg.header) and "patient_key" not in ecg.header.public_fields()
    if key:
        assert key not in repr(ecg)
    if name in PATIENT_KEYS:
        assert key == PATIENT_KEYS[name]  # kept, for the caller to pseudonymise


def test_errors_from_a_damaged_file_carry_no_identifying_string(data_dir: Path):
    from ecgsearch.encoder.readers import ReaderError

    for name, strings in IDENTIFYING.items():
        data = (data_dir / "hospital" / name).read_bytes()
        for cut in (len(data) // 3, len(data) - 7):
            try:
                read_ecg(data[:cut])
            except ReaderError as err:
                message = str(err).lower()
                assert not any(s.lower() in message for s in strings), (name, str(err))
