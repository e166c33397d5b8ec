"""``ecgsearch ingest``: a thin command over ingest.pipeline, which it imports when it runs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.tokens import TokenArgv, TokenFile, resolve

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ecgsearch.export.runtime import Embedder
    from ecgsearch.ingest.pipeline import IngestSummary
    from ecgsearch.ingest.remote import PushSummary
    from ecgsearch.ingest.sources import Candidate
    from ecgsearch.search.client import EcgSearchClient
    from ecgsearch.search.engine.store import IndexSettings, Store

DUPLICATE_THRESHOLD = (
    0.999  # = ecg.identity.DUPLICATE_THRESHOLD (a test checks); literal so --help imports nothing
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REJECTS = exits.OK, exits.FAILED, exits.USAGE, exits.REJECTS


def parse_shard(value: str | None) -> tuple[int, int] | None:
    """'i/N' (1 <= i <= N) -> (i, N)."""
    if value is None:
        return None
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not i/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise typer.BadParameter(f"shard {value}: i must be 1..N")
    return index, count


def ingest_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="PTB-XL folder, manifest .csv (path[,record_id,dataset]) or folder of WFDB records.",
        ),
    ],
    collection: Annotated[
        str, typer.Option(envvar="ECGSEARCH_COLLECTION", help="Collection to fill.")
    ] = "ecgs",
    store: Annotated[
        Path | None,
        typer.Option(
            envvar="ECGSEARCH_STORE_PATH", help="Embedded store directory (default: $ECGSEARCH_HOME/store)."
        ),
    ] = None,
    qdrant_url: Annotated[
        str | None,
        typer.Option(envvar="ECGSEARCH_QDRANT_URL", help="Qdrant server instead of an embedded store."),
    ] = None,
    api_key: Annotated[
        str | None, typer.Option(envvar="ECGSEARCH_QDRANT_API_KEY", help="API key of the Qdrant server.")
    ] = None,
    model: Annotated[
        Path | None, typer.Option(envvar="ECGSEARCH_MODEL", help="ONNX encoder (default: the bundled model).")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="ECGs per embedding and upsert batch.")] = 256,
    workers: Annotated[
        int, typer.Option(min=0, help="Processes reading and preparing ECGs (0: in-process).")
    ] = 2,
    threads: Annotated[
        int | None, typer.Option(min=1, help="onnxruntime threads (default: CPUs, at most 4).")
    ] = None,
    shard: Annotated[
        str | None, typer.Option(help="Only shard i of N (1-based), split by a stable hash of record id.")
    ] = None,
    rejects: Annotated[
        Path | None,
        typer.Option(help="Rejects report name; each run adds its UTC time (default: beside the store)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many records (after sharding).")
    ] = None,
    prefer_hr: Annotated[
        bool, typer.Option("--prefer-hr", help="PTB-XL: read the 500 Hz file where present.")
    ] = False,
    no_optimize: Annotated[
        bool, typer.Option("--no-optimize", help="Skip building the index at the end.")
    ] = False,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset name for every record, the first part of its id (default: 'ptbxl' for PTB-XL, "
            "else the folder holding the record; the Challenge's g1, g2... group folders are skipped)."
        ),
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option("--shards", min=1, help="Qdrant server: shards of a new collection (cluster: e.g. 6)."),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", min=1, help="Qdrant server: copies of each shard of a new collection."),
    ] = None,
    float32: Annotated[
        bool,
        typer.Option(
            "--float32",
            help="New collection: float32 vectors only, instead of the default int8 scalar quantization "
            "(4x less vector memory, float32 kept for rescoring).",
        ),
    ] = False,
    hnsw_m: Annotated[
        int | None, typer.Option(min=4, max=128, help="New collection: HNSW edges per node (default 32).")
    ] = None,
    ef_construct: Annotated[
        int | None,
        typer.Option(
            "--ef-construct", min=8, max=2048, help="New collection: HNSW build candidates (default 256)."
        ),
    ] = None,
    search_ef: Annotated[
        int | None,
        typer.Option(min=1, max=4096, help="New collection: HNSW search candidates (default 256)."),
    ] = None,
    site_secret_file: Annotated[
        Path | None,
        typer.Option(
            envvar="ECGSEARCH_SITE_SECRET_FILE",
            help="File holding the site secret that keys patient pseudonyms (HMAC); the same file for "
            "every ingest of the site. Default for an embedded store: <store>/site-secret, generated "
            "once (0600); required with --qdrant-url.",
        ),
    ] = None,
    site: Annotated[
        str,
        typer.Option(
            envvar="ECGSEARCH_SITE",
            help="Site the ECGs belong to (payload field 'site'); callers restricted to sites see only "
            "theirs.",
        ),
    ] = "local",
    duplicate_threshold: Annotated[
        float,
        typer.Option(
            min=0.5,
            max=1.0,
            help="Cosine at or above which an ECG of equal duration to a stored one is recorded as its "
            "copy (duplicate_of).",
        ),
    ] = DUPLICATE_THRESHOLD,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the run summary as one JSON document on stdout (counts, rejects report, "
            "collection, elapsed); progress and rejects stay on stderr.",
        ),
    ] = False,
    service: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Send the ECGs through a running service (UpsertEcgs) instead of writing a store: the "
            "way into a served embedded store. Needs a token with the write scope.",
        ),
    ] = None,
    token_file: TokenFile = None,
    token: TokenArgv = None,
    # Earlier spellings, still accepted (deployment files use them), kept out of --help.
    shard_number: Annotated[int | None, typer.Option(min=1, hidden=True)] = None,
    replication_factor: Annotated[int | None, typer.Option(min=1, hidden=True)] = None,
    int8: Annotated[bool, typer.Option("--int8", hidden=True)] = False,
    hnsw_ef_construct: Annotated[int | None, typer.Option(min=8, max=2048, hidden=True)] = None,
) -> None:
    """Embed ECGs from SOURCE and store them with their payloads; reruns skip what is already stored.

    Exit status (the table in docs/commands.md): 0 every record stored (or already present with the
    same content); 3 the run finished but some records were rejected (listed in the rejects CSV,
    everything else is stored), among them collisions: a different ECG under an id already stored (the
    stored one is kept); 1 the run failed (store, model, site secret, or a collection made by another
    model); 2 bad usage (e.g. SOURCE missing); with --service also 4 token refused or without the
    write scope, 6 service unreachable. A failed or killed run can simply be rerun: records already
    stored are skipped, the rest are added.

    Identity: a record is `<dataset>:<native id>` (PTB-XL: `ptbxl:<ecg_id>`; WFDB folders: the
    record name, the dataset from --dataset or the folder holding it). Hospital exports in a folder
    (every format `query --file` reads; told by content) are named by the file's own
    id or its content hash, never by the file name, and store no path. Patient ids are stored only as
    keyed pseudonyms (HMAC with the site secret); an ECG without one gets a pseudonym of its own.

    An embedded store is owned by one process: stop a running `serve` first, or ingest into a new
    collection and switch the service to it. `--shard` is for several machines writing one Qdrant server.

    Examples:

        ecgsearch ingest ../shared/data/ptb-xl --store ./store

        ecgsearch ingest ../shared/data/challenge --store ./store --rejects rejects.csv

        ecgsearch ingest manifest.csv --qdrant-url http://qdrant:6333 --shard 2/4 --no-optimize

        ecgsearch ingest ../shared/data/hospital --service localhost:50051 --token-file token --json
    """
    from ecgsearch.ecg.identity import site_pseudonymizer
    from ecgsearch.export.runtime import Embedder, ModelError
    from ecgsearch.ingest.sources import SourceError, enumerate_source, select
    from ecgsearch.search.engine.store import default_store_path

    if store is not None and qdrant_url is not None:
        raise typer.BadParameter("give --store or --qdrant-url, not both")
    from ecgsearch.search.serving.auth import check_site

    try:
        check_site(site)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--site") from None
    shard_spec = parse_shard(shard)

    def candidates() -> Iterator[Candidate]:  # enumerated twice: once to count (cheap), once to ingest
        return select(
            enumerate_source(source, dataset=dataset, prefer_hr=prefer_hr), shard=shard_spec, limit=limit
        )

    try:
        total = sum(1 for _ in candidates())
    except SourceError as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCE") from None
    if total == 0:
        raise typer.BadParameter(
            f"{source}: no ECGs found (or none left after --shard/--limit); nothing to ingest",
            param_hint="SOURCE",
        )
    if service is not None:
        if store is not None or qdrant_url is not None:
            raise typer.BadParameter(
                "--service sends through a running service: give no --store/--qdrant-url"
            )
        _push(
            candidates(),
            service,
            resolve(token_file, token),
            rejects or Path.cwd() / f"{collection}-rejects.csv",
            quiet,
            as_json,
        )
    store_path = None if qdrant_url else (store or default_store_path(os.environ.get("ECGSEARCH_HOME")))
    rejects_path = unused_path(rejects or (store_path or Path.cwd()) / f"{collection}-rejects.csv")
    try:
        pseudonyms = site_pseudonymizer(site_secret_file, store_path)
        embedder = Embedder(model, threads=threads)
        settings = _index_settings(
            quantization=False if float32 else (True if int8 else None),
            hnsw_m=hnsw_m,
            hnsw_ef_construct=ef_construct or hnsw_ef_construct,
            search_ef=search_ef,
        )
        target = _open_target(
            store_path,
            qdrant_url,
            api_key,
            collection,
            shards or shard_number or 1,
            replicas or replication_factor or 1,
            settings,
        )
    except (ModelError, OSError, RuntimeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    try:
        summary = _run(
            candidates(),
            total,
            target,
            embedder,
            batch_size,
            workers,
            rejects_path,
            not no_optimize,
            quiet,
            pseudonyms=pseudonyms,
            duplicate_threshold=duplicate_threshold,
            site=site,
        )
    except (SourceError, OSError, RuntimeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        target.close()
    report(summary, as_json)
    raise typer.Exit(EXIT_OK if summary.ok else EXIT_REJECTS)


def _push(
    candidates: Iterable[Candidate],
    service: str,
    token: str | None,
    rejects: Path,
    quiet: bool,
    as_json: bool,
) -> NoReturn:
    """``--service``: send through UpsertEcgs; exits like ingest (0 all stored or present, 3 rejects)."""
    import time

    import grpc

    from ecgsearch.ingest.remote import push_source, write_rejects
    from ecgsearch.search.client import EcgSearchClient

    started = time.monotonic()

    def progress(s: PushSummary) -> None:
        if not quiet:
            typer.echo(
                f"sent {s.sent}: stored {s.stored}, skipped {s.skipped}, rejected {s.rejected}", err=True
            )

    try:
        with EcgSearchClient(service, token=token, timeout=300.0) as client:
            summary = push_source(candidates, client, on_batch=progress)
            collection = _served_collection(client)
    except grpc.RpcError as exc:
        typer.echo(f"error: {service}: {exc.code().name}: {exc.details()}", err=True)
        raise typer.Exit(exits.for_rpc_error(exc)) from None
    path = None
    if summary.rejects:
        path = unused_path(rejects)
        write_rejects(summary, path)
        for r in summary.rejects[:20]:
            typer.echo(f"  rejected {r.record}: {r.reason}", err=True)
        typer.echo(f"rejects report: {path}", err=True)
    if as_json:
        document = run_document(
            collection=collection,
            service=service,
            stored=summary.stored,
            skipped=summary.skipped,
            rejected=summary.rejected,
            rejects_report=path,
            elapsed_s=time.monotonic() - started,
            rejects=summary.rejects,
        )
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(
            f"sent {summary.sent} to {service}: stored {summary.stored}, skipped {summary.skipped} "
            f"(already stored), rejected {summary.rejected}"
        )
    raise typer.Exit(EXIT_OK if summary.ok else EXIT_REJECTS)


def _served_collection(client: EcgSearchClient) -> str | None:
    """The collection the service writes to, when this caller may ask (a write-only token may not)."""
    import grpc

    try:
        return client.info().name
    except grpc.RpcError:
        return None


def run_document(
    *,
    collection: str | None,
    stored: int,
    skipped: int,
    rejected: int,
    rejects_report: Path | str | None,
    elapsed_s: float,
    rejects: list,
    service: str | None = None,
    collisions: int | None = None,
    duplicates: int | None = None,
    model_version: str | None = None,
) -> dict:
    """``ingest --json``: the same keys whether the run wrote a store or went through a service
    (null where that way cannot know: a service reports no collisions or duplicates)."""
    return {
        "collection": collection,
        "service": service,
        "model_version": model_version,
        "stored": stored,
        "skipped": skipped,
        "rejected": rejected,
        "collisions": collisions,
        "duplicates": duplicates,
        "rejects_report": str(rejects_report) if rejects_report is not None else None,
        "elapsed_s": round(elapsed_s, 3),
        "ok": rejected == 0,
        "rejects": [r.model_dump() for r in rejects],
    }


def unused_path(path: Path) -> Path:
    """``name-<UTC time>.csv`` beside ``path``: each run writes its own rejects report, never overwriting."""
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = path.with_name(f"{path.stem}-{stamp}{path.suffix}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{stamp}-{n}{path.suffix}")
    return candidate


def _run(
    candidates: Iterable[Candidate],
    total: int,
    store: Store,
    embedder: Embedder,
    batch_size: int,
    workers: int,
    rejects_path: Path,
    optimize: bool,
    quiet: bool,
    **identity: Any,  # pseudonyms, duplicate_threshold, site: passed on to ingest
) -> IngestSummary:
    """The pipeline under a progress bar: records done of total, rate, elapsed and ETA."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ecgsearch.ingest.pipeline import ingest

    err = Console(stderr=True)
    columns = (
        TextColumn("ingest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "({task.fields[skipped]} skipped, {task.fields[rejected]} rejected) {task.fields[rate]} ECGs/s"
        ),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, disable=quiet) as progress:
        task = progress.add_task("ingest", total=total, skipped=0, rejected=0, rate="-")

        def update(s: IngestSummary) -> None:
            done = s.ingested + s.skipped + s.rejected
            progress.update(
                task, completed=done, skipped=s.skipped, rejected=s.rejected, rate=f"{s.rate:.0f}"
            )
            if not quiet and not err.is_terminal:  # logs of batch jobs: one plain line per batch
                typer.echo(
                    f"ingest: {done}/{total} done, {s.ingested} stored, {s.skipped} skipped, "
                    f"{s.rejected} rejected, {s.rate:.0f} ECGs/s",
                    err=True,
                )

        return ingest(
            candidates,
            store,
            embedder,
            batch_size=batch_size,
            workers=workers,
            rejects_path=rejects_path,
            optimize=optimize,
            on_batch=update,
            **identity,
        )


def _index_settings(**given: Any) -> IndexSettings | None:  # IndexSettings imported late (CLI start-up)
    """IndexSettings from the options given on the command line; None when none was given."""
    from ecgsearch.search.engine.store import IndexSettings

    chosen = {key: value for key, value in given.items() if value is not None}
    return IndexSettings(**chosen) if chosen else None


def _open_target(
    path: Path | None,
    url: str | None,
    api_key: str | None,
    collection: str,
    shard_number: int,
    replication_factor: int,
    settings: IndexSettings | None,
) -> Store:
    """open_store with the cluster layout options; a layout without a server is a usage error."""
    from ecgsearch.search.engine.store import open_store

    if url is None and (shard_number, replication_factor) != (1, 1):
        raise typer.BadParameter("--shards/--replicas need --qdrant-url")
    return open_store(
        path=path,
        url=url,
        api_key=api_key,
        collection=collection,
        shard_number=shard_number,
        replication_factor=replication_factor,
        settings=settings,
    )


def report(summary: IngestSummary, as_json: bool = False) -> None:
    """One summary line (or, with --json, one JSON document) on stdout; each reject (first few) on stderr."""
    if as_json:
        document = run_document(
            collection=summary.collection,
            model_version=summary.model_version,
            stored=summary.ingested,
            skipped=summary.skipped,
            rejected=summary.rejected,
            collisions=summary.collisions,
            duplicates=summary.duplicates,
            rejects_report=summary.rejects_path,
            elapsed_s=summary.seconds,
            rejects=summary.rejects,
        )
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(
            f"ingested {summary.ingested}, skipped {summary.skipped} (already stored), "
            f"rejected {summary.rejected} ({summary.collisions} id collisions), "
            f"{summary.duplicates} marked duplicate_of a stored ECG, "
            f"into '{summary.collection}' in {summary.seconds:.1f} s ({summary.rate:.1f} ECGs/s)"
        )
    for reject in summary.rejects[:20]:
        typer.echo(f"rejected {reject.record}: {reject.reason}", err=True)
    typer.echo(f"rejects report: {summary.rejects_path}", err=True)


def embed_command(
    source: Annotated[
        Path, typer.Argument(metavar="SOURCE", help="Anything ingest accepts: PTB-XL folder, manifest, WFDB.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .npz (or .parquet with pyarrow).")],
    model: Annotated[
        Path | None, typer.Option(envvar="ECGSEARCH_MODEL", help="ONNX encoder (default: bundled).")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name for every record.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="ECGs per embedding batch.")] = 256,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write the embeddings of SOURCE to a file: record ids, unit vectors and the model version.

    Each ECG is prepared and encoded exactly as ingest does, so the vectors equal the stored ones.
    .npz holds arrays record_ids, vectors (n x dim, float32) and model_version; .parquet (needs
    pyarrow) holds columns record_id and vector, the model version in its metadata.

    Examples:

        ecgsearch embed ../shared/data/ptb-xl --out ptbxl.npz

        ecgsearch embed manifest.csv --out site.npz --limit 1000 --json
    """
    from ecgsearch.export.runtime import Embedder, ModelError
    from ecgsearch.ingest.embed import EmbedError, check_output, embed_candidates, write
    from ecgsearch.ingest.sources import SourceError, enumerate_source, select

    try:
        check_output(out)
    except EmbedError as exc:
        raise typer.BadParameter(str(exc), param_hint="--out") from None
    try:
        candidates = list(select(enumerate_source(source, dataset=dataset), limit=limit))
    except SourceError as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCE") from None
    if not candidates:
        raise typer.BadParameter(f"{source}: no ECGs found; nothing to embed", param_hint="SOURCE")
    try:
        embedder = Embedder(model, threads=threads)
        result = embed_candidates(candidates, embedder, batch_size=batch_size)
        write(result, out)
    except (ModelError, EmbedError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    summary = {
        "out": str(out),
        "records": len(result.record_ids),
        "rejected": len(result.rejects),
        "dim": int(result.vectors.shape[1]),
        "model_version": result.model_version,
    }
    if as_json:
        typer.echo(json.dumps(summary | {"rejects": [r.model_dump() for r in result.rejects]}, indent=2))
    else:
        typer.echo(
            f"wrote {summary['records']} embeddings ({summary['dim']}-d, model {result.model_version}) "
            f"to {out}; {summary['rejected']} rejected"
        )
        for reject in result.rejects[:20]:
            typer.echo(f"rejected {reject.record}: {reject.reason}", err=True)


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
    app.command("ingest")(ingest_command)
    app.command("embed")(embed_command)
