"""The layout holds: serving code imports without torch, imports flow one way, packaging lists every part."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {"encoder", "export", "ingest", "search", "web", "cli"}
# Which parts each part may import (data path: encoder -> export -> search -> ingest -> cli).
ALLOWED = {
    "encoder": {"encoder"},
    "export": {"encoder", "export"},
    "search": {"encoder", "export", "search"},
    "ingest": {"encoder", "export", "search", "ingest"},
    "web": {"encoder", "export", "search", "web"},
    "cli": PARTS,
}
TORCH_FREE_ENCODER = {"signals.py", "config.py", "ptbxl.py", "retrieval.py"}
# The torch side of export: building ONNX from a checkpoint and the training report beside it.
TORCH_EXPORT = {"export/onnx.py", "export/results.py"}


def _python_files(part: str) -> list[Path]:
    return [p for p in (REPO / part).rglob("*.py") if "_proto" not in p.parts]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level of the file) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


@pytest.mark.parametrize("part", sorted(PARTS))
def test_import_direction(part: str) -> None:
    for path in _python_files(part):
        for module, _ in _imports(path):
            if module.startswith("ecgsearch."):
                target = module.split(".")[1]
                assert target in ALLOWED[part], f"{path.relative_to(REPO)} imports {module}"
            assert module.split(".")[0] not in PARTS, f"{path.relative_to(REPO)}: write ecgsearch.{module}"


def test_torch_only_where_allowed() -> None:
    for part in PARTS - {"encoder"}:
        for path in _python_files(part):
            top_level = [m for m, at_top in _imports(path) if at_top and m.split(".")[0] == "torch"]
            allowed = path.relative_to(REPO).as_posix() in TORCH_EXPORT
            assert allowed or not top_level, f"{path.relative_to(REPO)} imports torch at module level"
    for name in TORCH_FREE_ENCODER:
        path = REPO / "encoder" / name
        if path.exists():
            assert all(m.split(".")[0] != "torch" for m, _ in _imports(path)), f"encoder/{name} imports torch"
    for init in ("encoder/__init__.py", "export/__init__.py"):
        assert not _imports(REPO / init), f"{init} must stay empty of imports"


def test_serving_imports_without_torch() -> None:
    """With torch made unimportable, the CLI, the server and ingest still import and --help runs."""
    # A finder that refuses torch (a None entry in sys.modules would confuse scipy's array-API probing).
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import ecgsearch.search.server, ecgsearch.ingest.cli, ecgsearch.export.runtime\n"
        "from typer.testing import CliRunner\n"
        "from ecgsearch.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_pyproject_lists_every_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    dirs = {
        "ecgsearch." + ".".join(p.parent.relative_to(REPO).parts)
        for p in REPO.glob("*/**/__init__.py")
        if p.parent.relative_to(REPO).parts[0] in PARTS
    }
    assert packages == dirs
    for package, folder in config["package-dir"].items():
        assert package in packages
        assert (REPO / folder / "__init__.py").is_file(), folder
