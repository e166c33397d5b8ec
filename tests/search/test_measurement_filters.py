"""Range filters on the machine's measurements (QRS >= 120 ms, QTc >= 460 ms...), through both store
backends, a real gRPC server on a loopback port and ``ecgsearch query``, over the hospital samples."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.ecg.schema import EcgPayload, MeasurementRange, SearchFilter
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest import pipeline, sources
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search.client import EcgSearchClient, bad_request
from ecgsearch.search.engine import filters
from ecgsearch.search.engine.store import EdgeStore, open_store
from ecgsearch.search.serving.server import run_server

TOKEN = "t"
QUERY_FILE = "muse_braveheart_example4.xml"  # QRS 128 ms, QTc 463 ms


@dataclass(frozen=True)
class Served:
    target: str
    client: EcgSearchClient
    payloads: list[EcgPayload]
    vectors: np.ndarray
    hospital: Path


@pytest.fixture(scope="module")
def served(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    hospital = data_dir / "hospital"
    embedder = Embedder()
    store = EdgeStore(tmp_path_factory.mktemp("measured") / "store", "ecgs")
    pipeline.ingest(sources.enumerate_source(hospital), store, embedder, workers=0)
    everything = np.ones(embedder.dim, np.float32)
    hits = store.search(everything, k=100, exact=True)
    payloads = [h.payload for h in hits]
    vectors = np.stack([store.get(p.record_id)[1] for p in payloads])
    try:
        with run_server(store=store, embedder=embedder, port=0, token=TOKEN) as (_, port):
            target = f"127.0.0.1:{port}"
            client = EcgSearchClient(target, token=TOKEN)
            try:
                yield Served(target, client, payloads, vectors, hospital)
            finally:
                client.close()
    finally:
        store.close()


def _expected(payloads: list[EcgPayload], **bounds: tuple[float | None, float | None]) -> set[str]:
    def inside(p: EcgPayload) -> bool:
        for name, (low, high) in bounds.items():
            value = getattr(p, name)
            if value is None or (low is not None and value < low) or (high is not None and value > high):
                return False
        return True

    return {p.record_id for p in payloads if inside(p)}


def test_the_samples_hold_both_sides_of_each_bound(served: Served):
    qrs = [p.qrs_ms for p in served.payloads]
    assert any(q is not None and q >= 120 for q in qrs) and any(q is not None and q < 120 for q in qrs)
    assert any(q is None for q in qrs)  # the EDF carries no measurements: it must never match


def test_ranges_through_grpc_match_the_reference(served: Served):
    cases = [
        {"qrs_ms": (120.0, None)},
        {"qrs_ms": (120.0, None), "qtc_ms": (460.0, None)},
        {"r_axis": (None, -30.0)},
        {"ventricular_rate_bpm": (50.0, 70.0), "pr_ms": (None, 160.0)},
    ]
    for bounds in cases:
        ranges = [MeasurementRange(measurement=n, min=lo, max=hi) for n, (lo, hi) in bounds.items()]
        result = served.client.search_by_file(
            served.hospital / QUERY_FILE,
            k=100,
            exact=True,
            measurements=ranges,
            include_duplicates=True,
            include_query_record=True,
        )
        got = {h.record_id for h in result.hits}
        assert got == _expected(served.payloads, **bounds), bounds
        assert got, bounds  # every case selects something: the test cannot pass on empty results
    wide = served.client.search_by_file(
        served.hospital / QUERY_FILE, k=100, exact=True, include_duplicates=True, include_query_record=True
    )
    assert len(wide.hits) == len(served.payloads)


def test_both_backends_and_the_reference_agree(served: Served):
    flt = SearchFilter(
        measurements=[
            MeasurementRange(measurement="qrs_ms", min=100),
            MeasurementRange(measurement="t_axis", max=80),
        ]
    )
    reference = {p.record_id for p in served.payloads if filters.matches(flt, p)}
    assert reference == _expected(served.payloads, qrs_ms=(100, None), t_axis=(None, 80))
    local = open_store(local=True, collection="m")
    try:
        local.create_collection(dim=served.vectors.shape[1], model_version="v")
        local.upsert(served.payloads, served.vectors)
        got = {h.record_id for h in local.search(served.vectors[0], k=100, filter=flt)}
    finally:
        local.close()
    assert got == reference
    served_got = served.client.search_by_vector(served.vectors[0], k=100, exact=True, filter=flt)
    assert {h.record_id for h in served_got.hits} == reference


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (pb.MeasurementRange(measurement=pb.MEASUREMENT_QRS_MS, min=130, max=120), "min 130 > max 120"),
        (pb.MeasurementRange(measurement=pb.MEASUREMENT_QRS_MS), "give min, max or both"),
        (pb.MeasurementRange(measurement=pb.MEASUREMENT_UNSPECIFIED, min=1), "measurement"),
        (pb.MeasurementRange(measurement=pb.MEASUREMENT_QTC_MS, min=math.nan), "finite"),
        (pb.MeasurementRange(measurement=pb.MEASUREMENT_QTC_MS, max=1e9), "10000"),
    ],
)
def test_bad_ranges_are_invalid_argument_naming_the_field(served: Served, entry, message: str):
    request = pb.SearchByVectorRequest(vector=served.vectors[0].tolist())
    request.options.filter.measurements.append(entry)
    with pytest.raises(grpc.RpcError) as err:
        served.client.stub.SearchByVector(request, metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (field, description), *_ = bad_request(err.value)
    assert field.startswith("options.filter.measurements")
    assert message in description or message in field


def test_one_measurement_twice_is_refused(served: Served):
    request = pb.SearchByVectorRequest(vector=served.vectors[0].tolist())
    for low in (100, 110):
        request.options.filter.measurements.add(measurement=pb.MEASUREMENT_QRS_MS, min=low)
    with pytest.raises(grpc.RpcError) as err:
        served.client.stub.SearchByVector(request, metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_query_command_filters_by_measurement_on_a_hospital_file(served: Served):
    args = ["query", "--target", served.target, "--file", str(served.hospital / QUERY_FILE)]
    args += ["--measure", "qrs>=120", "--measure", "qtc_ms>=460", "--k", "50", "--exact", "--json"]
    args += ["--include-query-record"]  # the query file is stored, and it is the one ECG that matches
    result = CliRunner().invoke(app, args, env={"ECGSEARCH_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    got = {h["record_id"] for h in json.loads(result.stdout)["hits"]}  # stderr may carry log lines
    assert got == _expected(served.payloads, qrs_ms=(120, None), qtc_ms=(460, None))
    assert len(got) == 1


def test_query_command_refuses_a_malformed_measure(served: Served):
    args = ["query", "--target", served.target, "--record-id", "x:1"]
    for bad in ("qrs>120", "heart>=1", "qrs_ms=130..120"):
        result = CliRunner().invoke(app, [*args, "--measure", bad], env={"ECGSEARCH_TOKEN": TOKEN})
        assert result.exit_code == 2, (bad, result.output)
