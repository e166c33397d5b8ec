"""Cost before work: the reply bound, the heavy budget's order and refusals, light calls beside heavy ones.

No timing asserts: the order of events only (the measurements are ``ecgsearch bench limits``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from ecgsearch.ecg import signals
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.api import Budget, DeadlineExceeded
from ecgsearch.search.engine.store import EdgeStore
from ecgsearch.search.serving.cost import (
    HeavyBudget,
    HitSize,
    Overloaded,
    ReplyMeter,
    ReplyTooLarge,
    check_reply,
    search_cost,
)
from ecgsearch.search.serving.server import run_server
from ecgsearch.search.serving.settings import ServiceSettings

TOKEN = "t"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


def _hit(mean: int) -> HitSize:
    hit = HitSize()
    hit.observe([mean] * 10)
    return hit


def test_a_reply_that_cannot_fit_is_refused_naming_the_bound() -> None:
    hit = _hit(300)
    cost = search_cost([1000] * 256, hit)
    assert (cost.searches, cost.hits) == (256, 256_000)
    assert cost.reply_bytes >= 256_000 * 300 and cost.heavy
    with pytest.raises(ReplyTooLarge, match=r"256,000 hits over 256 searches x ~345 bytes.*16,777,216-byte"):
        check_reply(cost, 16 * 1024 * 1024, hit)
    check_reply(search_cost([10], hit), 16 * 1024 * 1024, hit)  # a plain search fits
    assert not search_cost([10], hit).heavy


def test_the_reply_meter_stops_at_the_limit() -> None:
    meter = ReplyMeter(1000)
    meter.add(600)
    with pytest.raises(ReplyTooLarge, match="1,000-byte message limit"):
        meter.add(401)


def _holder(budget: HeavyBudget, weight: int, events: list[str], name: str, release: threading.Event):
    def run() -> None:
        try:
            with budget.hold(weight, Budget(deadline=time.monotonic() + 30)):
                events.append(f"{name} in")
                release.wait(30)
            events.append(f"{name} out")
        except Overloaded:
            events.append(f"{name} refused")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _until(condition, wait_s: float = 30) -> None:
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.005)


def test_heavy_calls_wait_in_arrival_order_and_the_queue_is_bounded() -> None:
    budget = HeavyBudget(capacity=10, max_waiting=2)
    events: list[str] = []
    gates = {name: threading.Event() for name in "abcd"}
    first = _holder(budget, 6, events, "a", gates["a"])
    _until(lambda: "a in" in events)
    second = _holder(budget, 5, events, "b", gates["b"])  # does not fit beside a
    _until(lambda: budget.waiting == 1)
    third = _holder(budget, 1, events, "c", gates["c"])  # would fit, but b came first
    _until(lambda: budget.waiting == 2)
    fourth = _holder(budget, 1, events, "d", gates["d"])  # the queue is full: refused at once
    fourth.join(30)
    assert events == ["a in", "d refused"]
    gates["a"].set()
    _until(lambda: "c in" in events)
    assert [e for e in events if e.endswith(" in")] == ["a in", "b in", "c in"]  # b first, c beside it
    gates["b"].set()
    gates["c"].set()
    for thread in (first, second, third):
        thread.join(30)
    assert (budget.in_use, budget.running, budget.waiting) == (0, 0, 0)


def test_a_waiting_call_stops_at_its_deadline_and_leaves_the_queue() -> None:
    budget = HeavyBudget(capacity=10, max_waiting=4)
    release = threading.Event()
    events: list[str] = []
    holder = _holder(budget, 10, events, "a", release)
    _until(lambda: "a in" in events)
    with (
        pytest.raises(DeadlineExceeded, match="heavy-call budget"),
        budget.hold(3, Budget(deadline=time.monotonic() + 0.05)),
    ):
        pass
    assert budget.waiting == 0
    release.set()
    holder.join(30)
    with budget.hold(100, Budget()):  # heavier than the whole budget: runs alone
        assert budget.in_use == 10


# --- the running service -------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    stub: pb_grpc.EcgSearchServiceStub
    dim: int


@pytest.fixture(scope="module")
def served(corpus, fake_embedder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = EdgeStore(tmp_path_factory.mktemp("costed") / "store", "ecgs")
    store.create_collection(dim=fake_embedder.dim, model_version=fake_embedder.version)
    store.upsert(corpus.payloads, corpus.vectors)
    settings = ServiceSettings.model_construct(tokens=TOKEN).model_copy(
        update={"port": 0, "max_concurrent_rpcs": 8}
    )
    try:
        with (
            run_server(settings, store=store, embedder=fake_embedder) as (_, port),
            grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 32 * 1024 * 1024)]
            ) as channel,
        ):
            yield Served(pb_grpc.EcgSearchServiceStub(channel), fake_embedder.dim)
    finally:
        store.close()


def _prepared(served: Served) -> int:
    return served.stub.ServerStats(pb.ServerStatsRequest(), metadata=AUTH).ecgs_prepared


def _ecgs(n: int, seed: int = 0) -> list[pb.Query]:
    """n distinct 10 s ECGs at 257 Hz: resampling makes each cost a few ms to prepare."""
    rng = np.random.default_rng(seed)
    return [
        pb.Query(
            ecg=pb.Ecg(
                lead_names=list(signals.LEADS),
                sampling_rate_hz=257.0,
                flat_samples=rng.standard_normal(12 * 2570).astype(np.float32),
                n_leads=12,
            )
        )
        for _ in range(n)
    ]


def test_256_queries_of_k_1000_are_refused_before_any_ecg_is_prepared(served: Served) -> None:
    unit = np.full(served.dim, 1 / np.sqrt(served.dim), dtype=np.float32)
    queries = _ecgs(64) + [pb.Query(vector=pb.Vector(values=unit))] * 192
    for q in queries:
        q.options.k = 1000
    before = _prepared(served)
    with pytest.raises(grpc.RpcError) as err:
        served.stub.BatchSearch(pb.BatchSearchRequest(queries=queries), metadata=AUTH, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "256,000 hits over 256 searches" in err.value.details()
    assert "16,777,216-byte message limit" in err.value.details()
    assert _prepared(served) == before


@pytest.mark.slow
def test_a_light_search_is_answered_while_a_heavy_call_waits_its_turn(served: Served) -> None:
    """Two heavy batches (each too heavy to run beside the other): the second waits for the first,
    and a plain search sent after both is answered while the second still waits."""
    heavy = pb.BatchSearchRequest(queries=_ecgs(120))
    first = served.stub.BatchSearch.future(heavy, metadata=AUTH, timeout=300)
    before = _prepared(served)
    _until(lambda: _prepared(served) > before or first.done(), wait_s=60)  # the first is running
    assert not first.done(), "the first batch finished before the test could overlap it"
    second = served.stub.BatchSearch.future(heavy, metadata=AUTH, timeout=300)
    unit = np.full(served.dim, 1 / np.sqrt(served.dim), dtype=np.float32)
    light = served.stub.SearchByVector(pb.SearchByVectorRequest(vector=unit), metadata=AUTH, timeout=60)
    assert light.hits and not second.done()
    assert len(first.result().results) == len(second.result().results) == 120
