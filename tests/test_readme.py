"""README's command reference is generated from --help and must not go stale."""

from ecgsearch.cli import docs


def test_command_reference_is_current() -> None:
    text = docs.README.read_text()
    assert docs.updated_readme(text) == text, "README is stale: run `python -m ecgsearch.cli.docs`"
