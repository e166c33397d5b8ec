"""Shared fixtures: the real data folder and an isolated ECGSEARCH_HOME for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data beside the checkout (or ECGSEARCH_TEST_DATA); a missing folder fails loudly."""
    path = Path(os.environ.get("ECGSEARCH_TEST_DATA", REPO.parent / "shared" / "data"))
    if not (path / "ptb-xl" / "ptbxl_database.csv").is_file():
        pytest.fail(f"test data not found at {path}; set ECGSEARCH_TEST_DATA to the shared data folder")
    return path


@pytest.fixture(scope="session")
def ptbxl_dir(data_dir: Path) -> Path:
    return data_dir / "ptb-xl"


@pytest.fixture(autouse=True)
def ecgsearch_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test's state (stores, rejects reports, results) out of the user's home."""
    home = tmp_path_factory.mktemp("ecgsearch_home")
    monkeypatch.setenv("ECGSEARCH_HOME", str(home))
    for name in list(os.environ):
        if name.startswith("ECGSEARCH_") and name not in {"ECGSEARCH_HOME", "ECGSEARCH_TEST_DATA"}:
            monkeypatch.delenv(name)
    return home


CHROMIUM = Path("/usr/bin/chromium")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without Debian's chromium, the first browser test fails (its fixture names the missing browser in
    one line) and the others skip, instead of one error per test."""
    needing = [item for item in items if "browser" in getattr(item, "fixturenames", ())]
    if not needing or CHROMIUM.is_file():
        return
    for item in needing[1:]:
        item.add_marker(pytest.mark.skip(reason=f"no browser at {CHROMIUM}: see {needing[0].nodeid}"))
