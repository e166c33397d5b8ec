"""One ECG, one hit: default ingest marks every copy by content, and nothing else.

A real store made by ``ecgsearch ingest`` of ``ptb-xl`` (its 100 Hz files), ``challenge`` and
``hospital``, as a site would ingest them. Copies by their sources: the Challenge's
``ptb_xl/HR<ecg_id>`` are PTB-XL's ECGs from its 500 Hz files; in ``hospital/SOURCES.tsv`` the HL7
aECG example, its SCP-ECG and ECG Toolkit DICOM conversions hold one ECG, and so do the Guangxi MUSE
XML and its ecg2dcm DICOM. (``hl7aecg_fda_subject1_0.xml``, the FDA's copy of the HL7 example with only
the subject id and times changed, has the example's document id and samples: skipped as stored.)
Synthetic copies are written here with ``wfdb`` (a test reference, not a dependency); the store is
served on a loopback port to check that a file search never returns the query's own stored copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import wfdb
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.ecg import intake
from ecgsearch.ecg.readers import read_ecg
from ecgsearch.ecg.schema import EcgPayload, UnknownRecord
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest.sources import enumerate_source
from ecgsearch.search.client import EcgSearchClient
from ecgsearch.search.engine.store import EdgeStore, open_store
from ecgsearch.search.serving.server import run_server

pytestmark = pytest.mark.slow  # ingests ~1,500 ECGs: the second tier

TOKEN = "t"
FILE_SUFFIXES = (".xml", ".dcm", ".scp", ".edf")
HOSPITAL_GROUPS = (
    ("hl7aecg_Example_aECG.xml", "scp_ecgtoolkit_Example.scp", "dicom_ecgtoolkit_Example.dcm"),
    ("muse_guangxi_sinus_rhythm.xml", "dicom_ecg2dcm_guangxi_sinus_rhythm.dcm"),
)


@dataclass(frozen=True)
class Ingested:
    path: Path
    payloads: dict[str, EcgPayload]


def _ingest(*args: str | Path) -> str:
    result = CliRunner().invoke(app, ["ingest", *map(str, args), "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    return result.output


def _hospital_id(path: Path) -> str:
    ecg = read_ecg(path)
    return intake.record_id_of("hospital", ecg.native_id, intake.hash_of(ecg))


@pytest.fixture(scope="module")
def ingested(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ingested]:
    path = tmp_path_factory.mktemp("copies") / "store"
    for folder in ("ptb-xl", "challenge", "hospital"):
        _ingest(data_dir / folder, "--store", path)
    ids = [c.record_id for f in ("ptb-xl", "challenge") for c in enumerate_source(data_dir / f)]
    ids += [_hospital_id(p) for p in sorted((data_dir / "hospital").iterdir()) if p.suffix in FILE_SUFFIXES]
    store = open_store(path=path, collection="ecgs")
    try:
        payloads = {}
        for rid in ids:
            with contextlib.suppress(UnknownRecord):  # a record ingest rejected
                payloads[rid] = store.get(rid)[0]
        assert len(payloads) == store.count()
    finally:
        store.close()
    yield Ingested(path, payloads)


def _expected(data_dir: Path, payloads: dict[str, EcgPayload]) -> dict[str, set[str]]:
    """Each known copy -> the ids it may point at (the other members of its group)."""
    out: dict[str, set[str]] = {}
    for rid in payloads:
        dataset, native = rid.split(":", 1)
        if dataset == "ptb_xl" and native.startswith("HR") and f"ptbxl:{int(native[2:])}" in payloads:
            out[rid] = {f"ptbxl:{int(native[2:])}"}
    for group in HOSPITAL_GROUPS:
        ids = {_hospital_id(data_dir / "hospital" / name) for name in group}
        assert ids <= set(payloads), group
        out |= {rid: ids - {rid} for rid in ids}
    return out


def test_every_copy_is_marked_and_nothing_else(ingested: Ingested, data_dir: Path) -> None:
    payloads = ingested.payloads
    expected = _expected(data_dir, payloads)
    marked = {rid: p.duplicate_of for rid, p in payloads.items() if p.duplicate_of}
    challenge = [r for r in expected if r.startswith("ptb_xl:")]
    assert len(challenge) == 11  # the Challenge copies of PTB-XL ECGs in the shared data
    for rid in challenge:
        assert marked.get(rid) in expected[rid], rid
    for group in HOSPITAL_GROUPS:
        ids = {_hospital_id(data_dir / "hospital" / name) for name in group}
        originals = {payloads[r].duplicate_of or r for r in ids}
        assert len(originals) == 1 and originals <= ids, group  # one original, every other points at it
        assert sum(r in marked for r in ids) == len(ids) - 1
    # no PTB-XL ECG, and no ECG outside the known copies (so no pair of different patients) is marked
    assert not [r for r, p in payloads.items() if p.dataset == "ptbxl" and p.duplicate_of]
    assert set(marked) <= set(expected), sorted(set(marked) - set(expected))
    assert all(marked[r] in expected[r] for r in marked)
    assert all(payloads[o].duplicate_of is None for o in marked.values())  # a copy names the original


def test_synthetic_copies_are_found(ingested: Ingested, data_dir: Path, tmp_path: Path) -> None:
    """PTB-XL ecg_id 1 from its 500 Hz file written again: at 500 Hz x5 in uV, cut by 0.16 s; and at
    250 Hz with 8 leads; ingested as other datasets, each is marked a copy of ptbxl:1 (and a copy of a
    copy points at the original)."""
    rec = wfdb.rdrecord(str(data_dir / "ptb-xl" / "records500" / "00000" / "00001_hr"))
    x = rec.p_signal.T
    gained = tmp_path / "gained"
    gained.mkdir()
    wfdb.wrsamp(
        "A00001", fs=500, units=["uV"] * 12, sig_name=rec.sig_name, p_signal=(5000 * x[:, 80:]).T,
        fmt=["32"] * 12, adc_gain=[1.0] * 12, baseline=[0] * 12, write_dir=str(gained),
    )  # fmt: skip
    eight = [rec.sig_name.index(n) for n in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
    slow = tmp_path / "slow"
    slow.mkdir()
    wfdb.wrsamp(
        "B00001", fs=250, units=["mV"] * 8, sig_name=[rec.sig_name[i] for i in eight],
        p_signal=x[eight, ::2].T, fmt=["16"] * 8, write_dir=str(slow),
    )  # fmt: skip
    path = ingested.path.parent / "synthetic"
    _ingest(data_dir / "ptb-xl", "--store", path, "--limit", "20")
    out = _ingest(gained, "--store", path, "--dataset", "gained")
    assert "1 marked duplicate_of" in out
    _ingest(slow, "--store", path, "--dataset", "slow")
    store = open_store(path=path, collection="ecgs")
    try:
        assert store.get("gained:A00001")[0].duplicate_of == "ptbxl:1"
        assert store.get("slow:B00001")[0].duplicate_of == "ptbxl:1"
    finally:
        store.close()


def test_a_file_search_never_returns_its_own_stored_copy(ingested: Ingested, data_dir: Path) -> None:
    store = open_store(path=ingested.path, collection="ecgs")
    assert isinstance(store, EdgeStore)
    try:
        with (
            run_server(store=store, embedder=Embedder(), port=0, token=TOKEN) as (_, port),
            EcgSearchClient(f"127.0.0.1:{port}", token=TOKEN) as client,
        ):
            for group in HOSPITAL_GROUPS:
                ids = {_hospital_id(data_dir / "hospital" / name) for name in group}
                for name in group:
                    for wide in (False, True):
                        found = client.search_by_file(
                            data_dir / "hospital" / name, k=20, exact=True, include_duplicates=wide
                        )
                        assert found.query_record_id in ids, name
                        assert not ids & {h.record_id for h in found.hits}, (name, wide)
                itself = client.search_by_file(
                    data_dir / "hospital" / group[0], k=5, exact=True, include_query_record=True
                )
                assert itself.hits[0].record_id in ids and itself.hits[0].score > 0.999
    finally:
        store.close()


def test_every_challenge_copy_at_5x_gain_carries_no_voltage(ingested: Ingested) -> None:
    """The Challenge stores its copies of PTB-XL ECGs at 5x: seven read louder than any right gain and
    four, quiet ECGs, inside the range; those disagree with their originals by 5x and lose the voltage."""
    payloads = ingested.payloads
    copies = [r for r, p in payloads.items() if r.startswith("ptb_xl:HR") and p.duplicate_of]
    assert len(copies) == 11 and all(payloads[r].gain_suspect for r in copies)
    assert not [r for r, p in payloads.items() if p.dataset == "ptbxl" and p.gain_suspect]
    with open_store(path=ingested.path, collection="ecgs") as store:
        assert all("voltage" not in store.get_views(r) for r in copies)
        assert all("voltage" in store.get_views(payloads[r].duplicate_of or "") for r in copies)
