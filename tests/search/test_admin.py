"""Operator commands against a store built from real PTB-XL records with the committed model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.ecg.identity import site_pseudonymizer
from ecgsearch.ecg.schema import UnknownRecord
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest import sources
from ecgsearch.search.engine.store import open_store
from ecgsearch.search.ops.admin import collection_info, get_record, switch_alias
from ecgsearch.search.serving.server import run_server

N = 8


def run(*args: object, token: str | None = None) -> tuple[int, str, str]:
    """The real CLI in-process; the token, when given, comes from the environment as documented."""
    env = {"ECGSEARCH_TOKEN": token} if token is not None else {}
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    # Usage errors come in a rich box that wraps lines: compare words, not layout.
    err = " ".join(result.stderr.replace("│", " ").split())
    return result.exit_code, result.stdout, err


@pytest.fixture(scope="module")
def built(ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Collections 'ecgs' (N records) and 'small' (3) made by `ecgsearch ingest`."""
    store = tmp_path_factory.mktemp("admin") / "store"
    for name, limit in (("ecgs", N), ("small", 3)):
        code, out, err = run("ingest", ptbxl_dir, "--store", store, "--collection", name,
                             "--limit", limit, "--workers", 0, "-q")  # fmt: skip
        assert code == 0, out + err
    return store


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(threads=1)


def test_collection_info_json_and_text(built: Path, embedder: Embedder) -> None:
    code, out, err = run("collection", "info", "--store", built, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["collection"], info["count"], info["dim"]) == ("ecgs", N, embedder.dim)
    assert info["model_version"] == embedder.version == info["model_card"]["version"]
    assert info["index_settings"]["quantization"] is True and info["index_settings"]["hnsw_m"] == 32
    assert info["aliases"] == {} and info["backend"] == "qdrant-edge"
    assert sum(info["diagnosis_counts"].values()) >= N  # every PTB-XL record carries a code
    code, out, _ = run("collection", "info", "--store", built)
    assert code == 0 and f"points          {N}" in out and embedder.version in out


def test_collection_get_returns_the_ingested_payload_and_vector(
    built: Path, ptbxl_dir: Path, embedder: Embedder
) -> None:
    candidate = next(iter(sources.enumerate_source(ptbxl_dir)))
    record = sources.load(candidate, site_pseudonymizer(None, built))  # the store's own site secret
    code, out, err = run("collection", "get", candidate.record_id, "--store", built, "--vector", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["payload"] == record.payload.model_dump(mode="json")
    np.testing.assert_allclose(got["vector"], embedder.embed(record.signal)[0], atol=1e-5)
    code, _, err = run("collection", "get", "ptbxl:999999", "--store", built)
    assert code == 5 and "ptbxl:999999" in err and "Traceback" not in err  # exit table: not found


def test_collection_alias_switches_what_the_name_opens(built: Path) -> None:
    code, out, err = run("collection", "alias", "live", "small", "--store", built, "--json")
    assert code == 0, err
    assert json.loads(out) == {"alias": "live", "previous": None, "target": "small"}
    assert json.loads(run("collection", "info", "--store", built, "-c", "live", "--json")[1])["count"] == 3
    code, out, _ = run("collection", "alias", "live", "ecgs", "--store", built)
    assert code == 0 and "alias live: small -> ecgs" in out
    info = json.loads(run("collection", "info", "--store", built, "-c", "live", "--json")[1])
    assert (info["collection"], info["count"], info["aliases"]) == ("ecgs", N, {"live": "ecgs"})
    code, _, err = run("collection", "alias", "other", "missing", "--store", built)
    assert code == 1 and "missing" in err and "Traceback" not in err


def test_a_store_held_by_another_process_names_the_holder(built: Path) -> None:
    store = open_store(path=built, collection="ecgs")  # this test process holds the shard
    try:
        code = "from ecgsearch.cli.main import app; app()"
        args = [sys.executable, "-c", code, "collection", "info", "--store", str(built)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    finally:
        store.close()
    assert result.returncode == 1, result.stderr
    assert f"pid {os.getpid()}" in result.stderr and "Traceback" not in result.stderr


def test_missing_store_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("collection", "info", "--store", tmp_path / "nothing")
    assert code == 2 and "holds no collections" in err


def test_admin_functions_on_the_server_store(ptbxl_dir: Path, embedder: Embedder) -> None:
    """The Qdrant-server code path (qdrant-client local mode through open_store)."""
    records = [sources.load(c) for c in sources.select(sources.enumerate_source(ptbxl_dir), limit=4)]
    vectors = embedder.embed(np.stack([r.signal for r in records]))
    store = open_store(local=True, collection="ecgs-v1")
    try:
        store.create_collection(dim=embedder.dim, model_version=embedder.version)
        store.upsert([r.payload for r in records], vectors)
        info = collection_info(store)
        assert (info["count"], info["backend"], info["model_card"]["version"]) == (
            4,
            "qdrant-local",
            embedder.version,
        )
        assert switch_alias(store, "ecgs", "ecgs-v1") == {
            "alias": "ecgs",
            "previous": None,
            "target": "ecgs-v1",
        }
        assert collection_info(store)["aliases"] == {"ecgs": "ecgs-v1"}
        got = get_record(store, records[2].payload.record_id, vector=True)
        assert got["payload"]["record_id"] == records[2].payload.record_id
        np.testing.assert_allclose(got["vector"], vectors[2], atol=1e-5)
        with pytest.raises(UnknownRecord):
            get_record(store, "ptbxl:999999")
    finally:
        store.close()


@pytest.fixture
def served(built: Path) -> Iterator[str]:
    store = open_store(path=built, collection="ecgs")
    try:
        with run_server(store=store, embedder=Embedder(threads=1), port=0, token="t") as (_, port):
            yield f"127.0.0.1:{port}"
    finally:
        store.close()


def test_stats_of_a_running_server(served: str) -> None:
    assert run("query", "--target", served, "--record-id", "ptbxl:1", "--json", token="t")[0] == 0
    code, out, err = run("stats", "--target", served, "--json", token="t")
    assert code == 0, err
    stats = json.loads(out)
    searches = [row for method, row in stats["rpcs"].items() if "Record" in method and row["count"] >= 1]
    assert searches and searches[0]["errors"] == 0 and searches[0]["p50_ms"] > 0
    # the search by record was filtered (record, patient, copies): its plan and the engine's estimate
    filtered = [row for row in stats["search_plans"].values() if row["filtered"]]
    assert filtered and all(0 < row["estimate"] <= row["total"] for row in filtered)
    code, out, _ = run("stats", "--target", served, token="t")
    assert code == 0 and "p99 ms" in out
    code, _, err = run("stats", "--target", served, token="wrong")
    assert code == 4 and "UNAUTHENTICATED" in err and "Traceback" not in err  # exit table: denied


def test_corrupt_collection_files_are_named(built: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(built, copy)
    manifest = copy / "collections" / "small" / "manifest.json"
    manifest.write_text("{not json")
    code, _, err = run("collection", "info", "--store", copy, "-c", "small")
    assert code == 1 and str(manifest) in err and "Traceback" not in err
    (copy / "aliases.json").write_text("[1, 2]")
    code, _, err = run("collection", "info", "--store", copy)
    assert code == 1 and "aliases.json" in err


def test_collection_info_and_get_through_a_running_service(served: str, embedder: Embedder) -> None:
    """The embedded store is held by the server: ask the server instead."""
    code, out, err = run("collection", "info", "--target", served, "--json", token="t")
    assert code == 0, err
    info = json.loads(out)
    assert (info["count"], info["model_version"], info["model_card"]["version"]) == (
        N,
        embedder.version,
        embedder.version,
    )
    assert info["index_settings"] is None and info["aliases"] is None
    code, out, err = run("collection", "get", "ptbxl:1", "--target", served, "--vector", "--json", token="t")
    assert code == 0, err
    got = json.loads(out)
    assert got["payload"]["record_id"] == "ptbxl:1" and len(got["vector"]) == embedder.dim
    code, _, err = run("collection", "get", "ptbxl:999999", "--target", served, token="t")
    assert code == 5 and "ptbxl:999999" in err  # exit table: not found


def test_query_similar_by_a_view_or_a_blend_over_grpc(served: str) -> None:
    """`ecgsearch ingest` stores the views; `query --similar-by` searches them through the service."""
    found = {}
    for how in (None, "rhythm", "waveform=1,rhythm=0.5"):
        extra = ["--similar-by", how] if how else []
        args = ["query", "--target", served, "--record-id", "ptbxl:1", "--k", 5, *extra, "--json"]
        code, out, err = run(*args, token="t")
        assert code == 0, err
        hits = json.loads(out)["hits"]
        found[how] = [(h["record_id"], h["score"]) for h in hits]
        assert len(hits) == 5 and "ptbxl:1" not in {h["record_id"] for h in hits}
    rhythm = [score for _, score in found["rhythm"]]  # Euclidean distances, nearest first
    assert rhythm == sorted(rhythm) and found["rhythm"] != found[None], found
    code, _, err = run(
        "query", "--target", served, "--record-id", "ptbxl:1", "--similar-by", "shape", token="t"
    )
    assert code == 2 and "unknown view 'shape'" in err
