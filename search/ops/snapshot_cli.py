"""``ecgsearch snapshot create|list|restore``: backups of an embedded store or a Qdrant server (--json)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.options import CollectionOption, QdrantApiKeyOption, QdrantUrlOption, StoreOption
from ecgsearch.cli.output import AsJson
from ecgsearch.cli.tokens import TokenFile, resolve

if TYPE_CHECKING:
    from ecgsearch.search.engine import store as engine

T = TypeVar("T")

Target = Annotated[
    str | None,
    typer.Option(
        "--target", "-t", help="A running service (host:port) to ask instead of a store (scope admin)."
    ),
]
ArchivePath = Annotated[
    Path | None,
    typer.Option(
        envvar="ECGSEARCH_ARCHIVE_PATH",
        help="Embedded store: where pushed ECGs' signals are kept (default: <store>/archive), as serve's.",
    ),
]
Directory = Annotated[
    Path | None,
    typer.Option("--dir", "-d", help="Embedded store: where archives are kept (default: <store>/snapshots)."),
]

snapshot = typer.Typer(
    help="Back up a collection and restore it.", no_args_is_help=True, rich_markup_mode="markdown"
)


@snapshot.command("create")
def create_command(
    store: StoreOption = None,
    qdrant_url: QdrantUrlOption = None,
    api_key: QdrantApiKeyOption = None,
    collection: CollectionOption = "ecgs",
    directory: Directory = None,
    archive_path: ArchivePath = None,
    target: Target = None,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Snapshot a collection: an archive of the embedded store, or Qdrant's own snapshot on a server.

    An embedded store held by a running `serve` is snapshotted through that service with --target
    (a caller with scope admin; the archive lands in the server's <store>/snapshots). Otherwise the
    store is opened here; the archive is a consistent copy after a flush. On a Qdrant server the
    snapshot stays on the server (its snapshots volume). Exit status (the table in docs/commands.md):
    with --target, 4 without scope admin and 6 when the service cannot be reached.

    Examples:

        ecgsearch snapshot create --store ./store

        ecgsearch snapshot create --target localhost:50051 --token-file ops-token

        ecgsearch snapshot create --qdrant-url http://qdrant:6333 -c ecgs --json
    """
    if target is not None:
        info = _with_service(target, resolve(token_file), lambda c: c.create_snapshot())
    else:
        info = _with_store(
            store,
            qdrant_url,
            api_key,
            collection,
            lambda s: s.create_snapshot(directory, archive=archive_path),
        )
    _print([info], as_json, single=True)


@snapshot.command("list")
def list_command(
    store: StoreOption = None,
    qdrant_url: QdrantUrlOption = None,
    api_key: QdrantApiKeyOption = None,
    collection: CollectionOption = "ecgs",
    directory: Directory = None,
    target: Target = None,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """List a collection's snapshots, oldest first (of a running service's collection with --target).

    Examples:

        ecgsearch snapshot list --store ./store

        ecgsearch snapshot list --target localhost:50051 --json

        ecgsearch snapshot list --qdrant-url http://qdrant:6333 -c ecgs --json
    """
    if target is not None:
        found = _with_service(target, resolve(token_file), lambda c: c.list_snapshots())
    elif qdrant_url is None:
        from ecgsearch.search.engine import snapshots
        from ecgsearch.search.engine.store import default_store_path

        root = store or default_store_path(os.environ.get("ECGSEARCH_HOME"))
        _held(root)
        found = snapshots.list_archives(directory or snapshots.default_directory(root), collection)
    else:
        found = _with_store(store, qdrant_url, api_key, collection, lambda s: s.list_snapshots(directory))
    _print(found, as_json)


@snapshot.command("restore")
def restore_command(
    source: Annotated[
        str,
        typer.Argument(
            help="Embedded: the archive's path. Server: a snapshot name of --from-collection, or a "
            "location the server reads (file:///qdrant/snapshots/..., http://...)."
        ),
    ],
    store: StoreOption = None,
    qdrant_url: QdrantUrlOption = None,
    api_key: QdrantApiKeyOption = None,
    collection: CollectionOption = "ecgs",
    from_collection: Annotated[
        str | None,
        typer.Option(help="Server: the collection the snapshot was made of (default: --collection)."),
    ] = None,
    server_snapshots_dir: Annotated[
        str, typer.Option(help="Server: its snapshots directory, as the server sees it.")
    ] = "/qdrant/snapshots",
    archive_path: ArchivePath = None,
    as_json: AsJson = False,
) -> None:
    """Restore a snapshot as a new collection (an existing embedded collection is never overwritten).

    Embedded: every file is checked against the snapshot's manifest (size and SHA-256) before anything
    is written, compressed archives are refused (decompress them first), the kept signals of pushed
    ECGs go to <store>/archive (or --archive-path), and the point count is checked; on any failure
    nothing is left behind. The site secret is never in a snapshot: copy the original store's
    site-secret (or give the same --site-secret-file) before pushing or ingesting into the restored
    store. Point clients at the restored collection with `ecgsearch collection alias`. On a Qdrant
    server, Qdrant recovers the collection from a location it can read; restoring over an existing
    collection replaces it there (Qdrant's behaviour).

    Examples:

        ecgsearch snapshot restore ./store/snapshots/ecgs-20261129T193000000000Z.tar \\
            --store ./store -c ecgs-restored

        ecgsearch snapshot restore ecgs-2026-11-29-19-30-00.snapshot --qdrant-url http://qdrant:6333 \\
            --from-collection ecgs -c ecgs-restored --json
    """
    if qdrant_url is None:
        archive = Path(source)
        if not archive.is_file():
            raise typer.BadParameter(f"{archive}: no such archive", param_hint="SOURCE")
        location: str = str(archive)
        store = store or _default_store()
    elif "://" in source:
        location = source
    else:
        location = f"file://{server_snapshots_dir.rstrip('/')}/{from_collection or collection}/{source}"
    made = store is not None and not store.exists()
    try:
        if store is not None:
            store.mkdir(parents=True, exist_ok=True)
        info = _with_store(
            store,
            qdrant_url,
            api_key,
            collection,
            lambda s: s.restore_snapshot(location, archive=archive_path),
            new=True,
        )
    finally:
        if made and store is not None and not any(store.iterdir()):
            store.rmdir()  # a failed restore leaves no empty store behind
    _print([info], as_json, single=True)
    if info.note and not as_json:
        typer.echo(f"note: {info.note}", err=True)


def _default_store() -> Path:
    from ecgsearch.search.engine.store import default_store_path

    return default_store_path(os.environ.get("ECGSEARCH_HOME"))


def _held(path: Path) -> None:
    """A store given to read must exist: bad usage (2) otherwise, as for every command reading a store."""
    if not (path / "collections").is_dir():
        raise typer.BadParameter(f"{path} holds no collections; ingest ECGs first", param_hint="--store")


def _with_store(
    store: Path | None,
    url: str | None,
    api_key: str | None,
    collection: str,
    action: Callable[[engine.Store], T],
    new: bool = False,
) -> T:
    """Open the store, run ``action``, close it; store and snapshot problems exit 1 in one line."""
    from ecgsearch.ecg.schema import StoreUnavailable
    from ecgsearch.search.engine.snapshots import SnapshotError
    from ecgsearch.search.engine.store import StoreError
    from ecgsearch.search.ops.admin import open_for_admin

    if store is not None and url is not None:
        raise typer.BadParameter("give --store or --qdrant-url, not both")
    path = None if url else (store or _default_store())
    if path is not None and not new:
        _held(path)
    try:
        opened = open_for_admin(path=path, url=url, api_key=api_key, collection=collection)
    except (StoreUnavailable, StoreError, ValueError) as exc:
        _fail(str(exc))
    try:
        return action(opened)
    except (StoreUnavailable, StoreError, SnapshotError, OSError) as exc:
        _fail(str(exc))
    finally:
        opened.close()


def _with_service(target: str, token: str | None, action: Any) -> Any:
    """Ask a running service; a failure is one line and the table's code (4: PERMISSION_DENIED without
    scope admin; 6: unreachable)."""
    import grpc

    from ecgsearch.search.client import EcgSearchClient

    try:
        with EcgSearchClient(target, token=token, timeout=600.0) as client:
            return action(client)
    except grpc.RpcError as exc:
        _fail(f"{target}: {exc.code().name}: {exc.details()}", exits.for_rpc_error(exc))
    except (OSError, ValueError) as exc:
        _fail(str(exc))


def _print(rows: list[Any], as_json: bool, single: bool = False) -> None:
    if as_json:
        data = [r.model_dump(mode="json") for r in rows]
        typer.echo(json.dumps(data[0] if single else data, indent=2))
        return
    if not rows:
        typer.echo("no snapshots")
    for r in rows:
        size = f"{r.size_bytes / 1e6:.1f} MB" if r.size_bytes is not None else "-"
        count = f"{r.count} points" if r.count is not None else "-"
        when = r.created.strftime("%Y-%m-%d %H:%M:%S") if r.created else "-"
        typer.echo(f"{r.collection}  {when}  {count}  {size}  {r.location}")


def _fail(message: str, code: int = exits.FAILED) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Mount the ``snapshot`` group on the root app."""
    app.add_typer(snapshot, name="snapshot")
