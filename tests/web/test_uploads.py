"""Uploaded files: every hospital format the readers know becomes a searchable 12-lead ECG in mV."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg import signals
from ecgsearch.web import ecgdraw
from ecgsearch.web.uploads import UploadError, Uploads, read_upload

ONE_PER_FORMAT = {
    "muse-xml": "muse_braveheart_example1.xml",
    "philips-xml": "philips_v1.04_ad4d3d80-d165.xml",
    "hl7-aecg": "hl7aecg_Example_aECG.xml",
    "dicom": "dicom_ecgtoolkit_Example.dcm",
    "scp-ecg": "scp_ecgtoolkit_Example.scp",
    "edf": "edf_contec_0000050.edf",
}


@pytest.mark.parametrize(("fmt", "name"), sorted(ONE_PER_FORMAT.items()))
def test_hospital_files_become_searchable(data_dir: Path, fmt: str, name: str) -> None:
    held = read_upload((data_dir / "hospital" / name).read_bytes())
    assert held.format == fmt and held.signal.shape[0] == 12 and held.duration_s >= signals.MIN_SECONDS
    assert held.prepared.shape == (12, signals.MODEL_SAMPLES) and np.isfinite(held.prepared).all()
    lead_ii = held.signal[signals.LEADS.index("II")]
    assert 0.2 < np.ptp(lead_ii) < 10.0  # millivolts: a QRS, not microvolts or raw counts
    svg = ecgdraw.twelve_lead(held.signal, held.fs, ecgdraw.MV)
    assert svg.count('class="lead') == 13


def test_unreadable_files_are_refused_without_echoing_them() -> None:
    with pytest.raises(UploadError, match="empty"):
        read_upload(b"")
    secret = b"<RestingECG><PatientDemographics><PatientLastName>Doe</PatientLastName>"
    with pytest.raises(UploadError, match="not a readable ECG file") as info:
        read_upload(secret)
    assert "Doe" not in str(info.value)
    with pytest.raises(UploadError, match="not a readable ECG file"):
        read_upload(bytes(range(256)) * 100)


def test_held_uploads_are_bounded_in_count_and_age(data_dir: Path) -> None:
    held = read_upload((data_dir / "hospital" / ONE_PER_FORMAT["muse-xml"]).read_bytes())
    uploads = Uploads(max_held=2)
    first, second, third = (uploads.add(held) for _ in range(3))
    assert uploads.get(first) is None and uploads.get(second) is held and uploads.get(third) is held
    assert uploads.get("not-a-token") is None
    short = Uploads(max_age_s=0.01)
    token = short.add(held)
    time.sleep(0.05)
    assert short.get(token) is None
