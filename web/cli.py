"""``ecgsearch web``: the viewer, served by waitress, talking to a running search service.

Flask, waitress and grpc are imported inside the command, so ``ecgsearch --help`` stays light.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.tokens import TokenFile, resolve
from ecgsearch.ecg.bounds import MAX_FILE_BYTES

THREADS = 4


def web_command(
    target: Annotated[
        str, typer.Option(envvar="ECGSEARCH_TARGET", help="The search service, host:port.")
    ] = "127.0.0.1:50051",
    token_file: TokenFile = None,
    host: Annotated[str, typer.Option(help="Listen address of the viewer.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port of the viewer (0: any free).")] = 8080,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a non-loopback --host. The viewer has no login of its own: put it behind one.",
        ),
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            envvar="ECGSEARCH_ALLOWED_HOSTS",
            help="A name the viewer answers to in the Host header (repeatable; env: space-separated), "
            "besides the loopback names and --host: the name users or the proxy use.",
        ),
    ] = None,
    max_upload_mb: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=MAX_FILE_BYTES / 1_000_000,
            help="Largest uploaded file, in MB (10^6 bytes); at most the service's bound on a file.",
        ),
    ] = 10.0,
    timeout: Annotated[float, typer.Option(min=0.1, help="Deadline of each call to the service, s.")] = 10.0,
    tls: Annotated[bool, typer.Option("--tls", help="Connect to the service with TLS.")] = False,
    ca: Annotated[Path | None, typer.Option("--ca", help="CA certificate PEM for TLS.")] = None,
    cert: Annotated[Path | None, typer.Option("--cert", help="Client certificate PEM (mutual TLS).")] = None,
    key: Annotated[Path | None, typer.Option("--key", help="Client private key PEM (mutual TLS).")] = None,
) -> None:
    """Serve the ECG viewer: search by record or file, neighbours drawn on the ECG grid.

    The viewer is a client of a running `ecgsearch serve` with its own token (from --token-file or
    ECGSEARCH_TOKEN; never on the command line). It listens on loopback unless --allow-remote.
    Uploaded files are read here and their samples sent to the service. It answers only a Host
    header naming it (loopback names, --host, each --allowed-host: no DNS rebinding) and refuses
    POSTs from another origin (403). Exit status (the table in docs/commands.md): 2 a refused
    setting, 1 the viewer cannot start.

    Examples:

        ecgsearch web --target 127.0.0.1:50051 --token-file ~/.config/ecgsearch/viewer.token

        ECGSEARCH_TOKEN_FILE=/run/secrets/viewer ecgsearch web --target search:50051 --tls --ca ca.pem

        ecgsearch web --host 0.0.0.0 --allow-remote --allowed-host ecg-viewer.hospital.example
    """
    from ecgsearch.search.serving.loopback import is_loopback

    if not is_loopback(host) and not allow_remote:
        raise typer.BadParameter(
            f"{host} is not a loopback address; the viewer has no login, so pass --allow-remote "
            "only behind an authenticating proxy",
            param_hint="--host",
        )
    hosts = _allowed_hosts(host, allowed_host or [])
    token = resolve(token_file)
    try:
        from waitress.server import create_server

        from ecgsearch.search.client import EcgSearchClient
        from ecgsearch.web.app import create_app
    except ImportError as exc:
        print(f"error: the viewer needs the web extra (pip install 'ecgsearch[web]'): {exc}", file=sys.stderr)
        raise typer.Exit(exits.FAILED) from None
    try:
        client = EcgSearchClient(
            target, token=token, tls=tls, root_cert=ca, client_cert=cert, client_key=key, timeout=timeout
        )
    except (ValueError, OSError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--cert/--key/--ca") from None
    app = create_app(client, target=target, max_upload_mb=max_upload_mb, allowed_hosts=hosts)
    try:
        server = create_server(app, host=host, port=port, threads=THREADS, ident="ecgsearch-web")
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port} ({exc.strerror or exc})", file=sys.stderr)
        raise typer.Exit(exits.FAILED) from None
    shown = f"[{host}]" if ":" in host else host
    bound = getattr(server, "effective_port", port)  # one socket; "localhost" may bind several
    print(
        f"ecgsearch web: http://{shown}:{bound}/ (search service {target})",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        client.close()


def _allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """The Host names to answer; a wildcard --host needs at least one --allowed-host."""
    from ecgsearch.web.guard import WILDCARDS, allowed_hosts

    if host.strip("[]") in WILDCARDS and not extra:
        raise typer.BadParameter(
            f"listening on {host or 'every address'}, the viewer cannot tell which name users reach it "
            "by: give it with --allowed-host (e.g. the proxy's host name)",
            param_hint="--allowed-host",
        )
    try:
        return sorted(allowed_hosts(host, extra))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--allowed-host") from None


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount ``web`` on the root app (no benchmark or evaluation commands)."""
    app.command("web")(web_command)
