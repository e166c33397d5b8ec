"""`ecgsearch embed`: the vectors ingest would store, written to a file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ecgsearch.cli.main import app
from ecgsearch.export.runtime import Embedder
from ecgsearch.ingest import sources


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    # Usage errors come in a rich box that wraps lines: compare words, not layout.
    err = " ".join(result.stderr.replace("│", " ").split())
    return result.exit_code, result.stdout, err


def test_embed_writes_ids_vectors_and_model_version(ptbxl_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.npz"
    code, stdout, err = run("embed", ptbxl_dir, "--out", out, "--limit", 5, "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    embedder = Embedder(threads=1)
    assert (summary["records"], summary["rejected"], summary["model_version"]) == (5, 0, embedder.version)
    data = np.load(out)
    candidates = list(sources.select(sources.enumerate_source(ptbxl_dir), limit=5))
    assert list(data["record_ids"]) == [c.record_id for c in candidates]
    assert str(data["model_version"]) == embedder.version
    expected = embedder.embed(np.stack([sources.load(c).signal for c in candidates]))
    np.testing.assert_allclose(data["vectors"], expected, atol=1e-6)


def test_embed_refuses_outputs_it_cannot_write(ptbxl_dir: Path, tmp_path: Path) -> None:
    code, _, err = run("embed", ptbxl_dir, "--out", tmp_path / "e.txt")
    assert code == 2 and ".npz or .parquet" in err
    code, _, err = run("embed", ptbxl_dir, "--out", tmp_path / "e.parquet")  # pyarrow is not a dependency
    assert code == 2 and "pyarrow" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run("embed", tmp_path / "empty", "--out", tmp_path / "e.npz")
    assert code == 2 and "nothing to embed" in err and not (tmp_path / "e.npz").exists()
