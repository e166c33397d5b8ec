"""The hospital file formats we read: one table, and every other list of them derived from it.

Per format: its name (the ``format_hint`` and ``source_format`` value), how its content is told apart
(``sniff``), the reader module, the wire enum value, the prefix of its vendor statement codes, the
file extensions its exports use and the name people know it by. The sniffer, the reader table, the
service's format hints, the wire enum conversion, the code prefixes, ingest's extensions and the help
texts all read this table; ``proto/generate.py`` writes the proto's ``EcgFormat`` enum from it and
tests/test_generated.py checks the committed proto against it.

Adding a format: a row here, its reader module in ``ecg/readers/`` (``read(bytes) -> ReadEcg``), a test.

Standard library only: command modules build their help texts from it without loading numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Magic:
    """Bytes at a fixed offset of a binary format, in a file at least ``min_bytes`` long."""

    offset: int
    value: bytes
    min_bytes: int = 0

    def matches(self, data: bytes) -> bool:
        end = self.offset + len(self.value)
        return len(data) >= max(end, self.min_bytes) and data[self.offset : end] == self.value


@dataclass(frozen=True)
class FileFormat:
    """One format we read. Exactly one of ``magic``, ``xml_root`` and ``detect`` tells its content."""

    name: str  # 'muse-xml': format hints, the stored source_format, the reader's ReadEcg.format
    display: str  # 'MUSE XML': help texts, the viewer, the sniffer's refusal
    reader: str  # module in ecgsearch.ecg.readers whose read(bytes) -> ReadEcg decodes it
    wire_number: int  # its value in the proto's EcgFormat enum (never reused)
    vendor_prefix: str  # '<PREFIX>:<code>' of its statement codes in source_codes
    extensions: tuple[str, ...]  # lower-case suffixes its exports use (ingest reports these if unreadable)
    magic: Magic | None = None  # binary formats
    xml_root: str | None = None  # XML formats: the root element's local name, lower case
    detect: Callable[[bytes], bool] | None = None  # any other content test (of SNIFF_BYTES at most)

    @property
    def wire_name(self) -> str:
        """Its name in the proto's EcgFormat enum: 'muse-xml' -> 'ECG_FORMAT_MUSE_XML'."""
        return "ECG_FORMAT_" + self.name.upper().replace("-", "_")

    def __post_init__(self) -> None:
        tests = [t for t in (self.magic, self.xml_root, self.detect) if t is not None]
        if len(tests) != 1:
            raise ValueError(f"{self.name}: give exactly one of magic, xml_root and detect")


FORMATS: tuple[FileFormat, ...] = (
    FileFormat("muse-xml", "MUSE XML", "muse", 1, "MUSE", (".xml",), xml_root="restingecg"),
    FileFormat("philips-xml", "Philips XML", "philips", 2, "PHILIPS", (".xml",), xml_root="restingecgdata"),
    FileFormat("hl7-aecg", "HL7 aECG", "aecg", 3, "AECG", (".xml",), xml_root="annotatedecg"),
    FileFormat("dicom", "DICOM", "dicom", 4, "DICOM", (".dcm",), magic=Magic(128, b"DICM")),
    FileFormat("scp-ecg", "SCP-ECG", "scp", 5, "SCP-ECG", (".scp", ".ecg"), magic=Magic(16, b"SCPECG")),
    FileFormat("edf", "EDF", "edf", 6, "EDF", (".edf",), magic=Magic(0, b"0       ", min_bytes=256)),
)
BY_NAME: dict[str, FileFormat] = {f.name: f for f in FORMATS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
EXTENSIONS: frozenset[str] = frozenset(ext for f in FORMATS for ext in f.extensions)
# 'MUSE XML, Philips XML, HL7 aECG, DICOM, SCP-ECG, EDF': what help texts and the viewer list.
DISPLAY_LIST = ", ".join(f.display for f in FORMATS)
SNIFF_BYTES = 8192  # what the content tests read of a file: ingest reads no more to tell a file's format
