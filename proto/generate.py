"""Regenerate ``search/_proto/`` from ``proto/ecgsearch/v1/search.proto`` (needs grpcio-tools, a dev extra),
after rewriting the proto's generated blocks from the Python tables they mirror.

A block runs from ``// BEGIN GENERATED <name>`` to ``// END GENERATED <name>``; ``BLOCKS`` says which
table writes it: the file formats of ``ecgsearch.ecg.formats``, the payload fields and measurements of
``ecgsearch.ecg.schema.PAYLOAD_FIELDS``. Everything else in the proto is written by hand.
tests/test_generated.py checks that the committed proto and stubs are what this writes.

protoc names the Python modules and their imports after the proto's path below ``-I``. To make the
generated code import itself as ``ecgsearch.search._proto.search_pb2`` without editing its output, the
proto is staged in a temporary include root at ``ecgsearch/search/_proto/search.proto`` and compiled
from there; the wire package stays ``ecgsearch.v1`` (the proto's ``package`` line), only the descriptor's
file name follows the staged path.

Usage: ``python proto/generate.py`` (writes into search/_proto/) or ``python proto/generate.py OUT_DIR``.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Callable
from importlib import resources
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "proto" / "ecgsearch" / "v1" / "search.proto"
TARGET = REPO / "search" / "_proto"
STAGED = Path("ecgsearch") / "search" / "_proto" / "search.proto"
GENERATED = ("search_pb2.py", "search_pb2.pyi", "search_pb2_grpc.py")


def _ecg_formats() -> list[str]:
    from ecgsearch.ecg.formats import FORMATS

    return [f"{f.wire_name} = {f.wire_number}; // {f.display}" for f in FORMATS]


def _payload_fields() -> list[str]:
    from ecgsearch.ecg.schema import PAYLOAD_FIELDS

    lines: list[str] = []
    for f in PAYLOAD_FIELDS:
        line = f"{f.proto} {f.name} = {f.number};"
        if f.note and len(f"  {line} // {f.note}") <= 110:
            line += f" // {f.note}"
        elif f.note:
            lines += [f"// {part}" for part in textwrap.wrap(f.note, 100)]
        lines.append(line)
    return lines


def _measurements() -> list[str]:
    from ecgsearch.ecg.schema import PAYLOAD_FIELDS

    return [
        f"MEASUREMENT_{f.name.upper()} = {f.measure.wire_number}; // {f.measure.label} ({f.measure.unit})"
        for f in PAYLOAD_FIELDS
        if f.measure is not None
    ]


BLOCKS: dict[str, Callable[[], list[str]]] = {
    "ecg-formats": _ecg_formats,
    "payload-fields": _payload_fields,
    "measurements": _measurements,
}
_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)// BEGIN GENERATED (?P<name>[\w-]+)[^\n]*\n.*?^[ \t]*// END GENERATED (?P=name)\n",
    re.M | re.S,
)


def render(text: str) -> str:
    """The proto ``text`` with every generated block rewritten from its table."""
    seen: set[str] = set()

    def block(m: re.Match[str]) -> str:
        name, indent = m.group("name"), m.group("indent")
        seen.add(name)
        lines = [f"// BEGIN GENERATED {name}: proto/generate.py writes these lines", *BLOCKS[name]()]
        return "".join(f"{indent}{line}\n" for line in [*lines, f"// END GENERATED {name}"])

    out = _BLOCK.sub(block, text)
    if missing := set(BLOCKS) - seen:
        raise ValueError(f"{SOURCE}: no generated block {sorted(missing)}")
    return out


def generate(out_dir: Path = TARGET, proto: str | None = None) -> list[Path]:
    """Compile the proto (``proto``: its text, default the committed file) and place the generated
    modules in ``out_dir``; returns their paths."""
    from grpc_tools import protoc

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "include"
        build = Path(tmp) / "build"
        (root / STAGED).parent.mkdir(parents=True)
        build.mkdir()
        (root / STAGED).write_text(SOURCE.read_text() if proto is None else proto)
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
    rendered = render(SOURCE.read_text())
    if len(sys.argv) > 1:
        written = generate(Path(sys.argv[1]), rendered)
    else:
        SOURCE.write_text(rendered)
        written = [SOURCE, *generate(TARGET)]
    for path in written:
        print(path)
