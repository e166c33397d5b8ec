"""Diagnosis code resolution against known answers from the Challenge mapping and PTB-XL."""

from __future__ import annotations

import pytest

from ecgsearch.ecg import codes
from ecgsearch.ecg.schema import InvalidQuery


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("164889003", "164889003"),
        ("AF", "164889003"),
        ("afib", "164889003"),
        ("SCP:AFIB", "164889003"),
        ("RBBB", "59118001"),
        ("CRBBB", "59118001"),
        ("713427006", "59118001"),
        ("LBBB", "164909002"),
        ("clbbb", "164909002"),
        ("733534002", "164909002"),
        ("SVPB", "284470004"),
        ("63593006", "284470004"),
        ("VPB", "427172004"),
        ("pvc", "427172004"),
        ("NSR", "426783006"),
        ("SR", "426783006"),
        ("NORM", "SCP:NORM"),
        ("scp:imi", "SCP:IMI"),
        ("IMI", "SCP:IMI"),
        ("AMI", "57054005"),  # Challenge abbreviation wins for a bare code
        ("SCP:AMI", "54329005"),
        ("1AVB", "270492004"),
        ("IAVB", "270492004"),
        (" LAnFB ", "445118002"),
        ("CVCL", "61721007"),
    ],
)
def test_resolve(typed: str, stored: str):
    assert codes.resolve(typed) == stored


@pytest.mark.parametrize("bad", ["XYZ", "123", "SCP:NOPE", "", "SCP:"])
def test_unknown_codes_are_invalid_and_named(bad: str):
    with pytest.raises(InvalidQuery, match="unknown diagnosis code"):
        codes.resolve(bad)


@pytest.mark.parametrize(
    ("scp", "stored"),
    [
        ("SR", "426783006"),
        ("NORM", "SCP:NORM"),
        ("AFLT", "164890007"),
        ("CRBBB", "59118001"),
        ("CLBBB", "164909002"),
        ("IRBBB", "713426002"),
        ("LAFB", "445118002"),
        ("LVH", "164873001"),
        ("PACE", "10370003"),
        ("PVC", "427172004"),
        ("PAC", "284470004"),
        ("STACH", "427084000"),
        ("SBRAD", "426177001"),
        ("SARRH", "427393009"),
        ("WPW", "74390002"),
        ("ASMI", "SCP:ASMI"),
        ("SCP:NDT", "SCP:NDT"),
    ],
)
def test_scp_to_normalised(scp: str, stored: str):
    assert codes.scp_to_normalised(scp) == stored


def test_normalise_snomed_pairs():
    assert codes.normalise_snomed("713427006") == "59118001"
    assert codes.normalise_snomed("17338001") == "427172004"
    assert codes.normalise_snomed("164889003") == "164889003"
    assert set(codes.EQUIVALENT.values()).isdisjoint(codes.EQUIVALENT)


def test_every_mapped_scp_code_is_a_known_normalised_snomed_code():
    tables = codes._tables()
    for scp, snomed in tables.scp_snomed.items():
        assert snomed in tables.snomed_names, scp
        assert codes.normalise_snomed(snomed) == snomed, scp


def test_describe():
    assert codes.describe("164889003") == "atrial fibrillation"
    assert codes.describe("AF") == "atrial fibrillation"
    assert codes.describe("SCP:NORM") == "normal ECG"
    assert codes.describe("SCP:IMI") == "inferior myocardial infarction"
    assert codes.describe("no-such") == "no-such"
