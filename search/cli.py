"""Commands of this part (filled in as the part lands)."""

import typer


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
