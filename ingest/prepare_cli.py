"""``ecgsearch prepare``: a thin command over ingest.prepare, which it imports when it runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

import ecgsearch.cli.exits as exits


def prepare_command(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="SOURCE",
            help="PTB-XL folder, manifest .csv (path[,record_id,dataset]) or folder of WFDB records.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Archive folder (shards, index.json, rejects.csv).")],
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="ECGs per shard file.")] = 4096,
    workers: Annotated[
        int, typer.Option(min=0, help="Processes reading and preparing ECGs (0: in-process).")
    ] = 2,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name for every record (as for ingest).")
    ] = None,
    prefer_hr: Annotated[
        bool, typer.Option("--prefer-hr", help="PTB-XL: read the 500 Hz file where present.")
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records of SOURCE.")] = None,
    site_secret_file: Annotated[
        Path | None,
        typer.Option(
            envvar="ECGSEARCH_SITE_SECRET_FILE",
            help="File holding the site secret that keys patient pseudonyms (default: OUT/site-secret, "
            "generated once, 0600).",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the run summary as one JSON document on stdout.")
    ] = False,
) -> None:
    """Prepare the ECGs of SOURCE into sharded files that `ecgsearch train --shards` streams from.

    Each ECG is read and prepared exactly as `ingest` prepares it (12 x 1000 float32) and written into
    memory-mappable numpy shards of --shard-size ECGs, with an index of record id, dataset, patient
    pseudonym, fold and labels. A killed or repeated run keeps the complete shards and continues after
    them. Exit status (the table in docs/commands.md): 0 every record prepared; 3 finished, some
    rejected (OUT/rejects.csv); 1 failed; 2 bad usage (SOURCE missing or without ECGs).

    Examples:

        ecgsearch prepare ../shared/data/ptb-xl --out archive/ptbxl

        ecgsearch prepare ../shared/data/challenge --out archive/challenge --shard-size 1024 --json
    """
    from ecgsearch.ecg.identity import Pseudonymizer, SecretError, default_secret, read_secret
    from ecgsearch.ecg.shards import ArchiveError
    from ecgsearch.ingest.prepare import prepare_archive
    from ecgsearch.ingest.sources import SourceError, enumerate_source

    try:
        enumerate_source(source, dataset=dataset)  # a missing source fails before anything is written
        secret = read_secret(site_secret_file) if site_secret_file else default_secret(out)
        summary = prepare_archive(
            source,
            out,
            Pseudonymizer(secret),
            shard_size=shard_size,
            workers=workers,
            dataset=dataset,
            prefer_hr=prefer_hr,
            limit=limit,
        )
    except SourceError as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCE") from None
    except (ArchiveError, SecretError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exits.FAILED) from None
    if summary.shards == 0:
        raise typer.BadParameter(f"{source}: no ECGs found; nothing to prepare", param_hint="SOURCE")
    if as_json:
        typer.echo(json.dumps(summary.__dict__ | {"ok": not summary.rejected}, indent=2))
    else:
        typer.echo(
            f"{summary.rows} ECGs in {summary.shards} shards under {summary.out} "
            f"({summary.rows_written} written now in {summary.shards_written} shards, the rest kept), "
            f"{summary.rejected} rejected, {summary.seconds:.1f} s"
        )
        if summary.rejected:
            typer.echo(f"rejects report: {summary.rejects_path}", err=True)
    raise typer.Exit(exits.REJECTS if summary.rejected else exits.OK)


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
    app.command("prepare")(prepare_command)
