"""What the search service does, as plain Python: bound and validate a query, encode it, search, summarise.

No grpc here: the gRPC servicer (``server.py``), the benchmarks and any later ingest-through-the-service
path call these methods, so every transport validates and answers the same way. Every request field is
checked here, once, before any work that grows with the request (the cost model below); the store keeps
only cheap assertions. Errors are the domain's own (``InvalidQuery`` and its ``FieldViolation``,
``UnknownRecord``, ``StoreUnavailable``, ``SignalError``, ``DeadlineExceeded``, ``Cancelled``,
``EcgUnavailable``); mapping them to status codes is the transport's job.

Sites: every read takes ``sites``, the sites whose ECGs the call may see (None: every site), and
applies it to each store call it makes: searches filter on it, record lookups answer an unknown id
and another site's id alike (``UnknownRecord``, after the same store work), collection figures count
only those sites, and a payload never names (``duplicate_of``) a record outside them. Writes take the
one ``site`` they are for: a site's pushed ECGs are named in its own namespace (``<site>/<id>``), so
ids, collisions and skips are decided per site. The door (``door.py``) sets both from the caller;
nothing else decides them.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import ValidationError

from ecgsearch.ecg import codes, fingerprint, ptbxl, signals, views
from ecgsearch.ecg.bounds import MAX_FILE_BYTES
from ecgsearch.ecg.schema import (
    DEFAULT_BLEND,
    MAX_K,
    MEASUREMENTS,
    SITE_SEPARATOR,
    CollectionInfo,
    EcgPayload,
    Hit,
    InvalidQuery,
    SearchFilter,
    UnknownRecord,
    check_blend_alone,
    check_view_or_blend,
)
from ecgsearch.search.api import (
    FILE_FORMATS,
    NO_BUDGET,
    Budget,
    DiagnosisConcentration,
    EcgFile,
    EcgQuery,
    EcgUnavailable,
    FieldViolation,
    NeighbourhoodSummary,
    Pushed,
    Query,
    RecordedEcg,
    RecordTooLong,
    SearchOptions,
    SearchResult,
    UpsertItem,
    WritesUnavailable,
    describe_validation,
)
from ecgsearch.search.engine.copies import stored_matches
from ecgsearch.search.summary import evidence

if TYPE_CHECKING:
    from ecgsearch.export.card import ModelCard
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.engine.store import Store
    from ecgsearch.search.serving.push import Archive, Prepared, Writer

log = logging.getLogger("ecgsearch.service")

Sites = frozenset[str] | None  # the sites a call may read; None: every site
EVERY_SITE: Sites = None
NO_SITE = ""  # a site-filter value no stored ECG has (a site name has at least one character)
MAX_SITE_VIEWS = 64  # distinct site sets whose collection figures are kept (one per kind of caller)

STATS_REFRESH_S = 30.0
ENCODE_CHUNK = 64  # ECGs per model call in a batch; the budget is checked between calls

# --- the cost model: every bound a request must meet before any work is done for it -------------
# Strings: ids and codes of every source we read are far shorter (PTB-XL 'ptbxl:21837', SNOMED ids of
# at most 18 digits); the bounds leave room for hospital ids while keeping error and log lines short.
MAX_ID_CHARS = 256  # record ids, patient ids
MAX_CODE_CHARS = 64  # diagnosis codes, dataset names
MAX_LEAD_NAME_CHARS = 16
MAX_CODES = 100  # per diagnosis list, and datasets
MAX_EXCLUDED_IDS = 1000  # per exclusion list: a caller excluding more wants a filter, not a list
# ECGs: 12 standard leads plus extras (Frank XYZ, right-sided, posterior) stay within 24.
MAX_LEADS = 24
# 30 s at the highest rate accepted (signals.MAX_FS = 10 kHz); preparation reads the first 10 s only.
MAX_SAMPLES_PER_LEAD = 300_000
# Samples after resampling to the model's rate: the first 10 s give MODEL_SAMPLES (+1 for rounding);
# twice that is a generous guard that the resampling plan is what we think it is.
MAX_RESAMPLED = 2 * signals.MODEL_SAMPLES
# GetEcg as recorded: 2 min at 1 kHz (the Challenge's longest PTB records, 115 s at 1 kHz, fit), 5.8 MB
# as float32 over 12 leads, within the default 16 MiB message.
MAX_RECORDED_SAMPLES = 120_000
MAX_BATCH = 256  # queries per BatchSearch
# Raw samples over all ECGs of one batch: about what a 16 MiB message carries as float32, i.e. ~66
# ten-second 12-lead ECGs at 500 Hz; preparation costs ~O(samples read), so this bounds a batch's CPU.
MAX_BATCH_SAMPLES = 4_000_000
QUOTE_CHARS = 32  # at most this much of any client string is echoed in an error
# Files (SearchByFile, UpsertEcgs): the bounds of ecg.bounds (50 MiB, 16 channels, 10 minutes, 50 Hz to
# 10 kHz) cap the decoding; of the decoded ECG the first MAX_FILE_SECONDS are kept, then the raw-ECG
# bounds above apply as to any ECG. Preparation reads the first 10 s.
MAX_FILE_SECONDS = 30.0
_UNITS = {"mv", "uv", "v", ""}  # amplitude units signals.prepare_array reads


class CollectionStats:
    """Collection facts (count, per-code counts) read off the request path, per set of visible sites.

    ``store.info()`` runs an exact count and a facet: at millions of points that takes long, so a
    daemon thread refreshes it every ``every_s`` seconds and requests read the last snapshot. The
    figures of a site set are read when a caller of that set first asks, then refreshed with the rest;
    ``hooks`` run after each refresh (the door re-samples the size of a hit there).
    """

    def __init__(self, store: Store, every_s: float = STATS_REFRESH_S) -> None:
        self._store = store
        self._every_s = every_s
        self._views: dict[Sites, tuple[CollectionInfo, datetime]] = {None: (store.info(), datetime.now(UTC))}
        self._lock = threading.Lock()
        self.hooks: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collection-stats", daemon=True)
        self._thread.start()

    def of(self, sites: Sites) -> tuple[CollectionInfo, datetime]:
        """The last figures of the points of ``sites`` and when they were read."""
        found = self._views.get(sites)
        if found is None:
            found = self._read(sites)
            with self._lock:
                if len(self._views) < MAX_SITE_VIEWS:
                    self._views[sites] = found
        return found

    @property
    def info(self) -> CollectionInfo:
        return self._views[None][0]

    @property
    def updated_at(self) -> datetime:
        return self._views[None][1]

    def _read(self, sites: Sites) -> tuple[CollectionInfo, datetime]:
        return self._store.info(site_filter(sites)), datetime.now(UTC)

    def refresh(self) -> CollectionInfo:
        for sites in list(self._views):
            fresh = self._read(sites)
            with self._lock:  # one reference swap per site set: readers need no lock
                self._views[sites] = fresh
        for hook in self.hooks:
            hook()
        return self.info

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.refresh()
            except Exception as exc:  # a store hiccup must not end the refresher; keep the last figures
                log.warning(
                    "collection statistics not refreshed", extra={"fields": {"error": str(exc)[:200]}}
                )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class SearchService:
    """Search over one store with one embedder; thread-safe as long as the store and embedder are.

    ``ecg_roots``: folders where stored records' ``source_path`` resolves (for ``get_ecg``).
    Call ``close()`` to stop the statistics refresher.
    """

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        *,
        stats_refresh_s: float = STATS_REFRESH_S,
        ecg_roots: Sequence[Path] = (),
        site_secret_file: Path | None = None,
        archive_path: Path | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.ecg_roots = tuple(Path(r) for r in ecg_roots)
        self._site_secret_file = site_secret_file
        self._archive_path = archive_path
        self._writer: Writer | None = None
        self._writer_lock = threading.Lock()
        info = store.info()
        if info.model_version != embedder.version or info.dim != embedder.dim:
            from ecgsearch.search.engine.store import ModelMismatch

            raise ModelMismatch(
                f"collection {info.name!r} holds {info.dim}-d vectors of model {info.model_version}, "
                f"but the server encodes with {embedder.dim}-d model {embedder.version} ({embedder.path})"
            )
        self._stats = CollectionStats(store, stats_refresh_s)
        self._prepared = 0
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self._stats.close()

    # --- queries ---------------------------------------------------------------------------------

    def search_by_record(
        self,
        record_id: str,
        options: SearchOptions | None = None,
        *,
        sites: Sites,
        include_same_patient: bool = False,
        budget: Budget = NO_BUDGET,
    ) -> SearchResult:
        """Neighbours of a stored record: never itself, nor (by default) its patient's other ECGs."""
        options = self.validate(options or SearchOptions())
        record_id = check_id(record_id, "record_id")
        plan = self._stored_query(record_id, options, include_same_patient, sites)
        return self._search(plan, budget, sites)

    def search_by_ecg(
        self,
        ecg: EcgQuery,
        options: SearchOptions | None = None,
        *,
        sites: Sites,
        budget: Budget = NO_BUDGET,
    ) -> SearchResult:
        """Prepare the raw ECG exactly like stored ones, encode it, search."""
        options = self.validate(options or SearchOptions())
        checked = check_ecg(ecg, "ecg")
        ((vector,), (mark,), (named,)) = self._encode_marked([checked], ["ecg"], budget)
        return self._search(_Plan(options, vector, fingerprint=mark, views=named), budget, sites)

    def search_by_file(
        self,
        file: EcgFile,
        options: SearchOptions | None = None,
        *,
        sites: Sites,
        budget: Budget = NO_BUDGET,
    ) -> SearchResult:
        """Read an ECG file (any format the readers know), prepare it like stored ECGs, encode, search."""
        options = self.validate(options or SearchOptions())
        ecg = read_file(file, "file")
        ((vector,), (mark,), (named,)) = self._encode_marked([ecg], ["file"], budget)
        return self._search(_Plan(options, vector, fingerprint=mark, views=named), budget, sites)

    def upsert(
        self,
        items: Sequence[UpsertItem],
        dataset: str = "",
        *,
        site: str | None = None,
        budget: Budget = NO_BUDGET,
    ) -> list[Pushed]:
        """Add ECGs (see ``push``): one result per item, stored / skipped / rejected with its reason.

        ``site`` (the pushing caller's one site; None: the payload's default) is stamped on every item,
        and names it in the site's own namespace: ``<site>/<dataset>:<native id>``. Ids, collisions and
        skips are therefore decided among the site's own ECGs only: a push never learns whether
        another site holds an id or an ECG, and one ECG pushed by two sites is stored for each.

        The request (item count, dataset name, total samples) is bounded before any item is read; an
        item that breaks a rule is rejected alone, the others go on.
        """
        from ecgsearch.ecg.readers import ReaderError
        from ecgsearch.search.serving import push

        if not items:
            raise FieldViolation("items", "no ECGs to add")
        if len(items) > push.MAX_ITEMS:
            raise FieldViolation("items", f"{len(items)} items; at most {push.MAX_ITEMS} per call")
        try:
            dataset = push.check_dataset(dataset)
        except ValueError as exc:
            raise FieldViolation("dataset", str(exc).removeprefix("dataset: ")) from None
        samples = sum(np.asarray(i.ecg.signal).size for i in items if i.ecg is not None)
        if samples > MAX_BATCH_SAMPLES:
            raise FieldViolation("items", f"the raw ECGs exceed {MAX_BATCH_SAMPLES:,} samples in all")
        writer = self._open_writer()
        prepared: list[push.Prepared | push.Pushed] = []
        for i, item in enumerate(items):
            budget.check(f"preparing items[{i}]")
            where = f"items[{i}]"
            try:
                ready = self._prepare_item(writer, item, dataset)
                if site is not None and isinstance(ready, push.Prepared):
                    ready = in_site(ready, site)
                prepared.append(ready)
            except FieldViolation as exc:
                prepared.append(push.Pushed("", "rejected", f"{where}.{exc.field}: {exc.description}"))
            except ReaderError as exc:
                prepared.append(push.Pushed("", "rejected", f"{where}.file.{push.reader_reason(exc)}"))
            except signals.SignalError as exc:
                prepared.append(push.Pushed(exc.record, "rejected", f"{where}: {exc.reason}"))
            except ValidationError as exc:
                prepared.append(push.Pushed("", "rejected", f"{where}: {describe_validation(exc)[:200]}"))
        budget.check("storing")
        results = writer.store_prepared(prepared)
        stored = sum(r.status == "stored" for r in results)
        log.info(
            "ecgs pushed",
            extra={"fields": {"stored": stored, "items": len(items), "dataset": dataset}},
        )
        return results

    def _prepare_item(self, writer: Writer, item: UpsertItem, dataset: str) -> Prepared:
        from ecgsearch.search.serving import push

        if (item.file is None) == (item.ecg is None):
            raise FieldViolation("", "give exactly one of file, ecg")
        if item.file is not None:
            check_file(item.file, "file")
            prepared = writer.prepare_file(item.file.content, item.file.format_hint, dataset)
        else:
            try:
                native = push.check_native_id(item.native_id)
            except ValueError as exc:
                raise FieldViolation("native_id", str(exc).removeprefix("native_id: ")) from None
            if len(item.patient_key) > push.MAX_PATIENT_KEY_CHARS:
                raise FieldViolation("patient_key", f"at most {push.MAX_PATIENT_KEY_CHARS} characters")
            assert item.ecg is not None  # exactly one of file, ecg (checked above)
            ecg = check_ecg(item.ecg, "ecg")
            units = (ecg.units,) * len(ecg.leads) if isinstance(ecg.units, str) else tuple(ecg.units)
            raw = signals.RawEcg("ecg", np.asarray(ecg.signal, np.float32), float(ecg.fs), ecg.leads, units)
            prepared = writer.prepare_raw(raw, dataset, native, item.patient_key)
        self._count_prepared(1)
        return prepared

    @property
    def archive_path(self) -> Path | None:
        """Where pushed ECGs' kept signals live when set apart from the store (None: ``<store>/archive``);
        a snapshot must read them from there."""
        return self._archive_path

    def _archive(self) -> Archive | None:
        from ecgsearch.search.serving.push import Archive

        root = getattr(self.store, "root", None)
        if self._archive_path is not None:
            return Archive(self._archive_path)
        return Archive(Path(root) / "archive") if root is not None else None

    def _open_writer(self) -> Writer:
        """The writer, made on the first push: a server that is never pushed to needs no secret."""
        from ecgsearch.ecg.identity import SecretError, site_pseudonymizer
        from ecgsearch.search.serving.push import Writer

        with self._writer_lock:
            if self._writer is None:
                archive = self._archive()
                if archive is None:
                    raise WritesUnavailable(
                        "this server keeps no archive for pushed ECGs (set ECGSEARCH_ARCHIVE_PATH)"
                    )
                root = getattr(self.store, "root", None)
                try:
                    pseudonyms = site_pseudonymizer(self._site_secret_file, root)
                except (SecretError, OSError) as exc:
                    log.error("site secret unusable", extra={"fields": {"error": str(exc)[:200]}})
                    raise WritesUnavailable(
                        "this server cannot write: no usable site secret (set ECGSEARCH_SITE_SECRET_FILE)"
                    ) from None
                self._writer = Writer(self.store, self.embedder, pseudonyms, archive)
            return self._writer

    def search_by_vector(
        self,
        vector: np.ndarray | Sequence[float],
        options: SearchOptions | None = None,
        *,
        sites: Sites,
        budget: Budget = NO_BUDGET,
    ) -> SearchResult:
        """Neighbours of an embedding of this collection's model (normalised here)."""
        options = self.validate(options or SearchOptions())
        return self._search(_Plan(options, self.check_vector(vector, "vector")), budget, sites)

    def batch(
        self, queries: Sequence[Query], *, sites: Sites, budget: Budget = NO_BUDGET
    ) -> list[SearchResult]:
        """Several queries in request order (see ``batch_results``). Any bad query fails all."""
        return list(self.batch_results(queries, sites=sites, budget=budget))

    def batch_results(
        self, queries: Sequence[Query], *, sites: Sites, budget: Budget = NO_BUDGET
    ) -> Iterator[SearchResult]:
        """Several queries: each result as its search finishes, in request order. Any bad query fails all.

        Every query is bounded and validated before any ECG is prepared, and the batch's total samples
        are bounded too, so a bad or oversized query costs nothing but its validation; the record
        queries are looked up and the ECGs encoded (in one model call) before the first result. The
        searches run as the results are taken: a caller that stops taking them stops the searching.
        """
        if not queries:
            raise FieldViolation("queries", "empty batch")
        if len(queries) > MAX_BATCH:
            raise FieldViolation("queries", f"{len(queries)} queries; at most {MAX_BATCH} per batch")
        checked: list[tuple[Query, SearchOptions, EcgQuery | None]] = []
        total = 0
        for i, query in enumerate(queries):
            where = f"queries[{i}]"
            with _located(where):
                kinds = [query.record_id is not None, query.ecg is not None, query.vector is not None]
                if sum(kinds) != 1:
                    raise FieldViolation("", "give exactly one of record_id, ecg, vector")
                options = self.validate(query.options)
                ecg = check_ecg(query.ecg, "ecg") if query.ecg is not None else None
                if ecg is not None:
                    total += ecg.signal.size
                    if total > MAX_BATCH_SAMPLES:
                        raise FieldViolation(
                            "ecg", f"the batch's ECGs exceed {MAX_BATCH_SAMPLES:,} samples in all"
                        )
                if query.record_id is not None:
                    check_id(query.record_id, "record_id")
                if query.vector is not None:
                    self.check_vector(query.vector, "vector")
                checked.append((query, options, ecg))
        plans: list[_Plan] = []
        for i, (query, options, _) in enumerate(checked):
            with _located(f"queries[{i}]"):
                if query.record_id is not None:
                    record_id = check_id(query.record_id, "record_id")
                    plans.append(self._stored_query(record_id, options, query.include_same_patient, sites))
                elif query.vector is not None:
                    plans.append(_Plan(options, self.check_vector(query.vector, "vector")))
                else:
                    plans.append(_Plan(options, None))
        ecgs = [ecg for _, _, ecg in checked if ecg is not None]
        names = [f"queries[{i}].ecg" for i, (_, _, ecg) in enumerate(checked) if ecg is not None]
        vectors, marks, named = (
            self._encode_marked(ecgs, names, budget) if ecgs else (np.empty((0, 0)), [], [])
        )
        encoded = iter(zip(vectors, marks, named, strict=True))
        ready = []
        for plan in plans:
            if plan.vector is None:
                vector, mark, rows = next(encoded)
                plan = replace(plan, vector=vector, fingerprint=mark, views=rows)
            ready.append(plan)
        return (self._search(plan, budget, sites) for plan in ready)

    def get_record(
        self, record_id: str, *, sites: Sites, with_vector: bool = False
    ) -> tuple[EcgPayload, np.ndarray | None]:
        """Payload (and stored vector) of one record; UnknownRecord when absent or not visible."""
        payload, vector = self._get(check_id(record_id, "record_id"), sites)
        (payload,) = self._revealed([payload], sites)
        return payload, (vector if with_vector else None)

    def get_ecg(self, record_id: str, *, sites: Sites) -> np.ndarray:
        """The prepared signal (12, MODEL_SAMPLES) of a stored record, read again from its source file.

        UnknownRecord when the id is not stored or not visible; EcgUnavailable when no configured root
        holds its file.
        """
        payload, _ = self._get(check_id(record_id, "record_id"), sites)
        if payload.archived and payload.content_hash:
            return self._archived_ecg(payload)
        path = self._source_file(payload)
        try:
            prepared = signals.load(path)
        except signals.SignalError as exc:
            raise EcgUnavailable(
                f"record {quote(payload.record_id)}: source file unreadable ({exc.reason})"
            ) from exc
        self._count_prepared(1)
        return prepared

    def recorded_ecg(self, record_id: str, *, sites: Sites) -> RecordedEcg:
        """A stored record's whole recording at its file's own rate, 12 leads in mV (PTB-XL: its 500 Hz
        file where one exists beside the 100 Hz one); hospital files from the archive.

        UnknownRecord, EcgUnavailable as ``get_ecg``; RecordTooLong beyond MAX_RECORDED_SAMPLES per lead.
        """
        payload, _ = self._get(check_id(record_id, "record_id"), sites)
        if payload.archived and payload.content_hash:
            raw = self._archived_raw(payload)
        else:
            path = self._source_file(payload, ptbxl.high_rate_twin(payload.source_path or ""))
            try:
                raw = signals.read_wfdb(path)
            except signals.SignalError as exc:
                raise EcgUnavailable(
                    f"record {quote(payload.record_id)}: source file unreadable ({exc.reason})"
                ) from exc
        n = raw.signal.shape[-1]
        if n > MAX_RECORDED_SAMPLES:
            raise RecordTooLong(
                f"record {quote(payload.record_id)}: {n:,} samples per lead as recorded; GetEcg returns "
                f"at most {MAX_RECORDED_SAMPLES:,}"
            )
        try:
            return RecordedEcg(signals.recorded(raw), float(raw.fs))
        except signals.SignalError as exc:
            raise EcgUnavailable(f"record {quote(payload.record_id)}: {exc.reason}") from exc

    def _archived_ecg(self, payload: EcgPayload) -> np.ndarray:
        prepared = signals.prepare(self._archived_raw(payload))
        self._count_prepared(1)
        return prepared

    def _archived_raw(self, payload: EcgPayload) -> signals.RawEcg:
        archive = self._archive()
        try:
            if archive is None:
                raise FileNotFoundError
            return archive.load(payload.content_hash or "", payload.record_id)
        except (OSError, ValueError, KeyError):
            raise EcgUnavailable(
                f"record {quote(payload.record_id)}: its archived signal is missing"
            ) from None

    def info(self, *, sites: Sites) -> CollectionInfo:
        """Collection facts of the points of ``sites`` as last refreshed in the background (a site set
        asked for the first time is read now, then refreshed with the rest)."""
        return self._stats.of(sites)[0]

    def info_updated_at(self, *, sites: Sites) -> datetime:
        return self._stats.of(sites)[1]

    def on_refresh(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` after each background refresh of the collection figures."""
        self._stats.hooks.append(hook)

    def sample_hits(self, n: int = MAX_K, probes: int = 4, seed: int = 0) -> list[Hit]:
        """Up to ``probes`` x ``n`` stored hits of every site (searches by random unit vectors): what
        the size of a reply's hit is estimated from."""
        rng = np.random.default_rng(seed)
        hits: list[Hit] = []
        for _ in range(probes):
            probe = rng.standard_normal(self.embedder.dim).astype(np.float32)
            hits += self.store.search(probe / np.linalg.norm(probe), k=n)
        return hits

    def refresh_info(self) -> CollectionInfo:
        """Read the collection facts now (operators and tests; requests use ``info()``)."""
        return self._stats.refresh()

    @property
    def prepared_count(self) -> int:
        """Raw ECGs prepared since the service started (a cancelled batch stops adding to it)."""
        return self._prepared

    @property
    def model_card(self) -> ModelCard:
        return self.embedder.card

    # --- validation and encoding -----------------------------------------------------------------

    def validate(self, options: SearchOptions) -> SearchOptions:
        """Range-check k and the threshold; bound, resolve and validate the filter (once)."""
        if isinstance(options.k, bool) or not isinstance(options.k, int) or not 1 <= options.k <= MAX_K:
            raise FieldViolation("options.k", f"must be between 1 and {MAX_K}, got {options.k!r:.20}")
        threshold = options.score_threshold
        if threshold is not None and not (math.isfinite(threshold) and -1.0 <= threshold <= 1.0):
            raise FieldViolation(
                "options.score_threshold", f"must be a cosine similarity in [-1, 1], got {threshold!r:.20}"
            )
        return SearchOptions(
            resolve_filter(options.filter),
            options.k,
            threshold,
            options.exact,
            options.with_summary,
            options.include_duplicates,
            options.include_query_record,
            check_similar_by(options.similar_by),
        )

    def check_vector(self, vector: np.ndarray | Sequence[float] | None, where: str = "vector") -> np.ndarray:
        """A finite, non-zero vector of the model's dimension, unit-normalised."""
        x = np.asarray(vector if vector is not None else [], dtype=np.float64)
        dim = self.embedder.dim
        if x.ndim != 1 or x.shape[0] != dim:
            raise FieldViolation(where, f"must have {dim} values, got shape {tuple(x.shape)}")
        norm = math.sqrt(float(x @ x))  # NaN or infinite when any value is: one pass, not three
        if not math.isfinite(norm):
            finite = np.isfinite(x).all()
            raise FieldViolation(where, "has values too large" if finite else "holds NaN or infinite values")
        if norm == 0.0:
            raise FieldViolation(where, "is all zeros")
        return (x / norm).astype(np.float32)

    def encode(
        self, ecgs: Sequence[EcgQuery], *, names: Sequence[str] | None = None, budget: Budget = NO_BUDGET
    ) -> np.ndarray:
        """Raw ECGs (bounded by ``check_ecg``) -> unit embeddings, prepared like every stored ECG.

        The budget is checked before each ECG and before each model call: a cancelled call stops here.
        """
        return self._embed(self._prepare(ecgs, names or ["ecg"] * len(ecgs), budget), budget)

    def _encode_marked(
        self, ecgs: Sequence[EcgQuery], names: Sequence[str], budget: Budget
    ) -> tuple[np.ndarray, list[str], list[dict[str, list[float]]]]:
        """``encode``, each ECG's content fingerprint (to find the query among stored ECGs) and its named
        views (``ecg.views``, as ingest computes them)."""
        prepared = self._prepare(ecgs, names, budget)
        vectors = self._embed(prepared, budget)
        named = views.view_vectors(vectors, np.stack(prepared), learned_dim=self.embedder.learned_dim)
        return vectors, [fingerprint.encode(x) for x in prepared], named.rows()

    def _prepare(self, ecgs: Sequence[EcgQuery], names: Sequence[str], budget: Budget) -> list[np.ndarray]:
        prepared = []
        for ecg, name in zip(ecgs, names, strict=True):
            budget.check(f"preparing {name}")
            checked = check_ecg(ecg, name)
            prepared.append(
                signals.prepare_array(
                    checked.signal, checked.fs, checked.leads, units=checked.units, record=name
                )
            )
            self._count_prepared(1)
        return prepared

    def _embed(self, prepared: list[np.ndarray], budget: Budget) -> np.ndarray:
        vectors = []
        for start in range(0, len(prepared), ENCODE_CHUNK):
            budget.check("encoding")
            vectors.append(self.embedder.embed(np.stack(prepared[start : start + ENCODE_CHUNK])))
        return np.concatenate(vectors)

    # --- search and summary ----------------------------------------------------------------------

    def _get(self, record_id: str, sites: Sites) -> tuple[EcgPayload, np.ndarray]:
        """The record, or UnknownRecord when it is not stored or not of ``sites``.

        A site-restricted read is one filtered read in the store (this id and a site among ``sites``):
        an unknown id and another site's id both find nothing after the same work and raise the same
        error, so neither the message nor the time tells which it was (``bench limits`` measures it).
        """
        try:
            return self.store.get(record_id, sites=None if sites is None else sorted(sites))
        except UnknownRecord:
            raise UnknownRecord(_short(record_id)) from None

    def _revealed(self, payloads: list[EcgPayload], sites: Sites) -> list[EcgPayload]:
        """The payloads without a ``duplicate_of`` that names a record outside ``sites``."""
        if sites is None:
            return payloads
        named = {p.duplicate_of for p in payloads if p.duplicate_of}
        if not named:
            return payloads
        held = self.store.sites_of(sorted(named))
        hidden = {r for r in named if held.get(r, NO_SITE) not in sites}
        return [
            p.model_copy(update={"duplicate_of": None}) if p.duplicate_of in hidden else p for p in payloads
        ]

    def _stored_query(
        self, record_id: str, options: SearchOptions, include_same_patient: bool, sites: Sites
    ) -> _Plan:
        """A stored record's vector and codes, with the record (and its patient's ECGs) excluded."""
        payload, vector = self._get(record_id, sites)
        exclusions = ["query_record"]
        # A copy's original is the query ECG again, under another id.
        own = [payload.record_id, *([payload.duplicate_of] if payload.duplicate_of else [])]
        update = {"exclude_record_ids": [*options.filter.exclude_record_ids, *own]}
        if not include_same_patient and payload.patient_id is not None:
            exclusions.append("same_patient")
            update["exclude_patient_ids"] = [*options.filter.exclude_patient_ids, payload.patient_id]
        flt = options.filter.model_copy(update=update)
        named = self.store.get_views(payload.record_id) if options.similar_by else None
        return _Plan(replace(options, filter=flt), vector, payload.diagnoses, exclusions, views=named)

    def _search(self, plan: _Plan, budget: Budget, sites: Sites) -> SearchResult:
        budget.check("search")
        options = plan.options
        assert plan.vector is not None
        exclusions = list(plan.exclusions)
        update: dict[str, object] = {}
        if not options.include_duplicates:
            exclusions.append("duplicate_copy")
            update["exclude_duplicates"] = True
        if sites is not None:
            update["sites"] = sorted(sites) or [NO_SITE]
        query_record = self._stored_as(plan, sites) if plan.fingerprint is not None else None
        if query_record is not None and not options.include_query_record:
            exclusions.insert(0, "query_record")
            update["exclude_record_ids"] = [*options.filter.exclude_record_ids, *query_record[1]]
        flt = options.filter.model_copy(update=update)
        if options.similar_by:
            if plan.views is None:
                raise FieldViolation(
                    "options.similar_by", "a search by vector has no views: search by record or ECG"
                )
            if dict(options.similar_by).keys() == {DEFAULT_BLEND}:
                (hits,) = self.store.search_reranked(
                    [plan.views],
                    [views.default_blend().weights(plan.views)],
                    k=options.k,
                    missing=views.UNKNOWN_DISTANCE,
                    filter=None if flt.is_empty() else flt,
                    exact=options.exact,
                )
            else:
                (hits,) = self.store.search_views(
                    [plan.views],
                    dict(options.similar_by),
                    k=options.k,
                    filter=None if flt.is_empty() else flt,
                    exact=options.exact,
                )
        else:
            hits = self.store.search(
                plan.vector,
                k=options.k,
                filter=None if flt.is_empty() else flt,
                exact=options.exact,
                score_threshold=options.score_threshold,
            )
        if sites is not None:
            hits = self._walled(hits, sites)
        info = self.info(sites=sites) if options.with_summary else None
        summary = summarise(hits, info, plan.query_codes, exclusions) if info is not None else None
        stored_as = query_record[0] if query_record is not None else None
        return SearchResult(hits=hits, summary=summary, query_record_id=stored_as)

    def _stored_as(self, plan: _Plan, sites: Sites) -> tuple[str, list[str]] | None:
        """When the query ECG is itself stored (the same recording by content, among the records of
        ``sites``): the record to name (its original when visible, else the stored copy found) and
        every record id that is it (the original and the copies found), to leave out of the hits."""
        assert plan.vector is not None
        (matches,) = stored_matches(
            self.store, plan.vector[None], [plan.fingerprint], filter=site_filter(sites)
        )
        if not matches:
            return None
        originals = {m.original for m in matches}
        if sites is not None:
            held = self.store.sites_of(sorted(originals))
            originals = {r for r in originals if held.get(r, NO_SITE) in sites}
        named = matches[0].original if matches[0].original in originals else matches[0].record_id
        return named, sorted(originals | {m.record_id for m in matches})

    def _walled(self, hits: list[Hit], sites: frozenset[str]) -> list[Hit]:
        """The hits of ``sites`` only (the store's filter already keeps them: a second wall), their
        payloads naming no record outside them."""
        kept = [h for h in hits if h.payload.site in sites]
        if len(kept) != len(hits):
            log.error("the store returned hits of other sites; dropped", extra={"fields": {"n": len(hits)}})
        payloads = self._revealed([h.payload for h in kept], sites)
        return [
            h if h.payload is p else h.model_copy(update={"payload": p})
            for h, p in zip(kept, payloads, strict=True)
        ]

    def _source_file(self, payload: EcgPayload, preferred: str | None = None) -> Path:
        """The record's WFDB file under one of the ECG roots; ``preferred`` (another file of the same ECG,
        relative like ``source_path``) first where a root holds it."""
        if not payload.source_path:
            raise EcgUnavailable(f"record {quote(payload.record_id)} has no source file on record")
        if not self.ecg_roots:
            raise EcgUnavailable("this server reads no source files (set ECGSEARCH_ECG_ROOTS)")
        for relative in (preferred, payload.source_path) if preferred else (payload.source_path,):
            for root in self.ecg_roots:
                base = root.resolve()
                path = (base / relative).resolve()
                if base in path.parents and path.with_name(path.name + ".hea").is_file():
                    return path
        raise EcgUnavailable(
            f"record {quote(payload.record_id)}: its source file is under none of the ECG roots"
        )

    def _count_prepared(self, n: int) -> None:
        with self._count_lock:
            self._prepared += n


@dataclass(frozen=True)
class _Plan:
    """One search ready to run: options (exclusions applied), query vector, query codes for the summary."""

    options: SearchOptions
    vector: np.ndarray | None
    query_codes: list[str] | None = None
    exclusions: list[str] = field(default_factory=list)
    fingerprint: str | None = None  # a query ECG's content fingerprint: is the query itself stored?
    views: dict[str, list[float]] | None = None  # the query's named views (``similar_by`` searches)


def check_similar_by(similar_by: Sequence[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
    """Views named once each (the default blend alone), with finite weights above 0 (FieldViolation
    naming the entry)."""
    seen: set[str] = set()
    for i, (view, weight) in enumerate(similar_by):
        where = f"options.similar_by[{i}]"
        try:
            check_view_or_blend(view)
        except InvalidQuery as error:
            raise FieldViolation(where, str(error)) from None
        if view in seen:
            raise FieldViolation(where, f"view {view} named twice")
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise FieldViolation(where, f"weight must be a finite number above 0, got {weight!r:.20}")
        seen.add(view)
    try:
        check_blend_alone(list(seen))
    except InvalidQuery as error:
        raise FieldViolation("options.similar_by", str(error)) from None
    return tuple((v, float(w)) for v, w in similar_by)


def site_filter(sites: Sites) -> SearchFilter | None:
    """The filter that keeps the points of ``sites`` (None: every point)."""
    return None if sites is None else SearchFilter(sites=sorted(sites) or [NO_SITE])


def in_site(prepared: Prepared, site: str) -> Prepared:
    """A pushed ECG stamped with its site and named in the site's namespace (``<site>/<id>``)."""
    record_id = f"{site}{SITE_SEPARATOR}{prepared.payload.record_id}"
    payload = prepared.payload.model_copy(update={"site": site, "record_id": record_id})
    return replace(prepared, payload=payload, raw=replace(prepared.raw, record=record_id))


# --- request checks ------------------------------------------------------------------------------


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """A short, printable quotation of client input for error messages and logs."""
    head = repr(str(text)[:limit])
    return head + ("…" if len(str(text)) > limit else "")


def _short(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def check_id(value: str | None, where: str, limit: int = MAX_ID_CHARS) -> str:
    """A non-blank id of at most ``limit`` characters, stripped."""
    if value is None or not str(value).strip():
        raise FieldViolation(where, "is empty")
    if len(value) > limit:
        raise FieldViolation(where, f"{len(value):,} characters; at most {limit}")
    return value.strip()


def check_strings(values: Sequence[str], where: str, *, items: int, chars: int) -> None:
    """At most ``items`` strings of at most ``chars`` characters each."""
    if len(values) > items:
        raise FieldViolation(where, f"{len(values):,} entries; at most {items}")
    for i, value in enumerate(values):
        if len(value) > chars:
            raise FieldViolation(f"{where}[{i}]", f"{len(value):,} characters; at most {chars}")


def check_ecg(ecg: EcgQuery, where: str) -> EcgQuery:
    """The cost model of one raw ECG, before any preparation: shape, leads, rate, lengths.

    Returns the ECG as a (n_leads, n_samples) array. NaN samples, units and missing leads are
    checked by ``signals.prepare_array`` (linear in the samples, already bounded here).
    """
    leads = tuple(ecg.leads)
    if not leads:
        raise FieldViolation(f"{where}.lead_names", "no lead names")
    if len(leads) > MAX_LEADS:
        raise FieldViolation(f"{where}.lead_names", f"{len(leads)} leads; at most {MAX_LEADS}")
    seen: set[str] = set()
    for i, name in enumerate(leads):
        key = str(name).strip().upper()
        if not key or len(key) > MAX_LEAD_NAME_CHARS:
            raise FieldViolation(
                f"{where}.lead_names[{i}]", f"lead names have 1 to {MAX_LEAD_NAME_CHARS} characters"
            )
        if key in seen:
            raise FieldViolation(f"{where}.lead_names", f"lead {quote(key)} given twice")
        seen.add(key)
    fs = ecg.fs
    if isinstance(fs, bool) or not isinstance(fs, int | float) or not math.isfinite(fs):
        raise FieldViolation(f"{where}.sampling_rate_hz", f"must be a finite number, got {fs!r:.20}")
    if not signals.MIN_FS <= fs <= signals.MAX_FS:
        raise FieldViolation(
            f"{where}.sampling_rate_hz",
            f"{fs:.6g} Hz is outside {signals.MIN_FS:g}-{signals.MAX_FS:g} Hz",
        )
    x = np.asarray(ecg.signal)
    if x.ndim == 1:
        n = ecg.n_leads or len(leads)
        if x.size == 0:
            raise FieldViolation(where, "holds no samples")
        if x.size % n:
            raise FieldViolation(f"{where}.flat_samples", f"{x.size:,} samples do not split into {n} leads")
        x = x.reshape(n, -1)
    if x.ndim != 2 or x.shape[1] == 0:
        raise FieldViolation(where, f"expected (leads, samples) samples, got shape {x.shape}")
    if x.shape[0] != len(leads):
        raise FieldViolation(f"{where}.lead_names", f"{len(leads)} lead names for {x.shape[0]} leads")
    if x.shape[1] > MAX_SAMPLES_PER_LEAD:
        raise FieldViolation(where, f"{x.shape[1]:,} samples per lead; at most {MAX_SAMPLES_PER_LEAD:,}")
    if signals.resampled_length(x.shape[1], fs) > MAX_RESAMPLED:
        raise FieldViolation(
            f"{where}.sampling_rate_hz", f"resampling {fs:.6g} Hz exceeds {MAX_RESAMPLED} samples"
        )
    units = (ecg.units,) if isinstance(ecg.units, str) else tuple(ecg.units)
    if len(units) not in (1, len(leads)):
        raise FieldViolation(
            f"{where}.units", f"{len(units)} units for {len(leads)} leads; give 1 or one per lead"
        )
    if any(str(u).strip().lower().replace("µ", "u") not in _UNITS for u in units):
        raise FieldViolation(f"{where}.units", "unknown amplitude unit; use mV, uV or V")
    return replace(ecg, signal=x, leads=leads, n_leads=x.shape[0])


def check_file(file: EcgFile, where: str) -> None:
    """The bounds of a file before it is decoded: its size and a known format hint."""
    if not file.content:
        raise FieldViolation(f"{where}.content", "is empty")
    if len(file.content) > MAX_FILE_BYTES:
        raise FieldViolation(f"{where}.content", f"{len(file.content):,} bytes; at most {MAX_FILE_BYTES:,}")
    if file.format_hint is not None and file.format_hint not in FILE_FORMATS:
        raise FieldViolation(f"{where}.format_hint", f"unknown format; one of {', '.join(FILE_FORMATS)}")


def read_file(file: EcgFile, where: str) -> EcgQuery:
    """Decode a file (the readers' bounds apply while decoding) into a raw ECG within the raw bounds."""
    from ecgsearch.ecg.readers import ReaderError, read_ecg

    check_file(file, where)
    try:
        ecg = read_ecg(file.content, file.format_hint)
    except ReaderError as exc:
        part = "format_hint" if exc.field == "format_hint" else "content"
        raise FieldViolation(f"{where}.{part}", f"{exc.field}: {exc.reason}") from None
    keep = int(MAX_FILE_SECONDS * ecg.sampling_rate_hz)
    query = EcgQuery(ecg.signal[:, :keep], float(ecg.sampling_rate_hz), tuple(ecg.lead_names), "mV")
    return check_ecg(query, where)


def check_filter(flt: SearchFilter, where: str = "options.filter") -> None:
    """List and string bounds of a filter (before any code is resolved)."""
    for name in ("diagnoses_any", "diagnoses_all", "diagnoses_none", "datasets"):
        check_strings(getattr(flt, name), f"{where}.{name}", items=MAX_CODES, chars=MAX_CODE_CHARS)
    for name in ("exclude_record_ids", "exclude_patient_ids"):
        check_strings(getattr(flt, name), f"{where}.{name}", items=MAX_EXCLUDED_IDS, chars=MAX_ID_CHARS)
    if len(flt.measurements) > len(MEASUREMENTS):
        raise FieldViolation(
            f"{where}.measurements", f"{len(flt.measurements)} ranges; at most one per measurement"
        )


def resolve_filter(flt: SearchFilter, where: str = "options.filter") -> SearchFilter:
    """Bound the filter, resolve every diagnosis code to the stored code system, then validate it once.

    The wire hands an unvalidated filter (``model_construct``); this is where it becomes valid. An empty
    one (most searches) has nothing to bound, resolve or validate: it is the default filter.
    """
    if flt.is_empty():
        return SearchFilter()
    check_filter(flt, where)
    fields = {name: getattr(flt, name) for name in SearchFilter.model_fields}
    for name in ("diagnoses_any", "diagnoses_all", "diagnoses_none"):
        fields[name] = _resolved(fields[name], f"{where}.{name}")
    try:
        return SearchFilter.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first["loc"] if not isinstance(p, int))
        raise FieldViolation(f"{where}.{path}" if path else where, describe_validation(exc)) from exc


def summarise(
    hits: Sequence[Hit],
    info: CollectionInfo,
    query_codes: Sequence[str] | None = None,
    exclusions: Sequence[str] = (),
) -> NeighbourhoodSummary:
    """Count each diagnosis among the neighbours and set it against its base rate in the collection."""
    counts = Counter(code for hit in hits for code in set(hit.payload.diagnoses))
    n = len(hits)
    in_query = set(query_codes or ())
    rows = []
    for code, count in counts.items():
        fraction = count / n
        base_rate = info.diagnosis_counts.get(code, 0) / info.count if info.count else 0.0
        row = DiagnosisConcentration(
            code=code,
            description=codes.describe(code),
            count=count,
            fraction=fraction,
            base_rate=base_rate,
            enrichment=fraction / base_rate if base_rate > 0 else 0.0,
            in_query=code in in_query,
        )
        seen = evidence(row, n)  # the one highlight rule, carried on the wire for API clients
        rows.append(
            row.model_copy(
                update={
                    "enrichment_low": seen.low,
                    "enrichment_high": seen.high,
                    "highlighted": seen.highlighted,
                }
            )
        )
    rows.sort(key=lambda r: (-r.count, -r.enrichment, r.code))
    return NeighbourhoodSummary(
        n_neighbours=n, collection_count=info.count, diagnoses=rows, exclusions=list(exclusions)
    )


def _resolved(values: Sequence[str], where: str) -> list[str]:
    """Codes in the stored code system; blanks are left for the filter's own validation to name."""
    out = []
    for i, value in enumerate(values):
        try:
            out.append(codes.resolve(value) if value.strip() else value)
        except InvalidQuery:
            raise FieldViolation(
                f"{where}[{i}]",
                f"unknown diagnosis code {quote(value.strip())}: expected a SNOMED CT id, a Challenge "
                "abbreviation (e.g. AF, RBBB) or a PTB-XL SCP statement (e.g. AFIB, SCP:IMI)",
            ) from None
    return list(dict.fromkeys(out))


class _located:  # lower-case: used as a context manager, like contextlib's helpers
    """Re-raise a FieldViolation or SignalError with the batch position in its field path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, FieldViolation):
            path = f"{self.where}.{exc.field}" if exc.field else self.where
            raise FieldViolation(path, exc.description) from exc
        if isinstance(exc, InvalidQuery):
            raise FieldViolation(self.where, str(exc)) from exc
        if isinstance(exc, signals.SignalError):
            raise FieldViolation(f"{self.where}.ecg", exc.reason) from exc
