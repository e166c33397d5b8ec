"""The ``bench`` and ``eval`` command groups; each command imports its machinery when it runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.options import need_file
from ecgsearch.cli.output import AsJson, emit, results

# the nested choices' --rule and --whitening (eval choose, eval crossfit --nested)
Rule = Annotated[
    str,
    typer.Option(
        "--rule",
        help="how the nested choice ranks the settings on the inner fold: inner-score (the mean of P@10 "
        "any superclass and the mean code P@10) or aims-first (the code aims met against the inner fold's "
        "best handcrafted kNN first, then P@10 any superclass)",
    ),
]
Whitening = Annotated[
    bool,
    typer.Option(
        "--whitening",
        help="also pick the served whitening's shrinkage on the same inner model: the vector whitened "
        "against how it moves when the same ECG is read a little differently (steadier neighbours; needs "
        "--nested in eval crossfit)",
    ),
]


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(v)) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{name}: comma-separated integers expected, got {text!r}") from exc
    if not values or min(values) <= 0:
        raise typer.BadParameter(f"{name}: positive integers expected, got {text!r}")
    return values


def _logger(quiet: bool) -> Callable[[str], None]:
    start = time.perf_counter()

    def log(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)

    return log


def _need_ptbxl(folder: Path, hint: str) -> None:
    """Refuse a PTB-XL folder without its table before any work starts, naming the option."""
    from ecgsearch.ecg import ptbxl

    need_file(folder, ptbxl.TABLE, hint)


def _beside(out: Path, plot: Path | None) -> Path:
    """The plot path: ``--plot`` when given, else beside ``--out`` (never a committed plot elsewhere)."""
    return plot if plot is not None else out.with_suffix(".png")


def recall(
    sizes: Annotated[
        str, typer.Option(help="synthetic collection sizes (default 100k, 300k, 1M)", show_default=False)
    ] = "100000,300000,1000000",
    dim: Annotated[int, typer.Option(min=8, help="embedding dimension")] = 256,
    queries: Annotated[int, typer.Option(min=1, help="queries per size (drawn apart from the data)")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the synthetic mixture")] = 0,
    k: Annotated[
        int,
        typer.Option(min=1, max=1000, help="neighbours per query, as the service asks (recall@k up to k)"),
    ] = 10,
    engines: Annotated[
        str,
        typer.Option(
            help="engines to run, of edge, edge-int8, faiss-hnsw, faiss-ivfpq (default: these four), "
            "qdrant-local (the ServerStore in local mode) and service (the int8 store searched through "
            "the service as a one-site caller: copies dropped, sites kept; needs --dim of the model)",
            show_default=False,
        ),
    ] = "edge,edge-int8,faiss-hnsw,faiss-ivfpq",
    edge_ef: Annotated[str, typer.Option(help="hnsw_ef values for the store")] = "64,128,256,512",
    hnsw_ef: Annotated[str, typer.Option(help="efSearch values for FAISS HNSW")] = "32,64,128,256",
    nprobe: Annotated[str, typer.Option(help="nprobe values for FAISS IVF-PQ")] = "8,16,32,64,128",
    faiss_max_size: Annotated[
        int, typer.Option(help="skip FAISS engines above this many vectors")
    ] = 1_000_000,
    faiss_ef_construction: Annotated[
        int, typer.Option("--faiss-efc", min=8, help="FAISS HNSW efConstruction (M is 32, as the store's m)")
    ] = 256,
    local_max_size: Annotated[
        int, typer.Option(help="skip qdrant-local (brute force, ~850 points/s) above this many vectors")
    ] = 100_000,
    real_ptbxl: Annotated[
        Path | None, typer.Option(help="PTB-XL folder: benchmark real embeddings instead")
    ] = None,
    model: Annotated[Path | None, typer.Option(help="ONNX model for --real-ptbxl (default: bundled)")] = None,
    merge: Annotated[
        str | None, typer.Option(help="results files (a,b) to combine instead of running")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="results JSON (default results/recall.json)", show_default=False)
    ] = Path("results/recall.json"),
    plot: Annotated[
        Path | None,
        typer.Option(help="recall@10 vs latency plot (default: beside --out, as .png)", show_default=False),
    ] = None,
    scratch: Annotated[
        Path | None,
        typer.Option(
            envvar="ECGSEARCH_BENCH_TMP", help="folder for the stores built and cached ground truth"
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="keep stores under --scratch/stores/ and continue a build stopped part-way (or reuse a "
            "finished one): a multi-million build in resumable stages",
        ),
    ] = False,
    memory_cap_gb: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="run inside a memory cgroup of this many GB (heap and page cache; needs the right to "
            "create one): a build that completes under it fits a node of that size",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
    as_json: AsJson = False,
) -> None:
    """Recall@k vs exact search, latency, build time and memory of the store, FAISS HNSW and IVF-PQ.

    ``qdrant-local`` (opt-in) is the ServerStore on qdrant-client's local mode: exact search in
    Python, one setting (hnsw_ef null), skipped above ``--local-max-size``.

    Synthetic clustered embeddings (fixed seed) with payloads, unfiltered and under selective (~1%
    diagnosis and an age range) and broad (~25-50%) filters; ground truth is exact search over the
    filtered rows. Needs the ``bench`` extra (faiss-cpu, matplotlib).

    Examples:

        ecgsearch bench recall --sizes 100000,300000 --out results/recall_small.json

        ecgsearch bench recall --sizes 1000000 --engines edge,edge-int8

        ecgsearch bench recall --sizes 100000 --engines edge,qdrant-local --out results/recall_local.json

        ecgsearch bench recall --sizes 200000 --dim 304 --engines service --out /tmp/service.json

        ecgsearch bench recall --sizes 4000000 --dim 304 --engines service --memory-cap-gb 6.4
        --scratch /data/bench --resume --out results/recall_4m.json

        ecgsearch bench recall --real-ptbxl ../shared/data/ptb-xl --out results/recall_real.json

        ecgsearch bench recall --merge results/recall_small.json,results/recall_1m.json
    """
    from ecgsearch.bench import recall as b
    from ecgsearch.bench.results import write_results

    log = _logger(quiet)
    plot = _beside(out, plot)
    if merge:
        paths = [Path(p) for p in merge.split(",") if p.strip()]
        for path in paths:
            if not path.is_file():
                raise typer.BadParameter(f"no results file {path}", param_hint="--merge")
        try:
            result = b.merge(paths)
        except (ValueError, KeyError) as exc:
            _fail(f"cannot merge {merge}: not recall results files ({exc})")
        write_results(out, result)
        if plot:
            b.plot(result, plot)
        emit(results(out, plot), f"wrote {out}" + (f" and {plot}" if plot else ""), as_json)
        return
    known = {"edge", "edge-int8", "faiss-hnsw", "faiss-ivfpq", "qdrant-local", "service"}
    chosen = tuple(e.strip() for e in engines.split(",") if e.strip())
    if not chosen or set(chosen) - known:
        raise typer.BadParameter(f"engines: choose from {sorted(known)}, got {engines!r}")
    cfg = b.BenchConfig(
        sizes=_ints(sizes, "sizes"),
        dim=dim,
        queries=queries,
        seed=seed,
        k=k,
        edge_efs=_ints(edge_ef, "edge-ef"),
        hnsw_efs=_ints(hnsw_ef, "hnsw-ef"),
        nprobes=_ints(nprobe, "nprobe"),
        engines=chosen,
        faiss_max_size=faiss_max_size,
        faiss_ef_construction=faiss_ef_construction,
        local_max_size=local_max_size,
        resume=resume,
    )
    if resume and scratch is None:
        raise typer.BadParameter("--resume keeps its stores under --scratch: name one", param_hint="--resume")
    if real_ptbxl is not None:
        _need_ptbxl(real_ptbxl, "--real-ptbxl")
    cap = None
    if memory_cap_gb is not None:
        from ecgsearch.bench.memory import CapUnavailable, MemoryCap

        try:
            cap = MemoryCap.join(int(memory_cap_gb * 1e9))
            log(f"running inside {cap.path} (limit {memory_cap_gb} GB)")
        except CapUnavailable as exc:
            _fail(f"--memory-cap-gb: {exc}")
    try:
        if real_ptbxl is not None:
            b.run_real(cfg, real_ptbxl, model, out, plot, log, scratch=scratch)
        else:
            b.run_bench(cfg, out, plot, log, scratch=scratch, memory_cap=cap)
    except ImportError as exc:
        _missing(exc)
    finally:
        if cap is not None:
            cap.leave()
    emit(results(out, plot), f"wrote {out}" + (f" and {plot}" if plot else ""), as_json)


def retrieval(
    ptbxl: Annotated[Path, typer.Option(help="PTB-XL folder (ptbxl_database.csv)")] = Path(
        "../shared/data/ptb-xl"
    ),
    k: Annotated[int, typer.Option(min=1, help="neighbours per query")] = 10,
    model: Annotated[Path | None, typer.Option(help="trained ONNX model (default: bundled)")] = None,
    random_model: Annotated[
        Path | None, typer.Option(help="random-init ONNX model (default: bundled)")
    ] = None,
    pca_dim: Annotated[
        int | None, typer.Option(help="PCA baselines' dimension (default: the model's)")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(min=20, help="use only the first N records (quick checks)")
    ] = None,
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/retrieval.json"),
    plot: Annotated[
        Path | None,
        typer.Option(help="curves and agreement plot (default: beside --out, as .png)", show_default=False),
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
    as_json: AsJson = False,
) -> None:
    """Retrieval quality on PTB-XL: the trained encoder vs its random-init twin, chance and baselines.

    Baselines: PCA of log-spectra and of the raw samples, kNN on heart rate + RR irregularity, on
    per-lead log-RMS in mV, and on heart rate + age; a peer row when openecg is installed (the
    results say when it is not). Queries are fold 10 (every number is repeated
    with all records as queries, labelled), the search space is every record, and neighbours of the
    query's own patient are left out. Reports P@k (any superclass, same superclass set), a probe
    macro-AUC, per-code P@k and enrichment with bootstrap 95% intervals, shift stability and the
    Spearman of similarity with heart-rate and age differences, and judges the encoder's aims.
    Nothing is tuned on fold 10. Needs the ``bench`` extra (scikit-learn, matplotlib).

    Examples:

        ecgsearch eval retrieval --ptbxl ../shared/data/ptb-xl

        ecgsearch eval retrieval --limit 200 --out /tmp/r.json --plot /tmp/r.png
    """
    from ecgsearch.bench import retrieval as ev
    from ecgsearch.export.runtime import ModelError

    _need_ptbxl(ptbxl, "--ptbxl")
    plot = _beside(out, plot)
    try:
        result = ev.run(
            ptbxl,
            k=k,
            model=model,
            random_model=random_model,
            pca_dim=pca_dim,
            limit=limit,
            log=_logger(quiet),
        )
        ev.write(result, out, plot)
    except ImportError as exc:
        _missing(exc)
    except ModelError as exc:
        _fail(str(exc))
    emit(results(out, plot), f"wrote {out}" + (f" and {plot}" if plot else ""), as_json)


def encoder(
    model: Annotated[Path | None, typer.Option("--model", help="ONNX model (default: bundled).")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="Intra-op threads, both runtimes.")] = 2,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated sizes.")] = "1,32,256",
    seconds: Annotated[float, typer.Option("--seconds", min=0.01, help="Timed seconds per size.")] = 3.0,
    compare: Annotated[
        list[Path] | None,
        typer.Option(
            "--compare",
            help="Another ONNX model to time against --model, taking turns in one process (repeatable; "
            "onnxruntime only): on a machine whose speed drifts, the ratio is what one run can tell.",
        ),
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="With --compare: rounds of turns.")] = 3,
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Results JSON (default: encoder_throughput.json in results/).", show_default=False
        ),
    ] = Path("results/encoder_throughput.json"),
    as_json: AsJson = False,
) -> None:
    """Measure encoder throughput (ECGs/s) in onnxruntime and, if installed, torch; or compare models.

    Examples:

        ecgsearch bench encoder --threads 2 --batch-sizes 1,32,256

        ecgsearch bench encoder --model a.onnx --compare b.onnx --rounds 5 --out /tmp/ab.json
    """
    from ecgsearch.bench.encoder import compare_models, run_benchmark
    from ecgsearch.export.runtime import ModelError

    sizes = _ints(batch_sizes, "batch-sizes")
    if compare:
        if model is None:
            raise typer.BadParameter("--compare times against --model: give both", param_hint="--model")
        try:
            compared = compare_models(
                [model, *compare],
                threads=threads,
                batch_sizes=sizes,
                min_seconds=seconds,
                rounds=rounds,
                out=out,
            )
        except (ModelError, OSError) as exc:
            _fail(exc)
        lines = [
            f"{r['model']} batch {r['batch_size']:4d}: {r['ecgs_per_s_median']:9.1f} ECGs/s "
            f"(x{r['relative_to_first_median']:.2f} of the first)"
            for r in compared["results"]
        ]
        emit(results(out), lines, as_json)
        return
    try:
        result = run_benchmark(model, threads=threads, batch_sizes=sizes, min_seconds=seconds, out=out)
    except (ModelError, OSError) as exc:
        _fail(exc)
    rows = [
        f"{r['runtime']:12s} batch {r['batch_size']:4d}: {r['ecgs_per_s']:9.1f} ECGs/s"
        for r in result["results"]
    ]
    emit(results(out), rows, as_json)


def ingest(
    source: Annotated[Path, typer.Argument(help="PTB-XL folder, manifest or WFDB folder to ingest.")],
    out: Annotated[Path, typer.Option(help="Results JSON.")] = Path("results/ingest_throughput.json"),
    batch_size: Annotated[int, typer.Option(min=1, help="ECGs per batch.")] = 256,
    workers: Annotated[int, typer.Option(min=0, help="Reading processes.")] = 2,
    threads: Annotated[int | None, typer.Option(min=1, help="onnxruntime threads.")] = 2,
    model: Annotated[Path | None, typer.Option(envvar="ECGSEARCH_MODEL", help="ONNX model.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N records.")] = None,
    prefill: Annotated[
        int,
        typer.Option(
            min=0,
            help="Synthetic points (fixed seed) stored before the ingest, not yet indexed: ingest into an "
            "archive that is not empty.",
        ),
    ] = 0,
    as_json: AsJson = False,
) -> None:
    """Ingest throughput end to end vs the ceiling the cores allow (read, prepare, encode only), into a
    fresh store (or one holding --prefill synthetic points), and the CPU per ECG of every step.

    Examples:

        ecgsearch bench ingest ../shared/data/ptb-xl --out results/ingest_throughput.json

        ecgsearch bench ingest ../shared/data/ptb-xl --limit 200 --out /tmp/ingest.json

        ecgsearch bench ingest ../shared/data/ptb-xl --prefill 200000 --out results/ingest_prefill_200k.json
    """
    from ecgsearch.ingest.threads import one_blas_thread

    one_blas_thread()  # as `ecgsearch ingest` runs
    from ecgsearch.bench.ingest import run_bench
    from ecgsearch.bench.results import write_results
    from ecgsearch.export.runtime import ModelError
    from ecgsearch.ingest.sources import SourceError

    try:
        result = run_bench(
            source,
            batch_size=batch_size,
            workers=workers,
            threads=threads,
            model=model,
            limit=limit,
            prefilled=prefill,
        )
    except SourceError as exc:
        raise typer.BadParameter(str(exc), param_hint="SOURCE") from None
    except (ModelError, OSError, RuntimeError) as exc:
        _fail(exc)
    write_results(out, result)
    emit(
        results(out),
        f"end-to-end {result['end_to_end']['rate']} ECGs/s "
        f"(steady {result['end_to_end']['steady_rate_after_first_batch']}); "
        f"ceiling {result['ceiling']['rate']} ({result['ceiling']['read_prepare_encode_ms']} CPU ms per "
        f"ECG read+prepare+encode on {result['ceiling']['cores']} cores): steady at "
        f"{result['steady_vs_ceiling']} of it ({result['cpu_vs_ceiling']} by its own CPU per ECG, "
        f"{result['cores_used_steady']} cores used); beyond the three "
        f"{result['beyond_ceiling_ms']['total']} CPU ms per ECG; pipeline "
        f"{result['pipeline_cpu_ms_per_ecg']['total']} CPU ms per ECG "
        f"-> {out}",
        as_json,
    )


def service(
    duration: Annotated[float, typer.Option(min=1, help="Seconds of load.")] = 20.0,
    concurrency: Annotated[
        str, typer.Option(help="Client threads (one channel each), one load run per value: 1,16")
    ] = "1,16",
    store: Annotated[Path | None, typer.Option(help="Serve this embedded store.")] = None,
    ptbxl: Annotated[Path | None, typer.Option(help="PTB-XL folder to build a temporary store from.")] = None,
    records: Annotated[int, typer.Option(min=10, help="PTB-XL records in the temporary store.")] = 2000,
    k: Annotated[int, typer.Option(min=1, max=1000, help="Neighbours per query.")] = 10,
    model: Annotated[Path | None, typer.Option(help="ONNX encoder (default: bundled).")] = None,
    server_cpus: Annotated[
        str | None,
        typer.Option(help="The server's CPUs, as serve --cpus takes them: '1' (default: every CPU)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Results JSON.")] = Path("results/service_load.json"),
    as_json: AsJson = False,
) -> None:
    """Load the gRPC service with concurrent clients: QPS, p50/p95/p99 latency and errors.

    Starts `ecgsearch serve` in its own process over --store, or over a temporary store that `ecgsearch
    ingest` fills from --ptbxl, then for each --concurrency runs that many client threads for --duration
    seconds, cycling through unfiltered and filtered searches by vector and by record id; then the same
    queries on the bare store in-process. Reports each level's service / store QPS and p50 difference,
    and the plans the server's searches took.

    Examples:

        ecgsearch bench service --ptbxl ../shared/data/ptb-xl --duration 20 --concurrency 1,16

        ecgsearch bench service --store ./store --out results/service_load.json

        ecgsearch bench service --store ./store --server-cpus 1 --out results/service_load_pinned.json
    """
    from ecgsearch.bench.results import write_results
    from ecgsearch.bench.service import bench_service
    from ecgsearch.search.serving.cpus import format_cpus, parse_cpus

    if store is None and ptbxl is None:
        raise typer.BadParameter("give --store or --ptbxl")
    try:
        cpus = format_cpus(parse_cpus(server_cpus)) if server_cpus else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--server-cpus") from None
    try:
        report = bench_service(
            duration=duration,
            concurrency=_ints(concurrency, "concurrency"),
            store=store,
            ptbxl=ptbxl,
            records=records,
            k=k,
            model=model,
            server_cpus=cpus,
        )
    except (RuntimeError, TimeoutError, OSError) as exc:
        _fail(exc)
    write_results(out, report)
    lines = [
        f"{level['concurrency']} clients: {level['qps']} QPS, p50 {level['latency_ms']['p50']} ms, "
        f"p99 {level['latency_ms']['p99']} ms, {level['errors']} errors; bare store "
        f"{level['bare_store']['qps']} QPS, p50 {level['bare_store']['latency_ms']['p50']} ms "
        f"(service / store {level['service_vs_store_qps']}, p50 +{level['p50_service_minus_store_ms']} ms)"
        for level in report["levels"]
    ]
    emit(results(out), [*lines, f"search plans {report['search_plans']} -> {out}"], as_json)


def limits(
    ptbxl: Annotated[Path, typer.Option(help="PTB-XL folder: site-a's records and the batches' ECGs.")],
    challenge: Annotated[Path, typer.Option(help="Challenge folders: site-b's records.")],
    records: Annotated[int, typer.Option(min=300, help="PTB-XL records in the temporary store.")] = 2000,
    batches: Annotated[int, typer.Option(min=1, help="Concurrent max-cost batches.")] = 32,
    pairs: Annotated[int, typer.Option(min=10, help="Calls per kind of id for the NOT_FOUND timing.")] = 1000,
    out: Annotated[Path, typer.Option(help="Results JSON.")] = Path("results/service_limits.json"),
    as_json: AsJson = False,
) -> None:
    """Measure the service's limits under hostile cost (issue 23's done-when figures).

    Serves a temporary store (PTB-XL as site-a, the Challenge folders as site-b) with `ecgsearch
    serve` in its own process, then measures: how fast a BatchSearch of 256 queries x k=1000 is refused
    and how much server memory it costs; a plain search's latency while --batches max-cost batches
    (the largest the service accepts) run, and server memory before, at peak and after; the median
    time of NOT_FOUND for another site's id and for a missing id, for a site-restricted caller.

    Examples:

        ecgsearch bench limits --ptbxl ../shared/data/ptb-xl --challenge ../shared/data/challenge
    """
    from ecgsearch.bench.limits import bench_limits
    from ecgsearch.bench.results import write_results

    try:
        report = bench_limits(ptbxl=ptbxl, challenge=challenge, records=records, batches=batches, pairs=pairs)
    except (RuntimeError, TimeoutError, OSError) as exc:
        _fail(exc)
    write_results(out, report)
    verdict = report["done_when"]
    emit(
        results(out),
        f"256 x k=1000 refused in {verdict['refused_in_s']} s (+{verdict['refusal_growth_mb']} MB); "
        f"plain search max {verdict['plain_search_max_ms_while_batches_run']} ms while {batches} max-cost "
        f"batches run ({verdict['plain_search_max_ms_while_requests_arrive']} ms while they arrive); "
        f"RSS after - before {verdict['rss_after_minus_before_mb']} MB; NOT_FOUND median difference "
        f"{verdict['not_found_median_difference_us']} us -> {out}",
        as_json,
    )


def training(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Training checkpoint (best.pt).")],
    model: Annotated[
        Path | None, typer.Option("--model", help="The .onnx exported from it (version, parity).")
    ] = None,
    data: Annotated[Path, typer.Option("--data", help="Folder holding ptb-xl/.")] = Path("../shared/data"),
    cache: Annotated[Path | None, typer.Option("--cache", help="Prepared-array cache.")] = Path("runs/cache"),
    out: Annotated[Path, typer.Option("--out", help="Results JSON.")] = Path("results/train_default.json"),
    as_json: AsJson = False,
) -> None:
    """The training report: a checkpoint vs the random-init encoder of its config, on folds 1-9.

    Fold-9 agreement@10 and linear probe for both, the run's losses and timings. Needs the train
    extra (torch).

    Examples:

        ecgsearch eval training --checkpoint runs/default/last.pt --model export/models/ecg-encoder.onnx
    """
    if not checkpoint.is_file():
        raise typer.BadParameter(f"no checkpoint {checkpoint}", param_hint="--checkpoint")
    _need_ptbxl(data / "ptb-xl", "--data")
    import pickle

    from ecgsearch.bench.results import relative, write_results

    try:
        from ecgsearch.bench.training import training_report
    except ImportError as exc:
        _missing(exc)

    exported = None
    if model is not None:
        from ecgsearch.export.runtime import Embedder, ModelError

        try:
            card = Embedder(model, threads=1).card
        except ModelError as exc:
            raise typer.BadParameter(str(exc), param_hint="--model") from None
        assert card.model_extra is not None  # a dict on every card: the class allows extra fields
        exported = {"model": model.name, "version": card.version, "parity": card.model_extra.get("parity")}
    command = f"ecgsearch eval training --checkpoint {relative(checkpoint)} --out {relative(out)}"
    if model is not None:
        command += f" --model {relative(model)}"
    try:
        report = training_report(checkpoint, data, cache_dir=cache, exported=exported, command=command)
    except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError) as exc:
        _fail(f"{checkpoint}: not a readable training checkpoint ({exc})")
    write_results(out, report)
    rows = [
        f"fold 9 {which}: agreement@10 {row['fold9_queries_folds1to9']:.3f} (folds 1-9 searched), "
        f"{row['fold9_within_fold9']:.3f} (fold 9 searched), probe macro-AUC {row['probe']['macro_auc']}"
        for which, row in ((w, report["fold9"][w]) for w in ("trained", "random_init"))
    ]
    emit(results(out), rows, as_json)


def crossfit(
    config: Annotated[
        Path, typer.Option(help="training config of every held-out group's model (fixed before the run)")
    ] = Path("configs/label_aware.yaml"),
    compare: Annotated[
        Path | None,
        typer.Option(help="a second config trained the same way, reported as 'self-supervised'"),
    ] = None,
    data: Annotated[Path, typer.Option(help="folder holding ptb-xl/")] = Path("../shared/data"),
    compare_name: Annotated[str, typer.Option(help="the --compare model's name in the results")] = (
        "self-supervised"
    ),
    nested: Annotated[
        bool,
        typer.Option(help="pick the served blocks' weights per group on an inner fold of its training folds"),
    ] = False,
    whiten: Whitening = False,
    rule: Rule = "inner-score",
    groups: Annotated[int, typer.Option(min=2, max=10, help="held-out fold groups (2, 5 or 10)")] = 5,
    k: Annotated[int, typer.Option(min=1, help="neighbours per query")] = 10,
    threads: Annotated[int, typer.Option(min=1, help="torch threads")] = 1,
    epochs: Annotated[int | None, typer.Option(min=1, help="override the configs' epochs")] = None,
    seed: Annotated[
        int | None, typer.Option(min=0, help="override the configs' seed (another draw of the same recipe)")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=50, help="use only the first N ECGs (smoke runs)")] = None,
    cache: Annotated[Path | None, typer.Option(help="prepared-array cache")] = Path("runs/cache"),
    work: Annotated[
        Path | None,
        typer.Option(help="keep the trained models here and reuse those of the same config already finished"),
    ] = None,
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/retrieval_crossfit.json"),
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
    as_json: AsJson = False,
) -> None:
    """Cross-fitted retrieval: every labelled PTB-XL ECG a query judged by a model that never saw it.

    The ten strat folds form --groups groups; per group one model trains (--config) on the other
    folds, embeds every ECG and answers its group's queries (search space: every record; own patient
    excluded). Pooled P@10 any superclass and per code (AFIB, LVH, CLBBB, CRBBB, IMI, ASMI) with
    bootstrap intervals, against the random-init twin and the handcrafted baselines fitted on the
    same training folds, each difference with a paired interval. Needs the train and bench extras.

    Examples:

        ecgsearch eval crossfit --config configs/label_aware.yaml --compare configs/default.yaml

        ecgsearch eval crossfit --config configs/label_head.yaml --nested --compare configs/label_aware.yaml

        ecgsearch eval crossfit --config configs/tiny.yaml --groups 2 --limit 200 --out /tmp/cf.json
    """
    for path in (config, compare):
        if path is not None and not path.is_file():
            raise typer.BadParameter(f"no config file {path}")
    if rule != "inner-score" and not nested:
        raise typer.BadParameter("--rule ranks the nested choice: add --nested", param_hint="--rule")
    if whiten and not nested:
        raise typer.BadParameter(
            "the whitening is picked by the nested choice: add --nested", param_hint="--whitening"
        )
    _need_ptbxl(data / "ptb-xl", "--data")
    import yaml

    from ecgsearch.bench.results import write_results
    from ecgsearch.encoder.config import load_config

    try:
        from ecgsearch.bench import crossfit as cf
    except ImportError as exc:
        _missing(exc)
    if rule not in cf.RULES:
        raise typer.BadParameter(f"{rule!r}: one of {', '.join(cf.RULES)}", param_hint="--rule")
    try:
        main = load_config(config).with_overrides(epochs=epochs, seed=seed)
        other = None if compare is None else load_config(compare).with_overrides(epochs=epochs, seed=seed)
        cf.fold_groups(groups)
    except (ValueError, TypeError, yaml.YAMLError) as exc:  # as train: malformed YAML, unknown fields
        raise typer.BadParameter(" ".join(str(exc).split())) from None
    result = cf.run(
        data,
        main,
        config_path=config,
        compare=other,
        compare_path=compare,
        compare_name=compare_name,
        nested=nested,
        whiten=whiten,
        rule=rule,
        n_groups=groups,
        k=k,
        threads=threads,
        limit=limit,
        cache_dir=cache,
        work=work,
        command=f"ecgsearch eval crossfit --config {config} --groups {groups} --threads {threads}"
        + (f" --compare {compare} --compare-name {compare_name}" if compare else "")
        + (" --nested" if nested else "")
        + (" --whitening" if whiten else "")
        + (f" --rule {rule}" if rule != "inner-score" else "")
        + (f" --epochs {epochs}" if epochs else "")
        + (f" --seed {seed}" if seed is not None else "")
        + (f" --limit {limit}" if limit else "")
        + f" --out {out}",
        log=_logger(quiet),
    )
    write_results(out, result)
    emit(results(out), f"{cf.line(result)} -> {out}", as_json)


def views_at_scale(
    size: Annotated[int, typer.Option(min=1000, help="synthetic points in the store")] = 100_000,
    dim: Annotated[int, typer.Option(min=8, help="served vector dimension (the bundled model's: 304)")] = 304,
    queries: Annotated[int, typer.Option(min=1, help="queries, drawn apart from the data")] = 500,
    seed: Annotated[int, typer.Option(help="seed of the synthetic data")] = 0,
    scratch: Annotated[
        Path | None, typer.Option(help="folder for the store being built (default: temp)")
    ] = None,
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/views_100k.json"),
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
    as_json: AsJson = False,
) -> None:
    """Named views at scale: p50/p99 and recall@10 of each view, a two-view blend and the served vector.

    One embedded store with the default settings holds --size synthetic points with every view (waveform
    = the served vector, rhythm 4-d and voltage 12-d z-scores, fixed seed); each search runs one query
    at a time, no filter; recall is against exact search (cosine, or Euclidean for the measured views).

    Examples:

        ecgsearch bench views --size 100000 --out results/views_100k.json

        ecgsearch bench views --size 1000000 --out results/views_1m.json
    """
    import tempfile

    from ecgsearch.bench import views_scale
    from ecgsearch.bench.results import write_results

    with tempfile.TemporaryDirectory(prefix="views-scale-", dir=scratch) as tmp:
        result = views_scale.run(
            size, dim=dim, n_queries=queries, seed=seed, workdir=Path(tmp), log=_logger(quiet)
        )
    result["command"] = (
        f"ecgsearch bench views --size {size} --dim {dim} --queries {queries} --seed {seed} --out {out}"
    )
    write_results(out, result)
    met = sum(a["met"] for a in result["aims"])
    emit(results(out), f"{met}/{len(result['aims'])} aims met -> {out}", as_json)


def candidates(
    work: Annotated[
        Path,
        typer.Option(help="the models of an `eval crossfit --nested --work` run (inner and outer per group)"),
    ] = Path("runs/crossfit"),
    data: Annotated[Path, typer.Option(help="folder holding ptb-xl/")] = Path("../shared/data"),
    groups: Annotated[int, typer.Option(min=2, max=10, help="held-out fold groups, as the --work run")] = 5,
    k: Annotated[int, typer.Option(min=1, help="neighbours per query")] = 10,
    limit: Annotated[
        int | None, typer.Option(min=50, help="use only the first N ECGs, as the --work run")
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="prepared-array cache")] = Path("runs/cache"),
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/candidate_blocks.json"),
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
    as_json: AsJson = False,
) -> None:
    """Judge candidate served blocks as the shipped ones were judged, on the models of a nested run.

    Each candidate (statement or rhythm weights beyond the grid, a log-spectrum block, a rhythm block
    gated by the ECG's own irregularity, the irregularity alone, the rhythm statements as their own
    block) adds settings to the nested grid; each group's inner model picks among the base grid and
    them on its inner fold by each of two rules (the nested run's inner score; aims first), the group's
    model serves the pick, and the pooled cross-fitted figures are compared with the nested run's pick
    on the same queries. Nothing is retrained. --groups and --limit must be those of the run that
    trained --work; the nested pick is recomputed here (the base rows), so the models' own served
    settings, which a later --whitening run may have judged anew, do not matter. Needs the train and
    bench extras.

    Examples:

        ecgsearch eval crossfit --config configs/label_head.yaml --nested --work runs/crossfit

        ecgsearch eval candidates --work runs/crossfit --out results/candidate_blocks.json
    """
    _need_ptbxl(data / "ptb-xl", "--data")
    if not work.is_dir():
        raise typer.BadParameter(f"no folder {work}", param_hint="--work")
    if 10 % groups:
        raise typer.BadParameter(f"groups must divide the 10 folds, not {groups}", param_hint="--groups")
    from ecgsearch.bench.results import write_results

    try:
        from ecgsearch.bench import candidates as cb
    except ImportError as exc:
        _missing(exc)
    try:
        result = cb.run(
            data,
            work,
            n_groups=groups,
            k=k,
            limit=limit,
            cache_dir=cache,
            command=f"ecgsearch eval candidates --work {work} --groups {groups}"
            + (f" --limit {limit}" if limit else "")
            + f" --out {out}",
            log=_logger(quiet),
        )
    except (FileNotFoundError, ValueError, cb.WorkMismatch) as exc:
        raise typer.BadParameter(" ".join(str(exc).split()), param_hint="--work") from None
    write_results(out, result)
    emit(results(out), f"{cb.line(result)} -> {out}", as_json)


def choose(
    config: Annotated[Path, typer.Option(help="training config of the model to ship")] = Path(
        "configs/label_head.yaml"
    ),
    held_out: Annotated[
        list[int], typer.Option(min=1, max=10, help="folds kept out of training and choice (repeatable)")
    ] = [10],  # noqa: B006
    data: Annotated[Path, typer.Option(help="folder holding ptb-xl/")] = Path("../shared/data"),
    k: Annotated[int, typer.Option(min=1, help="neighbours per query")] = 10,
    threads: Annotated[int, typer.Option(min=1, help="torch threads (part of the training recipe)")] = 1,
    limit: Annotated[int | None, typer.Option(min=50, help="use only the first N ECGs (smoke runs)")] = None,
    cache: Annotated[Path | None, typer.Option(help="prepared-array cache")] = Path("runs/cache"),
    work: Annotated[
        Path | None,
        typer.Option(help="keep the inner model here and reuse one of the same config already finished"),
    ] = None,
    whiten: Whitening = False,
    rule: Rule = "inner-score",
    write_config: Annotated[
        Path, typer.Option(help="the config to train the shipped model with (YAML)")
    ] = Path("configs/shipped.yaml"),
    out: Annotated[Path, typer.Option(help="results JSON: every setting tried and its inner score")] = Path(
        "results/shipped_choice.json"
    ),
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
    as_json: AsJson = False,
) -> None:
    """Pick the shipped model's served settings inside its training folds, as eval crossfit --nested
    picks each group's: an inner model trains on the folds outside --held-out less the last, the grid
    of served weights is scored on that last fold's queries, and the winner is written to
    --write-config with every fold outside --held-out as training folds. Train and export from it;
    report on --held-out only.

    Examples:

        ecgsearch eval choose --config configs/label_head.yaml --held-out 10

        ecgsearch train --config configs/shipped.yaml --out runs/shipped --threads 1
    """
    if not config.is_file():
        raise typer.BadParameter(f"no config file {config}", param_hint="--config")
    _need_ptbxl(data / "ptb-xl", "--data")
    import yaml

    from ecgsearch.bench.results import write_results
    from ecgsearch.encoder.config import load_config

    try:
        from ecgsearch.bench import crossfit as cf
    except ImportError as exc:
        _missing(exc)
    if rule not in cf.RULES:
        raise typer.BadParameter(f"{rule!r}: one of {', '.join(cf.RULES)}", param_hint="--rule")
    try:
        base = load_config(config)
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        said = " ".join(str(exc).split())
        said = said if str(config) in said else f"{config}: {said}"
        raise typer.BadParameter(said, param_hint="--config") from None
    folds = tuple(sorted(set(held_out)))
    if len(folds) > 8:
        raise typer.BadParameter(
            "keep at least two folds for training and the inner choice", param_hint="--held-out"
        )
    command = (
        f"ecgsearch eval choose --config {config} "
        + " ".join(f"--held-out {f}" for f in folds)
        + f" --threads {threads}"
        + (f" --limit {limit}" if limit else "")
        + (" --whitening" if whiten else "")
        + (f" --rule {rule}" if rule != "inner-score" else "")
        + f" --write-config {write_config} --out {out}"
    )
    chosen, record = cf.choose_for_shipping(
        data,
        base,
        folds,
        threads=threads,
        k=k,
        limit=limit,
        cache_dir=cache,
        work=work,
        whiten=whiten,
        rule=rule,
        log=_logger(quiet),
    )
    settings = {key: getattr(chosen, key) for key in (*cf.GRID, *(("whitening",) if whiten else ()))}
    notes = (
        f"{base.notes.strip()} Shipped: trains on folds {', '.join(map(str, chosen.train_folds))}; "
        f"served settings {settings} picked inside them (inner fold {record['inner_fold']}) by "
        f"`{command}`; fold(s) {', '.join(map(str, folds))} report it."
    )
    fields = {key: value for key, value in chosen.with_overrides(notes=notes).to_dict().items()}
    fields.pop("statement_vocabulary", None)  # training derives it from its folds
    write_config.parent.mkdir(parents=True, exist_ok=True)
    write_config.write_text(
        f"# Written by `{command}`: edit the base config and rerun, not this file.\n"
        + yaml.safe_dump(fields, sort_keys=False, width=100)
    )
    result = {
        "evaluation": "served settings of the shipped model, chosen inside its training folds",
        "config": {"path": str(config), **base.to_dict()},
        "chosen": settings,
        "written_config": str(write_config),
        "choice": record,
        "command": command,
    }
    write_results(out, result)
    emit(
        {"chosen": settings, "config": str(write_config), "out": str(out)},
        f"picked {settings} inside folds {', '.join(map(str, chosen.train_folds))} -> {write_config}, {out}",
        as_json,
    )


def views(
    data: Annotated[
        Path, typer.Option(help="folder holding ptb-xl/ (and challenge/ptb_xl for the copies)")
    ] = Path("../shared/data"),
    model: Annotated[Path | None, typer.Option(help="served ONNX model (default: bundled)")] = None,
    crossfit_work: Annotated[
        Path | None,
        typer.Option(
            help="a model that learned labels: the `eval crossfit --work` folder of its recipe's group models"
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=50, help="use only the first N ECGs (smoke runs)")] = None,
    cache: Annotated[Path | None, typer.Option(help="prepared-array cache")] = Path("runs/cache"),
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/views.json"),
    statistics: Annotated[
        Path | None, typer.Option(help="also write the served views' statistics and default blend here")
    ] = None,
    objective: Annotated[
        str,
        typer.Option(
            help="how blend weights are chosen on the training groups' queries: mean (of the seven P@10s) "
            "or aims-first (the blend aims met on them, the mean breaking ties)"
        ),
    ] = "mean",
    through_store: Annotated[
        bool,
        typer.Option(
            "--through-store",
            help="instead: the rhythm (AFIB) and voltage (LVH) views searched through the embedded store",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
    as_json: AsJson = False,
) -> None:
    """Similar by what? P@10 of each named view (waveform, rhythm, voltage) and their blends.

    Cross-fitted over five fold groups: the measured views' z-scores, the baselines and the blend
    weights (weighted RRF and a score formula over each view's top 100, as the store fuses them) are
    fitted on the other groups; every PTB-XL ECG is a query once (own patient excluded). Also checks
    the Challenge's 5x-gain copies of PTB-XL ECGs. Needs the bench extra.

    Examples:

        ecgsearch eval views --crossfit-work runs/crossfit --out results/views.json
            --statistics ecg/data/view_statistics.json

        ecgsearch eval views --limit 300 --out /tmp/views.json

        ecgsearch eval views --through-store --out results/views_store.json
    """
    _need_ptbxl(data / "ptb-xl", "--data")
    from ecgsearch.bench.results import write_results

    try:
        from ecgsearch.bench import views as bv
    except ImportError as exc:
        _missing(exc)
    try:
        bv.check_objective(objective)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--objective") from None
    if through_store:
        checked = bv.through_store(
            data,
            cache_dir=cache,
            command=f"ecgsearch eval views --through-store --out {out}",
            log=_logger(quiet),
        )
        write_results(out, checked)
        met = sum(c["met"] for c in checked["checks"])
        emit(results(out), f"{met}/{len(checked['checks'])} views at or above their kNN -> {out}", as_json)
        return
    try:
        result = bv.run(
            data,
            model=model,
            crossfit_work=crossfit_work,
            cache_dir=cache,
            limit=limit,
            objective=objective,
            command="ecgsearch eval views"
            + (f" --crossfit-work {crossfit_work}" if crossfit_work else "")
            + (f" --limit {limit}" if limit else "")
            + (f" --objective {objective}" if objective != "mean" else "")
            + f" --out {out}"
            + (f" --statistics {statistics}" if statistics else ""),
            log=_logger(quiet),
        )
    except (bv.NeedsGroupModels, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--crossfit-work") from None
    write_results(out, result)
    if statistics is not None:
        bv.write_statistics(result, statistics)
    emit(results(out), f"{bv.line(result)} -> {out}", as_json)


def _missing(exc: ImportError) -> None:
    """A benchmark library that is not installed: say which extra brings it."""
    _fail(f"{exc.name or exc} is not installed; pip install 'ecgsearch[bench]' (and [train] for torch)")


def _fail(exc: BaseException | str) -> None:
    """One line on stderr and exit 1: an environment problem, not a bug (no traceback)."""
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(exits.FAILED)


def register(bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount the benchmarks on ``bench`` and the evaluations on ``eval``."""
    bench.command("encoder")(encoder)
    bench.command("ingest")(ingest)
    bench.command("recall")(recall)
    bench.command("service")(service)
    bench.command("limits")(limits)
    bench.command("views")(views_at_scale)
    evaluate.command("retrieval")(retrieval)
    evaluate.command("training")(training)
    evaluate.command("crossfit")(crossfit)
    evaluate.command("choose")(choose)
    evaluate.command("candidates")(candidates)
    evaluate.command("views")(views)
