"""Snapshot and restore of the embedded store: real PTB-XL records, the bundled model, the real CLI."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from sited import TOKENS, build, tokens_file
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.search.schema import SearchFilter
from ecgsearch.search.server import run_server
from ecgsearch.search.store import EdgeStore, StoreError, open_store


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_restore_into_a_new_store_gives_the_same_points_and_answers(ptbxl_dir: Path, tmp_path: Path) -> None:
    sited = build(ptbxl_dir, tmp_path / "original")
    ids = [p.record_id for p in sited.payloads]
    sited.store.close()
    original = str(tmp_path / "original" / "store")

    code, out, err = _run("snapshot", "create", "--store", original, "--json")
    assert code == 0, err
    made = json.loads(out)
    assert (made["collection"], made["count"]) == ("ecgs", len(ids))
    code, out, _ = _run("snapshot", "list", "--store", original, "--json")
    assert [s["location"] for s in json.loads(out)] == [made["location"]]

    restored_root = str(tmp_path / "elsewhere" / "store")
    code, out, err = _run("snapshot", "restore", made["location"], "--store", restored_root, "--json")
    assert code == 0, err
    assert json.loads(out)["count"] == len(ids)
    code, _, err = _run("snapshot", "restore", made["location"], "--store", restored_root)
    assert code == 1 and "exists" in err  # never over an existing collection

    with open_store(path=original) as before, open_store(path=restored_root) as after:
        assert isinstance(after, EdgeStore)
        assert after.count() == before.count() == len(ids)
        assert after.info().model_version == sited.embedder.version
        for record_id in ids:
            (p1, v1), (p2, v2) = before.get(record_id), after.get(record_id)
            assert p1 == p2 and np.array_equal(v1, v2)
        for row in (0, 7, 19):
            for flt in (None, SearchFilter(sites=["site-b"]), SearchFilter(age_min=50)):
                a = before.search(sited.vectors[row], k=10, filter=flt)
                b = after.search(sited.vectors[row], k=10, filter=flt)
                assert [(h.record_id, h.score) for h in a] == [(h.record_id, h.score) for h in b]
                if flt is not None and flt.sites:
                    assert a and all(h.payload.site == "site-b" for h in a)


def test_restore_refuses_what_is_not_a_snapshot(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    with tarfile.open(bogus, "w") as tar:
        note = tmp_path / "note.txt"
        note.write_text("hello")
        tar.add(note, arcname="note.txt")
    code, _, err = _run("snapshot", "restore", str(bogus), "--store", str(tmp_path / "s"), "-c", "x")
    assert code == 1 and "not an ecgsearch snapshot" in err
    code, _, err = _run("snapshot", "restore", str(tmp_path / "missing.tar"), "--store", str(tmp_path / "s"))
    assert code == 2


def test_server_snapshots_in_local_mode_are_reported_as_unsupported() -> None:
    """qdrant-client's local mode has no snapshot API: the server path says so (and is untested here)."""
    with open_store(local=True, collection="c") as store:
        store.create_collection(dim=4, model_version="m")
        with pytest.raises(StoreError, match="local mode has no snapshots"):
            store.create_snapshot()
        with pytest.raises(StoreError, match="local mode has no snapshots"):
            store.restore_snapshot("file:///qdrant/snapshots/c/c.snapshot")
        assert store.list_snapshots() == []


def test_a_running_service_snapshots_its_store_for_an_admin_caller(ptbxl_dir: Path, tmp_path: Path) -> None:
    sited = build(ptbxl_dir, tmp_path / "served", n=12)
    try:
        callers = tokens_file(tmp_path / "tokens")
        with run_server(store=sited.store, embedder=sited.embedder, port=0, tokens_file=callers) as (_, port):
            target = f"127.0.0.1:{port}"
            code, _, err = _run("snapshot", "create", "--target", target, "--token", TOKENS["ingest"])
            assert code == 1 and "PERMISSION_DENIED" in err
            code, out, err = _run(
                "snapshot", "create", "--target", target, "--token", TOKENS["ops"], "--json"
            )
            assert code == 0, err
            made = json.loads(out)
            code, out, _ = _run("snapshot", "list", "--target", target, "--token", TOKENS["ops"], "--json")
            assert [s["location"] for s in json.loads(out)] == [made["location"]]
    finally:
        sited.store.close()
    assert made["count"] == len(sited.payloads)
    code, out, err = _run(
        "snapshot", "restore", made["location"], "--store", str(tmp_path / "copy"), "--json"
    )
    assert code == 0, err
    with open_store(path=tmp_path / "copy") as copy:
        assert copy.count() == len(sited.payloads)
        hit = copy.search(sited.vectors[3], k=1)[0]
        assert hit.record_id == sited.payloads[3].record_id and hit.payload == sited.payloads[3]
