"""No identifying string that SOURCES.tsv names for a sample reaches a reader's result, repr or logs.

Each string of ``hospital_phi`` is one SOURCES.tsv lists in the file's phi_fields_present column
(names, patient ids, birth dates, institutions, device serials, overreader names, free text); the test
first checks that the string really is in the file, so it cannot pass by looking for nothing.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
from hospital_phi import IDENTIFYING, PATIENT_KEYS, file_text

from ecgsearch.ecg.readers import read_ecg


def test_the_list_covers_every_sample(data_dir: Path):
    names = {p.name for p in (data_dir / "hospital").iterdir() if p.suffix != ".tsv" and p.is_file()}
    assert names == set(IDENTIFYING)


@pytest.mark.parametrize("name", sorted(IDENTIFYING))
def test_identifying_strings_stay_in_the_file(data_dir: Path, name: str, caplog: pytest.LogCaptureFixture):
    path = data_dir / "hospital" / name
    text = file_text(path)
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
    from ecgsearch.ecg.readers import ReaderError

    for name, strings in IDENTIFYING.items():
        data = (data_dir / "hospital" / name).read_bytes()
        for cut in (len(data) // 3, len(data) - 7):
            try:
                read_ecg(data[:cut])
            except ReaderError as err:
                message = str(err).lower()
                assert not any(s.lower() in message for s in strings), (name, str(err))
