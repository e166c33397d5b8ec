"""Prometheus metrics: scrape /metrics of a real server on 127.0.0.1 after known calls."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sited import Sited, auth, build, tokens_file

from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.serving.server import run_server
from ecgsearch.search.serving.telemetry import Telemetry, quantile


@pytest.fixture(scope="module")
def sited(ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sited]:
    built = build(ptbxl_dir, tmp_path_factory.mktemp("measured"), n=12)
    yield built
    built.store.close()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_calls_by_method_and_code(sited: Sited, tmp_path: Path) -> None:
    telemetry = Telemetry()
    callers = tokens_file(tmp_path / "tokens")
    with (
        run_server(
            store=sited.store,
            embedder=sited.embedder,
            port=0,
            tokens_file=callers,
            metrics_port=0,
            telemetry=telemetry,
        ) as (_, port),
        grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
    ):
        stub = pb_grpc.EcgSearchServiceStub(channel)
        for _ in range(3):
            stub.CollectionInfo(pb.CollectionInfoRequest(), metadata=auth("ops"))
        for request in (pb.GetRecordRequest(record_id="ptbxl:999999"), pb.GetRecordRequest(record_id="")):
            with pytest.raises(grpc.RpcError):
                stub.GetRecord(request, metadata=auth("ops"))
        with pytest.raises(grpc.RpcError):
            stub.CollectionInfo(pb.CollectionInfoRequest(), metadata=(("authorization", "Bearer no"),))
        assert telemetry.http_port is not None
        scraped = _scrape(telemetry.http_port)
        stats = stub.ServerStats(pb.ServerStatsRequest(), metadata=auth("ops"))

    def requests(method: str, code: str) -> float:
        return scraped[("ecgsearch_rpc_requests_total", (("code", code), ("method", method)))]

    assert requests("CollectionInfo", "OK") == 3
    assert requests("CollectionInfo", "UNAUTHENTICATED") == 1
    assert requests("GetRecord", "NOT_FOUND") == 1
    assert requests("GetRecord", "INVALID_ARGUMENT") == 1
    assert scraped[("ecgsearch_rpc_latency_seconds_count", (("method", "CollectionInfo"),))] == 4
    assert scraped[("ecgsearch_rpc_latency_seconds_bucket", (("le", "+Inf"), ("method", "GetRecord")))] == 2
    assert scraped[("ecgsearch_rpc_in_flight", ())] == 0
    assert scraped[("ecgsearch_heavy_calls", (("state", "waiting"),))] == 0
    assert scraped[("ecgsearch_heavy_budget_bytes", (("kind", "capacity"),))] == 32 * 1024 * 1024
    assert scraped[("ecgsearch_store_points", ())] == len(sited.payloads)
    version = (("dim", str(sited.embedder.dim)), ("version", sited.embedder.version))
    assert scraped[("ecgsearch_model_info", version)] == 1
    assert any(name == "ecgsearch_build_info" and value == 1 for (name, _), value in scraped.items())
    rows = {r.method: r for r in stats.rpcs}  # ServerStats reads the same counters
    assert (rows["CollectionInfo"].count, rows["CollectionInfo"].errors) == (4, 1)
    assert (rows["GetRecord"].count, rows["GetRecord"].errors) == (2, 2)
    assert 0 < rows["CollectionInfo"].p50_ms <= rows["CollectionInfo"].p99_ms


def test_quantile_interpolates_inside_the_bucket() -> None:
    cumulative = [(0.01, 10.0), (0.1, 30.0), (1.0, 40.0), (math.inf, 40.0)]
    assert quantile(cumulative, 0.25) == pytest.approx(0.01)  # rank 10: the first bucket's top
    assert quantile(cumulative, 0.5) == pytest.approx(0.01 + 0.09 * 10 / 20)
    assert quantile(cumulative, 1.0) == pytest.approx(1.0)
    assert quantile([(0.1, 0.0), (math.inf, 0.0)], 0.5) == 0.0
    assert quantile([(0.1, 1.0), (math.inf, 3.0)], 0.9) == pytest.approx(0.1)  # beyond: the last bound
