"""The audit trail: a real server on 127.0.0.1 writes one exact JSON line per request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from sited import TOKENS, Sited, auth, build, tokens_file

from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.audit import MAX_IDS, entry
from ecgsearch.search.server import run_server


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
