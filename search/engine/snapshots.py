"""Backups of a collection: the embedded store's archive format, and what ``snapshot list`` shows.

qdrant-edge (0.9) can unpack and apply snapshots made by a Qdrant server but cannot make one, so the
embedded store's snapshot is a consistent copy of its collection directory: the store flushes its
shard, and with its write-ahead-log lock held by the process making the copy (no ingest can write)
and no optimizer running unless asked, the files are copied into one plain tar archive::

    <collection>-<UTC time>.tar
      snapshot.json            format, collection, model version, dim, point count, created, and the
                               manifest: every other member's path, size and SHA-256
      collection/manifest.json the collection's manifest (dim, model, index settings)
      collection/shard/...     the qdrant-edge shard
      archive/<h[:2]>/<h>.npz  the kept signal of every point marked ``archived`` (pushed ECGs and
                               hospital exports), which ``GetEcg`` reads

The site secret that keys patient pseudonyms is never in a snapshot (it lives at ``<store>/site-secret``
or in the operator's ``--site-secret-file``): restore says so, and it must be supplied beside the
restored store for new pushes and ingests to give a known patient the same pseudonym.

Restoring reads the archive twice. The first pass writes nothing: ``snapshot.json`` must come first,
every other member must be a regular file that the manifest names, with the size it states, and its
bytes must hash to the stated SHA-256; every manifest entry must be present. Compressed archives are
refused before anything is decompressed (a plain tar's size bounds what it can write: no decompression
bomb), and the restore needs the free space the manifest states. The second pass writes into a
staging directory beside the collections, hashing again, then moves the signals into the store's
archive and the collection into place. Whatever fails, everything written is removed, so a failed
restore never blocks the collection name. A Qdrant server makes and restores its own snapshots
(``ServerStore``); those are listed here in the same shape.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypedDict

from ecgsearch.search.api import SnapshotError, SnapshotInfo

FORMAT = "ecgsearch-snapshot-2"
OLD_FORMATS = ("ecgsearch-snapshot-1",)  # listed, never restored: no manifest to check them against
META = "snapshot.json"
PREFIX = "collection/"
ARCHIVE_PREFIX = "archive/"
MAX_META_BYTES = 256 << 20  # the manifest of a store with millions of archived signals
FREE_SPACE_MARGIN = 64 << 20
CHUNK = 1 << 20
SECRET_NOTE = (
    "the site secret is not in this snapshot: before pushing or ingesting into the restored store, put "
    "the original store's secret at <store>/site-secret (mode 0600) or give serve and ingest the same "
    "--site-secret-file; with another secret a known patient gets a new pseudonym"
)
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_SIGNAL = re.compile(r"archive/([0-9a-f]{2})/([0-9a-f]{64})\.npz")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def default_directory(store_root: Path) -> Path:
    """``<store>/snapshots``: beside the collections, outside any of them."""
    return Path(store_root) / "snapshots"


# --- making ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


class _Hashing:
    """A file object that hashes what ``tarfile`` reads from it."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        block = self.handle.read(size)
        self.digest.update(block)
        return block


def _members(collection_dir: Path, archive_root: Path | None, signals: list[str]) -> list[tuple[str, Path]]:
    """(path in the archive, file) for the collection's files and the named archived signals."""
    members = [
        (PREFIX + path.relative_to(collection_dir).as_posix(), path)
        for path in sorted(collection_dir.rglob("*"))
        if path.is_file() and not path.name.endswith((".tmp", ".lock"))
    ]
    missing = []
    for digest in sorted(set(signals)):
        path = archive_root / digest[:2] / f"{digest}.npz" if archive_root is not None else None
        if path is None or not path.is_file():
            missing.append(digest)
        else:
            members.append((f"{ARCHIVE_PREFIX}{digest[:2]}/{digest}.npz", path))
    if missing:
        raise SnapshotError(
            f"{len(missing)} archived signal(s) are missing from {archive_root} (first: content hash "
            f"{missing[0][:12]}): a snapshot without them would not be whole"
        )
    return members


def pack(
    collection_dir: Path,
    directory: Path,
    *,
    collection: str,
    backend: str,
    count: int,
    model_version: str,
    dim: int,
    archive_root: Path | None = None,
    signals: list[str] | tuple[str, ...] = (),
) -> SnapshotInfo:
    """Archive ``collection_dir`` (manifest and shard) and the archived ``signals`` (content hashes,
    read from ``archive_root``) with ``snapshot.json`` and its manifest into ``directory``.

    Each file is hashed, then hashed again as it is written into the tar: a file that changed in
    between fails the snapshot rather than making one that restore would refuse.
    """
    created = datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{collection}-{created.strftime('%Y%m%dT%H%M%S%fZ')}.tar"
    final, partial = directory / name, directory / (name + ".partial")
    members = _members(collection_dir, archive_root, list(signals))
    files: list[_FileEntry] = []
    for arcname, path in members:
        size, digest = _sha256(path)
        files.append({"path": arcname, "size": size, "sha256": digest})
    meta = {
        "format": FORMAT,
        "collection": collection,
        "backend": backend,
        "model_version": model_version,
        "dim": dim,
        "count": count,
        "signals": len(set(signals)),
        "created": created.isoformat(),
        "not_included": SECRET_NOTE,
        "files": files,
    }
    encoded = json.dumps(meta, indent=1).encode()
    try:
        with tarfile.open(partial, "w:", format=tarfile.PAX_FORMAT) as tar:
            tar.addfile(_info(META, len(encoded), created), io.BytesIO(encoded))
            for (arcname, path), entry in zip(members, files, strict=True):
                with open(path, "rb") as handle:
                    reader = _Hashing(handle)
                    try:
                        tar.addfile(_info(arcname, entry["size"], created), reader)
                    except OSError:  # shorter than when it was hashed
                        reader.digest.update(b"truncated")
                if reader.digest.hexdigest() != entry["sha256"]:
                    raise SnapshotError(f"{path} changed while the snapshot was made; make it again")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return describe(final)


class _FileEntry(TypedDict):
    """One file in the manifest (``snapshot.json``'s ``files``)."""

    path: str
    size: int
    sha256: str


def _info(name: str, size: int, created: datetime) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(created.timestamp())
    return info


# --- reading --------------------------------------------------------------------------------------


def _open(archive: Path) -> tarfile.TarFile:
    """The archive as a plain tar; a compressed one is refused before anything is decompressed."""
    try:
        with open(archive, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise SnapshotError(f"{archive}: cannot read ({exc.strerror or type(exc).__name__})") from None
    for magic, kind in _COMPRESSED.items():
        if head.startswith(magic):
            raise SnapshotError(
                f"{archive}: a {kind}-compressed archive; restore reads plain tar only (its size bounds "
                "what a restore writes): decompress it first, where you have the space for it"
            )
    try:
        return tarfile.open(archive, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise SnapshotError(f"{archive}: not an ecgsearch snapshot ({type(exc).__name__})") from None


def _meta_from(tar: tarfile.TarFile, archive: Path) -> dict:
    """``snapshot.json``, which must be the archive's first member."""
    try:
        first = tar.next()
        if first is None or first.name != META or not first.isfile() or first.size > MAX_META_BYTES:
            raise SnapshotError(f"{archive}: not an ecgsearch snapshot ({META} must come first)")
        handle = tar.extractfile(first)
        meta = json.loads(handle.read()) if handle is not None else None
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise SnapshotError(f"{archive}: not an ecgsearch snapshot ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, *OLD_FORMATS):
        raise SnapshotError(f"{archive}: not an ecgsearch snapshot (format {FORMAT} expected)")
    return meta


def read_meta(archive: Path) -> dict:
    """The archive's ``snapshot.json``; SnapshotError when it is not an ecgsearch snapshot."""
    with _open(archive) as tar:
        return _meta_from(tar, archive)


def describe(archive: Path) -> SnapshotInfo:
    meta = read_meta(archive)
    return SnapshotInfo(
        name=archive.name,
        location=str(archive),
        collection=meta["collection"],
        backend=meta["backend"],
        created=meta["created"],
        size_bytes=archive.stat().st_size,
        count=meta["count"],
        model_version=meta["model_version"],
        signals=meta.get("signals"),
        note=meta.get("not_included"),
    )


def list_archives(directory: Path, collection: str | None = None) -> list[SnapshotInfo]:
    """The snapshots in ``directory`` (of ``collection`` when given), oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.tar")):
        try:
            info = describe(path)
        except SnapshotError:
            continue  # another file: not ours to list
        if collection is None or info.collection == collection:
            found.append(info)
    return sorted(found, key=lambda i: (i.created is None, i.created))


# --- restoring ------------------------------------------------------------------------------------


def _manifest(meta: dict, archive: Path) -> dict[str, tuple[int, str]]:
    """path -> (size, SHA-256) from ``snapshot.json``, every path checked to land inside the target."""
    if meta.get("format") != FORMAT:
        raise SnapshotError(
            f"{archive}: format {meta.get('format')} has no manifest of sizes and digests to check it "
            "against; make a new snapshot of the collection"
        )
    entries = meta.get("files")
    if not isinstance(entries, list) or not entries:
        raise SnapshotError(f"{archive}: the manifest lists no files")
    manifest: dict[str, tuple[int, str]] = {}
    for entry in entries:
        try:
            path, size, digest = entry["path"], entry["size"], entry["sha256"]
        except (TypeError, KeyError):
            raise SnapshotError(f"{archive}: a manifest entry lacks path, size or sha256") from None
        if not (isinstance(path, str) and _safe(path)) or path in manifest:
            raise SnapshotError(f"{archive}: manifest path {str(path)[:120]!r} is not allowed")
        if type(size) is not int or size < 0 or not (isinstance(digest, str) and _DIGEST.fullmatch(digest)):
            raise SnapshotError(f"{archive}: manifest entry {path!r} has a bad size or sha256")
        manifest[path] = (size, digest)
    if PREFIX + "manifest.json" not in manifest:
        raise SnapshotError(f"{archive}: the manifest lists no collection/manifest.json")
    return manifest


def _safe(path: str) -> bool:
    """A collection file (plain segments under ``collection/``) or an archived signal."""
    signal = _SIGNAL.fullmatch(path)
    if signal is not None:
        return signal.group(2).startswith(signal.group(1))
    parts = PurePosixPath(path).parts
    return (
        path.startswith(PREFIX)
        and len(parts) >= 2
        and "/".join(parts) == path
        and all(_SEGMENT.fullmatch(p) and p not in (".", "..") for p in parts)
    )


def _members_checked(
    tar: tarfile.TarFile, archive: Path, manifest: dict[str, tuple[int, str]]
) -> Iterator[tuple[tarfile.TarInfo, tuple[int, str]]]:
    """Each member after ``snapshot.json`` with its stated (size, digest), refused (before its data is
    read) unless it is a regular file the manifest names, once, with the size it states."""
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        expected = manifest.get(member.name)
        if expected is None or member.name in seen:
            raise SnapshotError(f"{archive}: member {member.name[:120]!r} is not in the manifest")
        if not member.isreg() or member.type == tarfile.GNUTYPE_SPARSE or member.sparse is not None:
            raise SnapshotError(f"{archive}: member {member.name!r} is not a regular file")
        if member.size != expected[0]:
            raise SnapshotError(
                f"{archive}: {member.name} holds {member.size} bytes, the manifest says {expected[0]}"
            )
        seen.add(member.name)
        yield member, expected
    absent = sorted(set(manifest) - seen)
    if absent:
        raise SnapshotError(f"{archive}: {len(absent)} file(s) of the manifest are missing, e.g. {absent[0]}")


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, out: BinaryIO | None) -> str:
    """The member's SHA-256, its bytes written to ``out`` when given."""
    handle = tar.extractfile(member)
    assert handle is not None  # a regular file
    digest = hashlib.sha256()
    while block := handle.read(CHUNK):
        digest.update(block)
        if out is not None:
            out.write(block)
    return digest.hexdigest()


def verify(archive: Path) -> dict:
    """Check every member against the manifest (size and SHA-256), writing nothing; the meta."""
    with _open(archive) as tar:
        meta = _meta_from(tar, archive)
        manifest = _manifest(meta, archive)
        try:
            for member, (_, digest) in _members_checked(tar, archive, manifest):
                if _copy(tar, member, None) != digest:
                    raise SnapshotError(
                        f"{archive}: {member.name} does not match its SHA-256 in the manifest"
                    )
        except (OSError, tarfile.TarError) as exc:
            raise SnapshotError(f"{archive}: damaged archive ({type(exc).__name__}: {exc})") from None
    meta["total_bytes"] = sum(size for size, _ in manifest.values())
    return meta


@contextmanager
def restoring(archive: Path, target: Path, archive_root: Path) -> Iterator[dict]:
    """Verify ``archive``, then unpack its collection as ``target`` (which must not exist) and its
    signals into ``archive_root``; yields the meta. If verification, unpacking or the caller's block
    fails, everything this restore wrote is removed (the target, the signals it added, the staging)."""
    if target.exists():
        raise SnapshotError(f"{target} exists: restore into a new collection")
    meta = verify(archive)
    made = _missing_dirs(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(target.parent).free
    staging = None
    added: list[Path] = []
    placed = False
    try:
        if meta["total_bytes"] + FREE_SPACE_MARGIN > free:
            raise SnapshotError(
                f"restoring {archive} needs {meta['total_bytes']} bytes and {target.parent} has {free} free"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".restoring-{target.name}-", dir=target.parent))
        _unpack(archive, staging)
        for signal in sorted((staging / "archive").glob("*/*.npz")):
            destination = archive_root / signal.parent.name / signal.name
            if destination.exists():
                continue  # content-addressed: the same ECG's signal is already kept
            made += _missing_dirs(destination.parent)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(signal, destination)
            added.append(destination)
        if target.exists():
            raise SnapshotError(f"{target} appeared during the restore: restore into a new collection")
        os.replace(staging / "collection", target)
        placed = True
        yield meta
    except BaseException:
        if placed:
            shutil.rmtree(target, ignore_errors=True)
        for path in added:
            path.unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for directory in sorted(made, key=lambda d: len(d.parts), reverse=True):
            _remove_if_empty(directory)
        raise
    if staging is not None:
        shutil.rmtree(staging, ignore_errors=True)


def _missing_dirs(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist yet (what ``mkdir -p`` would make)."""
    missing = []
    while not directory.exists() and directory.parent != directory:
        missing.append(directory)
        directory = directory.parent
    return missing


def _remove_if_empty(directory: Path) -> None:
    with suppress(OSError):  # not empty, or already gone
        directory.rmdir()


def _unpack(archive: Path, staging: Path) -> None:
    """Second pass: write each member under ``staging`` while hashing it again (the archive may have
    changed since it was verified)."""
    with _open(archive) as tar:
        manifest = _manifest(_meta_from(tar, archive), archive)
        try:
            for member, (_, digest) in _members_checked(tar, archive, manifest):
                path = staging.joinpath(*PurePosixPath(member.name).parts)
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "xb") as out:
                    if _copy(tar, member, out) != digest:
                        raise SnapshotError(f"{archive}: {member.name} changed since it was verified")
        except tarfile.TarError as exc:
            raise SnapshotError(f"{archive}: damaged archive ({type(exc).__name__}: {exc})") from None
        except OSError as exc:
            raise SnapshotError(f"cannot restore {archive}: {exc.strerror or exc}") from None
