"""Hospital systems push ECGs into a live service: a real server on a loopback port over an embedded
store filled by ``ingest``; pushed ECGs are found by the next query and kept for GetEcg."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from ecgsearch.ecg import intake, signals
from ecgsearch.ecg.identity import Pseudonymizer, default_secret, site_pseudonymizer
from ecgsearch.ecg.readers import read_ecg
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest import pipeline, sources
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search.api import EcgFile, EcgQuery, UpsertItem
from ecgsearch.search.client import EcgSearchClient, bad_request
from ecgsearch.search.engine.store import EdgeStore
from ecgsearch.search.serving.server import WRITE_METHODS, run_server
from ecgsearch.search.serving.settings import ServiceSettings

TOKEN = "t"


def _callers(folder: Path, sites: str = "*") -> Path:
    """A callers file in which the tests' token is a writer (scopes search and write) of ``sites``."""
    path = folder / "callers"
    path.write_text(f"pusher search,write {sites} sha256:{hashlib.sha256(TOKEN.encode()).hexdigest()}\n")
    return path


HELD_OUT = "muse_musephi_ecg1.xml"  # not ingested: pushed by the tests


@dataclass(frozen=True)
class Live:
    client: EcgSearchClient
    target: str
    store: EdgeStore
    root: Path
    hospital: Path


@pytest.fixture(scope="module")
def live(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The hospital samples but one, ingested as ``ecgsearch ingest`` does, then served."""
    hospital = data_dir / "hospital"
    root = tmp_path_factory.mktemp("live") / "store"
    embedder = Embedder()
    store = EdgeStore(root, "ecgs")
    candidates = [c for c in sources.enumerate_source(hospital) if c.path.name != HELD_OUT]
    summary = pipeline.ingest(
        candidates, store, embedder, workers=0, pseudonyms=site_pseudonymizer(None, root)
    )
    assert summary.ingested == 14 and summary.rejected == 0
    try:
        callers = _callers(tmp_path_factory.mktemp("callers"))
        with run_server(store=store, embedder=embedder, port=0, tokens_file=callers) as (_, port):
            target = f"127.0.0.1:{port}"
            client = EcgSearchClient(target, token=TOKEN)
            try:
                yield Live(client, target, store, root, hospital)
            finally:
                client.close()
    finally:
        store.close()


def test_upsert_is_a_write_method():
    assert "UpsertEcgs" in WRITE_METHODS  # by RPC name, as the scope check reads it
    assert "UpsertEcgs" in {m.name for m in pb.DESCRIPTOR.services_by_name["EcgSearchService"].methods}


def test_a_pushed_file_is_found_by_the_next_query_and_skipped_when_pushed_again(live: Live):
    path = live.hospital / HELD_OUT
    ecg = read_ecg(path)
    expected_id = intake.record_id_of("hospital", ecg.native_id, intake.hash_of(ecg))
    assert live.store.content_hashes([expected_id]) == {}

    (first,) = live.client.upsert_files([path], dataset="hospital")
    assert (first.record_id, first.status, first.reason) == (expected_id, "stored", "")
    # The file is now stored: a search by it names that record and leaves it out of the neighbours ...
    found = live.client.search_by_file(path, k=5, exact=True)
    assert found.query_record_id == expected_id and expected_id not in {h.record_id for h in found.hits}
    # ... unless asked to include it
    hit = live.client.search_by_file(path, k=1, exact=True, include_query_record=True).hits[0]
    assert hit.record_id == expected_id and hit.score > 0.999
    indexed = live.client.search_by_file(path, k=1, include_query_record=True)  # through the index too
    assert indexed.hits[0].record_id == expected_id

    (again,) = live.client.upsert_files([path], dataset="hospital")
    assert (again.record_id, again.status) == (expected_id, "skipped")

    payload, _ = live.store.get(expected_id)
    ingested = sources.load_file(
        sources.Candidate("x", "hospital", path, None, file_format="muse-xml"),
        site_pseudonymizer(None, live.root),
    ).payload
    assert payload == ingested.model_copy(update={"archived": True})  # the same rules as ingest
    assert payload.source_path is None and "JAX01234" not in payload.model_dump_json()

    served = live.client.get_ecg(expected_id)
    np.testing.assert_allclose(served, signals.prepare(intake.raw_of(ecg, expected_id)), atol=1e-6)
    archived = list((live.root / "archive").rglob(f"{payload.content_hash}.npz"))
    assert len(archived) == 1 and archived[0].parent.name == payload.content_hash[:2]


def test_raw_ecgs_are_named_by_the_senders_id_and_pseudonymised_with_the_site_secret(live: Live):
    raw = signals.read_wfdb(live.hospital.parent / "ptb-xl" / "records100" / "00000" / "00001_lr")
    ecg = EcgQuery(raw.signal, raw.fs, raw.leads, raw.units)
    results = live.client.upsert(
        [
            UpsertItem(ecg=ecg, native_id="ECG-2026-0001", patient_key="MRN-778812"),
            UpsertItem(file=EcgFile(b"<RestingECG><broken")),
            UpsertItem(ecg=ecg, native_id="bad id with spaces"),
        ],
        dataset="cardiology-a",
    )
    assert [r.status for r in results] == ["stored", "rejected", "rejected"]
    assert results[0].record_id == "cardiology-a:ECG-2026-0001"
    assert results[1].reason.startswith("items[1].file.") and results[2].reason.startswith(
        "items[2].native_id"
    )
    payload, _ = live.store.get("cardiology-a:ECG-2026-0001")
    site = Pseudonymizer(default_secret(live.root))
    assert payload.patient_id == site.patient("cardiology-a", "MRN-778812")
    assert "MRN-778812" not in payload.model_dump_json()
    found = live.client.search_by_ecg(raw.signal, raw.fs, raw.leads, units=raw.units, k=1, exact=True)
    assert found.query_record_id == "cardiology-a:ECG-2026-0001"  # the query ECG is stored: named, left out
    assert found.hits[0].record_id != found.query_record_id


def test_a_pushed_copy_is_marked_as_ingest_marks_one(live: Live):
    """A stored hospital ECG pushed again as raw samples, x5 in uV and every other 500 Hz sample dropped
    (250 Hz), under another dataset's id: the same recording, so stored duplicate_of its original."""
    ecg = read_ecg(live.hospital / "muse_guangxi_sinus_rhythm.xml")
    stored_id = intake.record_id_of("hospital", ecg.native_id, intake.hash_of(ecg))
    stored, _ = live.store.get(stored_id)
    original = stored.duplicate_of or stored_id  # its ecg2dcm DICOM, when ingested first
    raw = intake.raw_of(ecg, "x")
    copy = EcgQuery(5000 * raw.signal[:, ::2], raw.fs / 2, raw.leads, "uV")
    (pushed,) = live.client.upsert([UpsertItem(ecg=copy, native_id="guangxi-again")], dataset="copies")
    assert pushed.status == "stored"
    assert live.store.get(pushed.record_id)[0].duplicate_of == original


def test_a_bad_request_fails_as_a_whole_naming_the_field(live: Live):
    with pytest.raises(grpc.RpcError) as err:
        live.client.upsert([UpsertItem(file=EcgFile(b"x"))], dataset="no spaces allowed")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request(err.value)[0][0] == "dataset"
    with pytest.raises(grpc.RpcError) as err:
        live.client.upsert([])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_search_by_file_refuses_a_contradicting_format_hint_and_undecodable_bytes(live: Live):
    path = live.hospital / "scp_ecgtoolkit_Example.scp"
    for content, hint, field in (
        (path.read_bytes(), "dicom", "file.format_hint"),
        (b"\0" * 300, None, "file.content"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            live.client.search_by_file(content, format_hint=hint)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request(err.value)[0][0] == field


def test_every_format_is_searchable_by_file_and_finds_itself(live: Live):
    """Each file finds its own stored ECG at cosine ~1 (the SCP file ties with its aECG and DICOM
    copies, which hold the same samples)."""
    for name in ("scp_ecgtoolkit_Example.scp", "dicom_pydicom_waveform_ecg.dcm", "edf_contec_0000050.edf"):
        ecg = read_ecg(live.hospital / name)
        own = intake.record_id_of("hospital", ecg.native_id, intake.hash_of(ecg))
        found = live.client.search_by_file(
            live.hospital / name, k=4, exact=True, include_duplicates=True, include_query_record=True
        )
        assert own in {h.record_id for h in found.hits if h.score > 0.999}, name
        assert found.query_record_id is not None, name


def test_ingest_with_service_sends_a_folder_through_the_running_service(live: Live, tmp_path: Path):
    from typer.testing import CliRunner

    from ecgsearch.cli.main import app

    target = live.target
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["ingest", str(live.hospital), "--service", target, "--token-file", str(token_file), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "sent 16 to" in result.output and "rejected 0" in result.output
    ecg = read_ecg(live.hospital / HELD_OUT)
    held_out = intake.record_id_of("hospital", ecg.native_id, intake.hash_of(ecg))
    assert held_out in live.store.content_hashes([held_out])
    assert not any(p.stem in result.output for p in live.hospital.iterdir())
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "stored 0, skipped 16" in again.output


def test_pushing_through_the_qdrant_client_store_needs_a_given_secret_and_archive(
    data_dir: Path, tmp_path: Path
):
    """A Qdrant server has no folder of ours: the secret and the archive must be configured; without
    them a push is FAILED_PRECONDITION and nothing is stored. (qdrant-client's local mode stands in
    for the server: the same ServerStore code path.)"""
    from ecgsearch.search.engine.store import open_store
    from ecgsearch.search.serving.settings import ServiceSettings

    embedder = Embedder()
    store = open_store(local=True, collection="pushed")
    store.create_collection(dim=embedder.dim, model_version=embedder.version)
    path = data_dir / "hospital" / "philips_v1.04_ad4d3d80-d165.xml"  # the one with a -17 mV excursion
    try:
        bare = ServiceSettings(store_path=tmp_path / "unused")
        with (
            run_server(bare, store=store, embedder=embedder, port=0, tokens_file=_callers(tmp_path)) as (
                _,
                port,
            ),
            EcgSearchClient(f"127.0.0.1:{port}", token=TOKEN) as client,
            pytest.raises(grpc.RpcError) as err,
        ):
            client.upsert_files([path])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert store.count() == 0

        secret = tmp_path / "site-secret"
        secret.write_text("0123456789abcdef0123456789abcdef\n")
        configured = bare.model_copy(
            update={"site_secret_file": secret, "archive_path": tmp_path / "archive"}
        )
        with (
            run_server(
                configured, store=store, embedder=embedder, port=0, tokens_file=_callers(tmp_path)
            ) as (_, port),
            EcgSearchClient(f"127.0.0.1:{port}", token=TOKEN) as client,
        ):
            (pushed,) = client.upsert_files([path], dataset="site-a")
            assert pushed.status == "stored"
            found = client.search_by_file(path, k=1, include_query_record=True)
            assert found.hits[0].record_id == found.query_record_id == pushed.record_id
            assert client.get_ecg(pushed.record_id).shape == (12, signals.MODEL_SAMPLES)
        payload, _ = store.get(pushed.record_id)
        # its header's patient id is the mask '9999': no patient, so a pseudonym of its own
        assert read_ecg(path).header.patient_key == "9999"
        assert payload.patient_id == site_pseudonymizer(secret, None).lone_ecg(pushed.record_id)
        assert len(list((tmp_path / "archive").rglob("*.npz"))) == 1
    finally:
        store.close()


def test_entity_declarations_are_refused_before_any_parse(live: Live):
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b"<RestingECG>&b;</RestingECG>"
    )
    with pytest.raises(grpc.RpcError) as err:
        live.client.search_by_file(bomb)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (result,) = live.client.upsert([UpsertItem(file=EcgFile(bomb))])
    assert result.status == "rejected" and result.reason.startswith("items[0].file.")
    with pytest.raises(grpc.RpcError) as err:
        live.client.upsert([UpsertItem(file=EcgFile(b"x"))] * 65)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_getecg_returns_ingested_hospital_ecgs_from_the_stores_archive(live: Live):
    """Ingest keeps hospital exports' signals beside an embedded store (they store no path)."""
    ecg = read_ecg(live.hospital / "edf_contec_0000050.edf")
    record_id = intake.record_id_of("hospital", ecg.native_id, intake.hash_of(ecg))
    payload, _ = live.store.get(record_id)
    assert payload.archived and payload.source_path is None
    served = live.client.get_ecg(record_id)
    np.testing.assert_allclose(served, signals.prepare(intake.raw_of(ecg, record_id)), atol=1e-6)


def test_a_site_restricted_writer_pushes_into_its_site_only(data_dir: Path, tmp_path: Path) -> None:
    """A writer of one site stores pushes under that site; a writer of several sites cannot say which."""
    from ecgsearch.search.engine.store import open_store

    embedder = Embedder()
    store = open_store(local=True, collection="sited")
    store.create_collection(dim=embedder.dim, model_version=embedder.version)
    secret = tmp_path / "site-secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    settings = ServiceSettings(
        store_path=tmp_path / "unused", site_secret_file=secret, archive_path=tmp_path / "archive"
    )
    path = data_dir / "hospital" / "muse_braveheart_example1.xml"
    try:
        for sites, expected in (("north", "north"), ("north,south", None)):
            folder = tmp_path / sites.replace(",", "-")
            folder.mkdir()
            with (
                run_server(
                    settings, store=store, embedder=embedder, port=0, tokens_file=_callers(folder, sites)
                ) as (_, port),
                EcgSearchClient(f"127.0.0.1:{port}", token=TOKEN) as client,
            ):
                if expected is None:
                    with pytest.raises(grpc.RpcError) as err:
                        client.upsert_files([path])
                    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                    continue
                (pushed,) = client.upsert_files([path])
                assert pushed.status == "stored"
                assert store.get(pushed.record_id)[0].site == expected
        assert store.count() == 1
    finally:
        store.close()
