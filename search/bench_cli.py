"""Commands of this part: ``bench recall`` and ``eval retrieval``."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(float(v)) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{name}: comma-separated integers expected, got {text!r}") from exc
    if not values or min(values) <= 0:
        raise typer.BadParameter(f"{name}: positive integers expected, got {text!r}")
    return values


def _logger(quiet: bool):
    start = time.perf_counter()

    def log(message: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - start:7.1f} s] {message}", file=sys.stderr, flush=True)

    return log


def recall(
    sizes: Annotated[str, typer.Option(help="synthetic collection sizes")] = "100000,300000,1000000",
    dim: Annotated[int, typer.Option(min=8, help="embedding dimension")] = 256,
    queries: Annotated[int, typer.Option(min=1, help="queries per size (drawn apart from the data)")] = 1000,
    seed: Annotated[int, typer.Option(help="seed of the synthetic mixture")] = 0,
    k: Annotated[
        int,
        typer.Option(min=1, max=1000, help="neighbours per query, as the service asks (recall@k up to k)"),
    ] = 10,
    engines: Annotated[
        str,
        typer.Option(help="engines to run (opt-in: qdrant-local, the ServerStore in local mode)"),
    ] = "edge,edge-int8,faiss-hnsw,faiss-ivfpq",
    edge_ef: Annotated[str, typer.Option(help="hnsw_ef values for the store")] = "32,64,128,256",
    hnsw_ef: Annotated[str, typer.Option(help="efSearch values for FAISS HNSW")] = "32,64,128,256",
    nprobe: Annotated[str, typer.Option(help="nprobe values for FAISS IVF-PQ")] = "8,16,32,64,128",
    faiss_max_size: Annotated[
        int, typer.Option(help="skip FAISS engines above this many vectors")
    ] = 1_000_000,
    faiss_ef_construction: Annotated[
        int, typer.Option(min=8, help="FAISS HNSW efConstruction (M is 32, as the store's m)")
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
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/recall.json"),
    plot: Annotated[Path | None, typer.Option(help="recall@10 vs latency plot")] = Path("results/recall.png"),
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
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

        ecgsearch bench recall --real-ptbxl ../shared/data/ptb-xl --out results/recall_real.json

        ecgsearch bench recall --merge results/recall_small.json,results/recall_1m.json
    """
    from ecgsearch.search import bench as b

    log = _logger(quiet)
    if merge:
        result = b.merge([Path(p) for p in merge.split(",") if p.strip()])
        b.write_json(out, result)
        if plot:
            b.plot(result, plot)
        typer.echo(f"wrote {out}")
        return
    known = {"edge", "edge-int8", "faiss-hnsw", "faiss-ivfpq", "qdrant-local"}
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
    )
    if real_ptbxl is not None:
        b.run_real(cfg, real_ptbxl, model, out, plot, log)
    else:
        b.run_bench(cfg, out, plot, log)
    typer.echo(f"wrote {out}" + (f" and {plot}" if plot else ""))


def retrieval(
    ptbxl: Annotated[Path, typer.Option(help="PTB-XL folder (ptbxl_database.csv)")] = Path(
        "../shared/data/ptb-xl"
    ),
    k: Annotated[int, typer.Option(min=1, help="neighbours per query")] = 10,
    model: Annotated[Path | None, typer.Option(help="trained ONNX model (default: bundled)")] = None,
    random_model: Annotated[
        Path | None, typer.Option(help="random-init ONNX model (default: bundled)")
    ] = None,
    pca_dim: Annotated[int | None, typer.Option(help="PCA baseline dimension (default: the model's)")] = None,
    limit: Annotated[
        int | None, typer.Option(min=20, help="use only the first N records (quick checks)")
    ] = None,
    out: Annotated[Path, typer.Option(help="results JSON")] = Path("results/retrieval.json"),
    plot: Annotated[Path | None, typer.Option(help="curves and agreement plot")] = Path(
        "results/retrieval.png"
    ),
    quiet: Annotated[bool, typer.Option(help="no progress lines on stderr")] = False,
) -> None:
    """Retrieval quality on PTB-XL: trained vs random-init encoder vs PCA of the raw signal.

    Queries are fold 10 (fold 9 reported too), the search space is every record, and neighbours of
    the query's own patient are left out. Reports superclass agreement@k, a superclass linear probe
    (macro-AUC), per-diagnosis precision@k with base rates and query counts, and how cosine
    similarity tracks age and heart-rate differences. Needs the ``bench`` extra (scikit-learn, matplotlib).

    Examples:

        ecgsearch eval retrieval --ptbxl ../shared/data/ptb-xl

        ecgsearch eval retrieval --limit 200 --out /tmp/r.json --plot /tmp/r.png
    """
    from ecgsearch.search import evaluate as ev

    if not (ptbxl / "ptbxl_database.csv").is_file():
        raise typer.BadParameter(f"no ptbxl_database.csv in {ptbxl}")
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
    typer.echo(f"wrote {out}" + (f" and {plot}" if plot else ""))


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
    bench.command("recall")(recall)
    evaluate.command("retrieval")(retrieval)
