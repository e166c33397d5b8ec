"""The gRPC service end to end: a real server on 127.0.0.1, a real embedded store, the bundled ONNX model."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from typer.testing import CliRunner

from ecgsearch.bench.metrics import exact_topk
from ecgsearch.cli.main import app
from ecgsearch.ecg import codes, signals
from ecgsearch.ecg.schema import MAX_K, EcgPayload
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest import sources
from ecgsearch.search import wire
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.client import EcgSearchClient
from ecgsearch.search.engine.store import EdgeStore
from ecgsearch.search.serving.server import SERVICE_NAME, run_server
from ecgsearch.search.serving.settings import ServiceSettings
from ecgsearch.search.summary import MIN_COUNT, evidence

N_RECORDS = 60
TOKEN = "t"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
MAX_MESSAGE_MB = 2


@dataclass(frozen=True)
class Served:
    """A running server over a known corpus: what the tests compare the service against."""

    target: str
    channel: grpc.Channel
    stub: pb_grpc.EcgSearchServiceStub
    payloads: list[EcgPayload]
    vectors: np.ndarray
    paths: list[Path]
    store: EdgeStore
    embedder: Embedder


@pytest.fixture(scope="module")
def grpc_server(ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """60 PTB-XL records embedded with the bundled model in an embedded store, served on a free port."""
    embedder = Embedder()
    candidates = list(sources.select(sources.enumerate_source(ptbxl_dir), limit=N_RECORDS))
    records = [sources.load(c) for c in candidates]
    vectors = embedder.embed(np.stack([r.signal for r in records]))
    store = EdgeStore(tmp_path_factory.mktemp("served") / "store", "ecgs")
    store.create_collection(dim=embedder.dim, model_version=embedder.version)
    store.upsert([r.payload for r in records], vectors)
    store.optimize()
    try:
        with run_server(
            store=store, embedder=embedder, port=0, token=TOKEN, max_message_mb=MAX_MESSAGE_MB
        ) as (_, port):
            target = f"127.0.0.1:{port}"
            with grpc.insecure_channel(target) as channel:
                yield Served(
                    target,
                    channel,
                    pb_grpc.EcgSearchServiceStub(channel),
                    [r.payload for r in records],
                    vectors,
                    [c.path for c in candidates],
                    store,
                    embedder,
                )
    finally:
        store.close()


def _code(call, request, **kwargs) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, metadata=kwargs.pop("metadata", AUTH), **kwargs)
    return info.value.code(), info.value.details()


def _brute_force(served: Served, query: np.ndarray, keep, k: int) -> list[str]:
    """The one exact reference (``bench.metrics.exact_topk``) over the rows ``keep`` accepts."""
    mask = np.array([keep(p) for p in served.payloads])
    ids, _ = exact_topk(query[None, :], served.vectors, k, mask=mask)
    return [served.payloads[i].record_id for i in ids[0] if i >= 0]


# --- auth, health, reflection --------------------------------------------------------------------


def test_token_required(grpc_server: Served) -> None:
    request = pb.CollectionInfoRequest()
    assert _code(grpc_server.stub.CollectionInfo, request, metadata=())[0] == grpc.StatusCode.UNAUTHENTICATED
    wrong = (("authorization", "Bearer nope"),)
    assert (
        _code(grpc_server.stub.CollectionInfo, request, metadata=wrong)[0] == grpc.StatusCode.UNAUTHENTICATED
    )
    assert grpc_server.stub.CollectionInfo(request, metadata=AUTH).count == N_RECORDS


def test_health_serving_without_token(grpc_server: Served) -> None:
    stub = health_pb2_grpc.HealthStub(grpc_server.channel)
    for service in ("", SERVICE_NAME):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(grpc_server: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc_server.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


def test_request_id_is_echoed(grpc_server: Served) -> None:
    metadata = (*AUTH, ("x-request-id", "req-123"))
    _, call = grpc_server.stub.CollectionInfo.with_call(pb.CollectionInfoRequest(), metadata=metadata)
    assert ("x-request-id", "req-123") in tuple(call.trailing_metadata())
    _, call = grpc_server.stub.CollectionInfo.with_call(pb.CollectionInfoRequest(), metadata=AUTH)
    assert dict(call.trailing_metadata())["x-request-id"]


def test_a_request_stream_without_a_message_is_invalid_argument(grpc_server: Served) -> None:
    """A message over the limit also first reads as an empty stream (test_audit checks that one)."""
    empty = grpc_server.channel.stream_unary(f"/{SERVICE_NAME}/CollectionInfo")
    with pytest.raises(grpc.RpcError) as info:
        empty(iter(()), metadata=AUTH, timeout=30)
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request: no request message",
    )
    dim = grpc_server.vectors.shape[1]
    assert len(
        grpc_server.stub.SearchByVector(pb.SearchByVectorRequest(vector=[0.1] * dim), metadata=AUTH).hits
    )


def test_no_tokens_refused_unless_insecure(grpc_server: Served) -> None:
    with pytest.raises(ValueError, match="no bearer tokens"), run_server(port=0):
        pass


def _pem(tmp_path: Path, name: str, *sign_with: str) -> tuple[Path, Path]:
    """A key and certificate for 127.0.0.1 via openssl: self-signed, or signed by (ca_cert, ca_key)."""
    key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    subject = ["-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1"]
    if not sign_with:
        command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject]
        subprocess.run([*command, "-keyout", key, "-out", cert], check=True, capture_output=True)
        return cert, key
    csr = tmp_path / f"{name}.csr"
    subprocess.run(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, *subject[:2]],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            "openssl",
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            sign_with[0],
            "-CAkey",
            sign_with[1],
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_mutual_tls(grpc_server: Served, tmp_path: Path) -> None:
    server_cert, server_key = _pem(tmp_path, "server")
    ca_cert, ca_key = _pem(tmp_path, "ca")
    client_cert, client_key = _pem(tmp_path, "client", str(ca_cert), str(ca_key))
    settings = ServiceSettings.model_construct(
        tls_cert=server_cert, tls_key=server_key, tls_client_ca=ca_cert, tokens=TOKEN
    ).model_copy(update={"port": 0})
    with run_server(settings, store=grpc_server.store, embedder=grpc_server.embedder) as (_, port):
        target = f"127.0.0.1:{port}"
        mtls = {"root_cert": server_cert, "client_cert": client_cert, "client_key": client_key, "timeout": 10}
        with EcgSearchClient(target, token=TOKEN, **mtls) as client:
            assert client.info().count == N_RECORDS
        with EcgSearchClient(target, token=TOKEN, root_cert=server_cert, timeout=10) as anonymous:
            with pytest.raises(grpc.RpcError) as refused:
                anonymous.info()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        record = grpc_server.payloads[0].record_id
        args = ["query", "--target", target, "--record-id", record, "--json"]
        certs = ["--ca", str(server_cert), "--cert", str(client_cert), "--key", str(client_key)]
        runner = CliRunner()
        found = runner.invoke(app, [*args, *certs], env={"ECGSEARCH_TOKEN": TOKEN})
        assert found.exit_code == 0, found.output
        assert len(json.loads(found.stdout)["hits"]) == 10
        untrusted = runner.invoke(app, [*args, "--ca", str(server_cert)], env={"ECGSEARCH_TOKEN": TOKEN})
        assert untrusted.exit_code == 6


# --- search results ------------------------------------------------------------------------------


def test_filtered_search_equals_brute_force(grpc_server: Served) -> None:
    query = grpc_server.vectors[3]
    code = codes.resolve("SR")
    request = pb.SearchByVectorRequest(
        vector=query.tolist(),
        options=pb.SearchOptions(
            k=7, exact=True, filter=pb.Filter(diagnoses_any=["SR"], age_min=40, age_max=80, sex=pb.SEX_MALE)
        ),
    )
    reply = grpc_server.stub.SearchByVector(request, metadata=AUTH)

    def keep(p: EcgPayload) -> bool:
        return code in p.diagnoses and p.age is not None and 40 <= p.age <= 80 and p.sex == "M"

    expected = _brute_force(grpc_server, query, keep, 7)
    assert [h.record_id for h in reply.hits] == expected
    scores = {p.record_id: float(grpc_server.vectors[i] @ query) for i, p in enumerate(grpc_server.payloads)}
    assert [h.score for h in reply.hits] == pytest.approx([scores[r] for r in expected], abs=1e-4)
    assert expected, "the filter keeps some records"


def test_search_by_record_excludes_itself_and_its_patient(grpc_server: Served) -> None:
    """Served as evaluated: the query's patient is left out unless asked for (ptbxl:17, 18, 20 share one)."""
    index = next(i for i, p in enumerate(grpc_server.payloads) if p.record_id == "ptbxl:17")
    record = grpc_server.payloads[index]
    siblings = {p.record_id for p in grpc_server.payloads if p.patient_id == record.patient_id} - {
        record.record_id
    }
    assert siblings, "the fixture holds other ECGs of this patient"
    options = pb.SearchOptions(k=10, exact=True, with_summary=True)
    reply = grpc_server.stub.SearchByRecord(
        pb.SearchByRecordRequest(record_id=record.record_id, options=options), metadata=AUTH
    )
    ids = [h.record_id for h in reply.hits]
    expected = _brute_force(
        grpc_server, grpc_server.vectors[index], lambda p: p.patient_id != record.patient_id, 10
    )
    assert ids == expected and not siblings & set(ids)
    assert list(reply.summary.exclusions) == [
        pb.EXCLUSION_QUERY_RECORD,
        pb.EXCLUSION_SAME_PATIENT,
        pb.EXCLUSION_DUPLICATE_COPY,
    ]

    reply = grpc_server.stub.SearchByRecord(
        pb.SearchByRecordRequest(record_id=record.record_id, options=options, include_same_patient=True),
        metadata=AUTH,
    )
    ids = [h.record_id for h in reply.hits]
    expected = _brute_force(
        grpc_server, grpc_server.vectors[index], lambda p: p.record_id != record.record_id, 10
    )
    assert ids == expected and siblings & set(ids)
    assert list(reply.summary.exclusions) == [pb.EXCLUSION_QUERY_RECORD, pb.EXCLUSION_DUPLICATE_COPY]
    batch = grpc_server.stub.BatchSearch(
        pb.BatchSearchRequest(
            queries=[
                pb.Query(record_id=record.record_id, options=options),
                pb.Query(record_id=record.record_id, options=options, include_same_patient=True),
            ]
        ),
        metadata=AUTH,
    )
    assert not siblings & {h.record_id for h in batch.results[0].hits}
    assert [h.record_id for h in batch.results[1].hits] == ids


def test_search_by_raw_ecg_finds_the_record_first(grpc_server: Served) -> None:
    raw = signals.read_wfdb(grpc_server.paths[8])
    with EcgSearchClient(grpc_server.target, token=TOKEN) as client:
        result = client.search_by_ecg(raw.signal, raw.fs, raw.leads, units=raw.units, k=3)
        assert result.query_record_id == grpc_server.payloads[8].record_id  # stored: named, left out
        assert grpc_server.payloads[8].record_id not in {h.record_id for h in result.hits}
        result = client.search_by_ecg(
            raw.signal, raw.fs, raw.leads, units=raw.units, k=3, include_query_record=True
        )
        assert result.hits[0].record_id == grpc_server.payloads[8].record_id
        assert result.hits[0].score == pytest.approx(1.0, abs=1e-3)
        # the per-lead form of the same ECG gives the same answer
        ecg = pb.Ecg(
            lead_names=list(raw.leads),
            sampling_rate_hz=raw.fs,
            units=wire.units_to_proto(raw.units),
            leads=[pb.LeadSamples(values=lead.tolist()) for lead in raw.signal],
        )
        itself = pb.SearchOptions(include_query_record=True)
        reply = grpc_server.stub.SearchByEcg(pb.SearchByEcgRequest(ecg=ecg, options=itself), metadata=AUTH)
        assert reply.hits[0].record_id == reply.query_record_id == grpc_server.payloads[8].record_id


def test_summary_counts_and_enrichment(grpc_server: Served) -> None:
    info = grpc_server.stub.CollectionInfo(pb.CollectionInfoRequest(), metadata=AUTH)
    record = grpc_server.payloads[0]
    reply = grpc_server.stub.SearchByRecord(
        pb.SearchByRecordRequest(
            record_id=record.record_id, options=pb.SearchOptions(k=12, exact=True, with_summary=True)
        ),
        metadata=AUTH,
    )
    hits = {h.record_id for h in reply.hits}
    neighbours = [p for p in grpc_server.payloads if p.record_id in hits]
    summary = reply.summary
    assert summary.n_neighbours == 12 and summary.collection_count == N_RECORDS
    total = {
        c: sum(c in p.diagnoses for p in grpc_server.payloads)
        for p in grpc_server.payloads
        for c in p.diagnoses
    }
    for row in summary.diagnoses:
        count = sum(row.code in p.diagnoses for p in neighbours)
        assert row.count == count
        assert row.fraction == pytest.approx(count / 12)
        assert row.base_rate == pytest.approx(total[row.code] / N_RECORDS)
        assert info.diagnosis_counts[row.code] == total[row.code]
        assert row.enrichment == pytest.approx((count / 12) / (total[row.code] / N_RECORDS))
        assert row.in_query == (row.code in record.diagnoses)
        assert row.description == codes.describe(row.code)
        seen = evidence(row, 12)  # the one highlight rule, as the CLI and the viewer apply it
        assert row.highlighted is seen.highlighted
        assert (row.enrichment_low, row.enrichment_high) == pytest.approx((seen.low, seen.high))
        assert row.enrichment_low <= row.enrichment <= row.enrichment_high
        if 0 < count < 12:  # a share of 0 or 1 is its interval's own bound
            assert row.enrichment_low < row.enrichment < row.enrichment_high
        assert row.highlighted == (row.count >= MIN_COUNT and row.enrichment_low > 1)
    assert {r.code for r in summary.diagnoses} == {c for p in neighbours for c in p.diagnoses}
    back = wire.summary_from_proto(summary)  # what a Python client reads carries the same decision
    assert [r.highlighted for r in back.diagnoses] == [r.highlighted for r in summary.diagnoses]
    assert [r.enrichment_low for r in back.diagnoses] == [r.enrichment_low for r in summary.diagnoses]


def test_batch_mixes_query_kinds(grpc_server: Served) -> None:
    raw = signals.read_wfdb(grpc_server.paths[2])
    request = pb.BatchSearchRequest(
        queries=[
            pb.Query(record_id=grpc_server.payloads[1].record_id, options=pb.SearchOptions(k=4)),
            pb.Query(
                ecg=pb.Ecg(
                    lead_names=list(raw.leads),
                    sampling_rate_hz=raw.fs,
                    flat_samples=raw.signal.ravel().tolist(),
                    n_leads=len(raw.leads),
                ),
                options=pb.SearchOptions(k=2, include_query_record=True),
            ),
            pb.Query(vector=pb.Vector(values=grpc_server.vectors[4].tolist())),
        ]
    )
    reply = grpc_server.stub.BatchSearch(request, metadata=AUTH)
    assert [len(r.hits) for r in reply.results] == [4, 2, 10]
    assert reply.results[1].hits[0].record_id == grpc_server.payloads[2].record_id
    assert reply.results[1].query_record_id == grpc_server.payloads[2].record_id
    assert reply.results[2].hits[0].record_id == grpc_server.payloads[4].record_id


def test_get_record_and_info(grpc_server: Served) -> None:
    with EcgSearchClient(grpc_server.target, token=TOKEN) as client:
        payload, vector = client.get_record(grpc_server.payloads[7].record_id, with_vector=True)
        assert payload == grpc_server.payloads[7].model_copy(update={"fingerprint": None})  # never sent
        assert vector == pytest.approx(grpc_server.vectors[7], abs=1e-6)
        info, card = client.info(), client.model_card()
        assert info.count == N_RECORDS and info.dim == card.embedding_dim
        assert info.model_version == card.version
        assert client.last_request_id
        stats = client.stats()
        assert (
            stats["GetRecord"]["count"] >= 1 and stats["GetRecord"]["p99_ms"] >= stats["GetRecord"]["p50_ms"]
        )


# --- bad input -----------------------------------------------------------------------------------


def test_bad_input_is_reported_and_the_server_keeps_answering(grpc_server: Served) -> None:
    stub = grpc_server.stub
    raw = signals.read_wfdb(grpc_server.paths[0])
    dim = grpc_server.vectors.shape[1]

    def ecg(signal: np.ndarray, leads: list[str]) -> pb.SearchByEcgRequest:
        flat = signal.ravel().tolist()
        return pb.SearchByEcgRequest(
            ecg=pb.Ecg(lead_names=leads, sampling_rate_hz=raw.fs, flat_samples=flat, n_leads=len(signal))
        )

    nan = raw.signal.copy()
    nan[3, 10] = np.nan
    inf = raw.signal.copy()
    inf[0, 0] = np.inf
    cases = [
        (stub.SearchByEcg, ecg(raw.signal[:2], ["V1", "V2"]), "INVALID_ARGUMENT", "missing leads"),
        (stub.SearchByEcg, ecg(nan, list(raw.leads)), "INVALID_ARGUMENT", "NaN or infinite"),
        (stub.SearchByEcg, ecg(inf, list(raw.leads)), "INVALID_ARGUMENT", "NaN or infinite"),
        (stub.SearchByEcg, ecg(raw.signal, list(raw.leads)[:11]), "INVALID_ARGUMENT", "lead names"),
        (
            stub.SearchByVector,
            pb.SearchByVectorRequest(vector=[0.1] * (dim - 1)),
            "INVALID_ARGUMENT",
            f"{dim}",
        ),
        (
            stub.SearchByVector,
            pb.SearchByVectorRequest(vector=[float("nan")] * dim),
            "INVALID_ARGUMENT",
            "NaN",
        ),
        (
            stub.SearchByRecord,
            pb.SearchByRecordRequest(record_id="ptbxl:999999"),
            "NOT_FOUND",
            "ptbxl:999999",
        ),
        (stub.GetRecord, pb.GetRecordRequest(record_id="nope"), "NOT_FOUND", "nope"),
        (
            stub.SearchByRecord,
            pb.SearchByRecordRequest(
                record_id=grpc_server.payloads[0].record_id,
                options=pb.SearchOptions(filter=pb.Filter(age_min=70, age_max=20)),
            ),
            "INVALID_ARGUMENT",
            "age_min 70 > age_max 20",
        ),
        (
            stub.SearchByVector,
            pb.SearchByVectorRequest(
                vector=grpc_server.vectors[0].tolist(),
                options=pb.SearchOptions(filter=pb.Filter(diagnoses_any=["NOT-A-CODE"])),
            ),
            "INVALID_ARGUMENT",
            "unknown diagnosis code 'NOT-A-CODE'",
        ),
        (
            stub.SearchByVector,
            pb.SearchByVectorRequest(vector=grpc_server.vectors[0].tolist(), options=pb.SearchOptions(k=0)),
            "INVALID_ARGUMENT",
            "options.k: must be between 1 and",
        ),
        (
            stub.SearchByVector,
            pb.SearchByVectorRequest(
                vector=grpc_server.vectors[0].tolist(), options=pb.SearchOptions(k=MAX_K + 1)
            ),
            "INVALID_ARGUMENT",
            "options.k: must be between 1 and",
        ),
        (
            stub.SearchByVector,
            pb.SearchByVectorRequest(
                vector=grpc_server.vectors[0].tolist(), options=pb.SearchOptions(filter=pb.Filter(sex=7))
            ),
            "INVALID_ARGUMENT",
            "sex",
        ),
        (
            stub.BatchSearch,
            pb.BatchSearchRequest(queries=[pb.Query()]),
            "INVALID_ARGUMENT",
            "give exactly one of record_id",
        ),
    ]
    for call, request, code, fragment in cases:
        got, details = _code(call, request)
        assert (got.name, fragment in details) == (code, True), details
        assert "Traceback" not in details
    oversized = pb.SearchByVectorRequest(vector=[0.0] * (MAX_MESSAGE_MB * 1024 * 1024 // 4 + 1000))
    assert _code(stub.SearchByVector, oversized)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.CollectionInfo(pb.CollectionInfoRequest(), metadata=AUTH).count == N_RECORDS


def test_deadline_exceeded(grpc_server: Served) -> None:
    raw = signals.read_wfdb(grpc_server.paths[0])
    ecg = pb.Ecg(
        lead_names=list(raw.leads),
        sampling_rate_hz=raw.fs,
        flat_samples=raw.signal.ravel().tolist(),
        n_leads=12,
    )
    request = pb.BatchSearchRequest(queries=[pb.Query(ecg=ecg)] * 64)
    code, _ = _code(grpc_server.stub.BatchSearch, request, timeout=0.05)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert grpc_server.stub.CollectionInfo(pb.CollectionInfoRequest(), metadata=AUTH).count == N_RECORDS


# --- client and CLI ------------------------------------------------------------------------------


def test_query_command_against_the_live_server(grpc_server: Served) -> None:
    record = grpc_server.payloads[4]
    runner = CliRunner()
    args = ["query", "--target", grpc_server.target, "--record-id", record.record_id, "--k", "3"]
    result = runner.invoke(app, [*args, "--json", "--summary"], env={"ECGSEARCH_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["hits"]) == 3 and document["summary"]["n_neighbours"] == 3
    assert record.record_id not in {h["record_id"] for h in document["hits"]}

    table = runner.invoke(app, args, env={"ECGSEARCH_TOKEN": TOKEN})
    assert table.exit_code == 0 and document["hits"][0]["record_id"] in table.stdout

    wfdb = runner.invoke(
        app,
        [
            "query",
            "--target",
            grpc_server.target,
            "--wfdb",
            str(grpc_server.paths[4]),
            "--json",
        ],
        env={"ECGSEARCH_TOKEN": TOKEN},
    )
    assert wfdb.exit_code == 0, wfdb.output
    found = json.loads(wfdb.stdout)  # the query ECG is stored: named, and left out of the hits
    assert found["query_record_id"] == record.record_id
    assert record.record_id not in {h["record_id"] for h in found["hits"]}

    denied = runner.invoke(app, args)
    assert denied.exit_code == 4 and "UNAUTHENTICATED" in denied.stderr
    bad = runner.invoke(app, [*args, "--diagnosis", "NOT-A-CODE"], env={"ECGSEARCH_TOKEN": TOKEN})
    assert bad.exit_code == 2 and "INVALID_ARGUMENT" in bad.stderr and "NOT-A-CODE" in bad.stderr
    missing = ["query", "--target", grpc_server.target, "--record-id", "ptbxl:999999"]
    gone = runner.invoke(app, missing, env={"ECGSEARCH_TOKEN": TOKEN})
    assert gone.exit_code == 5 and "NOT_FOUND" in gone.stderr
    unreachable = [*args, "--target", "127.0.0.1:1", "--timeout", "2"]
    nobody = runner.invoke(app, unreachable, env={"ECGSEARCH_TOKEN": TOKEN})
    assert nobody.exit_code == 6 and "UNAVAILABLE" in nobody.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_reports_environment_problems_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["serve", "--store", str(tmp_path / "none"), "--insecure"]
    level = runner.invoke(app, [*base, "--log-level", "LOUD"])
    assert level.exit_code == 2 and "log level must be one of" in level.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = runner.invoke(app, [*base, "--port", str(port)])
    assert busy.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    cert, _ = _pem(tmp_path, "one")
    _, other_key = _pem(tmp_path, "two")
    tls = ["--tls-cert", str(cert), "--tls-key", str(other_key), "--port", str(_free_port())]
    mismatch = runner.invoke(app, [*base, *tls])
    assert mismatch.exit_code == 1 and "does not match certificate" in mismatch.stderr
    remote = runner.invoke(app, [*base, "--host", "0.0.0.0", "--port", str(_free_port())])
    assert remote.exit_code == 1 and "refusing to serve without authentication" in remote.stderr
    for result in (level, busy, mismatch, remote):
        assert "Traceback" not in result.output


# --- GetEcg and error details --------------------------------------------------------------------


def test_get_ecg_reads_the_source_file_when_reachable(grpc_server: Served, ptbxl_dir: Path) -> None:
    record = grpc_server.payloads[6]
    expected = signals.load(grpc_server.paths[6])
    code, details = _code(grpc_server.stub.GetEcg, pb.GetEcgRequest(record_id=record.record_id))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "ECGSEARCH_ECG_ROOTS" in details
    assert _code(grpc_server.stub.GetEcg, pb.GetEcgRequest(record_id="ptbxl:999999"))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    settings = ServiceSettings.model_construct(tokens=TOKEN, ecg_roots=str(ptbxl_dir)).model_copy(
        update={"port": 0}
    )
    served = run_server(settings, store=grpc_server.store, embedder=grpc_server.embedder)
    with served as (_, port), EcgSearchClient(f"127.0.0.1:{port}", token=TOKEN) as client:
        prepared = client.get_ecg(record.record_id)
    assert prepared.shape == (12, signals.MODEL_SAMPLES) and prepared.dtype == np.float32
    np.testing.assert_array_equal(prepared, expected)


def test_get_ecg_as_recorded_reads_the_file_at_its_own_rate(
    grpc_server: Served, ptbxl_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As recorded: PTB-XL's 500 Hz file where a root holds it, else the stored 100 Hz file, every sample
    as read; a recording over the declared bound is refused, naming the record and the bound."""
    from ecgsearch.search.serving import service

    record = grpc_server.payloads[6]
    assert record.source_path is not None and record.source_path.startswith("records100/")
    low_only = tmp_path / "low"  # a root with the 100 Hz file only (copied: roots refuse links outside)
    (low_only / record.source_path).parent.mkdir(parents=True)
    for suffix in (".hea", ".dat"):
        source = ptbxl_dir / f"{record.source_path}{suffix}"
        (low_only / f"{record.source_path}{suffix}").write_bytes(source.read_bytes())
    high = signals.read_wfdb(
        ptbxl_dir
        / "records500"
        / Path(record.source_path).parent.name
        / f"{Path(record.source_path).name[:5]}_hr"
    )
    low = signals.read_wfdb(ptbxl_dir / record.source_path)

    def recorded(root: Path):
        settings = ServiceSettings.model_construct(tokens=TOKEN, ecg_roots=str(root)).model_copy(
            update={"port": 0}
        )
        served = run_server(settings, store=grpc_server.store, embedder=grpc_server.embedder)
        with served as (_, port), EcgSearchClient(f"127.0.0.1:{port}", token=TOKEN) as client:
            return client.recorded_ecg(record.record_id)

    at_500 = recorded(ptbxl_dir)
    assert (at_500.fs, at_500.signal.shape, at_500.signal.dtype) == (500.0, (12, 5000), np.float32)
    np.testing.assert_array_equal(at_500.signal, signals.recorded(high))
    at_100 = recorded(low_only)
    assert (at_100.fs, at_100.signal.shape) == (100.0, (12, 1000))
    np.testing.assert_array_equal(at_100.signal, signals.recorded(low))
    monkeypatch.setattr(service, "MAX_RECORDED_SAMPLES", 4000)
    with pytest.raises(grpc.RpcError) as refused:
        recorded(ptbxl_dir)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "5,000 samples per lead" in refused.value.details() and "at most 4,000" in refused.value.details()
    assert record.record_id in refused.value.details()


def test_invalid_argument_names_the_field_in_bad_request_details(grpc_server: Served) -> None:
    from ecgsearch.search.client import bad_request

    with EcgSearchClient(grpc_server.target, token=TOKEN) as client:
        with pytest.raises(grpc.RpcError) as error:
            client.search_by_vector(grpc_server.vectors[0], k=0)
        assert bad_request(error.value) == [("options.k", "must be between 1 and 1000, got 0")]
        with pytest.raises(grpc.RpcError) as error:
            client.search_by_record("ptbxl:1", diagnoses_any=["AF", "NOT-A-CODE"])
        ((field, description),) = bad_request(error.value)
        assert field == "options.filter.diagnoses_any[1]" and "'NOT-A-CODE'" in description
        with pytest.raises(grpc.RpcError) as error:
            client.search_by_record("ptbxl:999999")
        assert error.value.code() == grpc.StatusCode.NOT_FOUND and bad_request(error.value) == []


def test_get_ecg_as_recorded_returns_a_challenge_record_whole_at_1000_hz(
    grpc_server: Served, data_dir: Path, tmp_path: Path
) -> None:
    """A Challenge PTB record of 115.2 s at 1 kHz (the longest in the shared data) comes back whole at its
    own rate: 5.5 MB, within the 120,000-sample bound and the default 16 MiB message."""
    root = data_dir / "challenge"
    candidates = [c for c in sources.enumerate_source(root / "ptb") if c.record_id.endswith("S0002")]
    records = [sources.load(c) for c in candidates]
    assert [r.payload.source_path for r in records] == ["S0002"]
    store = EdgeStore(tmp_path / "store", "ecgs")
    store.create_collection(dim=grpc_server.embedder.dim, model_version=grpc_server.embedder.version)
    store.upsert(
        [r.payload for r in records], grpc_server.embedder.embed(np.stack([r.signal for r in records]))
    )
    settings = ServiceSettings.model_construct(tokens=TOKEN, ecg_roots=str(root / "ptb")).model_copy(
        update={"port": 0}
    )
    try:
        served = run_server(settings, store=store, embedder=grpc_server.embedder)
        with served as (_, port), EcgSearchClient(f"127.0.0.1:{port}", token=TOKEN) as client:
            recorded = client.recorded_ecg(records[0].payload.record_id)
    finally:
        store.close()
    raw = signals.read_wfdb(root / "ptb" / "S0002")
    assert (recorded.fs, recorded.signal.shape) == (1000.0, (12, 115_200))
    np.testing.assert_array_equal(recorded.signal, signals.recorded(raw))
