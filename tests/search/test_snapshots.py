"""Snapshot and restore of the embedded store: real PTB-XL records, the bundled model, the real CLI."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cpu_cost import cpu
from sited import TOKENS, build, tokens_file
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.ecg.schema import SearchFilter
from ecgsearch.export.runtime import Embedder
from ecgsearch.search.client import EcgSearchClient
from ecgsearch.search.engine.store import EdgeStore, StoreError, open_store
from ecgsearch.search.serving.server import run_server
from ecgsearch.search.serving.settings import ServiceSettings


def _run(*args: str, token: str | None = None) -> tuple[int, str, str]:
    env = {"ECGSEARCH_TOKEN": token} if token is not None else {}
    result = CliRunner().invoke(app, list(args), env=env)
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
            code, _, err = _run("snapshot", "create", "--target", target, token=TOKENS["ingest"])
            assert code == 4 and "PERMISSION_DENIED" in err  # exit table: not permitted
            code, out, err = _run("snapshot", "create", "--target", target, "--json", token=TOKENS["ops"])
            assert code == 0, err
            made = json.loads(out)
            code, out, _ = _run("snapshot", "list", "--target", target, "--json", token=TOKENS["ops"])
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


# --- whole snapshots: kept signals, a manifest checked before anything is written ------------------

HELD_OUT = ("muse_musephi_ecg1.xml", "philips_v1.03_129DYPRG.xml")


@dataclass(frozen=True)
class Pushed:
    """A served store with pushed ECGs, snapshotted through the service (scope admin)."""

    snapshot: Path
    ids: list[str]
    served: dict[str, np.ndarray]  # GetEcg of each pushed ECG before the snapshot
    secret: bytes
    count: int


@pytest.fixture(scope="module")
def pushed(data_dir: Path, ptbxl_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    root = tmp_path_factory.mktemp("pushed")
    sited = build(ptbxl_dir, root, n=8)
    files = [data_dir / "hospital" / name for name in HELD_OUT]
    try:
        callers = tokens_file(root / "tokens")
        with run_server(store=sited.store, embedder=sited.embedder, port=0, tokens_file=callers) as (_, port):
            with EcgSearchClient(f"127.0.0.1:{port}", token=TOKENS["ingest"]) as writer:
                results = writer.upsert_files(files, dataset="hospital")
                assert [r.status for r in results] == ["stored"] * len(files), results
                ids = [r.record_id for r in results]
                served = {i: writer.get_ecg(i) for i in ids}
            with EcgSearchClient(f"127.0.0.1:{port}", token=TOKENS["ops"]) as admin:
                made = admin.create_snapshot()
    finally:
        sited.store.close()
    secret = (root / "store" / "site-secret").read_bytes().strip()
    return Pushed(Path(made.location), ids, served, secret, len(sited.payloads) + len(files))


@pytest.mark.slow
def test_a_service_with_its_archive_apart_snapshots_its_pushed_ecgs(
    data_dir: Path, ptbxl_dir: Path, tmp_path: Path
) -> None:
    """``--archive-path`` outside the store: the RPC snapshot reads the kept signals from there."""
    sited = build(ptbxl_dir, tmp_path, n=4)
    settings = ServiceSettings.model_construct(archive_path=tmp_path / "kept-apart")
    try:
        callers = tokens_file(tmp_path / "tokens")
        with run_server(
            settings, store=sited.store, embedder=sited.embedder, port=0, tokens_file=callers
        ) as (_, port):
            with EcgSearchClient(f"127.0.0.1:{port}", token=TOKENS["ingest"]) as writer:
                results = writer.upsert_files([data_dir / "hospital" / HELD_OUT[0]], dataset="hospital")
                assert [r.status for r in results] == ["stored"], results
            with EcgSearchClient(f"127.0.0.1:{port}", token=TOKENS["ops"]) as admin:
                made = admin.create_snapshot()
    finally:
        sited.store.close()
    assert any((tmp_path / "kept-apart").rglob("*.npz"))
    with tarfile.open(made.location) as tar:
        assert len([n for n in tar.getnames() if n.startswith("archive/")]) == 1


def _restore(archive: Path, store: Path, *extra: str) -> tuple[int, str, str]:
    return _run("snapshot", "restore", str(archive), "--store", str(store), *extra)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*")) if root.exists() else []


@pytest.mark.slow
def test_a_restored_store_serves_the_pushed_ecgs(pushed: Pushed, tmp_path: Path) -> None:
    with tarfile.open(pushed.snapshot) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("snapshot.json").read())
        content = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert names[0] == "snapshot.json" and len([n for n in names if n.startswith("archive/")]) == 2
    assert {f["path"] for f in meta["files"]} == set(names) - {"snapshot.json"}
    for entry in meta["files"]:  # the manifest states every file's size and SHA-256
        data = content[entry["path"]]
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
    assert not any("secret" in n for n in names)  # the site secret stays out
    assert all(pushed.secret not in data for data in content.values())

    store = tmp_path / "restored"
    code, out, err = _restore(pushed.snapshot, store)
    assert code == 0, err
    assert "site secret is not in this snapshot" in err and "site-secret" in err  # what to supply beside it
    assert "ecgs" in out and not (store / "site-secret").exists()
    restored = EdgeStore(store, "ecgs")
    try:
        assert restored.count() == pushed.count
        callers = tokens_file(tmp_path / "tokens")
        with (
            run_server(store=restored, embedder=Embedder(), port=0, tokens_file=callers) as (_, port),
            EcgSearchClient(f"127.0.0.1:{port}", token=TOKENS["ingest"]) as client,
        ):
            for record_id, before in pushed.served.items():
                np.testing.assert_array_equal(client.get_ecg(record_id), before)
    finally:
        restored.close()


def _corrupt(source: Path, target: Path, member: str | None = None, size: int = 4096) -> str:
    """A copy of ``source`` with ``size`` random bytes written over the data of ``member`` (default:
    the largest); returns the member's name."""
    with tarfile.open(source) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name != "snapshot.json"]
    chosen = next(m for m in members if m.name == member) if member else max(members, key=lambda m: m.size)
    data = bytearray(source.read_bytes())
    start = chosen.offset_data + max(0, (chosen.size - size) // 2)
    data[start : start + min(size, chosen.size)] = np.random.default_rng(7).bytes(min(size, chosen.size))
    target.write_bytes(bytes(data))
    return chosen.name


@pytest.mark.slow
def test_a_corrupted_snapshot_is_refused_and_leaves_nothing_behind(pushed: Pushed, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for what in (None, "archive"):  # 4 KB of the largest file, and a kept signal
        bad = tmp_path / "bad.tar"
        member = None
        if what == "archive":
            with tarfile.open(pushed.snapshot) as tar:
                member = next(n for n in tar.getnames() if n.startswith("archive/"))
        name = _corrupt(pushed.snapshot, bad, member)
        code, _, err = _restore(bad, store)
        assert code == 1 and f"{name} does not match its SHA-256" in err, err
        assert _files(store) == []  # not even the store folder the command would have made
    store.mkdir()
    (store / "kept.txt").write_text("the operator's")  # an existing store keeps what it had
    code, _, err = _restore(bad, store)
    assert code == 1 and _files(store) == [store / "kept.txt"]
    code, _, err = _restore(pushed.snapshot, store)  # the name is free: the good snapshot restores
    assert code == 0, err


def _rewrite(source: Path, target: Path, edit) -> None:
    """Copy the tar ``source`` member by member; ``edit(info, data)`` returns the (info, data) pairs to
    write instead (none drops the member)."""
    with tarfile.open(source) as src, tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as out:
        for info in src.getmembers():
            data = src.extractfile(info).read() if info.isfile() else b""
            for new, content in edit(info, data):
                out.addfile(new, io.BytesIO(content) if new.isfile() else None)


def _meta_edit(change):
    def edit(info: tarfile.TarInfo, data: bytes):
        if info.name != "snapshot.json":
            return [(info, data)]
        meta = json.loads(data)
        change(meta)
        encoded = json.dumps(meta).encode()
        info.size = len(encoded)
        return [(info, encoded)]

    return edit


def _extra(name: str, kind: bytes = tarfile.REGTYPE, link: str = ""):
    def edit(info: tarfile.TarInfo, data: bytes):
        if info.name != "snapshot.json":
            return [(info, data)]
        extra = tarfile.TarInfo(name)
        extra.type, extra.linkname, extra.size = kind, link, 5 if kind == tarfile.REGTYPE else 0
        return [(info, data), (extra, b"hello" if kind == tarfile.REGTYPE else b"")]

    return edit


def _manifest_path(path: str):
    def change(meta: dict) -> None:
        meta["files"].append({"path": path, "size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()})

    return change


@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_extra("collection/extra.bin"), "not in the manifest"),
        (_extra("../../escaped.txt"), "not in the manifest"),
        (_extra("collection/link", tarfile.SYMTYPE, "/etc/passwd"), "not in the manifest"),
        (_meta_edit(_manifest_path("collection/../../escaped.txt")), "is not allowed"),
        (_meta_edit(_manifest_path("/abs/escaped.txt")), "is not allowed"),
        (_meta_edit(_manifest_path("archive/00/" + "1" * 64 + ".npz")), "is not allowed"),
        (_meta_edit(_manifest_path("collection/missing.bin")), "missing, e.g. collection/missing.bin"),
        (_meta_edit(lambda m: m["files"][1].update(size=m["files"][1]["size"] + 1)), "the manifest says"),
        (_meta_edit(lambda m: m.update(format="ecgsearch-snapshot-1")), "make a new snapshot"),
        (_meta_edit(lambda m: m.update(count=m["count"] + 1)), "but the snapshot recorded"),
    ],
    ids=[
        "unlisted-file",
        "traversal-member",
        "symlink",
        "traversal-manifest",
        "absolute-manifest",
        "signal-in-wrong-folder",
        "listed-but-absent",
        "size-mismatch",
        "old-format",
        "count-mismatch",
    ],
)
def test_a_hostile_or_inconsistent_snapshot_is_refused_with_nothing_left(
    pushed: Pushed, tmp_path: Path, edit, reason: str
) -> None:
    bad = tmp_path / "bad.tar"
    _rewrite(pushed.snapshot, bad, edit)
    store = tmp_path / "store"
    code, _, err = _restore(bad, store, "-c", "restored")
    assert code == 1 and reason in err, err
    assert _files(store) == [] and not (tmp_path / "escaped.txt").exists()


@pytest.mark.slow
def test_a_gzip_bomb_is_refused_before_anything_is_decompressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 GiB of zeros in a valid-looking snapshot, gzip-compressed to about 1 MB."""
    zeros = bytes(1 << 20)
    digest = hashlib.sha256()
    for _ in range(1024):
        digest.update(zeros)
    meta = {
        "format": "ecgsearch-snapshot-2",
        "collection": "ecgs",
        "backend": "qdrant-edge",
        "model_version": "m",
        "dim": 256,
        "count": 1,
        "signals": 0,
        "created": "2026-01-01T00:00:00+00:00",
        "files": [{"path": "collection/manifest.json", "size": 1 << 30, "sha256": digest.hexdigest()}],
    }
    bomb = tmp_path / "bomb.tar"  # named like a snapshot: the content decides
    encoded = json.dumps(meta).encode()
    with tarfile.open(bomb, "w:gz", compresslevel=9) as tar:
        head = tarfile.TarInfo("snapshot.json")
        head.size = len(encoded)
        tar.addfile(head, io.BytesIO(encoded))
        body = tarfile.TarInfo("collection/manifest.json")
        body.size = 1 << 30

        class Zeros(io.RawIOBase):
            def read(self, n: int = -1) -> bytes:
                return bytes(n)

        tar.addfile(body, Zeros())
    assert bomb.stat().st_size < 2 << 20
    store = tmp_path / "store"
    inflated: list[int] = []

    def no_inflating(*args: object, **kwargs: object) -> object:
        inflated.append(1)  # gzip and tarfile's gz mode both inflate through zlib.decompressobj
        raise AssertionError("restore began to decompress the archive")

    monkeypatch.setattr(zlib, "decompressobj", no_inflating)
    code, _, err = _restore(bomb, store)
    assert not inflated
    assert code == 1 and "gzip-compressed archive" in err and "decompress it first" in err, err
    assert _files(store) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["bomb.tar"]


@pytest.mark.slow
def test_a_plain_tar_claiming_more_than_it_holds_is_refused(pushed: Pushed, tmp_path: Path) -> None:
    """A member whose header and manifest say 1 TiB: the archive ends first, nothing is written."""
    claimed = 1 << 40

    def edit(info: tarfile.TarInfo, data: bytes):
        if info.name == "snapshot.json":
            meta = json.loads(data)
            meta["files"].append({"path": "collection/huge.bin", "size": claimed, "sha256": "0" * 64})
            encoded = json.dumps(meta).encode()
            info.size = len(encoded)
            return [(info, encoded)]
        return [(info, data)]

    bad = tmp_path / "bad.tar"
    _rewrite(pushed.snapshot, bad, edit)
    with tarfile.open(bad) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    with bad.open("r+b") as handle:  # in place of the end-of-archive blocks: a header for 1 TiB, 4 KB of data
        handle.truncate(end)
        handle.seek(end)
        huge = tarfile.TarInfo("collection/huge.bin")
        huge.size = claimed
        handle.write(huge.tobuf(tarfile.PAX_FORMAT) + bytes(4096))
    with cpu() as intact:  # the reference: restoring the archive it was made from
        assert _restore(pushed.snapshot, tmp_path / "intact")[0] == 0
    store = tmp_path / "store"
    with cpu() as refusing:
        code, _, err = _restore(bad, store)
    assert code == 1 and "damaged archive" in err, err
    assert _files(store) == []
    assert refusing.seconds <= 2 * intact.seconds, (refusing.seconds, intact.seconds)  # read once, not 1 TiB


@pytest.mark.slow
def test_a_snapshot_is_refused_when_a_kept_signal_is_missing(pushed: Pushed, tmp_path: Path) -> None:
    """Restore the snapshot, delete one kept signal, snapshot again: refused, not a partial backup."""
    store = tmp_path / "store"
    assert _restore(pushed.snapshot, store)[0] == 0
    first = sorted((store / "archive").rglob("*.npz"))[0]
    first.unlink()
    code, _, err = _run("snapshot", "create", "--store", str(store))
    assert code == 1 and "1 archived signal(s) are missing" in err and "not be whole" in err, err
    assert list((store / "snapshots").glob("*")) == []


def test_kept_signals_follow_archive_path(pushed: Pushed, tmp_path: Path) -> None:
    """A service with --archive-path keeps signals elsewhere: restore and create take the same option."""
    store, kept = tmp_path / "store", tmp_path / "kept-signals"
    code, _, err = _restore(pushed.snapshot, store, "--archive-path", str(kept))
    assert code == 0, err
    assert len(list(kept.rglob("*.npz"))) == 2 and not (store / "archive").exists()
    code, _, err = _run("snapshot", "create", "--store", str(store))
    assert code == 1 and "2 archived signal(s) are missing" in err
    code, out, err = _run("snapshot", "create", "--store", str(store), "--archive-path", str(kept), "--json")
    assert code == 0, err
    assert json.loads(out)["signals"] == 2
