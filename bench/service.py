"""Load benchmark of the gRPC service: QPS and latency percentiles under concurrent clients.

The server runs as its own process (``ecgsearch serve``), so client threads and server threads do not
share one interpreter lock and the numbers are what a deployment sees. Query material is discovered
through the service itself (a few broad searches, then GetRecord), so any store works; without one, a
temporary store is filled from PTB-XL by ``ecgsearch ingest`` with the bundled model.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ecgsearch.bench.results import machine, percentiles, relative
from ecgsearch.ecg.schema import SearchFilter
from ecgsearch.search.client import EcgSearchClient

KINDS = ("vector", "vector_filtered", "record", "record_filtered")


def bench_service(
    *,
    duration: float,
    concurrency: tuple[int, ...],
    store: Path | None = None,
    ptbxl: Path | None = None,
    records: int = 2000,
    k: int = 10,
    model: Path | None = None,
    server_cpus: str | None = None,
) -> dict[str, Any]:
    """Start a server over ``store`` (or a fresh PTB-XL store), load it, return the results document.

    ``server_cpus``: the server's ECGSEARCH_CPUS (None: every CPU); the clients and the bare store run
    in this process on every CPU."""
    with tempfile.TemporaryDirectory(prefix="ecgsearch-bench-") as tmp:
        built = False
        if store is None:
            if ptbxl is None:
                raise ValueError("give --store or --ptbxl")
            store = Path(tmp) / "store"
            started = time.perf_counter()
            ingest_ptbxl(ptbxl, store, limit=records, model=model)
            built_s = time.perf_counter() - started
            built = True
        host = machine(grpc=grpc.__version__)  # its load average as the loads start, not as they end
        token = secrets.token_hex(16)
        audit_log = Path(tmp) / "audit.jsonl"
        with (
            server_process(store, token, model=model, audit_log=audit_log, cpus=server_cpus) as target,
            EcgSearchClient(target, token=token, timeout=30) as client,
        ):
            info = client.info()
            material = query_material(client, n=min(200, info.count))
            flt = typical_filter(info.diagnosis_counts, info.count)
            loads = [
                run_load(target, token, material, flt, duration=duration, concurrency=c, k=k)
                for c in concurrency
            ]
            round_trips, server_side = round_trip_p50(client, target, material["vectors"][0], audit_log)
            server_stats = client.stats()
            search_plans = client.search_plans()
        audited = len(audit_log.read_bytes().splitlines())
        # The server has exited (it held the store's lock): the same queries on the bare store.
        bares = [
            run_store_load(store, material, flt, duration=duration, concurrency=c, k=k) for c in concurrency
        ]
        gil = gil_probe(store, material["vectors"])
    levels = [_level(c, load, bare) for c, load, bare in zip(concurrency, loads, bares, strict=True)]
    return {
        "benchmark": "service_load",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": {
            "duration_s": duration,
            "concurrency": concurrency,
            "k": k,
            "store": "temporary PTB-XL store" if built else relative(store),
            "records_requested": records if built else None,
            "filter": flt.model_dump(exclude_defaults=True),
            "query_kinds": list(KINDS),
            "transport": "gRPC over 127.0.0.1, server in its own process, one channel per client thread",
            "audit": "on: one JSON line per call appended to a file, as a deployment runs",
            "server_cpus": server_cpus or "every CPU",
            "clients_and_bare_store_cpus": "every CPU",
        },
        "collection": info.model_dump(exclude={"diagnosis_counts"}),
        "store_build_s": round(built_s, 2) if built else None,
        "machine": host,
        "summary": [
            {
                key: level[key]
                for key in ("concurrency", "qps", "service_vs_store_qps", "p50_service_minus_store_ms")
            }
            | {"p50_ms": level["latency_ms"]["p50"], "store_qps": level["bare_store"]["qps"]}
            | {"store_p50_ms": level["bare_store"]["latency_ms"]["p50"]}
            for level in levels
        ],
        "levels": levels,
        "round_trip_p50_ms": round_trips,
        "round_trip_server_p50_ms": server_side,
        "audit_lines": audited,
        "server_stats": server_stats,
        "search_plans": search_plans,
        "gil_probe": gil,
    }


def round_trip_p50(
    client: EcgSearchClient, target: str, vector: np.ndarray, audit_log: Path, n: int = 300
) -> tuple[dict[str, float], dict[str, float]]:
    """One client's p50 (ms) of calls that do less and less than a search: where a search's time goes
    beyond the store (gRPC's own health check: transport only; CollectionInfo: the server's call
    pipeline with a cached answer; searches of k=1 and k=10).

    And of each audited call, the p50 of the time its audit line records (``latency_ms``: from the
    call reaching the audit stage, its request message still to be received, to the line): the
    server's own share; the rest of the round trip is transport, gRPC handing the call to a worker
    thread and sending the reply, and the client's conversion. The health check is not audited."""
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        calls: dict[str, Callable[[], object]] = {
            "grpc_health_check": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=10),
            "collection_info": client.info,
            "search_by_vector_k1": lambda: client.search_by_vector(vector, k=1),
            "search_by_vector_k10": lambda: client.search_by_vector(vector, k=10),
        }
        audited = {
            "collection_info": "CollectionInfo",
            "search_by_vector_k1": "SearchByVector",
            "search_by_vector_k10": "SearchByVector",
        }
        out, server = {}, {}
        for name, call in calls.items():
            for _ in range(20):
                call()
            before = len(audit_log.read_bytes().splitlines())
            seconds = []
            for _ in range(n):
                began = time.perf_counter()
                call()
                seconds.append(time.perf_counter() - began)
            out[name] = round(float(np.median(seconds)) * 1000, 3)
            if name in audited:  # this loop's lines: one client, calls one after another
                lines = [json.loads(line) for line in audit_log.read_bytes().splitlines()[before:]]
                took = [line["latency_ms"] for line in lines if line["method"] == audited[name]]
                server[name] = round(float(np.median(took)), 3)
    return out, server


def gil_probe(store: Path, vectors: np.ndarray, rounds: int = 3) -> list[dict[str, float]]:
    """Does a search hold Python's GIL? One long store call (a batch of exact searches) on a thread while
    this thread wakes every millisecond: wake-ups stop for the whole call when the binding holds the
    GIL (the longest gap is the call's time), and go on when it releases it.

    Why a server's search threads add no throughput beyond one core's worth of searches.
    """
    from ecgsearch.search.engine.store import open_store

    rows = np.resize(vectors, (400, vectors.shape[1]))
    out = []
    with closing(open_store(path=store)) as st:
        for _ in range(rounds):
            took: list[float] = []

            def call(took: list[float] = took) -> None:
                began = time.perf_counter()
                st.search_batch(rows, k=1, exact=True)  # k=1: the call is the engine's, little conversion
                took.append(time.perf_counter() - began)

            thread = threading.Thread(target=call)
            gaps, last = [], time.perf_counter()
            thread.start()
            while thread.is_alive():
                time.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now
            thread.join()
            out.append(
                {
                    "call_ms": round(took[0] * 1000, 1),
                    "longest_gap_ms": round(max(gaps) * 1000, 1),
                    "wakeups": len(gaps),
                }
            )
    return out


def _level(concurrency: int, load: dict[str, Any], bare: dict[str, Any]) -> dict[str, Any]:
    """One concurrency: the service's load, the bare store's, and how they compare."""
    return {
        "concurrency": concurrency,
        **load,
        "bare_store": bare,
        "service_vs_store_qps": round(load["qps"] / bare["qps"], 3) if bare["qps"] else None,
        "p50_service_minus_store_ms": round(load["latency_ms"]["p50"] - bare["latency_ms"]["p50"], 3),
        "latency_split_p50_ms": {
            kind: {
                "store": bare["by_kind"][kind]["latency_ms"]["p50"],
                "service_layers_and_transport": load["by_kind"][kind]["latency_ms"]["p50"]
                - bare["by_kind"][kind]["latency_ms"]["p50"],
            }
            for kind in KINDS
            if kind in load["by_kind"] and kind in bare["by_kind"]
        },
    }


def ingest_ptbxl(ptbxl: Path, store: Path, *, limit: int, model: Path | None = None) -> None:
    """Fill ``store`` with the first ``limit`` PTB-XL records through the ``ingest`` command."""
    command = [*_cli(), "ingest", str(ptbxl), "--store", str(store), "--limit", str(limit), "--quiet"]
    if model is not None:
        command += ["--model", str(model)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in (0, 3):  # 3: finished with some records rejected
        raise RuntimeError(f"ingest failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


@contextmanager
def serve(settings: dict[str, str], *, stop_s: float = 30) -> Iterator[tuple[str, subprocess.Popen]]:
    """``ecgsearch serve`` on a free local port with these ``ECGSEARCH_*`` settings (the caller's own
    ``ECGSEARCH_*`` variables left out); yields its target and process once health says SERVING, and
    stops it on exit (killed when it does not end within ``stop_s``)."""
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ECGSEARCH_")},
        "ECGSEARCH_PORT": str(port),
        "ECGSEARCH_LOG_LEVEL": "WARNING",
        **settings,
    }
    process = subprocess.Popen([*_cli(), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, process)
        yield target, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_s)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def server_process(
    store: Path,
    token: str,
    *,
    model: Path | None = None,
    audit_log: Path | None = None,
    cpus: str | None = None,
) -> Iterator[str]:
    """``ecgsearch serve`` over ``store`` with one plain token (an audit trail into ``audit_log``, on
    ``cpus`` where given); yields its target once SERVING."""
    settings = {"ECGSEARCH_STORE_PATH": str(store), "ECGSEARCH_TOKENS": token}
    if cpus is not None:
        settings["ECGSEARCH_CPUS"] = cpus
    if audit_log is not None:
        settings["ECGSEARCH_AUDIT_LOG"] = str(audit_log)
    if model is not None:
        settings["ECGSEARCH_MODEL"] = str(model)
    with serve(settings) as (target, _):
        yield target


def wait_serving(target: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if process.poll() is not None:
                raise RuntimeError(
                    f"server exited: {process.stderr.read()[-2000:] if process.stderr else ''}"
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"server at {target} not SERVING after {timeout:.0f} s")


def query_material(client: EcgSearchClient, n: int, seed: int = 0) -> dict[str, Any]:
    """Record ids and their stored vectors, found through the service (any store, no scroll needed)."""
    dim = client.info().dim
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    for _ in range(5):
        probe = rng.standard_normal(dim).astype(np.float32)
        ids += [h.record_id for h in client.search_by_vector(probe, k=min(1000, max(n, 10))).hits]
    ids = list(dict.fromkeys(ids))[:n]
    vectors = np.stack([_stored_vector(client, i) for i in ids])
    return {"record_ids": ids, "vectors": vectors}


def _stored_vector(client: EcgSearchClient, record_id: str) -> np.ndarray:
    _, vector = client.get_record(record_id, with_vector=True)
    assert vector is not None  # asked with_vector: always given
    return vector


def typical_filter(diagnosis_counts: dict[str, int], count: int) -> SearchFilter:
    """A diagnosis whose share is nearest 10% (a common clinical filter) and an age floor."""
    if not diagnosis_counts or not count:
        return SearchFilter(age_min=50)
    code = min(diagnosis_counts, key=lambda c: abs(diagnosis_counts[c] / count - 0.10))
    return SearchFilter(diagnoses_any=[code], age_min=50)


def run_load(
    target: str,
    token: str,
    material: dict[str, Any],
    flt: SearchFilter,
    *,
    duration: float,
    concurrency: int,
    k: int = 10,
) -> dict[str, Any]:
    """``concurrency`` threads, one channel each, cycling through the query kinds until time is up."""
    ids, vectors = material["record_ids"], material["vectors"]
    samples: list[list[tuple[str, float, bool]]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    start_gate = threading.Barrier(concurrency + 1)

    def worker(index: int) -> None:
        with EcgSearchClient(target, token=token, timeout=10) as client:
            client.info()  # connect before the clock starts

            def ask(kind: str, i: int) -> bool:
                filtered = flt if kind.endswith("filtered") else None
                try:
                    if kind.startswith("vector"):
                        client.search_by_vector(vectors[i], k=k, filter=filtered)
                    else:
                        client.search_by_record(ids[i], k=k, filter=filtered)
                except grpc.RpcError as error:
                    errors.append(f"{kind}: {error.code().name} {error.details()}")
                    return False
                return True

            start_gate.wait()
            samples[index] = _query_loop(index, duration, len(ids), ask)

    elapsed = _run_threads(worker, concurrency, start_gate)
    flat = [s for per in samples for s in per]
    report = _load_report(flat, elapsed)
    report["errors"] = sum(not ok for _, _, ok in flat)
    report["error_examples"] = sorted(set(errors))[:5]
    return report


def run_store_load(
    store: Path,
    material: dict[str, Any],
    flt: SearchFilter,
    *,
    duration: float,
    concurrency: int,
    k: int = 10,
) -> dict[str, Any]:
    """The same query mix and concurrency on the store opened in this process: the engine's share.

    Every search drops copies, as the service's do (so both take the same plan); a search by record
    does what the service does: get the stored vector, then search with the record and its patient
    excluded. No encoding, validation, conversion or transport.
    """
    from ecgsearch.search.engine.store import open_store

    ids, vectors = material["record_ids"], material["vectors"]
    samples: list[list[tuple[str, float, bool]]] = [[] for _ in range(concurrency)]
    start_gate = threading.Barrier(concurrency + 1)
    with closing(open_store(path=store)) as st:  # what the store's own __exit__ does

        def by_record(record_id: str, base: SearchFilter) -> None:
            payload, vector = st.get(record_id)
            update: dict[str, list[str]] = {"exclude_record_ids": [record_id]}
            if payload.patient_id is not None:
                update["exclude_patient_ids"] = [payload.patient_id]
            st.search(vector, k=k, filter=base.model_copy(update=update))

        served = flt.model_copy(update={"exclude_duplicates": True})
        plain = SearchFilter(exclude_duplicates=True)

        def ask(kind: str, i: int) -> bool:
            base = served if kind.endswith("filtered") else plain
            if kind.startswith("vector"):
                st.search(vectors[i], k=k, filter=base)
            else:
                by_record(ids[i], base)
            return True

        def worker(index: int) -> None:
            start_gate.wait()
            samples[index] = _query_loop(index, duration, len(ids), ask)

        elapsed = _run_threads(worker, concurrency, start_gate)
    return _load_report([s for per in samples for s in per], elapsed)


def _query_loop(
    index: int, duration: float, n_ids: int, ask: Callable[[str, int], bool]
) -> list[tuple[str, float, bool]]:
    """One client thread's load: the query kinds in turn (from its own offset) on random ids until
    ``duration`` has passed; (kind, seconds, answered) per request. Both load runs use it, so the
    service and the bare store see the same sequence of queries."""
    rng = np.random.default_rng(index)
    stop_at = time.monotonic() + duration
    samples = []
    turn = index
    while time.monotonic() < stop_at:
        kind = KINDS[turn % len(KINDS)]
        turn += 1
        i = int(rng.integers(n_ids))
        began = time.perf_counter()
        ok = ask(kind, i)
        samples.append((kind, time.perf_counter() - began, ok))
    return samples


def _run_threads(worker: Callable[[int], None], concurrency: int, start_gate: threading.Barrier) -> float:
    """Start one thread per worker, release them together at the gate; seconds until the last ends."""
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    start_gate.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    return time.monotonic() - began


def _load_report(flat: list[tuple[str, float, bool]], elapsed: float) -> dict[str, Any]:
    """Requests, QPS and latency percentiles of one load run, in all and per query kind."""
    return {
        "elapsed_s": round(elapsed, 3),
        "requests": len(flat),
        "qps": round(len(flat) / elapsed, 1),
        "latency_ms": percentiles([t for _, t, _ in flat]),
        "by_kind": {
            kind: {
                "requests": len(rows),
                "qps": round(len(rows) / elapsed, 1),
                "latency_ms": percentiles([t for _, t, _ in rows]),
            }
            for kind in KINDS
            if (rows := [s for s in flat if s[0] == kind])
        },
    }


def _cli() -> list[str]:
    return [sys.executable, "-m", "ecgsearch.cli.main"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
