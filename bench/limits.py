"""The service's limits under hostile cost, measured: what the one door (issue 23) must hold.

The server runs as ``ecgsearch serve`` in its own process (its memory is read from /proc), over a
temporary store that ``ecgsearch ingest`` fills with PTB-XL records as site ``site-a`` and the
Challenge folders as site ``site-b``. Three measurements:

1. **Refusal before work.** A BatchSearch of 256 queries x k = 1000 (a few KB of request, a reply
   of tens of MB): how long until RESOURCE_EXHAUSTED, and how much the server's memory grew.
2. **Heavy calls beside light ones.** ``batches`` concurrent max-cost batches, each the largest the
   service accepts: 256 queries, the batch's raw-sample bound filled with 10 s ECGs at 500 Hz (real
   PTB-XL records), vectors for the rest, and k the largest the service does not refuse (found by
   asking it: k is accepted and k + 1 refused), so its reply is as near the message limit as the
   service's estimate allows. Meanwhile one client sends a plain search (SearchByVector, k = 10)
   every ``probe_every_s``: its latency, the batches' outcomes, and the server's memory before, at its
   peak and after the load. The plain searches are reported in two phases: while the batches'
   requests still arrive (``batches`` x ~16 MB sent at once; on a small machine the clients share its
   cores with the server), and once every batch has been admitted (the server's
   ``ecgsearch_heavy_calls`` gauges, read from its /metrics, count them all running or waiting).
3. **Equal work for unknown and invisible ids.** A site-a caller asks for site-b ids and for ids that
   do not exist (GetRecord, GetEcg, SearchByRecord), alternating, ``pairs`` times each: the median
   of each and their difference, end to end over gRPC and, after the server has stopped, in process
   (``SearchService.get_record`` with the caller's sites).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from ecgsearch.bench.memory import status
from ecgsearch.bench.results import load_average, machine, percentiles, relative
from ecgsearch.bench.service import _cli, _free_port, serve
from ecgsearch.ecg import signals
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search.serving.service import MAX_BATCH, MAX_BATCH_SAMPLES

SERVICE = "/ecgsearch.v1.EcgSearchService/"
SITE_A, SITE_B = "site-a", "site-b"
MIB = 1024 * 1024
ECG_SECONDS, ECG_FS = 10, 500


def bench_limits(
    *,
    ptbxl: Path,
    challenge: Path,
    records: int = 2000,
    batches: int = 32,
    pairs: int = 1000,
    probe_every_s: float = 0.25,
    settle_s: float = 10.0,
) -> dict[str, Any]:
    """Build the two-site store, serve it, run the three measurements; the results document."""
    with tempfile.TemporaryDirectory(prefix="ecgsearch-limits-") as tmp:
        store = Path(tmp) / "store"
        started = time.perf_counter()
        _ingest(ptbxl, store, SITE_A, limit=records)
        _ingest(challenge, store, SITE_B)
        built_s = time.perf_counter() - started
        tokens = {"bench": secrets.token_hex(16), "ward-a": secrets.token_hex(16)}
        callers = Path(tmp) / "callers"
        callers.write_text(
            f"bench search,write,admin * sha256:{_sha(tokens['bench'])}\n"
            f"ward-a search {SITE_A} sha256:{_sha(tokens['ward-a'])}\n"
        )
        with _server(store, callers) as (target, pid, metrics):
            limit = 16 * MIB
            with grpc.insecure_channel(target, options=_channel_options()) as channel:
                bench = _Caller(channel, tokens["bench"])
                info = pb.CollectionInfoResponse.FromString(bench.raw("CollectionInfo", b""))
                dim = info.dim
                ids_b, ids_a = _ids_by_site(bench, dim)
                refusal = _refusal(bench, pid, dim)
                cost = re.search(r"~([\d,]+) bytes per hit", refusal["message"])
                assert cost is not None, refusal["message"]  # the service's refusal names the cost
                per_hit = int(cost.group(1).replace(",", ""))
                batch, k, n_ecgs = _max_cost_batch(ptbxl, dim, per_hit, limit)
                largest = _largest_accepted(bench, batch, k)
                load = _heavy_load(
                    target, tokens["bench"], batch, batches, dim, (pid, metrics), probe_every_s, settle_s
                )
                ward = _Caller(channel, tokens["ward-a"])
                equal = _equal_work(ward, ids_b, pairs)
                server_stats = _stats(bench)
        in_process = _equal_work_in_process(store, ids_b, pairs)
    return {
        "benchmark": "service_limits",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": (
            f"ecgsearch bench limits --ptbxl {relative(ptbxl)} --challenge {relative(challenge)} "
            f"--records {records} --batches {batches} --pairs {pairs}"
        ),
        "parameters": {
            "store": f"temporary: {records} PTB-XL records as {SITE_A}, the Challenge folders as {SITE_B}",
            "points": {"total": int(info.count), SITE_B: len(ids_b), f"{SITE_A} (sampled)": len(ids_a)},
            "message_limit_bytes": limit,
            "transport": "gRPC over 127.0.0.1, `ecgsearch serve` in its own process (default settings)",
            "build_s": round(built_s, 1),
        },
        "machine": machine(grpc=grpc.__version__),
        "refusal_256_x_k1000": refusal,
        "max_cost_batch": {
            "queries": MAX_BATCH,
            "ecg_queries": n_ecgs,
            "ecg": f"{ECG_SECONDS} s at {ECG_FS} Hz, 12 leads (PTB-XL records500)",
            "raw_samples": n_ecgs * 12 * ECG_SECONDS * ECG_FS,
            "raw_sample_bound": MAX_BATCH_SAMPLES,
            "k": k,
            "per_hit_estimate_bytes": per_hit,
            **largest,
        },
        "heavy_load": load,
        "equal_work": {"grpc": equal, "in_process": in_process},
        "server_stats": server_stats,
        "done_when": _verdict(refusal, load, equal),
    }


# --- the store and the server ----------------------------------------------------------------------


def _ingest(source: Path, store: Path, site: str, limit: int | None = None) -> None:
    command = [*_cli(), "ingest", str(source), "--store", str(store), "--site", site, "--quiet"]
    if limit is not None:
        command += ["--limit", str(limit)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode not in (0, 3):  # 3: finished with some records rejected
        raise RuntimeError(f"ingest of {source} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@contextmanager
def _server(store: Path, callers: Path) -> Iterator[tuple[str, int, int]]:
    """``ecgsearch serve`` with default limits; once SERVING, its target, process id and metrics port."""
    metrics = _free_port()
    settings = {
        "ECGSEARCH_STORE_PATH": str(store),
        "ECGSEARCH_TOKENS_FILE": str(callers),
        "ECGSEARCH_METRICS_PORT": str(metrics),
    }
    with serve(settings, stop_s=60) as (target, process):
        yield target, process.pid, metrics


MB = 1 << 20


def _memory_mb(pid: int) -> dict[str, float]:
    """Resident memory now and its peak so far (VmRSS, VmHWM), in MB."""
    now = status(pid)
    return {"rss_mb": round(now["VmRSS"] / MB, 1), "peak_mb": round(now["VmHWM"] / MB, 1)}


def _heavy_calls(metrics: int) -> int:
    """Heavy calls running or waiting in the server's heavy budget, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = re.findall(r'^ecgsearch_heavy_calls\{state="(?:running|waiting)"\} ([0-9.e+]+)$', text, re.M)
    return int(sum(float(v) for v in found))


def _channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)]


class _Caller:
    """Raw calls (request and reply as bytes) with one caller's token."""

    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self.channel = channel
        self.metadata = (("authorization", f"Bearer {token}"),)

    def raw(self, method: str, request: bytes, timeout: float = 60) -> bytes:
        call = self.channel.unary_unary(SERVICE + method, request_serializer=None, response_deserializer=None)
        return call(request, metadata=self.metadata, timeout=timeout)

    def status(self, method: str, request: bytes, timeout: float = 60) -> tuple[str, str, int, float]:
        """(status, details, reply bytes, seconds) of one call."""
        began = time.perf_counter()
        try:
            reply = self.raw(method, request, timeout)
            return "OK", "", len(reply), time.perf_counter() - began
        except grpc.RpcError as error:
            return error.code().name, error.details() or "", 0, time.perf_counter() - began


def _unit(dim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _ids_by_site(bench: _Caller, dim: int) -> tuple[list[str], list[str]]:
    """Record ids of site-b (the Challenge datasets) and some of site-a, found by broad searches."""
    rng = np.random.default_rng(0)
    found: dict[str, str] = {}
    for _ in range(8):
        request = pb.SearchByVectorRequest(vector=_unit(dim, rng), options=pb.SearchOptions(k=1000))
        for hit in pb.SearchByVectorResponse.FromString(
            bench.raw("SearchByVector", request.SerializeToString())
        ).hits:
            found[hit.record_id] = hit.payload.dataset
    ids_b = sorted(r for r, d in found.items() if d != "ptbxl")
    ids_a = sorted(r for r, d in found.items() if d == "ptbxl")
    return ids_b, ids_a


# --- 1. refusal before work ------------------------------------------------------------------------


def _refusal(bench: _Caller, pid: int, dim: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    queries = [
        pb.Query(vector=pb.Vector(values=_unit(dim, rng)), options=pb.SearchOptions(k=1000))
        for _ in range(256)
    ]
    request = pb.BatchSearchRequest(queries=queries).SerializeToString()
    before = _memory_mb(pid)
    code, details, _, seconds = bench.status("BatchSearch", request)
    after = _memory_mb(pid)
    return {
        "request_bytes": len(request),
        "status": code,
        "message": details,
        "seconds": round(seconds, 4),
        "server_memory_before": before,
        "server_memory_after": after,
        "rss_growth_mb": round(after["rss_mb"] - before["rss_mb"], 1),
        "peak_growth_mb": round(after["peak_mb"] - before["peak_mb"], 1),
    }


# --- 2. heavy calls beside light ones ---------------------------------------------------------------


def _max_cost_batch(
    ptbxl: Path, dim: int, per_hit: int, limit: int
) -> tuple[pb.BatchSearchRequest, int, int]:
    """256 queries: as many 10 s 500 Hz ECGs as the batch's sample bound takes, vectors for the rest;
    k the largest whose reply, at the service's own per-hit estimate, fits the message limit."""
    per_ecg = 12 * ECG_SECONDS * ECG_FS
    n_ecgs = MAX_BATCH_SAMPLES // per_ecg
    files = sorted((ptbxl / "records500").rglob("*_hr.hea"))[:n_ecgs]
    ecgs = []
    for path in files:
        raw = signals.read_wfdb(path.with_suffix(""))
        ecgs.append(
            pb.Ecg(
                lead_names=list(raw.leads),
                sampling_rate_hz=raw.fs,
                flat_samples=np.asarray(raw.signal, np.float32)[:, : ECG_SECONDS * ECG_FS].ravel(),
                n_leads=len(raw.leads),
            )
        )
    rng = np.random.default_rng(2)
    k = (limit - MAX_BATCH * 16) // (MAX_BATCH * per_hit)
    queries = [pb.Query(ecg=e, options=pb.SearchOptions(k=k)) for e in ecgs]
    queries += [
        pb.Query(vector=pb.Vector(values=_unit(dim, rng)), options=pb.SearchOptions(k=k))
        for _ in range(MAX_BATCH - len(ecgs))
    ]
    return pb.BatchSearchRequest(queries=queries), k, len(ecgs)


def _with_k(batch: pb.BatchSearchRequest, k: int) -> bytes:
    copy = pb.BatchSearchRequest()
    copy.CopyFrom(batch)
    for q in copy.queries:
        q.options.k = k
    return copy.SerializeToString()


def _largest_accepted(bench: _Caller, batch: pb.BatchSearchRequest, k: int) -> dict[str, Any]:
    """The batch at k is answered (its reply size) and at k + 1 refused: it is the largest accepted."""
    request = batch.SerializeToString()
    code, details, reply_bytes, seconds = bench.status("BatchSearch", request, timeout=600)
    over, over_details, _, _ = bench.status("BatchSearch", _with_k(batch, k + 1), timeout=600)
    return {
        "request_bytes": len(request),
        "status": code,
        "error": details or None,
        "reply_bytes": reply_bytes,
        "reply_share_of_limit": round(reply_bytes / (16 * MIB), 3),
        "seconds_alone": round(seconds, 2),
        "k_plus_1_status": over,
        "k_plus_1_message": over_details,
    }


def _heavy_load(
    target: str,
    token: str,
    batch: pb.BatchSearchRequest,
    batches: int,
    dim: int,
    server: tuple[int, int],
    probe_every_s: float,
    settle_s: float,
) -> dict[str, Any]:
    pid, metrics = server
    request = batch.SerializeToString()
    outcomes: list[tuple[str, float, int]] = []
    probes: list[tuple[float, str, float]] = []  # seconds, status, when it was sent (from the start)
    done = threading.Event()
    gate = threading.Barrier(batches + 1)
    lock = threading.Lock()
    peak = {"rss_mb": 0.0}
    admitted: list[float] = []  # when every batch was first seen running, waiting or done

    def heavy() -> None:
        with grpc.insecure_channel(target, options=_channel_options()) as channel:
            caller = _Caller(channel, token)
            gate.wait()
            code, _, size, seconds = caller.status("BatchSearch", request, timeout=1800)
            with lock:
                outcomes.append((code, seconds, size))

    def probe() -> None:
        rng = np.random.default_rng(3)
        with grpc.insecure_channel(target) as channel:
            caller = _Caller(channel, token)
            while not done.is_set():
                plain = pb.SearchByVectorRequest(vector=_unit(dim, rng), options=pb.SearchOptions(k=10))
                sent = time.monotonic() - began
                code, _, _, seconds = caller.status("SearchByVector", plain.SerializeToString(), timeout=60)
                probes.append((seconds, code, sent))
                peak["rss_mb"] = max(peak["rss_mb"], _memory_mb(pid)["rss_mb"])
                done.wait(probe_every_s)

    def watch() -> None:
        while not admitted and not done.is_set():
            if _heavy_calls(metrics) + len(outcomes) >= batches:
                admitted.append(time.monotonic() - began)
            done.wait(0.05)

    before = _memory_mb(pid)
    workers = [threading.Thread(target=heavy, daemon=True) for _ in range(batches)]
    for worker in workers:
        worker.start()
    prober = threading.Thread(target=probe, daemon=True)
    gate.wait()
    began = time.monotonic()
    prober.start()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - began
    done.set()
    prober.join()
    watcher.join()
    during = _memory_mb(pid)
    time.sleep(settle_s)
    after = _memory_mb(pid)
    arrived = admitted[0] if admitted else None
    running = [p for p in probes if arrived is not None and p[2] >= arrived]
    arriving = [p for p in probes if arrived is None or p[2] < arrived]
    return {
        "batches": batches,
        "elapsed_s": round(elapsed, 1),
        "batch_status": dict(Counter(code for code, _, _ in outcomes)),
        "batch_latency_ms": percentiles([s for code, s, _ in outcomes if code == "OK"], (50, 100)),
        "batch_reply_bytes_max": max((size for _, _, size in outcomes), default=0),
        "all_admitted_at_s": None if arrived is None else round(arrived, 2),
        "plain_search": _probe_report(probes),
        "plain_search_while_batches_run": _probe_report(running),
        "plain_search_while_requests_arrive": _probe_report(arriving),
        "server_memory": {
            "before": before,
            "highest_rss_seen_mb": peak["rss_mb"],
            "peak_mb": during["peak_mb"],
            "after_load": during,
            f"after_{settle_s:g}_s": after,
            "after_minus_before_mb": round(after["rss_mb"] - before["rss_mb"], 1),
        },
        "load_avg_end": load_average(),
    }


def _probe_report(probes: list[tuple[float, str, float]]) -> dict[str, Any]:
    slowest = sorted(probes, reverse=True)[:3]
    return {
        "sent": len(probes),
        "status": dict(Counter(code for _, code, _ in probes)),
        "latency_ms": percentiles([s for s, code, _ in probes if code == "OK"], (50, 95, 99, 100)),
        "slowest": [{"sent_at_s": round(at, 2), "ms": round(s * 1000, 1)} for s, _, at in slowest],
    }


# --- 3. equal work for unknown and invisible ids -----------------------------------------------------


def _routes() -> dict[str, Callable[[str], tuple[str, bytes]]]:
    return {
        "GetRecord": lambda rid: ("GetRecord", pb.GetRecordRequest(record_id=rid).SerializeToString()),
        "GetEcg": lambda rid: ("GetEcg", pb.GetEcgRequest(record_id=rid).SerializeToString()),
        "SearchByRecord": lambda rid: (
            "SearchByRecord",
            pb.SearchByRecordRequest(record_id=rid).SerializeToString(),
        ),
    }


def _missing(record_id: str, i: int) -> str:
    """An id shaped like ``record_id`` (same dataset, same length) that no site holds."""
    dataset, _, native = record_id.partition(":")
    return f"{dataset}:{('Z' + str(i)).rjust(len(native), 'Z')[-max(len(native), 2) :]}"


def _equal_work(ward: _Caller, ids_b: list[str], pairs: int) -> dict[str, Any]:
    """Per route: ``pairs`` alternating calls for a site-b id and a missing id, each NOT_FOUND."""
    out = {}
    for name, make in _routes().items():

        def probe(rid: str, make: Callable[[str], Any] = make) -> tuple[str, float]:
            method, request = make(rid)
            code, _, _, took = ward.status(method, request)
            return code, took

        out[name] = _alternate(ids_b, pairs, probe)
    return out


def _alternate(ids_b: list[str], pairs: int, probe: Callable[[str], tuple[str, float]]) -> dict[str, Any]:
    """``pairs`` lookups of a site-b id and of a missing id of the same shape, alternating which goes
    first; ``probe(id)`` gives the status and the seconds it took. Medians of each kind."""
    seconds: dict[str, list[float]] = {"invisible": [], "missing": []}
    codes: Counter[str] = Counter()
    for i in range(pairs):
        invisible = ids_b[i % len(ids_b)]
        order = [("invisible", invisible), ("missing", _missing(invisible, i))]
        for kind, rid in order if i % 2 else order[::-1]:
            code, took = probe(rid)
            codes[f"{kind} {code}"] += 1
            seconds[kind].append(took)
    return _medians(seconds, codes)


def _medians(seconds: dict[str, list[float]], codes: Counter[str]) -> dict[str, Any]:
    invisible, missing = (float(np.median(seconds[k])) * 1e6 for k in ("invisible", "missing"))
    return {
        "pairs": len(seconds["missing"]),
        "status": dict(codes),
        "median_us": {"invisible": round(invisible, 1), "missing": round(missing, 1)},
        "median_difference_us": round(invisible - missing, 1),
    }


def _equal_work_in_process(store: Path, ids_b: list[str], pairs: int) -> dict[str, Any]:
    """The service's own lookup for a site-a caller, without transport (``get_record``)."""
    from ecgsearch.ecg.schema import UnknownRecord
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.store import open_store
    from ecgsearch.search.serving.service import SearchService

    sites = frozenset({SITE_A})
    with closing(open_store(path=store)) as opened:  # what the store's own __exit__ does
        service = SearchService(opened, Embedder())

        def probe(rid: str) -> tuple[str, float]:
            began = time.perf_counter()
            try:
                service.get_record(rid, sites=sites)
                code = "OK"
            except UnknownRecord:
                code = "NOT_FOUND"
            return code, time.perf_counter() - began

        try:
            return {"GetRecord": _alternate(ids_b, pairs, probe)}
        finally:
            service.close()


def _stats(bench: _Caller) -> dict[str, Any]:
    reply = pb.ServerStatsResponse.FromString(bench.raw("ServerStats", b""))
    return {
        r.method: {"count": r.count, "errors": r.errors, "p50_ms": round(r.p50_ms, 2)} for r in reply.rpcs
    }


def _verdict(refusal: dict[str, Any], load: dict[str, Any], equal: dict[str, Any]) -> dict[str, Any]:
    """Issue 23's done-when figures, each beside its bound."""
    latency = load["plain_search_while_batches_run"]["latency_ms"]
    arriving = load["plain_search_while_requests_arrive"]["latency_ms"]
    return {
        "refused_in_s": refusal["seconds"],
        "refused_under_1_s": refusal["status"] == "RESOURCE_EXHAUSTED" and refusal["seconds"] < 1,
        "refusal_growth_mb": max(refusal["rss_growth_mb"], refusal["peak_growth_mb"]),
        "refusal_growth_under_50_mb": max(refusal["rss_growth_mb"], refusal["peak_growth_mb"]) < 50,
        "plain_search_max_ms_while_batches_run": latency.get("p100"),
        "plain_search_under_1_s_while_batches_run": bool(latency) and latency["p100"] < 1000,
        "plain_search_max_ms_while_requests_arrive": arriving.get("p100"),
        "rss_after_minus_before_mb": load["server_memory"]["after_minus_before_mb"],
        "rss_after_within_200_mb": load["server_memory"]["after_minus_before_mb"] < 200,
        "not_found_median_difference_us": {k: v["median_difference_us"] for k, v in equal.items()},
        "not_found_difference_under_20_us": all(abs(v["median_difference_us"]) < 20 for v in equal.values()),
    }
