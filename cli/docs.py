"""Write docs/commands.md from every command's ``--help``; a test fails when it is stale.

Run ``python -m ecgsearch.cli.docs`` after changing a command. Help is rendered with click's plain
formatter (no rich), 100 columns wide, so the text is the same on every machine and terminal.
"""

from __future__ import annotations

from pathlib import Path

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup

COMMANDS = Path(__file__).resolve().parents[1] / "docs" / "commands.md"
WIDTH = 100
HEADER = """# Command reference

Generated from each command's `--help` by `python -m ecgsearch.cli.docs`; a test fails when this file
is stale. Every option also shows the environment variable it reads, where it reads one.
"""


def _commands() -> list[tuple[list[str], TyperCommand | TyperGroup, _click.Context]]:
    """(path, command, context) for every command under the root app, groups before their commands."""
    from ecgsearch.cli.main import app

    found: list[tuple[list[str], TyperCommand | TyperGroup, _click.Context]] = []

    def walk(command: _click.Command, path: list[str], parent: _click.Context | None) -> None:
        # typer builds every command of the tree as one of its own two classes (the only ones with
        # rich_markup_mode)
        assert isinstance(command, (TyperCommand, TyperGroup))
        command.rich_markup_mode = None  # plain click formatting: the same text on every machine
        ctx = command.context_class(
            command,
            info_name=path[-1] if path else "ecgsearch",
            parent=parent,
            terminal_width=WIDTH,
            max_content_width=WIDTH,
        )
        found.append((path, command, ctx))
        commands = getattr(command, "commands", None) or {}  # groups have subcommands
        for name in sorted(commands):
            walk(commands[name], [*path, name], ctx)

    walk(typer.main.get_command(app), [], None)
    return found


def reference() -> str:
    blocks = []
    for path, command, ctx in _commands():
        title = " ".join(["ecgsearch", *path])
        text = command.get_help(ctx).rstrip()
        blocks.append(f"### `{title}`\n\n```text\n{text}\n```")
    return "\n\n".join(blocks)


def grammar() -> str:
    """What every command shares: the exit-code table, tokens, --json."""
    from ecgsearch.cli import exits, tokens

    return (
        "## Exit status\n\n"
        "Every command exits by this one table (`ecgsearch.cli.exits`); a command's help names the codes\n"
        "it can return.\n\n"
        f"{exits.markdown()}\n"
        "## Tokens\n\n"
        "Commands that call the service (`query`, `stats`, `collection info|get --target`,\n"
        "`snapshot create|list --target`, `ingest --service`, `web`) take the bearer token from\n"
        f"`--token-file PATH` (env `{tokens.ENV_TOKEN_FILE}`: the file's first line) or env\n"
        f"`{tokens.ENV_TOKEN}`, never from the command line, where other users of the machine can read it\n"
        "(there is no `--token`).\n\n"
        "## JSON\n\n"
        "`--json` prints exactly one JSON document on stdout and nothing else (progress and rejects go\n"
        "to stderr): `ingest`, `embed`, `prepare`, `query`, `stats`, `collection ...`, `snapshot ...`.\n"
    )


def commands_markdown() -> str:
    """The whole of docs/commands.md."""
    return f"{HEADER}\n{grammar()}\n## Commands\n\n{reference()}\n"


if __name__ == "__main__":
    COMMANDS.parent.mkdir(exist_ok=True)
    COMMANDS.write_text(commands_markdown())
