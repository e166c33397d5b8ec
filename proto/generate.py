"""Regenerate ``search/_proto/`` from ``proto/ecgsearch/v1/search.proto`` (needs grpcio-tools, a dev extra).

protoc names the Python modules and their imports after the proto's path below ``-I``. To make the
generated code import itself as ``ecgsearch.search._proto.search_pb2`` without editing its output, the
proto is staged in a temporary include root at ``ecgsearch/search/_proto/search.proto`` and compiled
from there; the wire package stays ``ecgsearch.v1`` (the proto's ``package`` line), only the descriptor's
file name follows the staged path.

Usage: ``python proto/generate.py`` (writes into search/_proto/) or ``python proto/generate.py OUT_DIR``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "proto" / "ecgsearch" / "v1" / "search.proto"
TARGET = REPO / "search" / "_proto"
STAGED = Path("ecgsearch") / "search" / "_proto" / "search.proto"
GENERATED = ("search_pb2.py", "search_pb2.pyi", "search_pb2_grpc.py")


def generate(out_dir: Path = TARGET) -> list[Path]:
    """Compile the proto and place the generated modules in ``out_dir``; returns their paths."""
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "include"
        build = Path(tmp) / "build"
        (root / STAGED).parent.mkdir(parents=True)
        build.mkdir()
        shutil.copyfile(SOURCE, root / STAGED)
        well_known = resources.files("grpc_tools") / "_proto"
        args = [
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{well_known}",
            f"--python_out={build}",
            f"--pyi_out={build}",
            f"--grpc_python_out={build}",
            str(STAGED),
        ]
        code = protoc.main(args)
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copyfile(build / STAGED.parent / name, target)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else TARGET):
        print(path)
