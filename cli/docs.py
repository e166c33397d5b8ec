"""Write README's command reference from every command's ``--help``; a test fails when README is stale.

Run ``python -m ecgsearch.cli.docs`` after changing a command. Help is rendered without rich, 100
columns wide, in a subprocess, so the text is the same on every machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import typer

START = "<!-- commands:start -->"
END = "<!-- commands:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


def command_paths() -> list[list[str]]:
    """Every command path under the root app, depth first, groups before their commands."""
    from ecgsearch.cli.main import app

    paths: list[list[str]] = []

    def walk(command: click.Command, path: list[str]) -> None:
        paths.append(path)
        if isinstance(command, click.Group):
            for name in sorted(command.commands):
                walk(command.commands[name], [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


def render_help(path: list[str]) -> str:
    env = {**os.environ, "TYPER_USE_RICH": "0", "COLUMNS": "100", "TERM": "dumb"}
    code = "from ecgsearch.cli.main import app; app()"
    out = subprocess.run(
        [sys.executable, "-c", code, *path, "--help"], capture_output=True, text=True, env=env, check=True
    ).stdout
    return out.replace("Usage: -c", "Usage: ecgsearch").rstrip()


def reference() -> str:
    blocks = []
    for path in command_paths():
        title = " ".join(["ecgsearch", *path])
        blocks.append(f"### `{title}`\n\n```text\n{render_help(path)}\n```")
    return "\n\n".join(blocks)


def updated_readme(text: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return pattern.sub(lambda _: f"{START}\n{reference()}\n{END}", text)


if __name__ == "__main__":
    README.write_text(updated_readme(README.read_text()))
