"""Hostile requests against a running server, shared by ``test_hostile.py`` and a timing probe.

Each case is raw request bytes for one method, so garbage bytes go through the same path as
well-formed but abusive messages. Run as a script to time every case against a server of your own
(``--target``) or against one started here over a small PTB-XL store with the bundled model:

    python tests/search/hostile_cases.py --out results/hostile_probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ecgsearch.ecg import signals
from ecgsearch.search._proto import search_pb2 as pb

SERVICE = "/ecgsearch.v1.EcgSearchService/"
MB = 1_000_000


@dataclass(frozen=True)
class Case:
    """One hostile request: which method, its bytes, and the status a well-defended server answers."""

    name: str
    method: str
    request: bytes
    expected: tuple[str, ...] = ("INVALID_ARGUMENT",)
    prepares: int = 0  # ECGs the server may prepare for it (0: must be refused before any work)


def _ecg(fs: float, n_samples: int, leads: tuple[str, ...] = signals.LEADS) -> pb.Ecg:
    flat = np.zeros(len(leads) * n_samples, dtype=np.float32)
    return pb.Ecg(lead_names=list(leads), sampling_rate_hz=fs, flat_samples=flat, n_leads=len(leads))


def cases(dim: int) -> list[Case]:
    """Every hostile request of the hardening review, for a collection of ``dim``-d vectors."""
    vector = np.full(dim, 1 / np.sqrt(dim), dtype=np.float32)
    out = [
        Case(
            f"SearchByEcg fs={fs!r}, one sample per lead",
            "SearchByEcg",
            pb.SearchByEcgRequest(ecg=_ecg(fs, 1)).SerializeToString(),
        )
        for fs in (1e-4, 1e-300, 5e-324, 0.0, float("nan"), float("inf"), -500.0, 49.9, 10_001.0)
    ]
    out += [
        Case(
            "SearchByEcg 300,001 samples in one lead",
            "SearchByEcg",
            pb.SearchByEcgRequest(ecg=_ecg(500.0, 300_001, ("I",))).SerializeToString(),
        ),
        Case(
            "SearchByEcg 13 leads, II twice",
            "SearchByEcg",
            pb.SearchByEcgRequest(ecg=_ecg(100.0, 1000, (*signals.LEADS, "II"))).SerializeToString(),
        ),
        Case(
            "SearchByEcg 1 MB lead name",
            "SearchByEcg",
            pb.SearchByEcgRequest(ecg=_ecg(100.0, 1000, ("I" * MB, *signals.LEADS[1:]))).SerializeToString(),
        ),
        Case(
            "SearchByEcg 10 s at 100 Hz, 25 leads",
            "SearchByEcg",
            pb.SearchByEcgRequest(
                ecg=_ecg(100.0, 1000, (*signals.LEADS, *(f"X{i}" for i in range(13))))
            ).SerializeToString(),
        ),
        Case(
            "SearchByRecord 1 MB record id",
            "SearchByRecord",
            pb.SearchByRecordRequest(record_id="x" * MB).SerializeToString(),
        ),
        Case(
            "GetRecord 1 MB record id",
            "GetRecord",
            pb.GetRecordRequest(record_id="x" * MB).SerializeToString(),
        ),
        Case("GetEcg 1 MB record id", "GetEcg", pb.GetEcgRequest(record_id="x" * MB).SerializeToString()),
        Case(
            "SearchByVector 10,000 excluded record ids",
            "SearchByVector",
            pb.SearchByVectorRequest(
                vector=vector,
                options=pb.SearchOptions(
                    filter=pb.Filter(exclude_record_ids=[f"r:{i}" for i in range(10_000)])
                ),
            ).SerializeToString(),
        ),
        Case(
            "SearchByVector 1 MB diagnosis code",
            "SearchByVector",
            pb.SearchByVectorRequest(
                vector=vector, options=pb.SearchOptions(filter=pb.Filter(diagnoses_any=["A" * MB]))
            ).SerializeToString(),
        ),
        Case("SearchByEcg garbage bytes", "SearchByEcg", b"\xff" * 64),
        Case("BatchSearch garbage bytes", "BatchSearch", b"\x0a\xff\xff\xff\xff\x0f" + b"\x00" * 32),
        Case(
            "BatchSearch 257 queries",
            "BatchSearch",
            pb.BatchSearchRequest(
                queries=[pb.Query(vector=pb.Vector(values=vector))] * 257
            ).SerializeToString(),
        ),
        Case(
            "BatchSearch 67 ECGs of 10 s at 500 Hz (4.02 M samples)",
            "BatchSearch",
            pb.BatchSearchRequest(queries=[pb.Query(ecg=_ecg(500.0, 5000))] * 67).SerializeToString(),
        ),
    ]
    return out


def send(channel: grpc.Channel, case: Case, metadata: tuple, timeout: float = 30.0) -> tuple[str, str, float]:
    """(status name, details, seconds) of one case sent as raw bytes."""
    call = channel.unary_unary(SERVICE + case.method, request_serializer=None, response_deserializer=None)
    start = time.perf_counter()
    try:
        call(case.request, metadata=metadata, timeout=timeout)
        code, details = "OK", ""
    except grpc.RpcError as error:
        code, details = error.code().name, error.details() or ""  # type: ignore[attr-defined]
    return code, details, time.perf_counter() - start


def probe(target: str, token: str | None, dim: int) -> list[dict]:
    """Send every case once; one row per case with its status and response time."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    rows = []
    with grpc.insecure_channel(target, options=options) as channel:
        for case in cases(dim):
            code, details, seconds = send(channel, case, metadata)
            rows.append(
                {
                    "case": case.name,
                    "request_bytes": len(case.request),
                    "status": code,
                    "expected": list(case.expected),
                    "ms": round(seconds * 1000, 2),
                    "details_chars": len(details),
                }
            )
    return rows


def _serve_ptbxl(n: int):
    """A server over ``n`` PTB-XL records of ../shared/data embedded with the bundled model."""
    from contextlib import ExitStack

    from ecgsearch.export.runtime import Embedder
    from ecgsearch.ingest import sources
    from ecgsearch.search.engine.store import EdgeStore
    from ecgsearch.search.serving.server import run_server

    stack = ExitStack()
    data = Path(__file__).resolve().parents[3] / "shared" / "data" / "ptb-xl"
    embedder = Embedder()
    records = [sources.load(c) for c in sources.select(sources.enumerate_source(data), limit=n)]
    store = EdgeStore(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "store", "ecgs")
    stack.callback(store.close)
    store.create_collection(dim=embedder.dim, model_version=embedder.version)
    store.upsert([r.payload for r in records], embedder.embed(np.stack([r.signal for r in records])))
    _, port = stack.enter_context(run_server(store=store, embedder=embedder, port=0, token="probe"))
    return stack, f"127.0.0.1:{port}", embedder.dim


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="host:port of a running server (default: start one here)")
    parser.add_argument("--token", help="bearer token for --target")
    parser.add_argument("--dim", type=int, default=256, help="embedding dimension of --target's model")
    parser.add_argument("--records", type=int, default=50, help="PTB-XL records in the server started here")
    parser.add_argument("--out", type=Path, help="results JSON")
    args = parser.parse_args(argv)
    if args.target:
        rows = probe(args.target, args.token, args.dim)
    else:
        stack, target, dim = _serve_ptbxl(args.records)
        with stack:
            rows = probe(target, "probe", dim)
    for row in rows:
        print(f"{row['ms']:9.2f} ms  {row['status']:<18} {row['case']}", file=sys.stderr)
    if args.out:
        document = {
            "benchmark": "hostile_probe",
            "command": "python tests/search/hostile_cases.py --out " + str(args.out),
            "machine": {
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
            },
            "max_ms": max(r["ms"] for r in rows),
            "cases": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
