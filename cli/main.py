"""The root ``ecgsearch`` command: mounts every part's commands.

Each part's ``cli`` module imports only typer at its top and its machinery inside each command, so
``--help``, every ``SUBCOMMAND --help`` and shell completion load no heavy library (a test checks).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

import ecgsearch.cli.exits as exits

if TYPE_CHECKING:
    from typer import _click

PARTS = (
    "ecgsearch.encoder.cli",
    "ecgsearch.export.cli",
    "ecgsearch.ingest.cli",
    "ecgsearch.ingest.prepare_cli",
    "ecgsearch.search.cli",
    "ecgsearch.web.cli",
)

# Markdown help: docstring paragraphs are re-wrapped to the terminal (no line breaks of the source
# kept), and the indented Examples stay as written.
MARKUP: Literal["markdown"] = "markdown"
app = typer.Typer(
    name="ecgsearch",
    help="Search 12-lead ECGs by what the signal looks like.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=MARKUP,
)
bench = typer.Typer(
    help="Benchmarks that write JSON results files.", no_args_is_help=True, rich_markup_mode=MARKUP
)
evaluate = typer.Typer(
    help="Evaluations of retrieval quality.", no_args_is_help=True, rich_markup_mode=MARKUP
)
collection = typer.Typer(
    help="Inspect a collection and switch its aliases.", no_args_is_help=True, rich_markup_mode=MARKUP
)


def _flags_shown_as_flags() -> None:
    """Rich help gives an on/off flag the type column of a value (``<bool>``), as if it took one: show
    none for flags. typer has no setting for this (0.29); click's plain help, docs/commands.md's, never
    showed one."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "flags_as_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: _click.Context) -> str | None:
        return None if self.is_flag and self.metavar is None else shown(self, ctx)

    display_type_rich.flags_as_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_shown_as_flags()


def version_text() -> str:
    """Package version and the bundled default model's version, read without onnxruntime."""
    import json
    from importlib import metadata, resources

    try:
        package = metadata.version("ecgsearch")
    except metadata.PackageNotFoundError:
        package = "unknown"
    card = resources.files("ecgsearch.export.models").joinpath("ecg-encoder.card.json")
    try:
        model = json.loads(card.read_text())["version"]
    except (OSError, ValueError, KeyError):
        model = "unknown (no model card beside the bundled model)"
    return f"ecgsearch {package}\ndefault model {model}"


def _version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print versions and exit."),
    ] = False,
) -> None:
    """Search 12-lead ECGs by what the signal looks like."""


for _part in PARTS:
    importlib.import_module(_part).register(app, bench, evaluate)

importlib.import_module("ecgsearch.bench.cli").register(bench, evaluate)
importlib.import_module("ecgsearch.search.ops.admin_cli").register(app, collection)
importlib.import_module("ecgsearch.search.ops.snapshot_cli").register(app)

app.add_typer(bench, name="bench")
app.add_typer(evaluate, name="eval")
app.add_typer(collection, name="collection")


def _one_line(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command``, ending in one line and exit 1 on a file it cannot read or write (a folder that is a
    file, a full disk, no permission) wherever its machinery meets it, never in a traceback."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo(f"error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(exits.FAILED) from None

    return run


def _guard(group: typer.Typer) -> None:
    for info in group.registered_commands:
        if info.callback is not None:
            info.callback = _one_line(info.callback)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _guard(sub.typer_instance)


_guard(app)

if __name__ == "__main__":
    app()
