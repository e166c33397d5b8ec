"""A command's options as one frozen dataclass: ``@command_of(ServeOptions)`` over ``def serve(o)``.

Typer reads a command's parameters from its signature. Here they are the fields of a frozen dataclass,
each annotated with its ``typer.Option``/``typer.Argument`` as a parameter would be, so the command
body takes one object, passes it on whole and never repeats a long parameter list.

A leaf: typer and the standard library only, so every part's command module may import it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

Opts = TypeVar("Opts")
R = TypeVar("R")


# The options that name a store, declared once for ingest and the operator commands (collection, stats,
# snapshot).
StoreOption = Annotated[
    Path | None,
    typer.Option(
        "--store",
        "-s",
        envvar="ECGSEARCH_STORE_PATH",
        help="Embedded store directory (default: $ECGSEARCH_HOME/store).",
    ),
]
QdrantUrlOption = Annotated[
    str | None, typer.Option("--qdrant-url", "-u", envvar="ECGSEARCH_QDRANT_URL", help="Qdrant server URL.")
]
QdrantApiKeyOption = Annotated[
    str | None, typer.Option(envvar="ECGSEARCH_QDRANT_API_KEY", help="Qdrant API key.")
]
CollectionOption = Annotated[
    str, typer.Option("--collection", "-c", envvar="ECGSEARCH_COLLECTION", help="Collection or alias.")
]


def command_of(options: type[Opts]) -> Callable[[Callable[[Opts], R]], Callable[..., R]]:
    """A typer command whose parameters are the fields of ``options`` (names, defaults, Annotated
    typer metadata) and which calls the decorated function with one ``options`` instance."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"{options.__name__} is not a dataclass")
    hints = get_type_hints(options, include_extras=True)
    parameters = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default,
            annotation=hints[f.name],
        )
        for f in dataclasses.fields(options)
    ]

    def wrap(body: Callable[[Opts], R]) -> Callable[..., R]:
        @functools.wraps(body)
        def command(**given: Any) -> R:
            return body(options(**given))

        del command.__wrapped__  # typer must read the options' signature, not the body's
        command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
        return command

    return wrap


def need_file(folder: Path, name: str, hint: str) -> None:
    """Refuse a folder without the file a command reads first (PTB-XL's table, say), naming the option,
    before any work starts."""
    if not (folder / name).is_file():
        raise typer.BadParameter(f"no {name} in {folder}", param_hint=hint)
