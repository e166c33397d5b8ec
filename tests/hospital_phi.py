"""The identifying strings SOURCES.tsv names per hospital sample (its phi_fields_present column): names,
patient ids, birth dates, institutions, device serials, overreader names, free-text statements and
exact times. Reader and ingest privacy tests share this list; ``file_text`` lets each test first check
that a string really is in its file, so no test can pass by looking for nothing.
"""

from __future__ import annotations

from pathlib import Path

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


def file_text(path: Path) -> str:
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
