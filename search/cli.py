"""``ecgsearch serve`` and ``query``: thin commands over the search service.

Heavy libraries (grpc, onnxruntime, qdrant) are imported inside the commands, so
``ecgsearch --help`` and shell completion stay instant.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.options import command_of
from ecgsearch.cli.tokens import TokenFile, resolve
from ecgsearch.ecg.formats import DISPLAY_LIST

if TYPE_CHECKING:
    from ecgsearch.ecg.schema import SearchFilter
    from ecgsearch.search.api import SearchResult

DEFAULT_K = 10  # the service's default (search.serving.service.DEFAULT_K), without importing it here


def _error(message: str) -> None:
    """One red line on stderr, unwrapped at any width (rich is imported here, not at start-up)."""
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {message}", highlight=False)


@dataclass(frozen=True)
class ServeOptions:
    """The options of `serve_command`, one field per option."""

    store: Annotated[
        Path | None,
        typer.Option(
            help="Embedded store directory (env ECGSEARCH_STORE_PATH; default: $ECGSEARCH_HOME/store)."
        ),
    ] = None
    qdrant_url: Annotated[
        str | None,
        typer.Option(help="Qdrant server instead of an embedded store (env ECGSEARCH_QDRANT_URL)."),
    ] = None
    collection: Annotated[
        str | None, typer.Option(help="Collection (env ECGSEARCH_COLLECTION; default: ecgs).")
    ] = None
    model: Annotated[
        Path | None, typer.Option(help="ONNX encoder (env ECGSEARCH_MODEL; default: bundled).")
    ] = None
    host: Annotated[
        str | None, typer.Option(help="Listen address (env ECGSEARCH_HOST; default: 127.0.0.1).")
    ] = None
    port: Annotated[int | None, typer.Option(help="Port (env ECGSEARCH_PORT; default: 50051).")] = None
    tokens_file: Annotated[
        Path | None,
        typer.Option(
            help="Callers file: 'name scopes sites sha256:<token digest>' per line, re-read when it "
            "changes (env ECGSEARCH_TOKENS_FILE; format in docs/deploy.md). Plain tokens, each a "
            "caller 'default' with scope search, may instead come comma-separated in env "
            "ECGSEARCH_TOKENS."
        ),
    ] = None
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Allow serving without tokens (local use only) (env ECGSEARCH_INSECURE)."
        ),
    ] = False
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate PEM (env ECGSEARCH_TLS_CERT).")] = (
        None
    )
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key PEM (env ECGSEARCH_TLS_KEY).")] = None
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(help="CA that signs client certificates: mutual TLS (env ECGSEARCH_TLS_CLIENT_CA)."),
    ] = None
    max_message_mb: Annotated[
        float | None, typer.Option(help="Largest message in MiB (env ECGSEARCH_MAX_MESSAGE_MB; default: 16).")
    ] = None
    max_workers: Annotated[
        int | None,
        typer.Option(
            help="Request threads (env ECGSEARCH_MAX_WORKERS; default: --max-concurrent-rpcs + 1/8, "
            "at least + 4)."
        ),
    ] = None
    max_concurrent_rpcs: Annotated[
        int | None,
        typer.Option(
            help="Calls in progress before RESOURCE_EXHAUSTED (env ECGSEARCH_MAX_CONCURRENT_RPCS; "
            "default: 64)."
        ),
    ] = None
    heavy_budget_mb: Annotated[
        float | None,
        typer.Option(
            help="MiB of replies, samples and files that heavy calls may handle at once; more wait their "
            "turn while light calls go on (env ECGSEARCH_HEAVY_BUDGET_MB; default: 2 x --max-message-mb)."
        ),
    ] = None
    allow_insecure_remote: Annotated[
        bool,
        typer.Option(
            "--allow-insecure-remote",
            help="With --insecure, allow a non-loopback --host (refused otherwise) "
            "(env ECGSEARCH_ALLOW_INSECURE_REMOTE).",
        ),
    ] = False
    ecg_roots: Annotated[
        str | None,
        typer.Option(
            help="Folders (':'-separated) holding stored records' files, for GetEcg "
            "(env ECGSEARCH_ECG_ROOTS)."
        ),
    ] = None
    site_secret_file: Annotated[
        Path | None,
        typer.Option(
            help="Site secret keying pushed ECGs' patient pseudonyms (UpsertEcgs), the file ingest uses "
            "(env ECGSEARCH_SITE_SECRET_FILE; default for an embedded store: <store>/site-secret)."
        ),
    ] = None
    archive_path: Annotated[
        Path | None,
        typer.Option(
            help="Where pushed ECGs' signals are kept for GetEcg (env ECGSEARCH_ARCHIVE_PATH; default: "
            "<store>/archive; a Qdrant server needs it for pushes)."
        ),
    ] = None
    log_level: Annotated[
        str | None,
        typer.Option(help="DEBUG, INFO, WARNING or ERROR (env ECGSEARCH_LOG_LEVEL; default: INFO)."),
    ] = None
    audit_log: Annotated[
        str | None,
        typer.Option(
            help="Append one JSON audit line per request to this file, '-' for stdout "
            "(env ECGSEARCH_AUDIT_LOG; default: none). A call whose line cannot be written is refused "
            "(UNAVAILABLE) and health says NOT_SERVING until the file takes lines again."
        ),
    ] = None
    audit_fail_open: Annotated[
        bool,
        typer.Option(
            "--audit-fail-open",
            help="Answer calls even when their audit line cannot be written (each lost line is logged) "
            "(env ECGSEARCH_AUDIT_FAIL_OPEN).",
        ),
    ] = False
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (env ECGSEARCH_METRICS_PORT).",
        ),
    ] = None
    cpus: Annotated[
        str | None,
        typer.Option(
            help="Run on these CPUs only, as taskset -c lists them: '1', '0-3' (env ECGSEARCH_CPUS; "
            "default: every CPU). One core answers an embedded store's searches sooner: docs/deploy.md.",
        ),
    ] = None


@command_of(ServeOptions)
def serve_command(o: ServeOptions) -> None:
    """Serve similarity search over gRPC (ecgsearch.v1.EcgSearchService, health, reflection).

    Runs until SIGTERM. Every option also reads its ECGSEARCH_* environment variable; the command line
    wins. Clients need a bearer token named in the callers file (--tokens-file), which gives each
    caller its scopes (search, write, admin) and the sites it may see, unless --insecure, which is
    refused on a non-loopback --host without --allow-insecure-remote. Logs are JSON lines on stderr,
    one per request, with its request id, caller and latency; --audit-log writes the audit trail
    (who asked for which records) to its own sink.

    Read from the environment only: ECGSEARCH_TOKENS (comma-separated plain tokens, each the caller
    'default' with scope search over every site: the quickstart's one-token setup, kept beside the
    callers file, which names callers and limits their scopes and sites), ECGSEARCH_HOME,
    ECGSEARCH_QDRANT_API_KEY, ECGSEARCH_STATS_REFRESH_S (seconds between collection statistics reads,
    default 30), ECGSEARCH_GRACE_S (seconds calls get to finish on shutdown, default 10).

    Exit status (the table in docs/commands.md): 2 a bad option value; 1 the server cannot start
    (port in use, TLS files, store, model).

    Examples:

        ecgsearch serve --store ./store --tokens-file ./tokens --audit-log ./audit.jsonl --metrics-port 9090

        ecgsearch serve --store ./store --insecure --port 50052

        ECGSEARCH_TOKENS_FILE=/run/secrets/tokens ecgsearch serve --qdrant-url http://qdrant:6333 \\
            --host 0.0.0.0 --tls-cert server.pem --tls-key server.key
    """
    from pydantic import ValidationError

    from ecgsearch.search.serving.settings import ServiceSettings

    given = dataclasses.asdict(o)
    given["store_path"] = given.pop("store")
    for flag in ("insecure", "allow_insecure_remote", "audit_fail_open"):  # unset: the environment's
        given[flag] = given[flag] or None
    try:
        settings = ServiceSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise typer.BadParameter(_describe(exc)) from None
    from ecgsearch.ecg.schema import StoreUnavailable
    from ecgsearch.export.runtime import ModelError
    from ecgsearch.search.engine.store import StoreError
    from ecgsearch.search.serving.server import configure_logging, serve

    configure_logging(settings.log_level)
    try:
        serve(settings)
    except (ValueError, OSError, StoreUnavailable, StoreError, ModelError) as exc:
        _error(str(exc))
        raise typer.Exit(exits.FAILED) from None


@dataclass(frozen=True)
class QueryOptions:
    """The options of `query_command`, one field per option."""

    target: Annotated[str, typer.Option(envvar="ECGSEARCH_TARGET", help="Server host:port.")] = (
        "127.0.0.1:50051"
    )
    token_file: TokenFile = None
    record_id: Annotated[str | None, typer.Option(help="Search by a stored record, e.g. ptbxl:17.")] = None
    wfdb: Annotated[Path | None, typer.Option(help="Search by a WFDB record (path without extension).")] = (
        None
    )
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            help=f"Search by an ECG file: {DISPLAY_LIST} (sent as its bytes, read by the server) or a "
            "WFDB record (read here, sent raw).",
        ),
    ] = None
    k: Annotated[int, typer.Option(help="Number of neighbours (1-1000).")] = DEFAULT_K
    diagnosis: Annotated[list[str] | None, typer.Option(help="Keep neighbours with any of these codes.")] = (
        None
    )
    exclude_diagnosis: Annotated[list[str] | None, typer.Option(help="Drop neighbours with these codes.")] = (
        None
    )
    age_min: Annotated[int | None, typer.Option(help="Minimum age.")] = None
    age_max: Annotated[int | None, typer.Option(help="Maximum age.")] = None
    sex: Annotated[str | None, typer.Option(help="M or F.")] = None
    measure: Annotated[
        list[str] | None,
        typer.Option(
            help="Keep neighbours whose machine measurement is in range: NAME>=X, NAME<=X or NAME=X..Y "
            "(a stored measurement such as qrs_ms, qtc_ms or r_axis, 'qrs' = qrs_ms; an unknown NAME is "
            "refused with the list of all)."
        ),
    ] = None
    dataset: Annotated[list[str] | None, typer.Option(help="Keep neighbours from these datasets.")] = None
    exclude_patient: Annotated[
        list[str] | None, typer.Option(help="Drop neighbours of these patient ids.")
    ] = None
    include_same_patient: Annotated[
        bool,
        typer.Option(
            "--include-same-patient", help="With --record-id: keep the record's patient's other ECGs."
        ),
    ] = False
    include_duplicates: Annotated[
        bool,
        typer.Option(
            "--include-duplicates", help="Keep ECGs recorded at ingest as copies of another (duplicate_of)."
        ),
    ] = False
    include_query_record: Annotated[
        bool,
        typer.Option(
            "--include-query-record",
            help="With --wfdb/--file: keep the stored ECG that is the query itself (found by content, "
            "named as query_record_id) and its copies.",
        ),
    ] = False
    similar_by: Annotated[
        str | None,
        typer.Option(
            "--similar-by",
            help="Similar by what: a view (waveform, rhythm, voltage), a blend, e.g. "
            "'waveform=1,rhythm=0.5', or 'blend': the waveform's candidates reranked by rhythm when it "
            "is irregular and by voltage (default: the served vector).",
        ),
    ] = None
    threshold: Annotated[float | None, typer.Option(help="Minimum cosine similarity.")] = None
    exact: Annotated[bool, typer.Option("--exact", help="Exact search instead of the index.")] = False
    summary: Annotated[bool, typer.Option("--summary", help="Add the diagnosis concentration summary.")] = (
        False
    )
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False
    tls: Annotated[bool, typer.Option("--tls", help="Connect with TLS (system roots).")] = False
    ca: Annotated[Path | None, typer.Option("--ca", "--root-cert", help="CA certificate PEM for TLS.")] = None
    cert: Annotated[Path | None, typer.Option("--cert", help="Client certificate PEM (mutual TLS).")] = None
    key: Annotated[Path | None, typer.Option("--key", help="Client private key PEM (mutual TLS).")] = None
    timeout: Annotated[float, typer.Option(help="Deadline in seconds.")] = 30.0


@command_of(QueryOptions)
def query_command(o: QueryOptions) -> None:
    """Find the ECGs most similar to a stored record or to an ECG file, on a running server.

    A hospital export (--file) is sent as its bytes and read by the server; a WFDB record is read here
    and sent raw; either way the server prepares and encodes it like stored ECGs.
    By record, the record itself and its patient's other ECGs are left out (as in the evaluation)
    unless --include-same-patient. Diagnosis codes: SNOMED CT ids, Challenge abbreviations (AF, RBBB)
    or PTB-XL SCP codes (AFIB, SCP:IMI).

    The bearer token comes from --token-file or env ECGSEARCH_TOKEN, never the command line.
    Exit status (the table in docs/commands.md): 0 found; 2 invalid argument; 4 not authenticated or
    not permitted; 5 record not found; 6 server unavailable, overloaded or past the deadline; 1 else.

    Examples:

        ecgsearch query --target localhost:50051 --token-file ./token --record-id ptbxl:17 --k 5

        ECGSEARCH_TOKEN=secret ecgsearch query --wfdb ./records/E00001 --diagnosis AF --summary

        ecgsearch query --file export.xml --measure "qrs_ms>=120" --measure "qtc_ms>=480"

        ecgsearch query --target host:50051 --ca ca.pem --cert me.pem --key me.key --record-id ptbxl:17
    """
    from pydantic import ValidationError

    from ecgsearch.ecg.schema import SearchFilter

    if sum(x is not None for x in (o.record_id, o.wfdb, o.file)) != 1:
        raise typer.BadParameter("give exactly one of --record-id, --wfdb or --file")
    if o.file is not None and (o.file.suffix.lower() == ".hea" or o.file.with_suffix(".hea").is_file()):
        o = dataclasses.replace(o, wfdb=o.file.with_suffix(""), file=None)
    if bool(o.cert) != bool(o.key):
        raise typer.BadParameter("--cert and --key go together (mutual TLS)")
    fields: dict[str, Any] = {  # raw option values: SearchFilter validates them
        "diagnoses_any": o.diagnosis or [],
        "diagnoses_none": o.exclude_diagnosis or [],
        "age_min": o.age_min,
        "age_max": o.age_max,
        "sex": o.sex.upper() if o.sex else None,
        "datasets": o.dataset or [],
        "exclude_patient_ids": o.exclude_patient or [],
        "measurements": parse_measures(o.measure or []),
    }
    try:
        flt = SearchFilter(**fields)
    except ValidationError as exc:
        raise typer.BadParameter(_describe(exc)) from None
    result = _search(o, flt)
    if o.as_json:
        print(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        print_result(result)


def _search(o: QueryOptions, flt: SearchFilter) -> SearchResult:
    """One search on the server; a failure is one line on stderr and the documented exit code."""
    import grpc

    from ecgsearch.ecg.signals import SignalError
    from ecgsearch.search.client import EcgSearchClient

    options: dict[str, Any] = {
        "k": o.k,
        "filter": flt,
        "score_threshold": o.threshold,
        "exact": o.exact,
        "with_summary": o.summary,
        "include_duplicates": o.include_duplicates,
        "include_query_record": o.include_query_record,
        "similar_by": _similar_by(o.similar_by),
    }
    connection: dict[str, Any] = {
        "token": resolve(o.token_file),
        "tls": o.tls,
        "root_cert": o.ca,
        "client_cert": o.cert,
        "client_key": o.key,
        "timeout": o.timeout,
    }
    try:
        with EcgSearchClient(o.target, **connection) as client:
            if o.record_id is not None:
                return client.search_by_record(
                    o.record_id, include_same_patient=o.include_same_patient, **options
                )
            if o.file is not None:
                return client.search_by_file(o.file, **options)
            assert o.wfdb is not None
            return client.search_by_wfdb(o.wfdb, **options)
    except grpc.RpcError as exc:
        _error(f"{exc.code().name}: {exc.details()}")
        raise typer.Exit(exits.for_rpc_error(exc)) from None
    except SignalError as exc:
        _error(str(exc))
        raise typer.Exit(exits.USAGE) from None
    except (OSError, ValueError) as exc:
        _error(str(exc))
        raise typer.Exit(exits.FAILED) from None


def _similar_by(text: str | None) -> tuple[tuple[str, float], ...] | None:
    from ecgsearch.ecg.schema import InvalidQuery, parse_similar_by

    if text is None:
        return None
    try:
        return parse_similar_by(text)
    except InvalidQuery as exc:
        raise typer.BadParameter(str(exc), param_hint="--similar-by") from None


_MEASURE = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|=)\s*(-?\d+(?:\.\d*)?)(?:\s*\.\.\s*(-?\d+(?:\.\d*)?))?\s*$")
_MEASURE_ALIASES = {"rate": "ventricular_rate_bpm", "hr": "ventricular_rate_bpm", "qtc": "qtc_ms"}


def parse_measures(texts: list[str]) -> list[dict[str, object]]:
    """'qrs_ms>=120', 'qtc<=480', 'pr_ms=120..200' -> one range per measurement (bounds combined)."""
    from ecgsearch.ecg.schema import MEASUREMENTS

    ranges: dict[str, dict[str, object]] = {}
    for text in texts:
        m = _MEASURE.match(text)
        if m is None:
            raise typer.BadParameter(f"--measure {text!r}: write NAME>=X, NAME<=X or NAME=X..Y")
        name, op, low, high = m.groups()
        name = name.lower()
        name = _MEASURE_ALIASES.get(name, name if name in MEASUREMENTS else f"{name}_ms")
        if name not in MEASUREMENTS:
            raise typer.BadParameter(
                f"--measure {text!r}: unknown measurement; one of {', '.join(MEASUREMENTS)}"
            )
        entry = ranges.setdefault(name, {"measurement": name})
        if op == ">=":
            entry["min"] = float(low)
        elif op == "<=":
            entry["max"] = float(low)
        else:
            entry["min"], entry["max"] = float(low), float(high if high is not None else low)
    return list(ranges.values())


def _describe(exc: Exception) -> str:
    from ecgsearch.search.api import describe_validation

    return describe_validation(exc)  # type: ignore[arg-type]


def print_result(result: SearchResult) -> None:
    """Hits as a table; the summary, when present, as a second one."""
    from rich.console import Console
    from rich.table import Table

    from ecgsearch.ecg import codes

    console = Console()
    if result.query_record_id is not None:
        console.print(f"The query ECG is stored as {result.query_record_id} (left out of the neighbours).")
    hits = Table("#", "record", "score", "age", "sex", "diagnoses", title="Nearest ECGs")
    for rank, hit in enumerate(result.hits, 1):
        p = hit.payload
        names = ", ".join(codes.describe(c) for c in p.diagnoses)
        hits.add_row(str(rank), hit.record_id, f"{hit.score:.4f}", str(p.age or ""), p.sex or "", names)
    console.print(hits)
    if result.summary is not None:
        console.print(summary_table(result.summary))


def summary_table(summary: Any) -> Any:
    """The diagnoses among the neighbours, by ``search.summary.evidence`` (the one highlight rule):
    count of n, base rate, ratio over its 95% interval, bold and marked * only where the rule holds.
    Fits 80 columns with whole headers (``no_wrap`` columns keep their width; the description wraps)."""
    from rich.table import Table

    from ecgsearch.search.summary import RULE, evidence

    n = summary.n_neighbours
    table = Table(
        title=f"Diagnoses among {n} neighbours", caption=f"{RULE} Marked *.", caption_justify="left"
    )
    table.add_column("code", no_wrap=True)
    table.add_column("description", min_width=len("description"), overflow="fold")
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("base rate", justify="right", no_wrap=True)
    table.add_column("ratio (95%)", justify="right", no_wrap=True)  # the interval on its second line
    table.add_column("in query", no_wrap=True)
    for row in summary.diagnoses:
        e = evidence(row, n)
        if e.ratio is None or e.low is None or e.high is None:
            ratio = "-"
        else:
            mark = " *" if e.highlighted else "  "
            ratio = f"×{e.ratio:.1f}{mark}\n({e.low:.1f}–{e.high:.1f})  "
        table.add_row(
            row.code,
            row.description,
            f"{e.count}/{e.n}",
            f"{e.base_rate:.1%}" if e.base_rate >= 0.01 else f"{e.base_rate:.2%}",
            f"[bold]{ratio}[/bold]" if e.highlighted else ratio,
            "yes" if row.in_query else "",
        )
    return table


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
    app.command("serve")(serve_command)
    app.command("query")(query_command)
