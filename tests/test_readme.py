"""The front door stays short and true; the command reference is generated from --help, never stale."""

from __future__ import annotations

import re
from pathlib import Path

from ecgsearch.cli import docs

REPO = Path(__file__).resolve().parents[1]


def test_command_reference_is_current() -> None:
    text = docs.COMMANDS.read_text()
    assert docs.commands_markdown() == text, "docs/commands.md is stale: run `python -m ecgsearch.cli.docs`"


def test_readme_is_a_front_door_whose_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (REPO / target).exists(), f"README links to missing {target}"
    for doc in ("docs/results.md", "docs/deploy.md", "docs/commands.md"):
        assert f"]({doc})" in text


def test_readme_describes_the_default_training_config() -> None:
    """How it works must say what configs/default.yaml does: both views augmented, lead dropout, mean+max."""
    config = (REPO / "configs" / "default.yaml").read_text()
    assert re.search(r"^augment_pair: true", config, re.M) and re.search(r"^pooling: meanmax", config, re.M)
    assert re.search(r"^lead_dropout: 0\.[1-9]", config, re.M)
    text = (REPO / "README.md").read_text()
    assert (
        "both views are augmented" in text and "lead dropout" in text and "by its mean and by its max" in text
    )
    assert "global average pooling" not in text and "one view is augmented" not in text
