"""Hostile requests against a real server on a loopback port: refused before any work, bounded cost.

Every case of ``hostile_cases`` must answer its client-error status with a short message, prepare no
ECG (the server's own ``ecgs_prepared`` counter) and leave the process's peak memory within a
generous bound; a cancelled or expired batch must stop preparing. No timing asserts.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from hostile_cases import cases, send

from ecgsearch.ecg import signals
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.engine.store import EdgeStore
from ecgsearch.search.serving.server import MAX_MESSAGE_CHARS, run_server
from ecgsearch.search.serving.service import MAX_BATCH, SearchService

TOKEN = "t"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
RSS_BOUND_MB = 200


@dataclass(frozen=True)
class Hostile:
    channel: grpc.Channel
    stub: pb_grpc.EcgSearchServiceStub
    dim: int


@pytest.fixture(scope="module")
def hostile(corpus, fake_embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    store = EdgeStore(tmp_path_factory.mktemp("hostile") / "store", "ecgs")
    store.create_collection(dim=fake_embedder.dim, model_version=fake_embedder.version)
    store.upsert(corpus.payloads, corpus.vectors)
    try:
        with (
            run_server(store=store, embedder=fake_embedder, port=0, token=TOKEN) as (_, port),
            grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
            ) as channel,
        ):
            yield Hostile(channel, pb_grpc.EcgSearchServiceStub(channel), fake_embedder.dim)
    finally:
        store.close()


def _stats(hostile: Hostile) -> pb.ServerStatsResponse:
    return hostile.stub.ServerStats(pb.ServerStatsRequest(), metadata=AUTH)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def test_every_hostile_request_is_refused_before_any_work(
    hostile: Hostile, caplog: pytest.LogCaptureFixture
) -> None:
    prepared = _stats(hostile).ecgs_prepared
    peak = _peak_rss_mb()
    server_log = logging.getLogger("ecgsearch.server")
    server_log.addHandler(caplog.handler)  # `serve` may have stopped propagation to the root logger
    try:
        with caplog.at_level(logging.INFO, logger="ecgsearch.server"):
            for case in cases(hostile.dim):
                code, details, _ = send(hostile.channel, case, AUTH)
                assert code in case.expected, (case.name, code, details)
                assert 0 < len(details) <= MAX_MESSAGE_CHARS, (case.name, details)
                for filler in ("x" * 40, "A" * 40, "I" * 40):
                    assert filler not in details, case.name
    finally:
        server_log.removeHandler(caplog.handler)
    assert _stats(hostile).ecgs_prepared == prepared
    assert _peak_rss_mb() - peak < RSS_BOUND_MB
    lines = [json.dumps(r.fields) for r in caplog.records if hasattr(r, "fields")]
    assert len(lines) >= len(cases(hostile.dim)) and max(len(line) for line in lines) < 1000
    unit = np.full(hostile.dim, 1 / np.sqrt(hostile.dim), dtype=np.float32)
    assert hostile.stub.SearchByVector(pb.SearchByVectorRequest(vector=unit), metadata=AUTH).hits


def test_bounds_are_named_in_the_message(hostile: Hostile) -> None:
    named = {c.name: send(hostile.channel, c, AUTH)[1] for c in cases(hostile.dim)}
    assert (
        "ecg.sampling_rate_hz: 0.0001 Hz is outside 50-10000 Hz"
        in named["SearchByEcg fs=0.0001, one sample per lead"]
    )
    assert "at most 300,000" in named["SearchByEcg 300,001 samples in one lead"]
    assert "lead 'II' given twice" in named["SearchByEcg 13 leads, II twice"]
    assert "record_id: 1,000,000 characters; at most 256" in named["SearchByRecord 1 MB record id"]
    assert (
        "exclude_record_ids: 10,000 entries; at most 1000"
        in named["SearchByVector 10,000 excluded record ids"]
    )
    assert "do not decode as SearchByEcgRequest" in named["SearchByEcg garbage bytes"]
    assert f"at most {MAX_BATCH} per batch" in named["BatchSearch 257 queries"]
    assert "exceed 4,000,000 samples" in named["BatchSearch 67 ECGs of 10 s at 500 Hz (4.02 M samples)"]


def test_duplicate_leads_refused_by_preparation_too() -> None:
    x = np.zeros((13, 1000))
    with pytest.raises(signals.InvalidSamples, match="lead names given twice: II"):
        signals.prepare_array(x, 100, (*signals.LEADS, "ii"))
    with pytest.raises(signals.InvalidSamples, match="outside 50-10000 Hz"):
        signals.prepare_array(np.zeros((12, 1)), 1e-4, signals.LEADS)


def _batch(n: int) -> pb.BatchSearchRequest:
    """n valid, distinct 10 s ECGs at 257 Hz (resampling makes each cost a few ms to prepare)."""
    rng = np.random.default_rng(0)
    queries = []
    for _ in range(n):
        ecg = pb.Ecg(
            lead_names=list(signals.LEADS),
            sampling_rate_hz=257.0,
            flat_samples=rng.standard_normal(12 * 2570).astype(np.float32),
            n_leads=12,
        )
        queries.append(pb.Query(ecg=ecg))
    return pb.BatchSearchRequest(queries=queries)


def _batch_calls(stats: pb.ServerStatsResponse) -> int:
    return next((r.count for r in stats.rpcs if r.method == "BatchSearch"), 0)


def _wait_for_batch_calls(hostile: Hostile, count: int, wait_s: float) -> pb.ServerStatsResponse:
    """ServerStats once the server has finished ``count`` BatchSearch calls (recorded as each ends)."""
    deadline = time.monotonic() + wait_s
    while True:
        stats = _stats(hostile)
        if _batch_calls(stats) >= count or time.monotonic() > deadline:
            return stats
        time.sleep(0.02)


def test_cancelled_and_expired_batches_stop_preparing(hostile: Hostile) -> None:
    n = 120
    request = _batch(n)
    before = _stats(hostile)
    calls = _batch_calls(before)

    future = hostile.stub.BatchSearch.future(request, metadata=AUTH)
    while _stats(hostile).ecgs_prepared == before.ecgs_prepared and not future.done():
        pass  # until the server is preparing this batch
    assert not future.done(), "the batch finished before it could be cancelled"
    future.cancel()
    after_cancel = _wait_for_batch_calls(hostile, calls + 1, wait_s=60)
    assert _batch_calls(after_cancel) == calls + 1
    assert 0 < after_cancel.ecgs_prepared - before.ecgs_prepared < n

    with pytest.raises(grpc.RpcError) as expired:
        hostile.stub.BatchSearch(request, metadata=AUTH, timeout=0.05)
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the server may drop a call whose deadline passed on the way, before any handler runs
    after_deadline = _wait_for_batch_calls(hostile, calls + 2, wait_s=10)
    assert after_deadline.ecgs_prepared - after_cancel.ecgs_prepared < n

    reply = hostile.stub.BatchSearch(_batch(3), metadata=AUTH, timeout=60)
    assert len(reply.results) == 3
    assert _stats(hostile).ecgs_prepared - after_deadline.ecgs_prepared == 3


def test_cancellation_stops_between_ecgs(edge_store, fake_embedder) -> None:
    """The service checks its budget before each ECG: cancelled after 5 checks, 5 ECGs were prepared."""
    from ecgsearch.search.api import Budget, Cancelled, EcgQuery, Query

    checks = iter(range(1_000))
    budget = Budget(cancelled=lambda: next(checks) >= 5)
    service = SearchService(edge_store, fake_embedder)
    try:
        signal = np.random.default_rng(1).standard_normal((12, 1000))
        queries = [Query(ecg=EcgQuery(signal, 100.0, signals.LEADS)) for _ in range(20)]
        with pytest.raises(Cancelled, match="before preparing queries\\[5\\].ecg"):
            service.batch(queries, sites=None, budget=budget)
        assert service.prepared_count == 5
    finally:
        service.close()


def test_oversized_request_id_is_not_echoed(hostile: Hostile) -> None:
    offered = "r" * 4000
    _, call = hostile.stub.ServerStats.with_call(
        pb.ServerStatsRequest(), metadata=(*AUTH, ("x-request-id", offered))
    )
    echoed = dict(call.trailing_metadata())["x-request-id"]
    assert echoed != offered and len(echoed) <= 64


def test_concurrency_limit_is_configured(tmp_path: Path, corpus, fake_embedder) -> None:
    """Excess calls beyond max_concurrent_rpcs get RESOURCE_EXHAUSTED instead of queueing without bound."""
    from ecgsearch.search.serving.settings import ServiceSettings

    store = EdgeStore(tmp_path / "store", "ecgs")
    store.create_collection(dim=fake_embedder.dim, model_version=fake_embedder.version)
    store.upsert(corpus.payloads, corpus.vectors)
    settings = ServiceSettings.model_construct(tokens=TOKEN).model_copy(
        update={"port": 0, "max_concurrent_rpcs": 1, "max_workers": 4}
    )
    try:
        with (
            run_server(settings, store=store, embedder=fake_embedder) as (_, port),
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
        ):
            stub = pb_grpc.EcgSearchServiceStub(channel)
            slow = stub.BatchSearch.future(_batch(120), metadata=AUTH, timeout=60)
            codes = set()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    stub.ServerStats(pb.ServerStatsRequest(), metadata=AUTH, timeout=10)
                    codes.add("OK")
                except grpc.RpcError as error:
                    codes.add(error.code().name)
                if "RESOURCE_EXHAUSTED" in codes or slow.done():
                    break
            try:  # the batch itself is refused when a probe held the only slot as it arrived
                slow.result()
            except grpc.RpcError as error:
                codes.add(error.code().name)
            assert "RESOURCE_EXHAUSTED" in codes
    finally:
        store.close()
