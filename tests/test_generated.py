"""Generated files are reproducible: regenerating them must give the committed bytes."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_proto_blocks_match_the_tables_they_mirror() -> None:
    """The proto's generated blocks (file formats...) are what the Python tables write today."""
    generator = _generator()
    committed = generator.SOURCE.read_text()
    assert generator.render(committed) == committed, "the proto is stale: run `python proto/generate.py`"


def test_proto_regeneration_matches_committed(tmp_path: Path) -> None:
    generator = _generator()
    written = generator.generate(tmp_path, generator.render(generator.SOURCE.read_text()))
    assert {p.name for p in written} == set(generator.GENERATED)
    for path in written:
        committed = REPO / "search" / "_proto" / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run `python proto/generate.py`"
        )


def test_generated_imports_resolve_inside_the_package() -> None:
    from ecgsearch.search._proto import search_pb2, search_pb2_grpc

    assert search_pb2.DESCRIPTOR.package == "ecgsearch.v1"
    assert "EcgSearchService" in search_pb2.DESCRIPTOR.services_by_name
    assert search_pb2_grpc.EcgSearchServiceStub


def test_buf_lint_standard_is_clean() -> None:
    """The proto follows buf's STANDARD lint rules (proto/buf.yaml); buf-bin is a dev dependency."""
    beside = Path(sys.executable).with_name("buf")
    buf = beside if beside.is_file() else shutil.which("buf")
    assert buf, f"buf not found beside {sys.executable} nor on PATH: pip install -e '.[dev]'"
    result = subprocess.run([str(buf), "lint"], cwd=REPO / "proto", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
