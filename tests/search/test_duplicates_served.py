"""One ECG is served once: copies recorded at ingest (``duplicate_of``) drop out of searches by default.

A real store ingested by the CLI with PTB-XL ecg_id 1-10 at 500 Hz and the Challenge's copies of them
(``challenge/ptb_xl/HR00001``-``HR00010`` are ptbxl:1-10), served on a loopback port with the bundled model.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import qdrant_edge as edge
from qdrant_client import models as qm
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.ecg import signals
from ecgsearch.ecg.schema import EcgPayload, SearchFilter
from ecgsearch.export.runtime import Embedder
from ecgsearch.search import wire
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search._proto import search_pb2_grpc as pb_grpc
from ecgsearch.search.engine.filters import matches, to_client, to_edge
from ecgsearch.search.engine.store import EdgeStore, open_store
from ecgsearch.search.serving.server import run_server

TOKEN = "t"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
COPIES = {f"ptb_xl:HR{n:05d}": f"ptbxl:{n}" for n in range(1, 11)}


@dataclass(frozen=True)
class Served:
    stub: pb_grpc.EcgSearchServiceStub
    store: EdgeStore
    payloads: list[EcgPayload]
    vectors: np.ndarray


def _ingest(*args: str | Path) -> None:
    result = CliRunner().invoke(app, ["ingest", *map(str, args), "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def served(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    path = tmp_path_factory.mktemp("dups") / "store"
    _ingest(data_dir / "ptb-xl", "--store", path, "--limit", "10", "--prefer-hr")
    _ingest(data_dir / "challenge" / "ptb_xl", "--store", path)
    store = open_store(path=path, collection="ecgs")
    assert isinstance(store, EdgeStore)
    try:
        got = [store.get(i) for i in [*COPIES, *COPIES.values()]]
        payloads = [p for p, _ in got]
        vectors = np.stack([v for _, v in got])
        with run_server(store=store, embedder=Embedder(), port=0, token=TOKEN) as (_, port):
            target = f"127.0.0.1:{port}"
            with grpc.insecure_channel(target) as channel:
                yield Served(pb_grpc.EcgSearchServiceStub(channel), store, payloads, vectors)
    finally:
        store.close()


def test_ingest_marked_the_copies(served: Served) -> None:
    marked = {p.record_id: p.duplicate_of for p in served.payloads if p.duplicate_of}
    assert marked == COPIES


def test_search_by_record_returns_the_original_not_its_copy(served: Served) -> None:
    options = pb.SearchOptions(k=10, exact=True, with_summary=True)
    reply = served.stub.SearchByRecord(
        pb.SearchByRecordRequest(record_id="ptbxl:2", options=options), metadata=AUTH
    )
    ids = [h.record_id for h in reply.hits]
    assert len(ids) == 10 and not set(ids) & set(COPIES)
    assert all(h.payload.HasField("duplicate_of") is False for h in reply.hits)
    assert list(reply.summary.exclusions) == [
        pb.EXCLUSION_QUERY_RECORD,
        pb.EXCLUSION_SAME_PATIENT,
        pb.EXCLUSION_DUPLICATE_COPY,
    ]
    # The summary counts exactly the hits it describes: no copy is counted twice.
    assert reply.summary.n_neighbours == len(ids)

    wide = pb.SearchOptions(k=10, exact=True, with_summary=True, include_duplicates=True)
    reply = served.stub.SearchByRecord(
        pb.SearchByRecordRequest(record_id="ptbxl:2", options=wide), metadata=AUTH
    )
    assert reply.hits[0].record_id == "ptb_xl:HR00002"  # its own copy, cosine 1
    assert reply.hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert list(reply.summary.exclusions) == [pb.EXCLUSION_QUERY_RECORD, pb.EXCLUSION_SAME_PATIENT]


def test_search_by_a_copy_leaves_out_its_original(served: Served) -> None:
    """The copy's original is the query ECG under another id: excluded like the query record itself."""
    options = pb.SearchOptions(k=10, exact=True, include_duplicates=True)
    reply = served.stub.SearchByRecord(
        pb.SearchByRecordRequest(record_id="ptb_xl:HR00003", options=options), metadata=AUTH
    )
    ids = [h.record_id for h in reply.hits]
    assert "ptbxl:3" not in ids and "ptb_xl:HR00003" not in ids


def test_search_by_ecg_and_batch_apply_the_same_rule(served: Served, data_dir: Path) -> None:
    """The query ECG is stored (ptbxl:1, and its copy HR00001): the reply names it and leaves both out,
    unless asked to include them; a batch query by ECG does the same."""
    raw = signals.read_wfdb(data_dir / "ptb-xl" / "records500" / "00000" / "00001_hr")
    ecg = wire.ecg_to_proto(raw.signal, raw.fs, raw.leads, raw.units)
    default = pb.SearchOptions(k=5, exact=True, with_summary=True)
    reply = served.stub.SearchByEcg(pb.SearchByEcgRequest(ecg=ecg, options=default), metadata=AUTH)
    ids = [h.record_id for h in reply.hits]
    assert reply.query_record_id == "ptbxl:1"
    assert len(ids) == 5 and not set(ids) & {*COPIES, "ptbxl:1"}
    assert list(reply.summary.exclusions) == [pb.EXCLUSION_QUERY_RECORD, pb.EXCLUSION_DUPLICATE_COPY]
    itself = pb.SearchOptions(k=5, exact=True, include_query_record=True)
    reply = served.stub.SearchByEcg(pb.SearchByEcgRequest(ecg=ecg, options=itself), metadata=AUTH)
    assert reply.query_record_id == "ptbxl:1" and reply.hits[0].record_id == "ptbxl:1"
    wide = pb.SearchOptions(k=5, exact=True, include_duplicates=True, include_query_record=True)
    batch = served.stub.BatchSearch(
        pb.BatchSearchRequest(queries=[pb.Query(ecg=ecg, options=default), pb.Query(ecg=ecg, options=wide)]),
        metadata=AUTH,
    )
    assert [h.record_id for h in batch.results[0].hits] == ids
    assert [r.query_record_id for r in batch.results] == ["ptbxl:1", "ptbxl:1"]
    assert {"ptbxl:1", "ptb_xl:HR00001"} <= {h.record_id for h in batch.results[1].hits[:2]}


def test_duplicate_filter_same_on_both_engines_and_the_reference(served: Served) -> None:
    flt = SearchFilter(exclude_duplicates=True)
    expected = [p.record_id for p in served.payloads if matches(flt, p)]
    assert sorted(expected) == sorted(COPIES.values())
    assert isinstance(to_edge(flt).must[0], edge.IsEmptyCondition)
    assert isinstance(to_client(flt).must[0], qm.IsEmptyCondition)
    assert served.store.count(flt) == served.store.count() - len(COPIES)
    local = open_store(local=True, collection="dups")
    try:
        local.create_collection(dim=served.vectors.shape[1], model_version="any")
        local.upsert(served.payloads, served.vectors)
        assert local.count(flt) == len(expected)
        hits = local.search(served.vectors[0], k=len(served.payloads), filter=flt, exact=True)
        assert sorted(h.record_id for h in hits) == sorted(expected)
    finally:
        local.close()
