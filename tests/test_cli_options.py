"""A command declared by an options dataclass: typer parses its fields, the body gets one frozen object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from ecgsearch.cli.options import command_of


@dataclass(frozen=True)
class Options:
    source: Annotated[Path, typer.Argument(metavar="SOURCE")]
    k: Annotated[int, typer.Option(min=1, help="Neighbours wanted.")] = 3
    flag: Annotated[bool, typer.Option("--flag", help="A switch.")] = False
    names: Annotated[list[str] | None, typer.Option("--name")] = None


def _app(seen: list[Options]) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @command_of(Options)
    def run(o: Options) -> None:
        """Take the options."""
        seen.append(o)

    return app


def test_fields_are_the_commands_options_and_the_body_gets_one_frozen_object() -> None:
    seen: list[Options] = []
    app = _app(seen)
    result = CliRunner().invoke(app, ["data", "--k", "5", "--flag", "--name", "a", "--name", "b"])
    assert result.exit_code == 0, result.output
    assert seen == [Options(Path("data"), 5, True, ["a", "b"])]
    with pytest.raises(dataclasses.FrozenInstanceError):
        seen[0].k = 1  # type: ignore[misc]
    assert CliRunner().invoke(app, ["data"]).exit_code == 0 and seen[-1] == Options(Path("data"))
    assert CliRunner().invoke(app, ["data", "--k", "0"]).exit_code == 2  # the field's bounds hold
    assert CliRunner().invoke(app, []).exit_code == 2  # a field without default is required
    words = " ".join(CliRunner().invoke(app, ["--help"]).stdout.split())
    assert "Take the options." in words and "Neighbours wanted." in words and "SOURCE" in words


def test_only_a_dataclass_declares_options() -> None:
    with pytest.raises(TypeError, match="not a dataclass"):
        command_of(dict)
