"""The audit trail: a real server on 127.0.0.1 writes one exact JSON line per request."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sited import TOKENS, Sited, auth, build, tokens_file

from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.serving.audit import MAX_IDS, entry
from ecgsearch.search.serving.server import SERVICE_NAME, run_server


@pytest.fixture(scope="module")
def sited(ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sited]:
    built = build(ptbxl_dir, tmp_path_factory.mktemp("audited"))
    yield built
    built.store.close()


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_search_by_a_named_caller_writes_exactly_the_expected_line(sited: Sited, tmp_path: Path) -> None:
    log = tmp_path / "audit" / "audit.jsonl"
    callers = tokens_file(tmp_path / "tokens")
    own = sited.of_site("site-a")
    before = datetime.now(UTC)
    with (
        run_server(
            store=sited.store, embedder=sited.embedder, port=0, tokens_file=callers, audit_log=log
        ) as (
            _,
            port,
        ),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.EcgSearchServiceStub(channel)
        request = pb.SearchByRecordRequest(
            record_id=own[0],
            options=pb.SearchOptions(k=3, filter=pb.Filter(age_min=18, exclude_patient_ids=["p-x"])),
        )
        reply = stub.SearchByRecord(request, metadata=(*auth("ward-a"), ("x-request-id", "audit-1")))
        with pytest.raises(grpc.RpcError):
            stub.GetEcg(pb.GetEcgRequest(record_id=own[1]), metadata=(("authorization", "Bearer wrong"),))
        record = stub.GetRecord(pb.GetRecordRequest(record_id=own[1]), metadata=auth("ops"))
    first, refused, got = _lines(log)
    moment = datetime.strptime(first.pop("time"), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC)
    assert first.pop("latency_ms") > 0
    assert first == {
        "request_id": "audit-1",
        "caller": "ward-a",
        "method": "SearchByRecord",
        "status": "OK",
        "record_ids": [own[0]],
        "patient_ids": ["p-x"],
        "filter": {"age_min": 18, "exclude_patient_ids": ["p-x"]},
        "returned": 3,
        "returned_ids": [h.record_id for h in reply.hits],
    }
    assert (refused["caller"], refused["method"], refused["status"]) == (
        "unauthenticated",
        "GetEcg",
        "UNAUTHENTICATED",
    )
    assert refused["record_ids"] == [own[1]] and refused["returned"] == 0
    assert got["caller"] == "ops" and got["returned_ids"] == [own[1]]
    assert got["patient_ids"] == [record.payload.patient_id]
    assert log.stat().st_mode & 0o037 == 0, "no one but the owner writes, others read nothing"
    text = log.read_text()
    assert not any(token in text for token in TOKENS.values()) and "wrong" not in text


def test_a_huge_request_gives_a_bounded_line() -> None:
    ids = [f"ptbxl:{i}" * 40 for i in range(1000)]
    excluded = pb.SearchOptions(filter=pb.Filter(exclude_record_ids=ids))
    request = pb.BatchSearchRequest(queries=[pb.Query(record_id=i, options=excluded) for i in ids[:200]])
    line = entry(
        request_id="r",
        caller="c",
        method="BatchSearch",
        status="OK",
        request=request,
        reply=None,
        latency_s=0.1,
    )
    assert len(line["record_ids"]) == MAX_IDS and all(len(i) <= 64 for i in line["record_ids"])
    assert isinstance(line["filter"], str) and len(line["filter"]) <= 1000
    assert len(json.dumps(line)) < 8192


# --- one line for every call, and no answer without its line --------------------------------------


def _rid(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", name),)


def test_every_call_has_exactly_one_line(sited: Sited, tmp_path: Path) -> None:
    """Answered searches and pushes, refusals by the service, by the door (cost, scope) and before it
    (credential, unknown method, a request over the message limit): one line each, with its status."""
    from ecgsearch.ecg import signals

    log = tmp_path / "audit.jsonl"
    callers = tokens_file(tmp_path / "tokens")
    own = sited.of_site("site-a")
    raw = signals.read_wfdb(
        Path(__file__).resolve().parents[3]
        / "shared"
        / "data"
        / "ptb-xl"
        / "records100"
        / "00000"
        / "00050_lr"
    )
    expected: dict[str, str] = {}
    with (
        run_server(
            store=sited.store,
            embedder=sited.embedder,
            port=0,
            tokens_file=callers,
            audit_log=log,
            max_message_mb=1,
        ) as (_, port),
        grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
        ) as channel,
    ):
        stub = pb_grpc.EcgSearchServiceStub(channel)

        def call(name: str, status: str, method, request, caller: str | None = "ward-a") -> None:
            metadata = (*(auth(caller) if caller else ()), *_rid(name))
            expected[name] = status
            try:
                method(request, metadata=metadata, timeout=60)
                got = "OK"
            except grpc.RpcError as error:
                got = error.code().name
            assert got == status, name

        vector = sited.vectors[0].tolist()
        call("search", "OK", stub.SearchByRecord, pb.SearchByRecordRequest(record_id=own[0]))
        push = pb.UpsertEcgsRequest(
            items=[
                pb.UpsertItem(
                    ecg=pb.Ecg(
                        lead_names=list(raw.leads),
                        sampling_rate_hz=raw.fs,
                        flat_samples=raw.signal.ravel().tolist(),
                        n_leads=len(raw.leads),
                    ),
                    native_id="audited-1",
                )
            ],
            dataset="pushed",
        )
        call("push", "OK", stub.UpsertEcgs, push, caller="ingest")
        call("no-token", "UNAUTHENTICATED", stub.GetEcg, pb.GetEcgRequest(record_id=own[1]), caller=None)
        call(
            "no-scope",
            "PERMISSION_DENIED",
            stub.SearchByVector,
            pb.SearchByVectorRequest(vector=vector),
            "pusher",
        )
        bad_k = pb.SearchByVectorRequest(vector=vector, options=pb.SearchOptions(k=0))
        call("bad-k", "INVALID_ARGUMENT", stub.SearchByVector, bad_k)
        call(
            "other-site",
            "NOT_FOUND",
            stub.GetRecord,
            pb.GetRecordRequest(record_id=sited.of_site("site-b")[0]),
        )
        huge = pb.BatchSearchRequest(
            queries=[pb.Query(vector=pb.Vector(values=vector), options=pb.SearchOptions(k=1000))] * 256
        )
        call("too-costly", "RESOURCE_EXHAUSTED", stub.BatchSearch, huge)
        oversized = pb.SearchByVectorRequest(vector=[0.5] * (300_000))
        call("oversized", "RESOURCE_EXHAUSTED", stub.SearchByVector, oversized)
        for name, path in (("unknown-method", f"/{SERVICE_NAME}/Nope"), ("unknown-service", "/x.Y/Z")):
            call(name, "UNIMPLEMENTED", channel.unary_unary(path), b"")
    lines = _lines(log)
    by_id = Counter(line["request_id"] for line in lines)
    assert {rid: by_id[rid] for rid in expected} == dict.fromkeys(expected, 1), by_id
    status = {line["request_id"]: line["status"] for line in lines}
    assert {rid: status[rid] for rid in expected} == expected
    pushed = next(line for line in lines if line["request_id"] == "push")
    assert (pushed["method"], pushed["returned_ids"]) == ("UpsertEcgs", ["pushed:audited-1"])
    refused = next(line for line in lines if line["request_id"] == "too-costly")
    assert "message limit" in refused["error"] and refused["caller"] == "ward-a"
    assert next(line for line in lines if line["request_id"] == "unknown-service")["method"] == "/x.Y/Z"
    assert next(line for line in lines if line["request_id"] == "oversized")["method"] == "SearchByVector"
    assert "error" not in next(line for line in lines if line["request_id"] == "search")


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest()).status


def test_an_unwritable_trail_refuses_calls_until_it_can_write_again(sited: Sited, tmp_path: Path) -> None:
    """The trail points at /dev/full: calls are refused UNAVAILABLE and health says NOT_SERVING; once the
    path leads to a writable file the server serves again and the refused calls' lines are written."""
    log = tmp_path / "audit.jsonl"
    log.symlink_to("/dev/full")
    callers = tokens_file(tmp_path / "tokens")
    request = pb.GetRecordRequest(record_id=sited.of_site("site-a")[0])
    with (
        run_server(
            store=sited.store, embedder=sited.embedder, port=0, tokens_file=callers, audit_log=log
        ) as (
            _,
            port,
        ),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.EcgSearchServiceStub(channel)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        for name in ("refused-1", "refused-2"):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetRecord(request, metadata=(*auth("ward-a"), *_rid(name)))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "audit trail" in err.value.details()
            assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        log.unlink()  # the disk is back: the path now leads to a writable file
        deadline = time.monotonic() + 30
        while _health(channel) != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert stub.GetRecord(request, metadata=(*auth("ward-a"), *_rid("served"))).payload.record_id
    lines = _lines(log)
    assert [(line["request_id"], line["status"]) for line in lines] == [
        ("refused-1", "UNAVAILABLE"),
        ("refused-2", "UNAVAILABLE"),
        ("served", "OK"),
    ]
    assert lines[0]["returned_ids"] == [] and "audit trail" in lines[0]["error"]


def test_failing_open_is_explicit(sited: Sited, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    callers = tokens_file(tmp_path / "tokens")
    request = pb.GetRecordRequest(record_id=sited.of_site("site-a")[0])
    audit_logger = logging.getLogger("ecgsearch.audit")
    audit_logger.addHandler(caplog.handler)
    try:
        with (
            run_server(
                store=sited.store,
                embedder=sited.embedder,
                port=0,
                tokens_file=callers,
                audit_log="/dev/full",
                audit_fail_open=True,
            ) as (_, port),
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = pb_grpc.EcgSearchServiceStub(channel)
            assert stub.GetRecord(request, metadata=auth("ward-a")).payload.record_id
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        audit_logger.removeHandler(caplog.handler)
    assert any(r.getMessage() == "audit line not written" for r in caplog.records)


def test_calls_past_the_concurrency_limit_are_refused_and_audited(
    corpus, fake_embedder, tmp_path: Path
) -> None:
    """A call holds the only slot (its request is still on its way): the calls refused meanwhile, and
    the held one once it is answered, each get one line. A probe can take the slot just before the held
    call arrives and have it refused instead: then that held call has its line too, and a new one starts."""
    import threading

    from ecgsearch.search.engine.store import EdgeStore
    from ecgsearch.search.serving.settings import ServiceSettings

    store = EdgeStore(tmp_path / "store", "ecgs")
    store.create_collection(dim=fake_embedder.dim, model_version=fake_embedder.version)
    store.upsert(corpus.payloads, corpus.vectors)
    log = tmp_path / "audit.jsonl"
    settings = ServiceSettings.model_construct(tokens="t").model_copy(
        update={"port": 0, "max_concurrent_rpcs": 1, "audit_log": str(log)}
    )
    token = (("authorization", "Bearer t"),)
    release = threading.Event()

    def late_request() -> Iterator[bytes]:
        release.wait(60)
        yield pb.ServerStatsRequest().SerializeToString()

    refused: list[str] = []
    helds: list[str] = []
    probes = 0
    try:
        with (
            run_server(settings, store=store, embedder=fake_embedder) as (_, port),
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = pb_grpc.EcgSearchServiceStub(channel)
            path = f"/{SERVICE_NAME}/ServerStats"
            deadline = time.monotonic() + 30
            while not refused and time.monotonic() < deadline:
                helds.append(f"held-{len(helds)}")
                held = channel.stream_unary(path, request_serializer=None, response_deserializer=None).future(
                    late_request(), metadata=(*token, *_rid(helds[-1])), timeout=60
                )
                while not refused and not held.done() and time.monotonic() < deadline:
                    name = f"probe-{probes}"
                    probes += 1
                    try:
                        stub.ServerStats(pb.ServerStatsRequest(), metadata=(*token, *_rid(name)), timeout=30)
                    except grpc.RpcError as error:
                        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                        refused.append(name)
            release.set()
            assert held.result()  # the held call is answered once its request arrives
    finally:
        release.set()
        store.close()
    assert refused, "no call was refused while another held the only slot"
    lines = _lines(log)
    assert sorted(line["request_id"] for line in lines) == sorted(
        [*helds, *(f"probe-{n}" for n in range(probes))]
    )
    line = next(line for line in lines if line["request_id"] == refused[0])
    assert line["status"] == "RESOURCE_EXHAUSTED" and "limit of 1 concurrent calls" in line["error"]
    status = {line["request_id"]: line["status"] for line in lines}
    assert status[helds[-1]] == "OK"
    assert all(status[h] == "RESOURCE_EXHAUSTED" for h in helds[:-1])


def test_the_filter_is_recorded_as_given_and_an_empty_one_as_none() -> None:
    """An empty filter message (what clients send with no conditions) records as no filter; a condition
    set to zero is still a condition."""

    def recorded(options: pb.SearchOptions | None) -> object:
        request = pb.SearchByVectorRequest(options=options) if options else pb.SearchByVectorRequest()
        return entry(
            request_id="r",
            caller="c",
            method="SearchByVector",
            status="OK",
            request=request,
            reply=None,
            latency_s=0.0,
        )["filter"]

    assert recorded(None) is None
    assert recorded(pb.SearchOptions(k=3, filter=pb.Filter())) is None
    assert recorded(pb.SearchOptions(filter=pb.Filter(age_min=0))) == {"age_min": 0}
    assert recorded(pb.SearchOptions(filter=pb.Filter(sex=pb.SEX_FEMALE))) == {"sex": "SEX_FEMALE"}
