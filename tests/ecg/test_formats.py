"""The format table is the only list of formats: every other list is derived from it, and the readers,
preparation and the service share one set of bounds."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.ecg import bounds, codes, formats, signals
from ecgsearch.ecg.readers import ReaderError, read_ecg, sniff
from ecgsearch.ecg.readers.types import EcgHeader, make_read_ecg
from ecgsearch.search import api, wire
from ecgsearch.search._proto import search_pb2 as pb


def test_names_wire_numbers_and_content_tests_are_unique() -> None:
    assert len(set(formats.NAMES)) == len(formats.FORMATS)
    assert len({f.wire_number for f in formats.FORMATS}) == len(formats.FORMATS)
    roots = [f.xml_root for f in formats.FORMATS if f.xml_root]
    assert len(set(roots)) == len(roots)
    with pytest.raises(ValueError, match="exactly one"):
        formats.FileFormat("two", "Two", "muse", 99, "X", (".x",), xml_root="x", magic=formats.Magic(0, b"x"))


def test_every_format_has_a_reader_module() -> None:
    for fmt in formats.FORMATS:
        module = importlib.import_module(f"ecgsearch.ecg.readers.{fmt.reader}")
        assert callable(module.read), fmt.name


def test_the_proto_enum_is_the_table() -> None:
    """Both ways: every format has its enum value, and the enum holds nothing else but UNSPECIFIED."""
    table = {f.wire_name: f.wire_number for f in formats.FORMATS}
    enum = {v.name: v.number for v in pb.EcgFormat.DESCRIPTOR.values if v.number != 0}
    assert enum == table
    named = {f.name: f.wire_number for f in formats.FORMATS}
    assert {None: pb.ECG_FORMAT_UNSPECIFIED, **named} == wire.FORMAT_TO_PROTO
    for name in formats.NAMES:
        assert wire.file_from_proto(wire.file_to_proto(api.EcgFile(b"x", name))).format_hint == name


def test_derived_lists_follow_the_table() -> None:
    assert api.FILE_FORMATS == formats.NAMES
    assert {f.name: f.vendor_prefix for f in formats.FORMATS} == codes.VENDOR_PREFIX
    assert codes.vendor_statements("philips-xml", ["SR"]) == (["426783006"], ["PHILIPS:SR"])
    assert formats.DISPLAY_LIST.startswith("MUSE XML, Philips XML, HL7 aECG, DICOM, SCP-ECG, EDF")
    with pytest.raises(ReaderError, match="content is not MUSE XML, ") as refused:
        sniff(b"%PDF-1.4 not an ECG")
    assert all(f.display in str(refused.value) for f in formats.FORMATS)


def test_help_texts_list_every_format() -> None:
    from typer.testing import CliRunner

    from ecgsearch.cli.main import app

    shown = CliRunner().invoke(app, ["query", "--help"], env={"COLUMNS": "400"}).output
    assert " ".join(formats.DISPLAY_LIST.split()) in " ".join(shown.split())


def test_every_shared_hospital_file_has_a_listed_extension_and_its_format(data_dir: Path) -> None:
    files = [p for p in (data_dir / "hospital").iterdir() if p.is_file() and p.suffix != ".tsv"]
    assert files
    for path in files:
        fmt = formats.BY_NAME[sniff(path.read_bytes())]
        assert path.suffix.lower() in fmt.extensions, path.name


def test_readers_preparation_and_the_service_share_the_rate_bounds() -> None:
    """A rate the readers accept is one preparation accepts, at both ends of the range."""
    assert (signals.MIN_FS, signals.MAX_FS) == (bounds.MIN_RATE_HZ, bounds.MAX_RATE_HZ)
    x = np.zeros((1, 100), np.float32)
    for rate in (bounds.MIN_RATE_HZ, bounds.MAX_RATE_HZ):
        assert make_read_ecg(x, ["I"], rate, "edf", EcgHeader()).sampling_rate_hz == rate
    for rate in (bounds.MIN_RATE_HZ - 1, bounds.MAX_RATE_HZ + 1):
        with pytest.raises(ReaderError, match="sampling_rate"):
            make_read_ecg(x, ["I"], rate, "edf", EcgHeader())


def test_the_file_size_bound_is_the_services() -> None:
    from ecgsearch.search.serving.service import FieldViolation, check_file

    with pytest.raises(ReaderError, match=f"exceeds {bounds.MAX_FILE_BYTES} bytes"):
        read_ecg(b"0" * (bounds.MAX_FILE_BYTES + 1))
    with pytest.raises(FieldViolation, match=f"at most {bounds.MAX_FILE_BYTES:,}"):
        check_file(api.EcgFile(b"0" * (bounds.MAX_FILE_BYTES + 1), None), "file")
