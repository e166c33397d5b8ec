"""How every command that calls the service takes its bearer token: from a file or the environment.

``--token-file PATH`` (env ``ECGSEARCH_TOKEN_FILE``; its first non-empty line) or env ``ECGSEARCH_TOKEN``;
never the command line, where any user of the machine can read it (``ps``): there is no ``--token``.

A leaf: typer and the standard library only, so every part's command module may import it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

ENV_TOKEN = "ECGSEARCH_TOKEN"
ENV_TOKEN_FILE = "ECGSEARCH_TOKEN_FILE"

TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        envvar=ENV_TOKEN_FILE,
        help=f"File whose first line is the bearer token (else env {ENV_TOKEN}; never on the command line).",
    ),
]


def read_token_file(path: Path) -> str:
    """The file's first non-empty line; an unreadable or empty file is a usage error (exit 2)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read ({type(exc).__name__})", param_hint="--token-file") from None
    token = next((line.strip() for line in lines if line.strip()), "")
    if not token:
        raise typer.BadParameter("the file holds no token", param_hint="--token-file")
    return token


def resolve(token_file: Path | None) -> str | None:
    """The token to send: --token-file, else env ECGSEARCH_TOKEN, else none."""
    if token_file is not None:
        return read_token_file(token_file)
    return os.environ.get(ENV_TOKEN) or None
