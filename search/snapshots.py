"""Backups of a collection: the embedded store's archive format, and what ``snapshot list`` shows.

qdrant-edge (0.9) can unpack and apply snapshots made by a Qdrant server but cannot make one, so the
embedded store's snapshot is a consistent copy of its collection directory: the store flushes its
shard, and with its write-ahead-log lock held by the process making the copy (no ingest can write)
and no optimizer running unless asked, the files are copied into one tar archive::

    <collection>-<UTC time>.tar
      snapshot.json            format, collection, model version, dim, point count, created
      collection/manifest.json the collection's manifest (dim, model, index settings)
      collection/shard/...     the qdrant-edge shard

Restoring unpacks ``collection/`` as a new collection (never over an existing one) and checks the
point count against ``snapshot.json``. A Qdrant server makes and restores its own snapshots
(``ServerStore``); those are listed here in the same shape.
"""

from __future__ import annotations

import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

FORMAT = "ecgsearch-snapshot-1"
META = "snapshot.json"
PREFIX = "collection/"


class SnapshotError(RuntimeError):
    """An archive that is not an ecgsearch snapshot, or a restore that cannot be done as asked."""


class SnapshotInfo(BaseModel):
    """One snapshot: where it is, what it holds."""

    name: str
    location: str  # the archive's path (embedded) or the snapshot's name on the server
    collection: str
    backend: str
    created: datetime | None = None
    size_bytes: int | None = None
    count: int | None = None
    model_version: str | None = None


def default_directory(store_root: Path) -> Path:
    """``<store>/snapshots``: beside the collections, outside any of them."""
    return Path(store_root) / "snapshots"


def pack(
    collection_dir: Path,
    directory: Path,
    *,
    collection: str,
    backend: str,
    count: int,
    model_version: str,
    dim: int,
) -> SnapshotInfo:
    """Archive ``collection_dir`` (manifest and shard) with its ``snapshot.json`` into ``directory``."""
    created = datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{collection}-{created.strftime('%Y%m%dT%H%M%S%fZ')}.tar"
    final, partial = directory / name, directory / (name + ".partial")
    meta = {
        "format": FORMAT,
        "collection": collection,
        "backend": backend,
        "model_version": model_version,
        "dim": dim,
        "count": count,
        "created": created.isoformat(),
    }
    meta_file = directory / (name + ".json.partial")
    meta_file.write_text(json.dumps(meta, indent=2))
    try:
        with tarfile.open(partial, "w") as tar:
            tar.add(meta_file, arcname=META)
            for path in sorted(collection_dir.rglob("*")):
                if path.is_file() and not path.name.endswith((".tmp", ".lock")):
                    tar.add(path, arcname=PREFIX + path.relative_to(collection_dir).as_posix())
        os.replace(partial, final)
    finally:
        meta_file.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return describe(final)


def read_meta(archive: Path) -> dict:
    """The archive's ``snapshot.json``; SnapshotError when it is not an ecgsearch snapshot."""
    try:
        with tarfile.open(archive, "r") as tar:
            member = tar.extractfile(META)
            meta = json.loads(member.read()) if member is not None else None
    except (OSError, KeyError, tarfile.TarError, ValueError) as exc:
        raise SnapshotError(f"{archive}: not an ecgsearch snapshot ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SnapshotError(f"{archive}: not an ecgsearch snapshot (format {FORMAT} expected)")
    return meta


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


def unpack(archive: Path, target: Path) -> dict:
    """Extract the archive's collection into ``target`` (which must not exist); returns its meta.

    Members are extracted with tarfile's ``data`` filter: no absolute paths, links out of the target
    or device files, whatever the archive holds.
    """
    meta = read_meta(archive)
    if target.exists():
        raise SnapshotError(f"{target} exists: restore into a new collection")
    partial = target.with_name(target.name + ".restoring")
    if partial.exists():
        raise SnapshotError(f"{partial} exists: an earlier restore was interrupted; remove it first")
    try:
        with tarfile.open(archive, "r") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(PREFIX)]
            for member in members:
                member.name = member.name.removeprefix(PREFIX)
            tar.extractall(partial, members=members, filter="data")
        os.replace(partial, target)
    except (OSError, tarfile.TarError) as exc:
        raise SnapshotError(f"cannot restore {archive} into {target}: {exc}") from None
    return meta
