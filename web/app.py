"""The viewer's pages: search by stored record or uploaded file, neighbours on the ECG grid, comparison.

Every page asks the running search service through ``EcgSearchClient`` with the viewer's own
credentials; nothing here opens a store. Routes unpack the request, call the client, draw, and
render a template; failures become one message on the page (``errors.describe_rpc_error``).

``/healthz`` (liveness: the viewer process answers) and ``/readyz`` (readiness: the search service
answers its gRPC health check) are plain text for probes; they carry no clinical data, so they answer
whatever ``Host`` a probe sends (a kubelet names the pod's IP).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
from flask import Flask, Response, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response as BaseResponse

from ecgsearch.ecg import codes, formats, signals
from ecgsearch.ecg.schema import SIMILAR_BY, CollectionInfo, EcgPayload, Hit
from ecgsearch.search.api import RecordedEcg
from ecgsearch.search.client import EcgSearchClient
from ecgsearch.search.summary import RULE as SUMMARY_RULE
from ecgsearch.search.summary import evidence
from ecgsearch.web import charts, ecgdraw, guard, measures, peaks
from ecgsearch.web.errors import describe_rpc_error
from ecgsearch.web.forms import (
    MAX_ID_CHARS,
    MAX_K,
    FormError,
    SearchForm,
    describe_filter,
    option_text,
    parse_search,
)
from ecgsearch.web.uploads import HeldEcg, UploadError, Uploads, read_upload

INFO_TTL_S = 60.0
CSP = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
FETCH_THREADS = 4  # neighbours' recordings are fetched in parallel: each GetEcg reads one file on the service
REPORT_NEIGHBOURS = 6  # neighbours on the one-page printable report
REPORT_ROWS = 6  # diagnoses in its table, most frequent among the neighbours first
READY_TIMEOUT_S = 2.0  # /readyz: the service's health check must answer within this
PROBES = ("/healthz", "/readyz")  # answered for any Host: no clinical data, and probes name the pod's IP


@dataclass(frozen=True)
class Diagnosis:
    code: str
    name: str


@dataclass(frozen=True)
class Neighbour:
    rank: int
    hit: Hit
    diagnoses: list[Diagnosis]
    svg: Markup | None
    problem: str | None


class Viewer:
    """The client, the collection facts (refreshed every ``INFO_TTL_S``) and the held uploads."""

    def __init__(self, client: EcgSearchClient, target: str) -> None:
        self.client = client
        self.target = target
        self.uploads = Uploads()
        self._info: tuple[float, CollectionInfo] | None = None
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(FETCH_THREADS, thread_name_prefix="get-ecg")

    def info(self) -> CollectionInfo:
        with self._lock:
            if self._info is not None and time.monotonic() - self._info[0] < INFO_TTL_S:
                return self._info[1]
        info = self.client.info()
        with self._lock:
            self._info = (time.monotonic(), info)
        return info

    def diagnosis_options(self) -> list[tuple[Diagnosis, int]]:
        """Every code stored in the collection with its name and count, by name."""
        counts = self.info().diagnosis_counts
        options = [(_diagnosis(code), n) for code, n in counts.items()]
        return sorted(options, key=lambda o: (o[0].name.lower(), o[0].code))

    def diagnosis_names(self) -> dict[str, str]:
        """The collection's codes -> names, for reading typed diagnoses; empty when the service is down
        (the typed text then goes to the service, which says what it cannot resolve)."""
        try:
            return {dx.code: dx.name for dx, _ in self.diagnosis_options()}
        except grpc.RpcError:
            return {}

    def recordings(self, record_ids: Sequence[str]) -> list[RecordedEcg | grpc.RpcError]:
        """Each record as its file holds it, at the file's own rate (what is drawn), or the error that kept
        it back (fetched in parallel)."""

        def one(record_id: str) -> RecordedEcg | grpc.RpcError:
            try:
                return self.client.recorded_ecg(record_id)
            except grpc.RpcError as error:
                return error

        return list(self._pool.map(one, record_ids))


def _diagnosis(code: str) -> Diagnosis:
    return Diagnosis(code, codes.describe(code))


def _age(payload: EcgPayload) -> str:
    if payload.age_over_89:
        return "90 or over"
    return str(payload.age) if payload.age is not None else "unknown"


def _sex(payload: EcgPayload) -> str:
    return {"M": "male", "F": "female"}.get(payload.sex or "", "unknown")


def _svg_id(record_id: str, prefix: str) -> str:
    """An id safe in SVG/HTML for a record's drawing (pattern ids must be unique per page)."""
    return prefix + "".join(c if c.isalnum() else "-" for c in record_id)


def create_app(
    client: EcgSearchClient,
    *,
    target: str,
    max_upload_mb: float = 10.0,
    allowed_hosts: Collection[str] = guard.LOOPBACK_HOSTS,
) -> Flask:
    """The Flask app over one client. ``target`` is only named in messages; 1 MB is 10^6 bytes.

    Only requests whose ``Host`` is in ``allowed_hosts`` are answered (400 otherwise), and POSTs from
    another origin are refused (403): ``ecgsearch.web.guard``.
    """
    max_upload_bytes = int(max_upload_mb * 1_000_000)
    hosts = frozenset(guard.check_host_name(h) for h in allowed_hosts)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_upload_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = max_upload_bytes
    viewer = Viewer(client, target)
    app.extensions["ecgsearch_viewer"] = viewer
    upload_mb = max_upload_mb

    app.jinja_env.globals.update(
        age=_age,
        sex=_sex,
        measurements=measures.shown,
        device=measures.device,
        measure_specs=measures.SPECS,
        option_text=option_text,
        describe=codes.describe,
        summary_rule=SUMMARY_RULE,
        max_k=MAX_K,
        max_upload_mb=f"{upload_mb:g}",
        file_formats=formats.DISPLAY_LIST,
        target=target,
    )

    def page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
        """Render with the form's diagnosis options; a service failure there becomes the page's error."""
        problem = context.pop("error", None)
        try:
            context.setdefault("options", viewer.diagnosis_options())
            context.setdefault("info", viewer.info())
        except grpc.RpcError as error:
            code, message = describe_rpc_error(error, target)
            context.setdefault("options", [])
            context.setdefault("info", None)
            problem, status = problem or message, status if problem else code
        context.setdefault("form", SearchForm())
        return render_template(template, error=problem, views=list(SIMILAR_BY), **context), status

    @app.before_request
    def known_host_same_origin() -> Response | None:
        """DNS rebinding and cross-site writes are refused before any route runs (never echoed)."""
        if request.path in PROBES and request.method in ("GET", "HEAD"):
            return None
        host = request.headers.get("Host")
        if not guard.host_allowed(host, hosts):
            return Response(
                "Bad request: this viewer is not known by that Host name.\n", 400, mimetype="text/plain"
            )
        if request.method not in ("GET", "HEAD", "OPTIONS") and guard.cross_origin(
            request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), host
        ):
            return Response("Forbidden: a request from another origin.\n", 403, mimetype="text/plain")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        """Pages show clinical data: not cached, not framed, no scripts or requests to other origins."""
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        # same-origin, not no-referrer: URLs (record ids) still never leave the viewer, and the browser keeps
        # the real Origin on its own form posts (no-referrer sends "null", which the guard refuses).
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_: RequestEntityTooLarge) -> tuple[str, int]:
        return page("index.html", 413, error=f"The file is larger than {upload_mb:g} MB; nothing was read.")

    @app.get("/healthz")
    def healthz() -> Response:
        """Liveness: the viewer answers. Never asks the service (a service outage is not the viewer's)."""
        return Response("ok\n", 200, mimetype="text/plain")

    @app.get("/readyz")
    def readyz() -> Response:
        """Readiness: 200 while the search service answers its gRPC health check SERVING, else 503."""
        if client.serving(timeout=READY_TIMEOUT_S):
            return Response("ready\n", 200, mimetype="text/plain")
        return Response("not ready: the search service does not answer\n", 503, mimetype="text/plain")

    @app.get("/")
    def index() -> tuple[str, int]:
        return page("index.html")

    @app.get("/search")
    def search() -> tuple[str, int] | Response:
        try:
            form = parse_search(request.args, viewer.diagnosis_names())
        except FormError as exc:
            kept = SearchForm(record_id=request.args.get("record_id", "")[:MAX_ID_CHARS].strip())
            return page("index.html", 400, error=f"Invalid filter: {exc}", form=kept)
        if not form.record_id and not form.upload:
            return page("index.html", 400, error="Enter a stored record id or upload an ECG file.", form=form)
        try:
            return page("results.html", **_results(viewer, form))
        except grpc.RpcError as error:
            status, message = describe_rpc_error(error, target)
            return page("index.html", status, error=message, form=form)
        except UploadError as exc:
            return page("index.html", 410, error=str(exc), form=form)

    @app.get("/report")
    def report() -> tuple[str, int] | Response:
        """One printable page: the query, its top neighbours, the diagnoses among them with counts, the
        filter, the model version and the time of the search."""
        try:
            form = parse_search(request.args, viewer.diagnosis_names())
        except FormError as exc:
            return page("index.html", 400, error=f"Invalid filter: {exc}")
        if not form.record_id and not form.upload:
            return page("index.html", 400, error="A report needs a stored record id or an upload.", form=form)
        try:
            context = _results(viewer, form)
        except grpc.RpcError as error:
            status, message = describe_rpc_error(error, target)
            return page("index.html", status, error=message, form=form)
        except UploadError as exc:
            return page("index.html", 410, error=str(exc), form=form)
        context["neighbours"] = context["neighbours"][:REPORT_NEIGHBOURS]
        searched_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        return page("report.html", searched_at=searched_at, k=form.k, report_rows=REPORT_ROWS, **context)

    @app.post("/upload")
    def upload() -> tuple[str, int] | BaseResponse:
        """The start page's one form: an uploaded file, or (button "record") a stored record id, each
        searched with the filter set above it; answered by a redirect to the results page."""
        file = request.files.get("ecg")
        try:
            form = parse_search(request.form, viewer.diagnosis_names())
        except FormError as exc:
            kept = SearchForm(record_id=request.form.get("record_id", "")[:MAX_ID_CHARS].strip())
            return page("index.html", 400, error=f"Invalid filter: {exc}", form=kept)
        if request.form.get("action") == "record":
            if not form.record_id:
                return page("index.html", 400, error="Enter a stored record id.", form=form)
            return redirect(
                _search_url(
                    SearchForm(record_id=form.record_id, k=form.k, flt=form.flt, similar_by=form.similar_by)
                ),
                code=303,
            )
        if file is None or not file.filename:
            return page("index.html", 400, error="Choose an ECG file to upload.", form=form)
        try:
            held = read_upload(file.read(max_upload_bytes + 1))
        except UploadError as exc:
            return page("index.html", 400, error=f"Upload refused: {exc}", form=form)
        token = viewer.uploads.add(held)
        return redirect(
            _search_url(SearchForm(upload=token, k=form.k, flt=form.flt, similar_by=form.similar_by)),
            code=303,
        )

    @app.get("/ecg/<path:rid>")
    def ecg(rid: str) -> tuple[str, int]:
        record_id = rid
        try:
            form = parse_search(request.args)
        except FormError:
            form = SearchForm()
        try:
            payload, _ = client.get_record(record_id)
        except grpc.RpcError as error:
            status, message = describe_rpc_error(error, target)
            return page("index.html", status, error=message)
        recording = viewer.recordings([record_id])[0]
        svg, problem, fs = None, None, None
        if isinstance(recording, grpc.RpcError):
            problem = describe_rpc_error(recording, target)[1]
        else:
            fs = recording.fs
            svg = Markup(
                ecgdraw.twelve_lead(recording.signal, fs, ecgdraw.MV, uid=_svg_id(record_id, "full-"))
            )
        return page(
            "ecg.html",
            fs=fs,
            payload=payload,
            diagnoses=[_diagnosis(c) for c in payload.diagnoses],
            svg=svg,
            problem=problem,
            form=form,
        )

    @app.get("/compare")
    def compare() -> tuple[str, int]:
        neighbour = request.args.get("neighbour", "").strip()
        try:
            form = parse_search(request.args)
            if not neighbour or not (form.record_id or form.upload):
                raise FormError("compare", "needs a query (record id or upload) and a neighbour")
            (query_signal, query_fs), query_label = _query_recorded(viewer, form)
            other = client.recorded_ecg(neighbour)
            payload, _ = client.get_record(neighbour)
        except FormError as exc:
            return page("index.html", 400, error=f"Invalid comparison: {exc}")
        except UploadError as exc:
            return page("index.html", 410, error=str(exc))
        except grpc.RpcError as error:
            status, message = describe_rpc_error(error, target)
            return page("index.html", status, error=message)
        fs = max(query_fs, other.fs)  # both on the finer rate's grid, baseline wander removed
        query = signals.for_comparison(query_signal, query_fs, fs)
        drawn_other = signals.for_comparison(other.signal, other.fs, fs)
        shift = peaks.alignment_shift(query, drawn_other, fs)
        svg = ecgdraw.overlay(query, drawn_other, fs, shift or 0, ecgdraw.MV)
        query_beat, other_beat = peaks.median_beat(query, fs), peaks.median_beat(drawn_other, fs)
        beats = None
        if query_beat is not None and other_beat is not None:
            r_at = int(round(peaks.BEAT_BEFORE_S * fs))
            drawn = ecgdraw.median_beats(query_beat[0], other_beat[0], fs, r_at, ecgdraw.MV)
            beats = {"svg": Markup(drawn), "query": query_beat[1], "neighbour": other_beat[1]}
        return page(
            "compare.html",
            form=form,
            neighbour=neighbour,
            payload=payload,
            diagnoses=[_diagnosis(c) for c in payload.diagnoses],
            query_label=query_label,
            shift_ms=None if shift is None else shift / fs * 1000,
            fs=fs,
            svg=Markup(svg),
            beats=beats,
        )

    return app


def _held(viewer: Viewer, token: str) -> HeldEcg:
    held = viewer.uploads.get(token)
    if held is None:
        raise UploadError("The uploaded file is no longer held by the viewer; upload it again.")
    return held


def _query_recorded(viewer: Viewer, form: SearchForm) -> tuple[tuple[np.ndarray, float], str]:
    """The query as recorded, (12, n) mV at its own rate, and how to name it."""
    if form.upload:
        held = _held(viewer, form.upload)
        return (held.signal, held.fs), f"uploaded {held.format} file"
    recorded = viewer.client.recorded_ecg(form.record_id)
    return (recorded.signal, recorded.fs), form.record_id


def _search_url(form: SearchForm) -> str:
    """The results page's URL for ``form``."""
    # typed Any for url_for: the query arguments are never one of its own ``_``-prefixed options
    args: dict[str, Any] = form.query_args()
    return url_for("search", **args)


def _results(viewer: Viewer, form: SearchForm) -> dict[str, Any]:
    """Everything a results page shows: the query drawn, its neighbours drawn, the summary chart."""
    client = viewer.client
    options: dict[str, Any] = {"k": form.k, "filter": form.flt, "with_summary": True}
    if form.similar_by:
        options["similar_by"] = form.similar_by
    query: dict[str, Any] = {}
    query_svg: str | None
    if form.upload:
        held = _held(viewer, form.upload)
        result = client.search_by_ecg(held.signal, held.fs, ecgdraw.LEADS, units="mV", **options)
        query_svg = ecgdraw.twelve_lead(held.signal, held.fs, ecgdraw.MV, uid="query")
        query.update(label=f"uploaded {held.format} file", upload=held, scale=ecgdraw.MV)
    else:
        payload, _ = client.get_record(form.record_id)
        result = client.search_by_record(form.record_id, **options)
        fetched = viewer.recordings([form.record_id])[0]
        query.update(
            label=form.record_id,
            payload=payload,
            diagnoses=[_diagnosis(c) for c in payload.diagnoses],
            scale=ecgdraw.MV,
        )
        query_svg = None
        if isinstance(fetched, grpc.RpcError):
            query["problem"] = describe_rpc_error(fetched, viewer.target)[1]
        else:
            query["fs"] = fetched.fs
            query_svg = ecgdraw.twelve_lead(fetched.signal, fetched.fs, ecgdraw.MV, uid="query")
    # A search by ECG whose ECG is stored (by content, in any file format): the service names that
    # record and leaves it and its copies out of the neighbours, so one ECG never fills the page.
    query["stored_as"] = result.query_record_id
    neighbours = []
    drawn = viewer.recordings([h.record_id for h in result.hits])
    for rank, (hit, signal) in enumerate(zip(result.hits, drawn, strict=True), start=1):
        if isinstance(signal, grpc.RpcError):
            problem, svg = describe_rpc_error(signal, viewer.target)[1], None
        else:
            problem = None
            svg = Markup(
                ecgdraw.twelve_lead(
                    signal.signal, signal.fs, ecgdraw.MV, uid=_svg_id(hit.record_id, "n-"), compact=True
                )
            )
        neighbours.append(Neighbour(rank, hit, [_diagnosis(c) for c in hit.payload.diagnoses], svg, problem))
    summary = result.summary
    chart = (
        Markup(charts.enrichment_chart(summary.diagnoses, summary.n_neighbours))
        if summary is not None and summary.diagnoses
        else None
    )
    return {
        "form": form,
        "filter_phrases": describe_filter(form.flt, codes.describe),
        "similar_by": form.similar_by_label(),
        "query": query,
        "query_svg": Markup(query_svg) if query_svg else None,
        "neighbours": neighbours,
        "summary": summary,
        "evidence": [(row, evidence(row, summary.n_neighbours)) for row in summary.diagnoses]
        if summary
        else [],
        "chart": chart,
        "link_args": form.query_args(),
    }
