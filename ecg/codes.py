"""Diagnosis codes: what users type -> the normalised codes stored in payload ``diagnoses``.

The normalised code system is SNOMED CT concept ids (strings). The Challenge 2021 scores four pairs
of concepts as one label; we store one member of each pair so a filter on either finds both:
713427006 (CRBBB) -> 59118001 (RBBB), 733534002 (CLBBB) -> 164909002 (LBBB),
63593006 (SVPB) -> 284470004 (PAC), 17338001 (VPB) -> 427172004 (PVC).
A PTB-XL SCP statement maps to SNOMED CT only where the Challenge labels hold a clear counterpart
(``data/scp_snomed.csv``); any other statement is stored as ``SCP:<code>``.

``resolve`` accepts a SNOMED CT id, ``SCP:<code>``, a Challenge abbreviation or a bare SCP code,
case-insensitively. A bare code that is both a Challenge abbreviation and an SCP statement resolves
as the abbreviation (they agree except for ``AMI``: acute MI vs. SCP anterior MI); write
``SCP:AMI`` for the SCP meaning.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

from ecgsearch.ecg.formats import FORMATS
from ecgsearch.ecg.schema import InvalidQuery

SCP_PREFIX = "SCP:"
EQUIVALENT: dict[str, str] = {
    "713427006": "59118001",
    "733534002": "164909002",
    "63593006": "284470004",
    "17338001": "427172004",
}


@dataclass(frozen=True)
class _Tables:
    snomed_names: dict[str, str]  # SNOMED id -> name
    abbreviations: dict[str, str]  # upper-case Challenge abbreviation -> normalised SNOMED id
    scp_snomed: dict[str, str]  # SCP code -> normalised SNOMED id (mapped statements only)
    scp_names: dict[str, str]  # upper-case SCP code -> description
    scp_original: dict[str, str]  # upper-case SCP code -> SCP code as PTB-XL spells it


def _rows(name: str) -> list[dict[str, str]]:
    text = files("ecgsearch.ecg").joinpath("data", name).read_text(encoding="utf-8")
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


@cache
def _tables() -> _Tables:
    names: dict[str, str] = {}
    abbreviations: dict[str, str] = {}
    for row in _rows("dx_codes.csv"):
        names.setdefault(row["snomed"], row["name"])
        for abbreviation in row["abbreviation"].split("/"):
            abbreviations.setdefault(abbreviation.upper(), EQUIVALENT.get(row["snomed"], row["snomed"]))
    scp_snomed: dict[str, str] = {}
    scp_names: dict[str, str] = {}
    scp_original: dict[str, str] = {}
    for row in _rows("scp_snomed.csv"):
        scp_names[row["scp"].upper()] = row["description"]
        scp_original[row["scp"].upper()] = row["scp"]
        if row["snomed"]:
            scp_snomed[row["scp"]] = row["snomed"]
    return _Tables(names, abbreviations, scp_snomed, scp_names, scp_original)


def normalise_snomed(code: str) -> str:
    """The stored form of a SNOMED CT id: the chosen member of a Challenge equivalence pair."""
    code = code.strip()
    return EQUIVALENT.get(code, code)


def scp_to_normalised(scp: str) -> str:
    """The stored form of a PTB-XL SCP statement: its SNOMED CT counterpart, else ``SCP:<code>``."""
    code = scp.strip().removeprefix(SCP_PREFIX)
    mapped = _tables().scp_snomed.get(code)
    return mapped if mapped is not None else f"{SCP_PREFIX}{code}"


def resolve(user_code: str) -> str:
    """What a user typed -> the stored code; InvalidQuery naming the code when it is unknown."""
    tables = _tables()
    text = user_code.strip()
    upper = text.upper()
    if text.isdigit():
        code = normalise_snomed(text)
        if code in tables.snomed_names:
            return code
    elif upper.startswith(SCP_PREFIX):
        scp = tables.scp_original.get(upper.removeprefix(SCP_PREFIX))
        if scp is not None:
            return scp_to_normalised(scp)
    elif upper in tables.abbreviations:
        return tables.abbreviations[upper]
    elif upper in tables.scp_original:
        return scp_to_normalised(tables.scp_original[upper])
    raise InvalidQuery(
        f"unknown diagnosis code {user_code!r}: expected a SNOMED CT id, a Challenge abbreviation "
        "(e.g. AF, RBBB) or a PTB-XL SCP statement (e.g. AFIB, SCP:IMI)"
    )


def describe(code: str) -> str:
    """Human-readable name of a stored (or user-typed) code; the code itself when nothing is known."""
    tables = _tables()
    text = code.strip()
    if text.upper().startswith(SCP_PREFIX):
        return tables.scp_names.get(text.upper().removeprefix(SCP_PREFIX), text)
    try:
        return tables.snomed_names[resolve(text)]
    except (InvalidQuery, KeyError):
        return text


# --- vendor statement codes ------------------------------------------------------------------------
# The acquiring machine's (or overreader's) statement codes, mapped to the stored SNOMED CT ids only
# where the statement means exactly that diagnosis. Philips codes are those of the Philips 12-lead
# algorithm as its XML exports write them; a code not listed here (ET, LVHCNP, STELVH, NPTA, ...) is
# kept in ``source_codes`` only, never guessed. Free-text statements are never read (the readers keep
# short codes only).
VENDOR_PREFIX = {f.name: f.vendor_prefix for f in FORMATS}
VENDOR_STATEMENTS: dict[str, dict[str, str]] = {
    "PHILIPS": {
        "SR": "426783006",  # sinus rhythm
        "SB": "426177001",  # sinus bradycardia
    },
}


def vendor_statements(
    file_format: str, statement_codes: tuple[str, ...] | list[str]
) -> tuple[list[str], list[str]]:
    """(diagnoses, source_codes) of a file's statement codes: mapped SNOMED ids where the meaning is
    clear, and every original as ``<VENDOR>:<code>`` (e.g. ``PHILIPS:SR``)."""
    prefix = VENDOR_PREFIX.get(file_format, file_format.upper())
    table = VENDOR_STATEMENTS.get(prefix, {})
    diagnoses: list[str] = []
    originals: list[str] = []
    for code in statement_codes:
        originals.append(f"{prefix}:{code}")
        mapped = table.get(code.upper())
        if mapped is not None and mapped not in diagnoses:
            diagnoses.append(normalise_snomed(mapped))
    return diagnoses, list(dict.fromkeys(originals))
