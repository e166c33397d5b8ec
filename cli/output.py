"""How every command that reports says what it did: one JSON document on stdout with ``--json``, human
text otherwise (progress and warnings always on stderr).

A leaf: typer and the standard library only, so every part's command module may import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

AsJson = Annotated[
    bool, typer.Option("--json", help="Print what was done as one JSON document on stdout (no other output).")
]


def results(out: Path, plot: Path | None = None) -> dict[str, Any]:
    """A benchmark's document: the results file it wrote (already strict JSON), the file's path and its
    plot's."""
    return {
        "out": str(out),
        "plot": None if plot is None else str(plot),
        "results": json.loads(out.read_text()),
    }


def emit(document: dict[str, Any], text: str | list[str], as_json: bool) -> None:
    """Print ``document`` as one JSON document, else ``text`` line by line."""
    if as_json:
        typer.echo(json.dumps(document, indent=2, allow_nan=False))
        return
    for line in [text] if isinstance(text, str) else text:
        typer.echo(line)
