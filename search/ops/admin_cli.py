"""``ecgsearch collection info|get|alias``, ``ecgsearch stats`` and ``ecgsearch proto``: operator commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.options import CollectionOption, QdrantApiKeyOption, QdrantUrlOption, StoreOption
from ecgsearch.cli.output import AsJson, emit
from ecgsearch.cli.tokens import TokenFile, resolve

Target = Annotated[
    str | None, typer.Option("--target", "-t", help="A running service (host:port) instead of a store.")
]


def info_command(
    store: StoreOption = None,
    qdrant_url: QdrantUrlOption = None,
    api_key: QdrantApiKeyOption = None,
    collection: CollectionOption = "ecgs",
    model: Annotated[
        Path | None, typer.Option(envvar="ECGSEARCH_MODEL", help="ONNX model whose card to show.")
    ] = None,
    target: Target = None,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Show a collection: count, dimension, model and its card, index settings, aliases.

    The embedded store (default $ECGSEARCH_HOME/store) must not be open in another process; a running
    `ecgsearch serve` holds it: ask it with --target instead (it reports no settings or aliases).

    Examples:

        ecgsearch collection info --store ./store

        ecgsearch collection info --qdrant-url http://qdrant:6333 -c ecgs --json

        ECGSEARCH_TOKEN=secret ecgsearch collection info --target localhost:50051
    """
    from ecgsearch.search.ops.admin import collection_info, service_info

    if target is not None:
        _only_target(store, qdrant_url)
        result = _with_service(target, resolve(token_file), service_info)
    else:
        result = _with_store(store, qdrant_url, api_key, collection, lambda s: collection_info(s, model))
    if as_json:
        _print_json(result)
        return
    typer.echo(f"collection {result['collection']} ({result['backend']})")
    typer.echo(f"  points          {result['count']}")
    typer.echo(f"  dimension       {result['dim']}")
    typer.echo(f"  indexed         {'yes' if result['indexed'] else 'no'}")
    typer.echo(f"  model version   {result['model_version']}")
    card = result["model_card"]
    typer.echo(f"  model card      {_card_line(card)}")
    settings = ", ".join(f"{k} {v}" for k, v in (result["index_settings"] or {}).items())
    typer.echo(f"  index settings  {settings or 'not reported by the service'}")
    if "views" in result:
        held = ", ".join(
            f"{v} {spec['dim']}-d {spec['distance']} {spec['version']}" for v, spec in result["views"].items()
        )
        typer.echo(f"  views           {held or 'none (made before views: re-embed into a new collection)'}")
    aliases = ", ".join(f"{a} -> {c}" for a, c in (result["aliases"] or {}).items()) or "none"
    typer.echo(f"  aliases         {aliases}")
    top = list(result["diagnosis_counts"].items())[:5]
    typer.echo("  top diagnoses   " + (", ".join(f"{c} {n}" for c, n in top) or "none"))


def get_command(
    record_id: Annotated[str, typer.Argument(help="Stored record id, e.g. ptbxl:17.")],
    store: StoreOption = None,
    qdrant_url: QdrantUrlOption = None,
    api_key: QdrantApiKeyOption = None,
    collection: CollectionOption = "ecgs",
    vector: Annotated[bool, typer.Option("--vector", help="Include the stored vector.")] = False,
    target: Target = None,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Show one stored record's payload (and, with --vector, its embedding).

    Exit status 5 when the record is not stored (the table in docs/commands.md).

    Examples:

        ecgsearch collection get ptbxl:17 --store ./store

        ecgsearch collection get ptbxl:17 --vector --json

        ecgsearch collection get ptbxl:17 --target localhost:50051 --token-file ./token
    """
    from ecgsearch.ecg.schema import UnknownRecord
    from ecgsearch.search.ops.admin import get_record, service_record

    try:
        if target is not None:
            _only_target(store, qdrant_url)
            token_text = resolve(token_file)
            result = _with_service(target, token_text, lambda c: service_record(c, record_id, vector=vector))
        else:
            result = _with_store(
                store, qdrant_url, api_key, collection, lambda s: get_record(s, record_id, vector=vector)
            )
    except UnknownRecord:
        typer.echo(f"error: record {record_id!r} is not in collection {collection!r}", err=True)
        raise typer.Exit(exits.NOT_FOUND) from None
    if as_json:
        _print_json(result)
        return
    typer.echo(result["record_id"])
    for key, value in result["payload"].items():
        if value not in (None, [], {}, ""):
            typer.echo(f"  {key:<17} {value}")
    if vector:
        typer.echo(f"  vector ({len(result['vector'])}) {result['vector'][:4]} ...")


def alias_command(
    name: Annotated[str, typer.Argument(help="Alias that clients use, e.g. ecgs.")],
    target: Annotated[str, typer.Argument(help="Collection it should point at, e.g. ecgs-v2.")],
    store: StoreOption = None,
    qdrant_url: QdrantUrlOption = None,
    api_key: QdrantApiKeyOption = None,
    as_json: AsJson = False,
) -> None:
    """Point alias NAME at collection TARGET: how a collection built with a new model goes live.

    On an embedded store a running `serve` keeps its collection until restarted; on a Qdrant server
    the switch is one request and readers never see the alias missing.

    Examples:

        ecgsearch collection alias ecgs ecgs-v2 --store ./store

        ecgsearch collection alias ecgs ecgs-v2 --qdrant-url http://qdrant:6333 --json
    """
    from ecgsearch.search.ops.admin import switch_alias

    result = _with_store(store, qdrant_url, api_key, target, lambda s: switch_alias(s, name, target))
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"alias {name}: {result['previous'] or '(new)'} -> {target}")


def stats_command(
    target: Annotated[
        str, typer.Option("--target", "-t", envvar="ECGSEARCH_TARGET", help="Server host:port.")
    ] = "127.0.0.1:50051",
    token_file: TokenFile = None,
    tls: Annotated[bool, typer.Option("--tls", help="Connect with TLS (system roots).")] = False,
    root_cert: Annotated[Path | None, typer.Option(help="CA certificate PEM for TLS.")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Deadline in seconds.")] = 10.0,
    as_json: AsJson = False,
) -> None:
    """Per-RPC request counts, errors and latency percentiles of a running server since it started,
    and how its searches were planned (``search_plans``: hnsw, exact, postfilter, acorn).

    Needs a token (--token-file or env ECGSEARCH_TOKEN). Exit status: the table in docs/commands.md
    (4 token refused, 6 server unreachable).

    Examples:

        ecgsearch stats --target localhost:50051 --token-file ./token

        ECGSEARCH_TOKEN=secret ecgsearch stats --json
    """
    import grpc

    from ecgsearch.search.client import EcgSearchClient

    try:
        with EcgSearchClient(
            target, token=resolve(token_file), tls=tls, root_cert=root_cert, timeout=timeout
        ) as client:
            result = client.stats()
            plans = client.search_plans()
    except grpc.RpcError as exc:
        _fail(f"{target}: {exc.code().name}: {exc.details()}", exits.for_rpc_error(exc))
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        _print_json({"rpcs": result, "search_plans": plans})
        return
    typer.echo(f"{'rpc':<24} {'count':>8} {'errors':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for method, row in sorted(result.items()):
        typer.echo(
            f"{method:<24} {row['count']:>8.0f} {row['errors']:>7.0f} {row['p50_ms']:>8.2f} "
            f"{row['p95_ms']:>8.2f} {row['p99_ms']:>8.2f}"
        )
    for plan, p in plans.items():
        seen = "" if p["estimate"] is None else f", the latest ~{p['estimate']} of {p['total']} points"
        typer.echo(f"search plan {plan:<11} {p['count']:>8} searches ({p['filtered']} filtered{seen})")


def _with_store(
    store: Path | None, url: str | None, api_key: str | None, collection: str, action: Any
) -> Any:
    """Open the store, run ``action`` on it, close it; environment and store problems exit 1 in one line."""
    from ecgsearch.ecg.schema import InvalidQuery, StoreUnavailable
    from ecgsearch.search.engine.store import StoreError, default_store_path
    from ecgsearch.search.ops.admin import open_for_admin

    if store is not None and url is not None:
        raise typer.BadParameter("give --store or --qdrant-url, not both")
    path = None if url else (store or default_store_path(os.environ.get("ECGSEARCH_HOME")))
    if path is not None and not (path / "collections").is_dir():
        raise typer.BadParameter(f"{path} holds no collections; ingest ECGs first", param_hint="--store")
    try:
        opened = open_for_admin(path=path, url=url, api_key=api_key, collection=collection)
    except (StoreUnavailable, StoreError, ValueError) as exc:
        _fail(str(exc))
    try:
        return action(opened)
    except (StoreUnavailable, StoreError, InvalidQuery) as exc:
        _fail(str(exc))
    finally:
        opened.close()


def _only_target(store: Path | None, url: str | None) -> None:
    if store is not None or url is not None:
        raise typer.BadParameter("give --target, or --store/--qdrant-url, not both")


def _with_service(target: str, token: str | None, action: Any) -> Any:
    """Ask a running service; NOT_FOUND becomes UnknownRecord, other failures exit by the table."""
    import grpc

    from ecgsearch.ecg.schema import UnknownRecord
    from ecgsearch.search.client import EcgSearchClient

    try:
        with EcgSearchClient(target, token=token, timeout=10.0) as client:
            return action(client)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise UnknownRecord(exc.details() or "") from None
        _fail(f"{target}: {exc.code().name}: {exc.details()}", exits.for_rpc_error(exc))
    except (OSError, ValueError) as exc:
        _fail(str(exc))


def _card_line(card: dict | None) -> str:
    if card is None:
        return "not available here (the given or bundled model did not make this collection)"
    return f"{card['name']} {card['version']}, {card['embedding_dim']}-d, {card['initialisation']}"


def _print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2))


def _fail(message: str, code: int = exits.FAILED) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def proto_command(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write ecgsearch/v1/search.proto under.")
    ],
    as_json: AsJson = False,
) -> None:
    """Write the service's wire contract (the .proto shipped in the package) for a client in another language.

    Examples:

        ecgsearch proto --out ./contracts
        grpc_tools.protoc -I ./contracts --python_out=. ./contracts/ecgsearch/v1/search.proto
    """
    from importlib import resources

    relative = Path("ecgsearch", "v1", "search.proto")
    source = resources.files("ecgsearch.proto").joinpath(*relative.parts)
    target = out / relative
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
    except OSError as exc:
        typer.echo(f"error: cannot write {target}: {exc.strerror}", err=True)
        raise typer.Exit(exits.FAILED) from exc
    emit({"out": str(target)}, str(target), as_json)


def register(app: typer.Typer, collection: typer.Typer) -> None:
    """Mount ``stats`` and ``proto`` on the root app and the collection commands on ``collection``."""
    collection.command("info")(info_command)
    collection.command("get")(get_command)
    collection.command("alias")(alias_command)
    app.command("stats")(stats_command)
    app.command("proto")(proto_command)
