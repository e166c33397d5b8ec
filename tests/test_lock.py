"""The locks agree with pyproject.toml, and a dependency changed without a new lock is caught."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("lock", REPO / "requirements" / "lock.py")
lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lock)


def test_the_committed_locks_are_consistent() -> None:
    assert lock.check() == []


def test_every_lock_pins_with_hashes_and_torch_is_the_cpu_build() -> None:
    for path in sorted((REPO / "requirements").glob("*.txt")):
        text = path.read_text()
        pinned = lock.pins(path)
        assert pinned, path.name
        assert text.count("==") >= len(pinned) and text.count("--hash=sha256:") >= len(pinned), path.name
        if "torch" in pinned:
            assert pinned["torch"].endswith("+cpu"), path.name
    assert "torch" not in lock.pins(REPO / "requirements" / "serve.txt")
    assert "scipy" not in lock.pins(REPO / "requirements" / "serve.txt")


def test_a_dependency_changed_without_a_new_lock_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    changed = tmp_path / "pyproject.toml"
    text = (REPO / "pyproject.toml").read_text()
    changed.write_text(text.replace('"pyyaml>=6",', '"pyyaml>=6",\n    "left-pad==1.0",', 1))
    monkeypatch.setattr(lock, "PYPROJECT", changed)
    problems = lock.check()
    assert any("serve.txt was resolved from another pyproject.toml" in p for p in problems)
    assert any("left-pad is required but not locked" in p for p in problems)


def test_a_pin_outside_a_requirement_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = tmp_path / "pyproject.toml"
    text = (REPO / "pyproject.toml").read_text()
    changed.write_text(text.replace('"pydicom==3.0.2"', '"pydicom==2.4.4"', 1))
    monkeypatch.setattr(lock, "PYPROJECT", changed)
    assert any("pydicom==3.0.2 does not satisfy pydicom==2.4.4" in p for p in lock.check())
