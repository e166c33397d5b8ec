"""The root ``ecgsearch`` command: mounts every part's commands.

Each part's ``cli`` module exposes ``register(app, bench, evaluate)``; torch-side commands import torch
inside their functions, so ``--help`` and the serving commands run without it.
"""

from __future__ import annotations

import importlib

import typer

PARTS = (
    "ecgsearch.encoder.cli",
    "ecgsearch.export.cli",
    "ecgsearch.ingest.cli",
    "ecgsearch.search.cli",
    "ecgsearch.search.bench_cli",
)

app = typer.Typer(
    name="ecgsearch",
    help="Search 12-lead ECGs by what the signal looks like.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench = typer.Typer(help="Benchmarks that write JSON results files.", no_args_is_help=True)
evaluate = typer.Typer(help="Evaluations of retrieval quality.", no_args_is_help=True)

for _part in PARTS:
    importlib.import_module(_part).register(app, bench, evaluate)

app.add_typer(bench, name="bench")
app.add_typer(evaluate, name="eval")

if __name__ == "__main__":
    app()
