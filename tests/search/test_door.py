"""One door: every RPC of the service, walked from its descriptor, has a cross-site case here.

A real server on 127.0.0.1 over an embedded store of real PTB-XL records split over two sites (even
rows site-a, odd rows site-b), hospital files and raw ECGs pushed by a writer of each site, and
copies whose ``duplicate_of`` names a record of the other site. Every case is what a site-a caller
can ask; none may return site-b data, quote a site-b hash or id, or tell a site-b id from an id that
does not exist. A new RPC without a case here fails ``test_every_rpc_has_a_cross_site_case``: no RPC
can be added open.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from sited import SITES, Sited, build, sha

from ecgsearch.ecg import intake, signals
from ecgsearch.ecg.readers import complete_leads, read_ecg
from ecgsearch.ecg.schema import SITE_SEPARATOR
from ecgsearch.search._proto import search_pb2 as pb
from ecgsearch.search.api import EcgQuery, Query, UpsertItem
from ecgsearch.search.client import EcgSearchClient
from ecgsearch.search.serving.server import RPCS, SERVICE, run_server

A, B = SITES
CALLERS = {  # name: (scopes, sites)
    "reader-a": ("search", A),
    "writer-a": ("search,write", A),
    "writer-b": ("search,write", B),
    "admin-a": ("search,admin", A),
    "everyone": ("search,write,admin", "*"),
}
PUSHED_FILE = "muse_musephi_ecg1.xml"  # pushed by both sites
COPY_DATASET = "copies"


def _token(name: str) -> str:
    return f"tok-{name}"


def _auth(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {_token(name)}"),)


@dataclass(frozen=True)
class Walled:
    """The served store and what each site holds in it."""

    target: str
    sited: Sited
    hospital: Path
    ptb: Path  # PTB-XL's 100 Hz records, read again as raw ECGs
    own: list[str]  # site-a ids: ingested, pushed and copies
    other: list[str]  # site-b ids: ingested and pushed
    other_pushed: str  # site-b's pushed file
    other_raw: str  # site-b's pushed raw ECG
    copy_of_other: str  # a site-a copy whose duplicate_of names a site-b record
    copy_of_own: str  # a site-a copy whose duplicate_of names a site-a record
    pushes: dict[str, list]  # the push results of each writer

    def client(self, caller: str) -> EcgSearchClient:
        return EcgSearchClient(self.target, token=_token(caller), timeout=60)

    def raw(self, record: str) -> signals.RawEcg:
        return signals.read_wfdb(self.ptb / record)


@pytest.fixture(scope="module")
def walled(ptbxl_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walled]:
    root = tmp_path_factory.mktemp("door")
    sited = build(ptbxl_dir, root)
    a_rows = [i for i, p in enumerate(sited.payloads) if p.site == A]
    b_rows = [i for i, p in enumerate(sited.payloads) if p.site == B]
    copies = [
        sited.payloads[a_rows[0]].model_copy(
            update={"record_id": f"{COPY_DATASET}:1", "dataset": COPY_DATASET, "site": A}
        ),
        sited.payloads[a_rows[1]].model_copy(
            update={"record_id": f"{COPY_DATASET}:2", "dataset": COPY_DATASET, "site": A}
        ),
    ]
    copies[0].duplicate_of = sited.payloads[b_rows[0]].record_id  # names another site's record
    copies[1].duplicate_of = sited.payloads[a_rows[1]].record_id  # names its own site's record
    sited.store.upsert(copies, sited.vectors[[b_rows[0], a_rows[1]]])
    callers = root / "callers"
    callers.write_text(
        "".join(
            f"{name} {scopes} {sites} sha256:{sha(_token(name))}\n"
            for name, (scopes, sites) in CALLERS.items()
        )
    )
    hospital = data_dir / "hospital"
    ptb = ptbxl_dir / "records100" / "00000"
    try:
        with run_server(store=sited.store, embedder=sited.embedder, port=0, tokens_file=callers) as (_, port):
            target = f"127.0.0.1:{port}"
            pushes = {}
            for writer, record in (("writer-a", "00040_lr"), ("writer-b", "00041_lr")):
                raw = signals.read_wfdb(ptb / record)
                with EcgSearchClient(target, token=_token(writer)) as client:
                    pushes[writer] = client.upsert_files(
                        [hospital / PUSHED_FILE], dataset="hosp"
                    ) + client.upsert(
                        [
                            UpsertItem(
                                ecg=EcgQuery(raw.signal, raw.fs, raw.leads, raw.units), native_id="ECG-1"
                            )
                        ],
                        dataset="hosp",
                    )
            assert [r.status for rs in pushes.values() for r in rs] == ["stored"] * 4, pushes
            own = [sited.payloads[i].record_id for i in a_rows] + [c.record_id for c in copies]
            own += [r.record_id for r in pushes["writer-a"]]
            other = [sited.payloads[i].record_id for i in b_rows] + [r.record_id for r in pushes["writer-b"]]
            yield Walled(
                target,
                sited,
                hospital,
                ptb,
                own,
                other,
                pushes["writer-b"][0].record_id,
                pushes["writer-b"][1].record_id,
                copies[0].record_id,
                copies[1].record_id,
                pushes,
            )
    finally:
        sited.store.close()


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def _not_found_alike(walled: Walled, call: Callable[[str], object]) -> None:
    """Each site-b id answers NOT_FOUND with the message of an id that does not exist."""
    code, missing = _status(lambda: call("nowhere:404"))
    assert code == grpc.StatusCode.NOT_FOUND
    for record_id in (walled.other[0], walled.other_pushed, walled.other_raw):
        code, details = _status(lambda record_id=record_id: call(record_id))
        assert code == grpc.StatusCode.NOT_FOUND
        assert details == missing.replace("nowhere:404", record_id)


def _only_own(walled: Walled, hits) -> None:
    ids = {h.record_id for h in hits}
    assert ids and ids <= set(walled.own), ids - set(walled.own)
    assert all(h.payload.duplicate_of in (None, *walled.own) for h in hits)


# --- one cross-site case per RPC ------------------------------------------------------------------


def _search_by_record(walled: Walled) -> None:
    with walled.client("reader-a") as client:
        everything = {"k": len(walled.own) + len(walled.other), "include_duplicates": True, "exact": True}
        for record_id in (walled.own[0], walled.pushes["writer-a"][0].record_id):
            _only_own(
                walled, client.search_by_record(record_id, include_same_patient=True, **everything).hits
            )
        _not_found_alike(walled, lambda rid: client.search_by_record(rid))


def _search_by_ecg(walled: Walled) -> None:
    """Site-b's own pushed raw ECG as the query: only site-a's neighbours come back."""
    raw = walled.raw("00041_lr")
    with walled.client("reader-a") as client:
        hits = client.search_by_ecg(raw.signal, raw.fs, raw.leads, units=raw.units, k=100, exact=True).hits
    _only_own(walled, hits)


def _search_by_file(walled: Walled) -> None:
    """The file both sites pushed, and any filter: site-a's copy only, never site-b's (the leak of
    SearchByFile ignoring the caller's site)."""
    path = walled.hospital / PUSHED_FILE
    with walled.client("reader-a") as client:
        found = client.search_by_file(
            path, k=100, exact=True, include_duplicates=True, include_query_record=True
        )
        hits = found.hits
        _only_own(walled, hits)
        assert found.query_record_id == walled.pushes["writer-a"][0].record_id
        assert hits[0].record_id == walled.pushes["writer-a"][0].record_id and hits[0].score > 0.999
        _only_own(walled, client.search_by_file(path, k=100, datasets=["ptbxl"]).hits)  # site-a's ingested


def _search_by_vector(walled: Walled) -> None:
    rows = range(len(walled.sited.payloads))
    with walled.client("reader-a") as client:
        for row in rows:  # queries of both sites' ECGs
            hits = client.search_by_vector(walled.sited.vectors[row], k=200, include_duplicates=True).hits
            _only_own(walled, hits)


def _batch_search(walled: Walled) -> None:
    raw = walled.raw("00041_lr")
    queries = [
        Query(record_id=walled.own[0]),
        Query(ecg=EcgQuery(raw.signal, raw.fs, raw.leads, raw.units)),
        Query(vector=walled.sited.vectors[1]),
    ]
    with walled.client("reader-a") as client:
        for result in client.batch(queries):
            _only_own(walled, result.hits)
        _not_found_alike(walled, lambda rid: client.batch([queries[0], Query(record_id=rid)]))


def _get_record(walled: Walled) -> None:
    with walled.client("reader-a") as client:
        assert client.get_record(walled.copy_of_other)[0].duplicate_of is None  # names a site-b record
        assert client.get_record(walled.copy_of_own)[0].duplicate_of in walled.own  # its own site's
        _not_found_alike(walled, lambda rid: client.get_record(rid, with_vector=True))
    with walled.client("everyone") as client:  # the wall is the caller's, not the record's
        assert client.get_record(walled.copy_of_other)[0].duplicate_of in walled.other


def _get_ecg(walled: Walled) -> None:
    """Prepared, and as recorded: a pushed file at its own rate (MUSE, 500 Hz), a pushed signal at its
    own (100 Hz), both from the archive; another site's records are unknown either way."""
    pushed_file, pushed_signal = walled.pushes["writer-a"][:2]
    with walled.client("reader-a") as client:
        assert client.get_ecg(pushed_signal.record_id).shape == (12, signals.MODEL_SAMPLES)
        _not_found_alike(walled, client.get_ecg)
        as_file = client.recorded_ecg(pushed_file.record_id)
        as_signal = client.recorded_ecg(pushed_signal.record_id)
        _not_found_alike(walled, client.recorded_ecg)
    ecg = read_ecg((walled.hospital / PUSHED_FILE).read_bytes())
    assert as_file.fs == ecg.sampling_rate_hz == 500
    np.testing.assert_allclose(as_file.signal, complete_leads(ecg), atol=1e-6)
    assert as_signal.fs == 100
    np.testing.assert_array_equal(as_signal.signal, signals.recorded(walled.raw("00040_lr")))


def _upsert_ecgs(walled: Walled) -> None:
    """Site-a pushes site-b's exact ECG and, under site-b's native id, another ECG: both are stored
    for site-a, in its own namespace; nothing in the replies names site-b's records or hashes."""
    raw_b = walled.raw("00041_lr")
    raw_other = walled.raw("00043_lr")
    b_ids = [r.record_id for r in walled.pushes["writer-b"]]
    b_names = [*b_ids, walled.sited.store.get(walled.other_raw)[0].content_hash[:12]]  # (the file: a's too)
    with walled.client("writer-a") as client:
        results = client.upsert(
            [
                UpsertItem(ecg=EcgQuery(raw_b.signal, raw_b.fs, raw_b.leads, raw_b.units), native_id="ECG-9"),
                UpsertItem(ecg=EcgQuery(raw_other.signal, raw_other.fs, raw_other.leads, raw_other.units)),
            ],
            dataset="hosp",
        )
        again = client.upsert_files([walled.hospital / PUSHED_FILE], dataset="hosp")
    assert [r.status for r in results] == ["stored", "stored"]
    assert all(r.record_id.startswith(f"{A}{SITE_SEPARATOR}") for r in [*results, *again])
    assert again[0].status == "skipped" and again[0].record_id == walled.pushes["writer-a"][0].record_id
    text = " ".join(f"{r.record_id} {r.reason}" for r in [*results, *again])
    assert not any(b in text for b in b_names)
    stored = {walled.sited.store.get(r.record_id)[0].site for r in results}
    assert stored == {A}
    # the first push of the module: the same file by both sites, stored once for each
    a_file, b_file = walled.pushes["writer-a"][0], walled.pushes["writer-b"][0]
    assert a_file.record_id != b_file.record_id
    assert a_file.record_id.split(SITE_SEPARATOR, 1)[1] == b_file.record_id.split(SITE_SEPARATOR, 1)[1]
    assert {walled.sited.store.get(r.record_id)[0].site for r in (a_file, b_file)} == {A, B}
    # a different ECG under the native id the other site used: its own record, no collision
    assert walled.pushes["writer-a"][1].record_id == f"{A}{SITE_SEPARATOR}hosp:ECG-1"
    assert walled.pushes["writer-b"][1].record_id == f"{B}{SITE_SEPARATOR}hosp:ECG-1"


def _collection_info(walled: Walled) -> None:
    store = walled.sited.store
    own = [store.get(r)[0] for r in walled.own]
    with walled.client("reader-a") as client:
        info = client.info()
    assert info.count == len(own)
    assert info.diagnosis_counts == dict(Counter(c for p in own for c in p.diagnoses))


def _server_stats(walled: Walled) -> None:
    with walled.client("reader-a") as client:
        assert client.stats() == {}  # the per-RPC rows count every site's calls
        reply = client.stub.ServerStats(pb.ServerStatsRequest(), metadata=_auth("reader-a"))
    assert reply.uptime_s > 0 and reply.ecgs_prepared == 0
    with walled.client("everyone") as client:
        assert client.stats()["UpsertEcgs"]["count"] >= 2


def _create_snapshot(walled: Walled) -> None:
    with walled.client("admin-a") as client:
        code, details = _status(client.create_snapshot)
    assert code == grpc.StatusCode.PERMISSION_DENIED and "every site" in details


def _list_snapshots(walled: Walled) -> None:
    with walled.client("admin-a") as client:
        code, _ = _status(client.list_snapshots)
    assert code == grpc.StatusCode.PERMISSION_DENIED


CROSS_SITE: dict[str, Callable[[Walled], None]] = {
    "SearchByRecord": _search_by_record,
    "SearchByEcg": _search_by_ecg,
    "SearchByFile": _search_by_file,
    "UpsertEcgs": _upsert_ecgs,
    "SearchByVector": _search_by_vector,
    "BatchSearch": _batch_search,
    "GetRecord": _get_record,
    "GetEcg": _get_ecg,
    "CollectionInfo": _collection_info,
    "ServerStats": _server_stats,
    "CreateSnapshot": _create_snapshot,
    "ListSnapshots": _list_snapshots,
}


def test_every_rpc_has_a_cross_site_case() -> None:
    methods = {m.name for m in SERVICE.methods}
    assert set(CROSS_SITE) == methods, "an RPC without a cross-site case: add one to CROSS_SITE"
    assert set(RPCS) == methods, "an RPC without an entry in the door's table"


@pytest.mark.parametrize("method", sorted(CROSS_SITE))
def test_a_site_a_caller_gets_nothing_of_site_b(walled: Walled, method: str) -> None:
    CROSS_SITE[method](walled)


def test_the_wall_holds_for_the_other_site_too(walled: Walled) -> None:
    """Site-b's writer searches the file both sites pushed: its own copy, none of site-a's."""
    with walled.client("writer-b") as client:
        hits = client.search_by_file(
            walled.hospital / PUSHED_FILE, k=200, include_duplicates=True, include_query_record=True
        ).hits
    ids = {h.record_id for h in hits}
    assert walled.other_pushed in ids and not ids & set(walled.own)


def test_every_site_caller_sees_both(walled: Walled) -> None:
    with walled.client("everyone") as client:
        hits = client.search_by_file(
            walled.hospital / PUSHED_FILE, k=200, exact=True, include_query_record=True
        ).hits
        assert {walled.other_pushed, walled.pushes["writer-a"][0].record_id} <= {h.record_id for h in hits}
        everything = client.info().count  # (the figures of the start: refreshed in the background)
    with walled.client("reader-a") as client:
        assert everything > client.info().count


def test_pushed_ids_are_namespaced_by_the_writers_site(walled: Walled) -> None:
    ecg = read_ecg(walled.hospital / PUSHED_FILE)
    plain = intake.record_id_of("hosp", ecg.native_id, intake.hash_of(ecg))
    assert walled.pushes["writer-a"][0].record_id == f"{A}{SITE_SEPARATOR}{plain}"
    assert walled.pushes["writer-b"][0].record_id == f"{B}{SITE_SEPARATOR}{plain}"
    assert np.array_equal(
        walled.sited.store.get(walled.pushes["writer-a"][0].record_id)[1],
        walled.sited.store.get(walled.pushes["writer-b"][0].record_id)[1],
    )
