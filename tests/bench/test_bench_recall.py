"""The recall benchmark: scoring known answers, synthetic data properties, and the command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgsearch.bench import recall as bench
from ecgsearch.bench import synthetic
from ecgsearch.cli.main import app
from ecgsearch.export.runtime import Embedder


def test_score_of_an_engine_returning_one_wrong_id() -> None:
    vectors = np.eye(6, dtype=np.float32)
    queries = vectors[:3]
    truth = bench.ground_truth(
        bench.Dataset("tiny", vectors, queries, [bench.FilterClass("none", "", None, None)], lambda a, b: []),
        k=2,
    )["none"]
    assert truth[:, 0].tolist() == [0, 1, 2]

    def engine(q: np.ndarray, i: int) -> np.ndarray:  # exact, except the first query's best hit is wrong
        ids = np.argsort(-(vectors @ q), kind="stable")[:2]
        return np.array([5, ids[1]]) if ids[0] == 0 else ids

    run = bench.time_queries(engine, queries, k=2)
    row = bench.score(run, truth)
    assert row["recall@1"] == pytest.approx(2 / 3)
    assert "recall@10" not in row  # k=2: deeper recall is not computable
    assert row["p50_ms"] >= 0 and row["qps"] > 0


def test_synthetic_sizes_are_nested_and_filters_have_the_intended_sizes() -> None:
    mix = synthetic.mixture(32, clusters=50, seed=3)
    small, p_small = synthetic.generate(mix, 2000, chunk=1000)
    large, p_large = synthetic.generate(mix, 20_000, chunk=1000)
    np.testing.assert_array_equal(small, large[:2000])
    np.testing.assert_array_equal(p_small.age, p_large.age[:2000])
    np.testing.assert_allclose(np.linalg.norm(large, axis=1), 1.0, atol=1e-5)
    rare = p_large.codes[:, [c[0] for c in synthetic.CODES].index(synthetic.RARE_CODE)].mean()
    assert 0.005 < rare < 0.02
    assert 0.4 < p_large.female.mean() < 0.56
    assert p_large.age.min() >= 18 and p_large.age.max() <= 95
    queries, _ = synthetic.queries(mix, 10)
    assert not np.isin(queries[:, 0], large[:, 0]).any()


def test_bench_recall_end_to_end(tmp_path: Path) -> None:
    out, png = tmp_path / "recall.json", tmp_path / "recall.png"
    args = ["bench", "recall", "--sizes", "2000", "--queries", "20", "--dim", "32", "--edge-ef", "16,64"]
    args += ["--hnsw-ef", "16,64", "--nprobe", "4", "--out", str(out), "--plot", str(png), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    block = data["results"][0]
    assert block["n"] == 2000 and block["queries"] == 20
    assert {e["engine"] for e in block["engines"]} == {"edge", "edge-int8", "faiss-hnsw", "faiss-ivfpq"}
    assert {f["name"] for f in block["filters"]} == {
        "none",
        "selective",
        "moderate",
        "broad",
        "broad_age",
        "by_record",
    }
    edge = {r["filter"]: r for r in block["runs"] if r["engine"] == "edge" and r["hnsw_ef"] == 64}
    assert len(edge) == 6 and all(r["recall@10"] > 0.9 for r in edge.values())
    # the plan each class took is recorded: a selective filter is scanned, a broad one post-filtered,
    # a near-total one (by record: all but one patient's) searched by the engine's own HNSW
    assert edge["none"]["plans"] == edge["by_record"]["plans"] == {"hnsw": 20}
    assert edge["selective"]["plans"] == {"exact": 20} and edge["broad"]["plans"] == {"postfilter": 20}
    faiss = {r["filter"] for r in block["runs"] if r["engine"] == "faiss-hnsw"}
    assert faiss == {
        "none",
        "selective",
        "moderate",
        "broad",
        "broad_age",
    }  # per-query exclusions are store-only
    build = next(e["build"] for e in block["engines"] if e["engine"] == "edge")
    assert build["disk_bytes_per_vector"] > 32 * 4 and build["upsert_points_per_s"] > 0
    assert data["machine"]["cpus"] and data["summary"]
    assert png.stat().st_size > 1000


def test_bench_recall_through_the_service(tmp_path: Path) -> None:
    """The service's own filters (copies dropped, one site kept): HNSW for plain searches, exact answers."""
    out = tmp_path / "service.json"
    dim = str(Embedder().dim)  # the service checks vectors against the bundled model's dimension
    args = ["bench", "recall", "--sizes", "3000", "--queries", "30", "--dim", dim, "--engines", "service"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    block = json.loads(out.read_text())["results"][0]
    runs = {r["filter"]: r for r in block["runs"]}
    assert set(runs) == {"none", "selective", "moderate", "broad", "broad_age", "by_record"}
    assert all(r["recall@10"] >= 0.99 for r in runs.values()), {f: r["recall@10"] for f, r in runs.items()}
    assert runs["none"]["plans"] == {"hnsw": 30} and runs["by_record"]["plans"] == {
        "hnsw": runs["by_record"]["queries"]
    }
    assert 0.98 < runs["none"]["estimated_fraction"] < 0.99  # 1% another site's, 0.5% copies
    assert runs["selective"]["plans"] == {"exact": 30}
    build = block["engines"][0]["build"]
    assert build["caller_sites"] == ["syn"] and build["served_fraction"] == pytest.approx(0.985, abs=0.002)
    copies = build["copy_search"]  # ingest's copy search finds a near-duplicate's original at this size
    assert copies["queries"] == 256 and copies["original_among_candidates"] == 1.0
    assert copies["cpu_ms_per_ecg"] > 0 and copies["cosine_to_original"] == 0.99


def test_bench_recall_plot_goes_beside_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a stray default would land in ./results/recall.png
    out = tmp_path / "elsewhere" / "small.json"
    args = ["bench", "recall", "--sizes", "500", "--queries", "5", "--dim", "16", "--engines", "edge"]
    result = CliRunner().invoke(app, [*args, "--edge-ef", "16", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere" / "small.png").stat().st_size > 1000
    assert not (tmp_path / "results").exists()


def test_bench_recall_qdrant_local_runs_like_edge_and_is_skipped_above_its_limit(tmp_path: Path) -> None:
    out = tmp_path / "recall.json"
    args = ["bench", "recall", "--sizes", "1000,2000", "--queries", "10", "--dim", "32"]
    args += ["--engines", "edge,qdrant-local", "--edge-ef", "64", "--local-max-size", "1000"]
    args += ["--out", str(out), "--plot", str(tmp_path / "recall.png"), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    small, large = data["results"]
    assert data["config"]["local_max_size"] == 1000
    assert [e["engine"] for e in small["engines"]] == ["edge", "qdrant-local"]
    local = [r for r in small["runs"] if r["engine"] == "qdrant-local"]
    assert sorted(r["filter"] for r in local) == [
        "broad",
        "broad_age",
        "by_record",
        "moderate",
        "none",
        "selective",
    ]
    assert all(r["hnsw_ef"] is None and r["recall@10"] == 1.0 for r in local)  # brute force is exact
    build = next(e["build"] for e in small["engines"] if e["engine"] == "qdrant-local")
    assert build["default_hnsw_ef"] is None and build["n"] == 1000
    assert build["disk_bytes_per_vector"] > 32 * 4 and build["upsert_points_per_s"] > 0
    assert {"optimize_s", "rss_delta_build_bytes", "rss_delta_serving_bytes", "open_s"} <= set(build)
    rows = [r for r in data["summary"] if r["n"] == 1000 and r["engine"] == "qdrant-local"]
    assert len(rows) == 6 and all(r["recall@10_at_default"] == 1.0 for r in rows)
    assert [e["engine"] for e in large["engines"]] == ["edge"]
    assert large["skipped"] == [{"engine": "qdrant-local", "reason": "n > local_max_size 1000"}]


def test_merge_pools_engines_of_one_size_run_by_separate_jobs(tmp_path: Path) -> None:
    def job(engine: str, n: int) -> dict:
        run = {"engine": engine, "hnsw_ef": 128, "filter": "none", "recall@10": 0.995, "p50_ms": 1.0}
        block = {"dataset": f"synthetic-{n}", "n": n, "engines": [{"engine": engine, "build": {}}]}
        block |= {"runs": [run], "skipped": [], "wall_s": 1.0, "filters": [{"name": "none"}]}
        return {"config": {}, "machine": {}, "results": [block]}

    paths = []
    for i, (engine, n) in enumerate([("edge", 1000), ("edge-int8", 1000), ("edge", 10)]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(job(engine, n)))
    merged = bench.merge(paths)
    assert [b["n"] for b in merged["results"]] == [10, 1000]
    assert [e["engine"] for e in merged["results"][1]["engines"]] == ["edge", "edge-int8"]
    assert merged["summary"][0]["smallest_setting_reaching_0.99"] == 128


def test_by_record_truth_leaves_out_the_whole_patient() -> None:
    """Rows 0-3 are one patient: querying row 1 must not return rows 0, 2 or 3, however near."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    vectors[:4] = vectors[1] + 0.01 * rng.standard_normal((4, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = bench.by_record_truth(vectors, np.array([1]), k=3)
    scores = vectors[4:] @ vectors[1]
    assert truth[0].tolist() == (np.argsort(-scores)[:3] + 4).tolist()
    fc = bench.by_record_class(vectors, 5, seed=0)
    assert len(fc.per_query) == 5 and fc.fraction == pytest.approx(1 - 4 / 40)
    row = int(fc.rows[0])
    assert fc.per_query[0].exclude_patient_ids == [f"syn-p{row // 4}"]


def test_summary_gives_latency_relative_to_unfiltered_search() -> None:
    runs = [
        {"engine": "edge", "hnsw_ef": 256, "filter": "none", "recall@10": 0.99, "p50_ms": 2.0},
        {"engine": "edge", "hnsw_ef": 256, "filter": "broad", "recall@10": 0.99, "p50_ms": 3.0},
    ]
    block = {"n": 10, "engines": [{"engine": "edge", "build": {"default_hnsw_ef": 256}}], "runs": runs}
    rows = {r["filter"]: r for r in bench.summarise([block])}
    assert rows["broad"]["p50_vs_unfiltered"] == pytest.approx(1.5)
    assert rows["none"]["p50_vs_unfiltered"] == pytest.approx(1.0)


def test_a_resumed_build_continues_where_the_stopped_one_left_off(tmp_path: Path) -> None:
    """A build stopped part-way (here: half the rows upserted) continues at its last whole batch,
    ends with every row once, records where it resumed, and a finished build is reused as it is."""
    from ecgsearch.search.engine.store import EdgeStore

    data = bench.synthetic_dataset(1000, 16, 5, seed=2, folder=tmp_path / "data")
    path = tmp_path / "stores" / "edge-int8"
    with EdgeStore(path) as stopped:
        stopped.create_collection(dim=16, model_version="bench")
        stopped.upsert(data.payloads(0, 450), data.vectors[:450])

    def build() -> dict:
        return bench.build_store(
            data, lambda: EdgeStore(path), path, name="t", log=print, batch=200, resume=True
        )

    first = build()
    assert first["resumed_from_row"] == 400  # the last whole batch of 200 below the 450 stored
    with EdgeStore(path) as done:
        assert done.count() == 1000
        assert done.search(data.vectors[999], k=1)[0].record_id == "syn:999"
    assert build() == first  # finished: its figures reused, nothing rebuilt
