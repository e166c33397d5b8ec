"""The front door stays readable and true; the command reference is generated from --help, never stale."""

from __future__ import annotations

import re
from pathlib import Path

from ecgsearch.cli import docs

REPO = Path(__file__).resolve().parents[1]


def test_command_reference_is_current() -> None:
    text = docs.COMMANDS.read_text()
    assert docs.commands_markdown() == text, "docs/commands.md is stale: run `python -m ecgsearch.cli.docs`"


# A front door: what it is with the install, run and test commands first, then these sections in this order
# (others may sit between), each short enough to read through; reference material lives in docs/.
FRONT_DOOR = ("Quickstart", "How it works", "Documentation", "Development")
OPENING_COMMANDS = ("pip install", "ecgsearch ingest", "ecgsearch serve", "python -m pytest")
MAX_SECTION_LINES = 45
MAX_LINE = 125  # a wider line (a table row above all) cannot be read in an editor or a diff


def test_readme_is_a_front_door_whose_links_resolve() -> None:
    text = (REPO / "README.md").read_text()
    opening, *sections = re.split(r"(?m)^## ", text)
    assert all(command in opening for command in OPENING_COMMANDS), "install, run and test come first"
    titles = [section.splitlines()[0].strip() for section in sections]
    assert [t for t in titles if t in FRONT_DOOR] == list(FRONT_DOOR), titles
    for title, section in zip(titles, sections, strict=True):
        lines = len(section.splitlines())
        assert lines <= MAX_SECTION_LINES, f"README '{title}' has {lines} lines: move the reference to docs/"
    wide = [n for n, line in enumerate(text.splitlines(), 1) if len(line) > MAX_LINE]
    assert not wide, f"README lines wider than {MAX_LINE}: {wide}"
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (REPO / target).exists(), f"README links to missing {target}"
    for doc in ("docs/results.md", "docs/deploy.md", "docs/commands.md"):
        assert f"]({doc})" in text


def test_readme_describes_the_shipped_training_config() -> None:
    """How it works must say what configs/shipped.yaml (the bundled model's recipe) does: both views
    augmented, lead dropout, mean+max, the label terms, and which blocks are served."""
    import yaml

    config = yaml.safe_load((REPO / "configs" / "shipped.yaml").read_text())
    assert config["augment_pair"] and config["pooling"] == "meanmax" and config["lead_dropout"] > 0
    assert config["w_label"] > 0 and config["w_statement"] > 0 and config["rhythm_weight"] == 0
    assert config["whitening"] == 0 and config["statement_head"] == "refit_rhythm"
    assert config["statement_block"] == "logit_z" and config["statement_weight"] == 0.5
    text = " ".join((REPO / "README.md").read_text().split())  # as read: line breaks are spaces
    assert (
        "both views are augmented" in text and "lead dropout" in text and "by its mean and by its max" in text
    )
    assert "multi-label BCE of a linear statement head" in text
    assert (
        "a head refitted after training on that embedding and the ECG's heart rate and RR irregularity"
        in text
    )
    assert "standardised, at weight 0.5" in text and "whitening" not in text.split("**embedding**")[1][:600]
    assert "global average pooling" not in text and "one view is augmented" not in text
