"""Ids and dataset names are limited to one safe set, declared once (``schema``) and applied where ids
are made: ingest's sources (tests/ingest/test_ingest_sources.py) and pushes, here against a real server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ecgsearch.ecg import intake, schema, signals
from ecgsearch.export.runtime import Embedder
from ecgsearch.search.api import EcgFile, EcgQuery, UpsertItem
from ecgsearch.search.client import EcgSearchClient, bad_request
from ecgsearch.search.engine.store import EdgeStore
from ecgsearch.search.serving import push
from ecgsearch.search.serving.server import run_server

HOSTILE = "<img src=x onerror=alert(1)>"
TOKEN = "t"
SITE_TOKEN = "t-site-a"


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (HOSTILE, "character 1 is not allowed"),
        ("ward:" + HOSTILE, "character 6 is not allowed"),
        ("ward:a b", "character 7 is not allowed"),
        ("ward:a\nb", "character 7 is not allowed"),
        ("ward:é", "character 6 is not allowed"),
        ("ward:" + "x" * 254, "259 characters, at most 258"),
        ("ward:" + "x" * 129, "not of the allowed form"),
        ("site a/ward:x", "character 5 is not allowed"),
        ("a/b/ward:x", "not of the allowed form"),
        ("ward:x/y", "not of the allowed form"),
        ("ward", "not of the allowed form"),
        (":x", "not of the allowed form"),
        ("-ward:x", "not of the allowed form"),
        ("ward:-x", "not of the allowed form"),
    ],
)
def test_record_ids_outside_the_safe_set_are_refused_naming_the_field(value: str, problem: str) -> None:
    with pytest.raises(schema.UnsafeId) as info:
        schema.check_record_id(value, "items[0].record_id")
    assert str(info.value).startswith(f"items[0].record_id: {problem}")
    assert info.value.field == "items[0].record_id" and HOSTILE not in str(info.value)


def test_ids_the_sources_make_are_in_the_safe_set() -> None:
    good_ids = ("ptbxl:17", "georgia:E00001", "hospital:sha256-" + "a" * 24, "ward.3:HR-1:2", "a:b")
    for good in (*good_ids, f"site-a{schema.SITE_SEPARATOR}hosp:ECG-1"):  # a site's pushed ECG
        assert schema.check_record_id(good) == good
    assert schema.check_record_id("s" * 64 + "/" + "d" * 64 + ":" + "n" * 128)
    assert intake.record_id_of("ward", HOSTILE, "f" * 64).startswith("ward:uid-")  # a header id is hashed
    with pytest.raises(schema.UnsafeId, match="dataset: character 2"):
        schema.check_dataset_name("a:b")
    with pytest.raises(schema.UnsafeId, match="65 characters, at most 64"):
        schema.check_dataset_name("d" * 65)
    assert push.check_native_id("  ") == "" and push.check_dataset("") == push.DEFAULT_DATASET


@pytest.fixture(scope="module")
def clients(
    ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EcgSearchClient, EcgSearchClient]]:
    """Two writers on one real server: one of every site, one of site-a only."""
    root = tmp_path_factory.mktemp("safe-ids")
    embedder = Embedder()
    store = EdgeStore(root / "store", "ecgs")
    store.create_collection(dim=embedder.dim, model_version=embedder.version)
    callers = root / "callers"
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    site_digest = hashlib.sha256(SITE_TOKEN.encode()).hexdigest()
    callers.write_text(
        f"pusher search,write * sha256:{digest}\nward search,write site-a sha256:{site_digest}\n"
    )
    try:
        with (
            run_server(store=store, embedder=embedder, port=0, tokens_file=callers) as (_, port),
            EcgSearchClient(f"127.0.0.1:{port}", token=TOKEN) as opened,
            EcgSearchClient(f"127.0.0.1:{port}", token=SITE_TOKEN) as site_a,
        ):
            yield opened, site_a
    finally:
        store.close()


def test_a_push_with_a_hostile_dataset_or_native_id_is_refused_naming_the_field(
    clients: tuple[EcgSearchClient, EcgSearchClient], ptbxl_dir: Path, data_dir: Path
) -> None:
    client, site_a = clients
    raw = signals.read_wfdb(ptbxl_dir / "records100" / "00000" / "00001_lr")
    ecg = EcgQuery(raw.signal, raw.fs, raw.leads, raw.units)
    with pytest.raises(grpc.RpcError) as refused:
        client.upsert([UpsertItem(ecg=ecg, native_id="ok-1")], dataset=HOSTILE)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    field, reason = bad_request(refused.value)[0]
    assert field == "dataset" and "character 1 is not allowed" in reason
    assert "<img" not in (refused.value.details() or "") + reason

    sample = (data_dir / "hospital" / "muse_musephi_ecg1.xml").read_bytes()
    results = client.upsert(
        [UpsertItem(ecg=ecg, native_id=HOSTILE), UpsertItem(file=EcgFile(sample))], dataset="ward-3"
    )
    assert [r.status for r in results] == ["rejected", "stored"]
    assert results[0].reason.startswith("items[0].native_id") and "<img" not in results[0].reason
    assert results[1].record_id.startswith("ward-3:") and schema.check_record_id(results[1].record_id)
    (in_site,) = site_a.upsert([UpsertItem(ecg=ecg, native_id="ECG-7")], dataset="ward-3")
    assert in_site.status == "stored" and in_site.record_id == f"site-a{schema.SITE_SEPARATOR}ward-3:ECG-7"
    assert schema.check_record_id(in_site.record_id)  # a site's namespace is in the safe set too
