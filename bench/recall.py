"""The one harness for scale numbers: recall@k vs exact search, latency, build time, bytes per vector, RSS.

Engines (the project's EdgeStore, FAISS HNSW, FAISS IVF-PQ, and opt-in the ServerStore on
qdrant-client's local mode) are run on the same vectors, queries and
filter classes; exact ground truth comes from numpy over the filtered rows, so a filtered engine is
judged against the subset it was asked to search. docs/results.md and docs/deploy.md cite the
JSON this writes. faiss is imported inside functions: the search package works without it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ecgsearch.bench import synthetic
from ecgsearch.bench.memory import MemoryCap, PeakSampler, rss_bytes
from ecgsearch.bench.metrics import exact_topk_multi, latency_summary, recall_at_k
from ecgsearch.bench.results import machine, relative, write_results
from ecgsearch.ecg import ptbxl
from ecgsearch.ecg.schema import EcgPayload, SearchFilter

KS = (1, 10, 100)
SELECTIVE_AGE = (40, 80)
MODERATE_CODE = "59118001"  # RBBB, ~4% of synthetic points

if TYPE_CHECKING:
    import faiss

    from ecgsearch.search.engine.store import Store


@dataclass(frozen=True)
class FilterClass:
    """A filter as the store sees it and as a row mask (for exact search and FAISS selectors)."""

    name: str
    description: str
    filter: SearchFilter | None
    mask: np.ndarray | None  # over data rows; None = every row
    # Search by record: each query is a stored row searched with its own filter (record and patient
    # excluded); ``rows`` are those rows, ``per_query`` their filters, ``truth`` the exact answer.
    rows: np.ndarray | None = None
    per_query: list[SearchFilter] | None = None
    truth: np.ndarray | None = None
    fraction_kept: float | None = None

    @property
    def fraction(self) -> float:
        if self.fraction_kept is not None:
            return self.fraction_kept
        return 1.0 if self.mask is None else float(self.mask.mean())

    def queries_of(self, data: Dataset) -> np.ndarray:
        return data.queries if self.rows is None else data.vectors[self.rows]

    def filter_of(self, i: int) -> SearchFilter | None:
        return self.filter if self.per_query is None else self.per_query[i]


@dataclass
class Dataset:
    """Vectors, payload columns, queries and filter classes of one benchmark size."""

    name: str
    vectors: np.ndarray
    queries: np.ndarray
    filters: list[FilterClass]
    payloads: Callable[[int, int], list[EcgPayload]]  # rows [start, stop) as store payloads
    info: dict = field(default_factory=dict)


@dataclass
class Run:
    """One engine at one search setting: what it found and how long each query took."""

    engine: str
    setting: dict
    filter: str
    ids: np.ndarray
    seconds: list[float]


def synthetic_dataset(n: int, dim: int, n_queries: int, seed: int, folder: Path | None = None) -> Dataset:
    """The synthetic set of size n (a prefix of every larger one with the same seed).

    With ``folder`` the vectors are memory-mapped from a file there (``synthetic.generate_mapped``),
    so the benchmark's own heap stays small beside the store it measures.
    """
    mix = synthetic.mixture(dim, seed=seed)
    vectors, pay = synthetic.generate(mix, n) if folder is None else synthetic.generate_mapped(mix, n, folder)
    queries, _ = synthetic.queries(mix, n_queries)
    rare = [i for i, c in enumerate(synthetic.CODES) if c[0] == synthetic.RARE_CODE][0]
    moderate = [i for i, c in enumerate(synthetic.CODES) if c[0] == MODERATE_CODE][0]
    lo, hi = SELECTIVE_AGE
    filters = [
        FilterClass("none", "no filter", None, None),
        FilterClass(
            "selective",
            f"diagnosis {synthetic.CODES[rare][1]} ({synthetic.RARE_CODE}, ~1%) and age {lo}-{hi}",
            SearchFilter(diagnoses_any=[synthetic.RARE_CODE], age_min=lo, age_max=hi),
            pay.codes[:, rare] & (pay.age >= lo) & (pay.age <= hi),
        ),
        FilterClass(
            "moderate",
            f"diagnosis {synthetic.CODES[moderate][1]} ({MODERATE_CODE}, ~4%): at 2M as many points as "
            "the selective class keeps at 12M",
            SearchFilter(diagnoses_any=[MODERATE_CODE]),
            pay.codes[:, moderate].copy(),
        ),
        FilterClass("broad", "sex F (~48%)", SearchFilter(sex="F"), pay.female.copy()),
        FilterClass("broad_age", "age >= 70 (~25%)", SearchFilter(age_min=70), pay.age >= 70),
        by_record_class(vectors, n_queries, seed),
    ]

    def payloads(start: int, stop: int) -> list[EcgPayload]:
        return [synthetic_payload(i, pay, i) for i in range(start, stop)]

    info = {"generator": "synthetic.mixture", "clusters": len(mix.weights), "seed": seed, "dim": dim}
    info["code_prevalence"] = {c[1]: float(pay.codes[:, j].mean()) for j, c in enumerate(synthetic.CODES)}
    return Dataset(f"synthetic-{n}", vectors, queries, filters, payloads, info)


RECORDS_PER_PATIENT = 4
SITE, OTHER_SITE = "syn", "syn-other"
OTHER_SITE_EVERY, COPY_EVERY = 100, 200  # 1% of rows in another site, 0.5% copies of the row before


def synthetic_site(row: int) -> str:
    return OTHER_SITE if row % OTHER_SITE_EVERY == 3 else SITE


def synthetic_copy_of(row: int) -> str | None:
    """The record a copy row repeats (the row before it, the same patient), or None."""
    return f"syn:{row - 1}" if row % COPY_EVERY == 7 else None


def served_rows(n: int) -> np.ndarray:
    """Rows a caller of SITE sees by default: its site's, without copies (the service's own rules)."""
    rows = np.arange(n)
    return (rows % OTHER_SITE_EVERY != 3) & (rows % COPY_EVERY != 7)


def synthetic_patient(row: int) -> str:
    """Synthetic patients own consecutive rows, RECORDS_PER_PATIENT each."""
    return f"syn-p{row // RECORDS_PER_PATIENT}"


def by_record_class(vectors: np.ndarray, n_queries: int, seed: int) -> FilterClass:
    """Search by a stored record with the service's default exclusions (the record and its patient).

    Queries are stored rows; the exact answer is the top-k of every row but that patient's.
    """
    n = len(vectors)
    rows = np.sort(np.random.default_rng([seed, 7]).choice(n, size=min(n_queries, n), replace=False))
    filters = [
        SearchFilter(exclude_record_ids=[f"syn:{r}"], exclude_patient_ids=[synthetic_patient(int(r))])
        for r in rows
    ]
    return FilterClass(
        "by_record",
        f"a stored record as query, its patient's {RECORDS_PER_PATIENT} records excluded",
        None,
        None,
        rows=rows,
        per_query=filters,
        fraction_kept=1.0 - RECORDS_PER_PATIENT / n,
    )


def by_record_truth(
    vectors: np.ndarray, rows: np.ndarray, k: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """Exact top-k per stored query row among the rows (of ``mask``) of other patients."""
    extra = k + RECORDS_PER_PATIENT
    ids, _ = exact_topk_multi(vectors[rows], vectors, extra, {"": mask})[""]
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for i, (row, found) in enumerate(zip(rows, ids, strict=True)):
        same = row // RECORDS_PER_PATIENT
        kept = [int(j) for j in found if j >= 0 and j // RECORDS_PER_PATIENT != same][:k]
        out[i, : len(kept)] = kept
    return out


def synthetic_payload(row: int, pay: synthetic.Payloads, index: int) -> EcgPayload:
    """A store payload for synthetic row ``index`` (validation skipped: 1M of them must be cheap)."""
    return EcgPayload.model_construct(
        record_id=f"syn:{row}",
        dataset="synthetic",
        patient_id=synthetic_patient(row),
        diagnoses=pay.diagnoses(index),
        source_codes=[],
        scp_likelihoods={},
        superclasses=[],
        age=int(pay.age[index]),
        age_over_89=False,
        sex="F" if pay.female[index] else "M",
        sampling_rate_hz=100.0,
        duration_s=10.0,
        recorded_at=None,
        source_path="synthetic",
        site=synthetic_site(row),
        duplicate_of=synthetic_copy_of(row),
    )


def row_of(record_id: str) -> int:
    """Row index of a benchmark record id ('syn:17', 'ptbxl:17' -> position set by the dataset)."""
    return int(record_id.rsplit(":", 1)[1])


# ---------------------------------------------------------------- ground truth and measurement


def ground_truth(data: Dataset, k: int) -> dict[str, np.ndarray]:
    """Exact top-k ids per filter class (numpy over the masked rows)."""
    masks = {f.name: f.mask for f in data.filters if f.rows is None}
    truth = {name: ids for name, (ids, _) in exact_topk_multi(data.queries, data.vectors, k, masks).items()}
    for f in data.filters:
        if f.rows is not None:
            truth[f.name] = by_record_truth(data.vectors, f.rows, k)
    return truth


def time_queries(search: Callable[..., np.ndarray], queries: np.ndarray, k: int) -> Run:
    """Run queries one by one (single client thread) and time each call; ``search(q, i)``."""
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    seconds = []
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        found = search(q, i)
        seconds.append(time.perf_counter() - t0)
        ids[i, : min(k, len(found))] = found[:k]
    return Run("", {}, "", ids, seconds)


def score(run: Run, truth: np.ndarray) -> dict:
    """Recall@1/10/100 and latency of one run."""
    out = {"engine": run.engine, **run.setting, "filter": run.filter}
    for k in KS:
        if k <= run.ids.shape[1] and k <= truth.shape[1]:
            out[f"recall@{k}"] = recall_at_k(run.ids, truth, k)
    return out | latency_summary(run.seconds)


def cpu_seconds() -> float:
    """CPU time of this process, all threads (the engines build on their own threads).

    On a shared machine wall time depends on the neighbours; CPU seconds much less so.
    """
    t = os.times()
    return t.user + t.system


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# ---------------------------------------------------------------- engines


@dataclass
class EngineResult:
    """Build statistics and scored runs of one engine on one dataset."""

    engine: str
    build: dict
    runs: list[dict]


STORE_ENGINES = ("edge", "edge-int8", "qdrant-local")


def bench_store(
    data: Dataset,
    truth: dict[str, np.ndarray],
    *,
    engine: str,
    efs: tuple[int, ...],
    k: int,
    workdir: Path,
    log: Callable[[str], None],
    batch: int = 2000,
    resume: bool = False,
) -> EngineResult:
    """One of the project's stores: upsert, optimize, measure disk and RSS, then search per filter.

    ``edge`` and ``edge-int8`` are the EdgeStore (float32 and int8 vectors) with an hnsw_ef sweep;
    ``qdrant-local`` is the ServerStore on qdrant-client's on-disk local mode, which searches by
    brute force: one run per filter, recorded with ``hnsw_ef`` null, and optimize is a no-op wait.
    """
    from ecgsearch.search.engine import store as store_mod

    if engine not in STORE_ENGINES:
        raise ValueError(f"unknown store engine {engine!r}")
    name = engine
    path = workdir / name
    if not resume:
        shutil.rmtree(path, ignore_errors=True)
    settings = store_mod.IndexSettings(quantization=engine == "edge-int8")
    local = engine == "qdrant-local"

    def open_() -> store_mod.Store:
        return store_mod.open_store(path=path, settings=settings, local=local)

    n = len(data.vectors)
    built = build_store(data, open_, path, name=name, log=log, batch=batch, resume=resume)
    gc.collect()
    rss1 = rss_bytes()
    t2 = time.perf_counter()
    st = open_()
    open_s = time.perf_counter() - t2
    default_ef = None if local else settings.search_ef
    sweep: tuple[int | None, ...] = (None,) if local else efs
    runs = []
    try:
        for f in data.filters:
            for ef in sweep:
                plans: Counter[str] = Counter()
                fallbacks: Counter[str] = Counter()

                def one(
                    q: np.ndarray,
                    i: int,
                    f: FilterClass = f,
                    ef: int | None = ef,
                    plans: Counter[str] = plans,
                    fallbacks: Counter[str] = fallbacks,
                ) -> np.ndarray:
                    hits = st.search(q, k=k, filter=f.filter_of(i), ef=ef)
                    plan = getattr(st, "last_plan", None)  # the embedded store's plan (search/engine/plan.py)
                    if plan is not None:
                        plans[plan.kind] += 1
                        fallbacks["queries"] += plan.fallback
                    return np.array([row_of(h.record_id) for h in hits])

                run = time_queries(one, f.queries_of(data), k)
                run.engine, run.setting, run.filter = name, {"hnsw_ef": ef}, f.name
                runs.append(
                    score(run, truth[f.name]) | {"plans": dict(plans), "fallbacks": fallbacks["queries"]}
                )
                log(_fmt(runs[-1]))
        rss_serving = rss_bytes() - rss1
    finally:
        st.close()
    build = {
        "n": n,
        "backend": "qdrant-client local mode (exact, pure Python)" if local else "qdrant-edge",
        "settings": settings.model_dump(mode="json"),
        "default_hnsw_ef": default_ef,
        **built,
        "open_s": open_s,
        "rss_delta_serving_bytes": rss_serving,
        "rss_serving_bytes_per_million": rss_serving / n * 1e6,
    }
    if not resume:
        shutil.rmtree(path, ignore_errors=True)
    return EngineResult(name, build, runs)


def build_store(
    data: Dataset,
    open_: Callable[[], Any],
    path: Path,
    *,
    name: str,
    log: Callable[[str], None],
    batch: int = 2000,
    model_version: str = "bench",
    resume: bool = False,
) -> dict:
    """Create, upsert every row in batches, optimize and close a store; build time, disk and memory.

    Memory is sampled while it runs (``bench.memory``): the peak growth of anonymous and of
    file-backed resident pages over the start, each per million points, besides VmRSS after optimize.
    With ``resume`` a finished build (its figures kept beside the store) is reused, and a store left
    part-way continues from its last whole batch; the figures then cover this process's part only
    (``resumed_from_row`` says where it began).
    """
    n = len(data.vectors)
    finished = path.with_name(path.name + ".built.json")
    if resume and finished.is_file():
        log(f"{name}: reusing the finished build in {path}")
        return dict(json.loads(finished.read_text()))
    gc.collect()
    rss0 = rss_bytes()
    with PeakSampler() as sampler:
        st = open_()
        st.create_collection(dim=data.vectors.shape[1], model_version=model_version)
        first = (st.count() // batch) * batch if resume else 0
        if first:
            log(f"{name}: resuming at row {first} of {n}")
        t0, c0 = time.perf_counter(), cpu_seconds()
        for start in range(first, n, batch):
            stop = min(n, start + batch)
            st.upsert(data.payloads(start, stop), data.vectors[start:stop])
            if start // batch % 50 == 0:
                log(f"{name}: upserted {stop}/{n} ({time.perf_counter() - t0:.0f} s)")
        upsert_s, upsert_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        t1, c1 = time.perf_counter(), cpu_seconds()
        st.optimize()
        optimize_s, optimize_cpu = time.perf_counter() - t1, cpu_seconds() - c1
        rss_built = rss_bytes() - rss0
        st.close()
    disk = dir_bytes(path)
    peak = sampler.peak
    log(
        f"{name}: upsert {upsert_s:.1f} s, optimize {optimize_s:.1f} s, disk {disk / n:.0f} B/pt, peak "
        f"anon {peak.anon_bytes / n * 1e6 / 1e9:.2f} GB/M, file {peak.file_bytes / n * 1e6 / 1e9:.2f} GB/M"
    )
    built = {
        "upsert_s": upsert_s,
        "upsert_points_per_s": n / upsert_s if upsert_s else None,
        "optimize_s": optimize_s,
        "upsert_cpu_s": upsert_cpu,
        "optimize_cpu_s": optimize_cpu,
        "build_s": upsert_s + optimize_s,
        "disk_bytes": disk,
        "disk_bytes_per_vector": disk / n,
        "rss_delta_build_bytes": rss_built,
        "rss_build_bytes_per_million": rss_built / n * 1e6,
        **peak.as_dict(n),
        "resumed_from_row": first,
    }
    if resume:
        finished.write_text(json.dumps(built))
    return built


def bench_service(
    data: Dataset,
    *,
    k: int,
    workdir: Path,
    log: Callable[[str], None],
    batch: int = 2000,
    resume: bool = False,
) -> EngineResult:
    """The int8 store searched through the service's own search path, as a caller of one site.

    Each class's filter goes in as the caller's filter; the service adds what it adds to every search
    (copies dropped, the caller's sites kept; by record: the record and its patient excluded), so
    the plan and the recall are those of served queries. The ground truth applies the same rules:
    the class's rows of SITE that are not copies. Needs the data's dimension to be the bundled model's
    (the service refuses a collection of another model).
    """
    from ecgsearch.export.runtime import Embedder
    from ecgsearch.search.api import SearchOptions
    from ecgsearch.search.engine.store import EdgeStore, IndexSettings
    from ecgsearch.search.serving.service import SearchService

    embedder = Embedder(threads=1)
    n, dim = data.vectors.shape
    if dim != embedder.dim:
        raise ValueError(f"the service engine needs --dim {embedder.dim} (the bundled model's), got {dim}")
    path = workdir / "service"
    if not resume:
        shutil.rmtree(path, ignore_errors=True)
    settings = IndexSettings()
    built = build_store(
        data,
        lambda: EdgeStore(path, settings=settings),
        path,
        name="service",
        log=log,
        batch=batch,
        model_version=embedder.version,
        resume=resume,
    )
    keep = served_rows(n)
    masks = {f.name: keep if f.mask is None else f.mask & keep for f in data.filters if f.rows is None}
    truth = {name: ids for name, (ids, _) in exact_topk_multi(data.queries, data.vectors, k, masks).items()}
    sites = frozenset({SITE})
    store = EdgeStore(path)
    service = SearchService(store, embedder)
    runs = []
    try:
        for f in data.filters:
            plans: Counter[str] = Counter()
            fractions: list[float] = []
            if f.rows is not None:
                rows = f.rows[f.rows % OTHER_SITE_EVERY != 3]  # the caller's own records (copies too)
                want = by_record_truth(data.vectors, rows, k, mask=keep)
                queries = data.vectors[rows]
            else:
                want, queries, rows = truth[f.name], data.queries, None

            def one(
                q: np.ndarray,
                i: int,
                f: FilterClass = f,
                rows: np.ndarray | None = rows,
                plans: Counter[str] = plans,
                fractions: list[float] = fractions,
            ) -> np.ndarray:
                options = SearchOptions(k=k, filter=f.filter or SearchFilter())
                if rows is not None:
                    result = service.search_by_record(f"syn:{int(rows[i])}", options, sites=sites)
                else:
                    result = service.search_by_vector(q, options, sites=sites)
                plan = store.last_plan
                if plan is not None:
                    plans[plan.kind] += 1
                    if plan.estimate is not None and plan.total:
                        fractions.append(plan.estimate / plan.total)
                return np.array([row_of(h.record_id) for h in result.hits])

            run = time_queries(one, queries, k)
            run.engine, run.setting, run.filter = "service", {"hnsw_ef": settings.search_ef}, f.name
            fraction = float(np.mean(fractions)) if fractions else None
            extra = {"plans": dict(plans), "estimated_fraction": fraction, "queries": len(queries)}
            runs.append(score(run, want) | extra)
            log(_fmt(runs[-1]) + f" plans={dict(plans)}")
        copies = copy_search(store, data.vectors, seed=len(data.queries))
        log(
            f"  copy search: original among the {copies['candidates']} candidates "
            f"{copies['original_among_candidates']:.3f}, {copies['cpu_ms_per_ecg']:.2f} CPU ms per ECG"
        )
    finally:
        service.close()
        store.close()
    if not resume:
        shutil.rmtree(path, ignore_errors=True)
    build = {
        "copy_search": copies,
        "n": n,
        "backend": "qdrant-edge, searched through SearchService (in process)",
        "settings": settings.model_dump(mode="json"),
        "default_hnsw_ef": settings.search_ef,
        "caller_sites": sorted(sites),
        "served_fraction": float(keep.mean()),
        **built,
    }
    return EngineResult("service", build, runs)


COPY_COSINE = 0.99  # a copy read at another rate or through another format's filters (DOMAIN.md: 0.991+)


def copy_search(
    store: Store, vectors: np.ndarray, *, seed: int, n: int = 256, batch: int = 128
) -> dict[str, Any]:
    """The search ingest makes for every ECG to find what it may be a copy of (``mark_copies``: its
    CANDIDATES nearest within its site, batch by batch), for ``n`` near-duplicates of stored rows of
    SITE at cosine COPY_COSINE: how often their original is among the candidates, and the CPU per ECG."""
    from ecgsearch.search.engine.copies import CANDIDATES

    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), n * 2, replace=False)
    rows = rows[served_rows(len(vectors))[rows]][:n]  # the caller's own originals, not copies
    originals = np.array(vectors[rows], dtype=np.float32)
    originals /= np.linalg.norm(originals, axis=1, keepdims=True)
    noise = rng.standard_normal(originals.shape).astype(np.float32)
    noise -= (noise * originals).sum(axis=1, keepdims=True) * originals  # orthogonal to the original
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    queries = COPY_COSINE * originals + np.sqrt(1 - COPY_COSINE**2) * noise
    site = SearchFilter(sites=[SITE])
    store.search_batch(queries[:16], k=CANDIDATES, filter=site)  # warm
    found, cpu = [], time.process_time()
    for start in range(0, len(queries), batch):
        part = rows[start : start + batch]
        hits = store.search_batch(queries[start : start + batch], k=CANDIDATES, filter=site)
        found += [f"syn:{int(r)}" in {h.record_id for h in hs} for r, hs in zip(part, hits, strict=True)]
    return {
        "queries": len(queries),
        "cosine_to_original": COPY_COSINE,
        "candidates": CANDIDATES,
        "batch": batch,
        "original_among_candidates": float(np.mean(found)),
        "cpu_ms_per_ecg": round((time.process_time() - cpu) / len(queries) * 1e3, 3),
    }


def _bitmap(mask: np.ndarray) -> tuple[faiss.IDSelectorBitmap, np.ndarray]:
    import faiss

    bits = np.packbits(mask.astype(np.uint8), bitorder="little")
    return faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)), bits


def bench_faiss(
    data: Dataset,
    truth: dict[str, np.ndarray],
    *,
    kind: str,
    sweep: tuple[int, ...],
    k: int,
    log: Callable[[str], None],
    build_threads: int = 2,
    m: int = 32,
    ef_construction: int = 64,
) -> EngineResult:
    """FAISS IndexHNSWFlat (efSearch sweep) or IVF-PQ (nprobe sweep); filters through IDSelectorBitmap."""
    import faiss

    n, dim = data.vectors.shape
    gc.collect()
    rss0 = rss_bytes()
    faiss.omp_set_num_threads(build_threads)
    t0, c0 = time.perf_counter(), cpu_seconds()
    index: faiss.Index
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.add(data.vectors)
        params = {"M": m, "efConstruction": ef_construction}
        knob = "efSearch"
    else:
        nlist = max(16, int(4 * np.sqrt(n)))
        pq_m = min(32, dim // 8)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        train = data.vectors[np.random.default_rng(0).permutation(n)[: min(n, 64 * nlist)]]
        index.train(train)
        index.add(data.vectors)
        params = {"nlist": nlist, "pq_m": pq_m, "pq_bits": 8, "train_points": len(train)}
        knob = "nprobe"
    build_s, build_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    rss_delta = rss_bytes() - rss0
    size = len(faiss.serialize_index(index))
    name = f"faiss-{kind}"
    log(f"{name}: build {build_s:.1f} s, {size / n:.0f} B/vector")
    faiss.omp_set_num_threads(1)
    runs = []
    for f in data.filters:
        if f.per_query is not None:
            continue  # per-query exclusions: a store feature, not a FAISS selector
        sel, _bits = _bitmap(f.mask) if f.mask is not None else (None, None)
        for value in sweep:
            extra = {"sel": sel} if sel is not None else {}
            if kind == "hnsw":
                # faiss's stubs lack SearchParametersHNSW (swigfaiss has it)
                sp = faiss.SearchParametersHNSW(efSearch=value, **extra)  # type: ignore[attr-defined]
            else:
                # faiss's stubs lack the keyword arguments faiss's Python wrapper adds to SearchParameters
                sp = faiss.SearchParametersIVF(nprobe=value, **extra)  # type: ignore[call-arg]

            def one(
                q: np.ndarray, i: int, sp: faiss.SearchParameters = sp, index: faiss.Index = index
            ) -> np.ndarray:
                _, ids = index.search(q[None], k, params=sp)
                return ids[0]

            run = time_queries(one, data.queries, k)
            run.engine, run.setting, run.filter = name, {knob: value}, f.name
            runs.append(score(run, truth[f.name]))
            log(_fmt(runs[-1]))
    build = {
        "n": n,
        "params": params,
        "build_s": build_s,
        "build_cpu_s": build_cpu,
        "build_threads": build_threads,
        "index_bytes": size,
        "bytes_per_vector": size / n,
        "rss_delta_build_bytes": rss_delta,
    }
    del index
    gc.collect()
    return EngineResult(name, build, runs)


def _fmt(row: dict) -> str:
    setting = {k: v for k, v in row.items() if k in {"hnsw_ef", "efSearch", "nprobe"}}
    return (
        f"  {row['engine']:<12} {row['filter']:<10} {setting} "
        f"r@10={row.get('recall@10', float('nan')):.4f} p50={row['p50_ms']:.2f} ms p99={row['p99_ms']:.2f} ms"
    )


# ---------------------------------------------------------------- the whole benchmark


@dataclass
class BenchConfig:
    """Everything that decides the numbers; written into the results file."""

    sizes: tuple[int, ...] = (100_000, 300_000, 1_000_000)
    dim: int = 256
    queries: int = 1000
    seed: int = 0
    k: int = 10  # as the service queries; a larger k lifts the effective hnsw_ef
    edge_efs: tuple[int, ...] = (64, 128, 256, 512)
    hnsw_efs: tuple[int, ...] = (32, 64, 128, 256)
    nprobes: tuple[int, ...] = (8, 16, 32, 64, 128)
    engines: tuple[str, ...] = ("edge", "edge-int8", "faiss-hnsw", "faiss-ivfpq")
    faiss_max_size: int = 1_000_000
    faiss_ef_construction: int = 256  # as the store's ef_construct, so the graphs compare like for like
    local_max_size: int = 100_000  # qdrant-local upserts ~850 points/s and searches by brute force
    resume: bool = False  # stores kept under scratch/stores/, a stopped build continues (needs scratch)


def run_dataset(
    data: Dataset,
    cfg: BenchConfig,
    log: Callable[[str], None],
    progress: Callable[[dict], None] | None = None,
    scratch: Path | None = None,
) -> dict:
    """Ground truth, then every engine, on one dataset; ``progress`` gets the block after each engine.

    ``scratch`` (the command's --scratch) holds the stores being built and keeps ground truth between runs.
    """
    t0 = time.perf_counter()
    truth = cached_ground_truth(data, cfg, scratch)
    log(f"{data.name}: exact ground truth in {time.perf_counter() - t0:.1f} s")
    engines: list[EngineResult] = []
    skipped: list[dict] = []

    def block() -> dict:
        return {
            "dataset": data.name,
            "n": len(data.vectors),
            "queries": len(data.queries),
            "data": data.info,
            "filters": [
                {"name": f.name, "description": f.description, "fraction": f.fraction} for f in data.filters
            ],
            "engines": [{"engine": e.engine, "build": e.build} for e in engines],
            "runs": [r for e in engines for r in e.runs],
            "skipped": skipped,
            "wall_s": time.perf_counter() - t0,
        }

    with tempfile.TemporaryDirectory(prefix="ecgbench-", dir=scratch) as tmp:
        work = Path(scratch) / "stores" / data.name if cfg.resume and scratch else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for engine in cfg.engines:
            if engine.startswith("faiss") and len(data.vectors) > cfg.faiss_max_size:
                skipped.append({"engine": engine, "reason": f"n > faiss_max_size {cfg.faiss_max_size}"})
                continue
            if engine == "qdrant-local" and len(data.vectors) > cfg.local_max_size:
                skipped.append({"engine": engine, "reason": f"n > local_max_size {cfg.local_max_size}"})
                continue
            if engine == "service":
                res = bench_service(data, k=cfg.k, workdir=work, log=log, resume=cfg.resume)
            elif engine in STORE_ENGINES:
                res = bench_store(
                    data,
                    truth,
                    engine=engine,
                    efs=cfg.edge_efs,
                    k=cfg.k,
                    workdir=work,
                    log=log,
                    resume=cfg.resume,
                )
            elif engine == "faiss-hnsw":
                res = bench_faiss(
                    data,
                    truth,
                    kind="hnsw",
                    sweep=cfg.hnsw_efs,
                    k=cfg.k,
                    log=log,
                    ef_construction=cfg.faiss_ef_construction,
                )
            elif engine == "faiss-ivfpq":
                res = bench_faiss(data, truth, kind="ivfpq", sweep=cfg.nprobes, k=cfg.k, log=log)
            else:
                raise ValueError(f"unknown engine {engine!r}")
            engines.append(res)
            if progress:
                progress(block())
    return block()


def cached_ground_truth(data: Dataset, cfg: BenchConfig, folder: Path | None = None) -> dict[str, np.ndarray]:
    """Exact ground truth, kept under ``folder`` when given (parallel jobs of one size share it).

    The file name carries a digest of the data, so another model's embeddings never reuse stale truth.
    """
    if not folder:
        return ground_truth(data, cfg.k)
    digest = hashlib.sha1(data.vectors[:1000].tobytes() + data.queries[:100].tobytes()).hexdigest()[:12]
    path = Path(folder) / f"truth-{data.name}-q{len(data.queries)}-k{cfg.k}-{digest}.npz"
    if path.is_file():
        with np.load(path) as stored:
            cached = {name: stored[name] for name in stored.files}
        if {f.name for f in data.filters} <= set(cached):
            return cached
    truth = ground_truth(data, cfg.k)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    arrays: dict[str, Any] = truth  # filter names: never savez's own allow_pickle
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return truth


def plot(result: dict, path: Path) -> None:
    """Recall@10 vs p50 latency per engine; one panel per filter class, one line style per size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = result["results"]
    filters = [f["name"] for f in blocks[0]["filters"]] if blocks else []
    fig, axes = plt.subplots(1, max(1, len(filters)), figsize=(4.2 * max(1, len(filters)), 4), squeeze=False)
    styles = ["-", "--", ":", "-."]
    colours: dict[str, str] = {}
    for ax, fname in zip(axes[0], filters, strict=False):
        for bi, block in enumerate(blocks):
            for engine in dict.fromkeys(r["engine"] for r in block["runs"]):
                rows = [r for r in block["runs"] if r["engine"] == engine and r["filter"] == fname]
                if not rows:
                    continue
                colour = colours.setdefault(engine, f"C{len(colours)}")
                ax.plot(
                    [r["p50_ms"] for r in rows],
                    [r.get("recall@10", np.nan) for r in rows],
                    styles[bi % len(styles)],
                    marker="o",
                    ms=3,
                    color=colour,
                    label=f"{engine} {block['dataset']}",
                )
        ax.axhline(0.99, color="grey", lw=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency (ms, one thread)")
        ax.set_ylabel("recall@10")
        ax.set_title(f"filter: {fname}")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(
    cfg: BenchConfig,
    out: Path,
    plot_path: Path | None,
    log: Callable[[str], None],
    scratch: Path | None = None,
    memory_cap: MemoryCap | None = None,
) -> dict:
    """Every size in turn; the JSON (and plot) is rewritten after each size so a long run reports early.

    Under ``memory_cap`` each save records the cgroup's limit and the highest usage so far.
    """
    from dataclasses import asdict

    result: dict[str, Any] = {
        "benchmark": "recall",
        "config": asdict(cfg),
        "machine": machine(),
        "results": [],
    }
    t0 = time.perf_counter()
    done: list[dict] = []

    def save(blocks: list[dict]) -> None:
        result["results"] = blocks
        result["wall_s"] = time.perf_counter() - t0
        result["summary"] = summarise(blocks)
        if memory_cap is not None:
            result["memory_cap"] = memory_cap.report()
        write_results(out, result)
        if plot_path:
            plot(result, plot_path)

    for n in sorted(cfg.sizes):
        t1 = time.perf_counter()
        data = synthetic_dataset(n, cfg.dim, cfg.queries, cfg.seed, folder=scratch)
        log(f"{data.name}: generated in {time.perf_counter() - t1:.1f} s")
        done.append(
            run_dataset(data, cfg, log, progress=lambda partial: save([*done, partial]), scratch=scratch)
        )
        save(done)
        del data
        gc.collect()
    return result


def merge(paths: list[Path]) -> dict:
    """Several results files (e.g. small sizes and 1M run as separate jobs) as one, sizes ascending."""
    files = [json.loads(Path(p).read_text()) for p in paths]
    by_name: dict[str, dict] = {}
    for block in (b for f in files for b in f["results"]):
        if block["dataset"] not in by_name:
            by_name[block["dataset"]] = json.loads(json.dumps(block))
            continue
        into = by_name[block["dataset"]]  # the same data set run by several jobs: pool the engines
        into["engines"] += block["engines"]
        into["runs"] += block["runs"]
        into["skipped"] += block["skipped"]
        into["wall_s"] += block["wall_s"]
    blocks = sorted(by_name.values(), key=lambda b: (b["n"], b["dataset"]))
    merged = {
        "benchmark": "recall",
        "merged_from": [
            {"path": relative(p), "config": f["config"], "machine": f["machine"]}
            for p, f in zip(paths, files, strict=True)
        ],
        "results": blocks,
    }
    merged["summary"] = summarise(blocks)
    return merged


def summarise(blocks: list[dict]) -> list[dict]:
    """Per size, engine and filter: recall@10 at the default ef, and the smallest setting reaching 0.99."""
    rows = []
    for block in blocks:
        defaults = {e["engine"]: e["build"].get("default_hnsw_ef") for e in block["engines"]}
        for engine in dict.fromkeys(r["engine"] for r in block["runs"]):
            for fname in dict.fromkeys(r["filter"] for r in block["runs"]):
                runs = [r for r in block["runs"] if r["engine"] == engine and r["filter"] == fname]
                if not runs:
                    continue
                knob = next(k for k in ("hnsw_ef", "efSearch", "nprobe") if k in runs[0])
                at_default = [r for r in runs if r[knob] == defaults.get(engine)]
                reaching = [r for r in runs if r.get("recall@10", 0) >= 0.99]
                rows.append(
                    {
                        "n": block["n"],
                        "engine": engine,
                        "filter": fname,
                        "knob": knob,
                        "default": defaults.get(engine),
                        "recall@10_at_default": at_default[0]["recall@10"] if at_default else None,
                        "p50_ms_at_default": at_default[0]["p50_ms"] if at_default else None,
                        "smallest_setting_reaching_0.99": min((r[knob] for r in reaching), default=None),
                        "best_recall@10": max(r.get("recall@10", 0) for r in runs),
                        "plans_at_default": at_default[0].get("plans") if at_default else None,
                    }
                )
    for row in rows:  # latency relative to the unfiltered search of the same engine, size and run
        base = next(
            (r for r in rows if (r["n"], r["engine"], r["filter"]) == (row["n"], row["engine"], "none")), None
        )
        if base and base["p50_ms_at_default"] and row["p50_ms_at_default"] is not None:
            row["p50_vs_unfiltered"] = row["p50_ms_at_default"] / base["p50_ms_at_default"]
    return rows


# ---------------------------------------------------------------- real embeddings


def ptbxl_dataset(root: Path, model: Path | None, log: Callable[[str], None]) -> Dataset:
    """Every PTB-XL record embedded with the model; the fold-10 records are the queries.

    At ~2,000 points recall is close to trivial; this run shows the pipeline on real vectors and
    real payloads (CLBBB ~1.7% is the selective code here; WPW is absent from the subset).
    """
    from ecgsearch.bench.retrieval import embed
    from ecgsearch.ecg import codes
    from ecgsearch.ecg.signals import SignalError
    from ecgsearch.export.runtime import DEFAULT_MODEL, bundled_model
    from ecgsearch.ingest.sources import enumerate_source, load

    table = ptbxl.read_table(root)  # the PTB-XL source lists the table's rows in order
    records, is_query, rejected = [], [], 0
    for row, candidate in zip(table, enumerate_source(root), strict=True):
        try:  # ingest's own reading and payloads: one age rule
            records.append(load(candidate))
            is_query.append(row.fold == 10)
        except (SignalError, OSError):
            rejected += 1
    log(f"prepared {len(records)} records ({rejected} rejected)")
    vectors, meta = embed(model or bundled_model(DEFAULT_MODEL), np.stack([r.signal for r in records]))
    # Row index as record id: the bench maps hits back to rows.
    stored = [r.payload.model_copy(update={"record_id": f"ptbxl:{i}"}) for i, r in enumerate(records)]
    age = np.array([p.age if p.age is not None else -1 for p in stored])
    female = np.array([p.sex == "F" for p in stored])
    rare = codes.scp_to_normalised("CLBBB")
    lo, hi = SELECTIVE_AGE
    has_rare = np.array([rare in p.diagnoses for p in stored])
    filters = [
        FilterClass("none", "no filter", None, None),
        FilterClass(
            "selective",
            f"CLBBB ({rare}) and age {lo}-{hi}",
            SearchFilter(diagnoses_any=[rare], age_min=lo, age_max=hi),
            has_rare & (age >= lo) & (age <= hi),
        ),
        FilterClass("broad", "sex F", SearchFilter(sex="F"), female),
        FilterClass("broad_age", "age >= 70", SearchFilter(age_min=70), age >= 70),
    ]

    def payloads(start: int, stop: int) -> list[EcgPayload]:
        return stored[start:stop]

    info = {"source": relative(root), "model": meta, "rejected": rejected}
    queries = vectors[np.array(is_query)]
    info["queries"] = "fold 10 records (each also in the collection: its own top-1)"
    return Dataset(f"ptbxl-{len(records)}", vectors, queries, filters, payloads, info)


def run_real(
    cfg: BenchConfig,
    root: Path,
    model: Path | None,
    out: Path,
    plot_path: Path | None,
    log: Callable[[str], None],
    scratch: Path | None = None,
) -> dict:
    """The benchmark on real PTB-XL embeddings (queries: fold 10)."""
    from dataclasses import asdict

    data = ptbxl_dataset(root, model, log)
    result: dict[str, Any] = {"benchmark": "recall-real", "config": asdict(cfg), "machine": machine()}
    result["results"] = [run_dataset(data, cfg, log, scratch=scratch)]
    result["summary"] = summarise(result["results"])
    write_results(out, result)
    if plot_path:
        plot(result, plot_path)
    return result
