"""The image's build stage is replayed from the Dockerfile itself, so a file the Dockerfile forgets fails."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "build_stage.py"
_spec = importlib.util.spec_from_file_location("build_stage", SCRIPT)
build_stage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_stage)


def test_the_build_stage_copies_every_package_folder() -> None:
    """Each folder pyproject maps to a package is copied (the stage once missed web/)."""
    import tomllib

    folders = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    )
    copied = set()
    for keyword, args in build_stage.stage(REPO / "deploy" / "Dockerfile"):
        if keyword == "COPY":
            copied.update(w.rstrip("/") for w in args.split()[:-1] if not w.startswith("--"))
    tops = {folder.split("/")[0] for folder in folders}
    assert tops <= copied, f"not copied by the build stage: {sorted(tops - copied)}"


def test_dockerignore_patterns_are_applied_like_docker() -> None:
    patterns = [".git", "tests", "**/__pycache__", "!tests/keep"]
    assert build_stage.ignored(".git/config", patterns)
    assert build_stage.ignored("search/__pycache__/x.pyc", patterns)
    assert build_stage.ignored("tests/test_x.py", patterns)
    assert not build_stage.ignored("search/serving/server.py", patterns)


def test_an_instruction_the_replay_does_not_know_is_refused(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(
        "FROM python:3.11-slim AS build\nADD https://example.org/x /x\nRUN true --prefix=/install\n"
    )
    with pytest.raises(build_stage.ReplayError, match="ADD"):
        build_stage.replay(dockerfile, REPO, tmp_path / "root", Path(sys.executable))


@pytest.mark.slow
def test_a_dockerfile_that_forgets_a_folder_fails(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert "COPY web web\n" in text
    dockerfile.write_text(text.replace("COPY web web\n", ""))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dockerfile", str(dockerfile), "--no-smoke"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 1, done.stdout[-2000:]
    assert "build stage: RUN pip install" in done.stderr and "--prefix=/install ." in done.stderr
