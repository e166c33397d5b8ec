"""``ecgsearch ingest``: a thin command over ingest.pipeline, which it imports when it runs."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.options import (
    CollectionOption,
    QdrantApiKeyOption,
    QdrantUrlOption,
    StoreOption,
    command_of,
)
from ecgsearch.cli.tokens import TokenFile, resolve

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from ecgsearch.export.runtime import Embedder
    from ecgsearch.ingest.pipeline import IngestSummary
    from ecgsearch.ingest.remote import PushSummary
    from ecgsearch.ingest.sources import Candidate
    from ecgsearch.search.client import EcgSearchClient
    from ecgsearch.search.engine.store import Store

DUPLICATE_THRESHOLD = (
    0.97  # = ecg.fingerprint.COPY_THRESHOLD (a test checks); literal so --help imports nothing
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


@dataclass(frozen=True)
class IngestOptions:
    """The options of `ingest_command`, one field per option."""

    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="PTB-XL folder, manifest .csv (path[,record_id,dataset]) or folder of WFDB records.",
        ),
    ]
    collection: CollectionOption = "ecgs"
    store: StoreOption = None
    qdrant_url: QdrantUrlOption = None
    api_key: QdrantApiKeyOption = None
    model: Annotated[
        Path | None, typer.Option(envvar="ECGSEARCH_MODEL", help="ONNX encoder (default: the bundled model).")
    ] = None
    batch_size: Annotated[int, typer.Option(min=1, help="ECGs per embedding and upsert batch.")] = 256
    workers: Annotated[
        int, typer.Option(min=0, help="Processes reading and preparing ECGs (0: in-process).")
    ] = 2
    threads: Annotated[
        int | None, typer.Option(min=1, help="onnxruntime threads (default: CPUs, at most 4).")
    ] = None
    shard: Annotated[
        str | None, typer.Option(help="Only shard i of N (1-based), split by a stable hash of record id.")
    ] = None
    rejects: Annotated[
        Path | None,
        typer.Option(help="Rejects report name; each run adds its UTC time (default: beside the store)."),
    ] = None
    limit: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many records (after sharding).")
    ] = None
    prefer_hr: Annotated[
        bool, typer.Option("--prefer-hr", help="PTB-XL: read the 500 Hz file where present.")
    ] = False
    no_optimize: Annotated[
        bool, typer.Option("--no-optimize", help="Skip building the index at the end.")
    ] = False
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset name for every record, the first part of its id (default: 'ptbxl' for PTB-XL, "
            "else the folder holding the record; the Challenge's g1, g2... group folders are skipped)."
        ),
    ] = None
    shards: Annotated[
        int | None,
        typer.Option("--shards", min=1, help="Qdrant server: shards of a new collection (cluster: e.g. 6)."),
    ] = None
    replicas: Annotated[
        int | None,
        typer.Option("--replicas", min=1, help="Qdrant server: copies of each shard of a new collection."),
    ] = None
    float32: Annotated[
        bool,
        typer.Option(
            "--float32",
            help="New collection: float32 vectors only, instead of the default int8 scalar quantization "
            "(4x less vector memory, float32 kept for rescoring).",
        ),
    ] = False
    hnsw_m: Annotated[
        int | None, typer.Option(min=4, max=128, help="New collection: HNSW edges per node (default 32).")
    ] = None
    ef_construct: Annotated[
        int | None,
        typer.Option(
            "--ef-construct", min=8, max=2048, help="New collection: HNSW build candidates (default 256)."
        ),
    ] = None
    search_ef: Annotated[
        int | None,
        typer.Option(min=1, max=4096, help="New collection: HNSW search candidates (default 256)."),
    ] = None
    site_secret_file: Annotated[
        Path | None,
        typer.Option(
            envvar="ECGSEARCH_SITE_SECRET_FILE",
            help="File holding the site secret that keys patient pseudonyms (HMAC); the same file for "
            "every ingest of the site. Default for an embedded store: <store>/site-secret, generated "
            "once (0600); required with --qdrant-url.",
        ),
    ] = None
    site: Annotated[
        str,
        typer.Option(
            envvar="ECGSEARCH_SITE",
            help="Site the ECGs belong to (payload field 'site'); callers restricted to sites see only "
            "theirs.",
        ),
    ] = "local"
    duplicate_threshold: Annotated[
        float,
        typer.Option(
            min=0.5,
            max=1.0,
            help="Content score (windowed correlation of the fingerprints, ecg/fingerprint.py) at or "
            "above which an ECG is recorded as a copy (duplicate_of) of one of its nearest stored ECGs.",
        ),
    ] = DUPLICATE_THRESHOLD
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the run summary as one JSON document on stdout (counts, rejects report, "
            "collection, elapsed); progress and rejects stay on stderr.",
        ),
    ] = False
    service: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Send the ECGs through a running service (UpsertEcgs) instead of writing a store: the "
            "way into a served embedded store. Needs a token with the write scope.",
        ),
    ] = None
    token_file: TokenFile = None


@command_of(IngestOptions)
def ingest_command(o: IngestOptions) -> None:
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
    from ecgsearch.ingest.threads import one_blas_thread

    one_blas_thread()  # before numpy loads
    from ecgsearch.ecg.identity import site_pseudonymizer
    from ecgsearch.export.runtime import Embedder, ModelError
    from ecgsearch.ingest.sources import SourceError, enumerate_source, select
    from ecgsearch.search.engine.store import default_store_path

    if o.store is not None and o.qdrant_url is not None:
        raise typer.BadParameter("give --store or --qdrant-url, not both")
    if o.qdrant_url is None and (o.shards or 1, o.replicas or 1) != (1, 1):
        raise typer.BadParameter("--shards/--replicas need --qdrant-url")
    from ecgsearch.search.serving.auth import check_site

    try:
        check_site(o.site)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--site") from None
    shard_spec = parse_shard(o.shard)

    def candidates() -> Iterator[Candidate]:  # enumerated twice: once to count (cheap), once to ingest
        found = enumerate_source(o.source, dataset=o.dataset, prefer_hr=o.prefer_hr)
        return select(found, shard=shard_spec, limit=o.limit)

    try:
        total = sum(1 for _ in candidates())
    except SourceError as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCE") from None
    if total == 0:
        raise typer.BadParameter(
            f"{o.source}: no ECGs found (or none left after --shard/--limit); nothing to ingest",
            param_hint="SOURCE",
        )
    if o.service is not None:
        if o.store is not None or o.qdrant_url is not None:
            raise typer.BadParameter(
                "--service sends through a running service: give no --store/--qdrant-url"
            )
        _push(candidates(), o.service, o)
    home = os.environ.get("ECGSEARCH_HOME")
    store_path = None if o.qdrant_url else (o.store or default_store_path(home))
    rejects_path = unused_path(o.rejects or (store_path or Path.cwd()) / f"{o.collection}-rejects.csv")
    try:
        pseudonyms = site_pseudonymizer(o.site_secret_file, store_path)
        embedder = Embedder(o.model, threads=o.threads, spinning=False)  # the workers need the cores
        target = _open_target(o, store_path)
    except (ModelError, OSError, RuntimeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    try:
        summary = _run(candidates(), total, target, embedder, rejects_path, o, pseudonyms=pseudonyms)
    except (SourceError, OSError, RuntimeError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        target.close()
    report(summary, o.as_json)
    raise typer.Exit(EXIT_OK if summary.ok else EXIT_REJECTS)


def _push(candidates: Iterable[Candidate], service: str, o: IngestOptions) -> NoReturn:
    """``--service``: send through UpsertEcgs; exits like ingest (0 all stored or present, 3 rejects)."""
    import time

    import grpc

    from ecgsearch.ingest.remote import push_source, write_rejects
    from ecgsearch.search.client import EcgSearchClient

    started = time.monotonic()
    token, rejects = resolve(o.token_file), o.rejects or Path.cwd() / f"{o.collection}-rejects.csv"

    def progress(s: PushSummary) -> None:
        if not o.quiet:
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
    if o.as_json:
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
    rejects_path: Path,
    o: IngestOptions,
    **identity: Any,  # pseudonyms: passed on to ingest
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
    quiet = o.quiet
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
            batch_size=o.batch_size,
            workers=o.workers,
            rejects_path=rejects_path,
            optimize=not o.no_optimize,
            on_batch=update,
            duplicate_threshold=o.duplicate_threshold,
            site=o.site,
            **identity,
        )


def _open_target(o: IngestOptions, path: Path | None) -> Store:
    """open_store with the index settings and cluster layout asked."""
    from ecgsearch.search.engine.settings import IndexSettings
    from ecgsearch.search.engine.store import open_store

    asked: dict[str, Any] = {
        "quantization": False if o.float32 else None,
        "hnsw_m": o.hnsw_m,
        "hnsw_ef_construct": o.ef_construct,
        "search_ef": o.search_ef,
    }
    chosen = {key: value for key, value in asked.items() if value is not None}
    return open_store(
        path=path,
        url=o.qdrant_url,
        api_key=o.api_key,
        collection=o.collection,
        shard_number=o.shards or 1,
        replication_factor=o.replicas or 1,
        settings=IndexSettings(**chosen) if chosen else None,
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
