"""The layout holds: serving code imports without torch, imports flow one way, packaging lists every part."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {"ecg", "encoder", "export", "ingest", "search", "bench", "web", "cli"}
# Which parts each part may import. ecg/ is the data layer under everything (readers of every format, WFDB,
# preparation, the stored-record rules); the data path above it: encoder -> export -> search -> ingest ->
# bench -> cli; web is a client of the service. Serving (search, ingest, web) never reaches the model's
# code: it embeds through export.runtime (onnxruntime) and reads ECGs through ecg/.
ALLOWED = {
    "ecg": {"ecg"},
    "encoder": {"ecg", "encoder"},
    "export": {"ecg", "encoder", "export"},
    "search": {"ecg", "export", "search"},
    "ingest": {"ecg", "export", "search", "ingest"},
    "bench": {"ecg", "encoder", "export", "search", "ingest", "bench"},
    "web": {"ecg", "export", "search", "web"},
    "cli": PARTS,
}
# The one CLI grammar (exit codes, how tokens and options are taken, --json): leaves of cli/ that every
# part's command module may import, even at module level (standard library and typer only).
CLI_GRAMMAR = {"ecgsearch.cli.exits", "ecgsearch.cli.options", "ecgsearch.cli.output", "ecgsearch.cli.tokens"}
# Tables that help texts are built from, standard library only (a test checks): command modules may
# import them at module level.
HELP_TABLES = {"ecgsearch.ecg.formats", "ecgsearch.ecg.bounds"}
# Per module, stricter than its part: the ecgsearch modules it may import (a trailing "." allows a package).
MODULE_ALLOWED = {
    "ecg/signals.py": {"ecgsearch.ecg.wfdb_io", "ecgsearch.ecg.dsp", "ecgsearch.ecg.bounds"},
    "ecg/dsp.py": set(),
    "ecg/ptbxl.py": set(),
    "ecg/schema.py": set(),
    "ecg/formats.py": set(),
    "ecg/bounds.py": set(),
    "ecg/identity.py": set(),
    "encoder/config.py": set(),
    "encoder/retrieval.py": set(),
    "encoder/probe.py": {"ecgsearch.ecg.ptbxl"},
    "encoder/data.py": {"ecgsearch.ecg.ptbxl", "ecgsearch.ecg.signals"},
    "export/card.py": set(),
    "export/runtime.py": {"ecgsearch.ecg.signals", "ecgsearch.export.card"},
    # What crosses the wire: the schema only. The client and the wire conversions reach the service's
    # types through it, never service.py (a client loads no model runtime, store or signal code).
    "search/api.py": {"ecgsearch.ecg.schema", "ecgsearch.ecg.formats"},
    "search/wire.py": {
        "ecgsearch.search.api",
        "ecgsearch.ecg.formats",
        "ecgsearch.ecg.schema",
        "ecgsearch.search._proto.",
        "ecgsearch.export.card",
        "ecgsearch.ecg.signals",  # inside the server-side GetEcg conversion only
    },
    "search/client.py": {
        "ecgsearch.search.api",
        "ecgsearch.ecg.schema",
        "ecgsearch.search.wire",
        "ecgsearch.search._proto.",
        "ecgsearch.export.card",
        "ecgsearch.ecg.signals",  # inside search_by_wfdb only
    },
    "search/serving/settings.py": {
        "ecgsearch.search.engine.store",  # the default store path, inside a validator
        "ecgsearch.search.serving.cpus",  # the CPU list's reading
    },
    "search/serving/cpus.py": set(),
    "search/engine/filters.py": {"ecgsearch.ecg.schema"},
    "search/engine/plan.py": set(),
    "search/engine/settings.py": {
        "ecgsearch.search.engine.plan",
        "ecgsearch.ecg.schema",
    },  # IndexSettings, IndexKind's engines
    "search/serving/loopback.py": set(),
    "search/engine/snapshots.py": {"ecgsearch.search.api"},  # the archive format, used by the store
    "search/engine/store.py": {
        "ecgsearch.search.api",
        "ecgsearch.search.engine.filters",
        "ecgsearch.search.engine.plan",
        "ecgsearch.search.engine.settings",
        "ecgsearch.ecg.schema",
        "ecgsearch.search.engine.snapshots",
    },
    "bench/results.py": set(),
    "bench/synthetic.py": set(),
    "bench/metrics.py": {"ecgsearch.bench.results"},
    "cli/exits.py": set(),
    "cli/output.py": set(),
    "cli/tokens.py": set(),
    "cli/options.py": set(),
}
# Serving code (search/, ingest/, web/) reaches the model side only through its runtime and its card.
SERVING_MAY_USE = {"ecgsearch.export.runtime", "ecgsearch.export.card"}
# Command modules: only typer and the standard library at module level; machinery inside commands.
COMMAND_MODULES = {
    "encoder/cli.py",
    "export/cli.py",
    "ingest/cli.py",
    "search/cli.py",
    "ingest/prepare_cli.py",
    "bench/cli.py",
    "cli/main.py",
}
COMMAND_MODULES |= {
    p for p in ("search/ops/admin_cli.py", "search/ops/snapshot_cli.py") if (REPO / p).exists()
}
HEAVY = ("onnxruntime", "qdrant_client", "qdrant_edge", "grpc", "scipy", "wfdb", "torch", "faiss")
# Reference decoders only tests compare the readers with (dev extra): no shipped module may import them,
# not even by name through importlib. ecgdatakit's wheel carries 61 MiB of network weights.
TEST_ONLY = ("ecgdatakit",)
TORCH_FREE_ENCODER = {"config.py", "retrieval.py", "probe.py", "data.py"}
# The torch side outside encoder/: building ONNX from a checkpoint and the training report.
TORCH_EXPORT = {"export/onnx.py", "bench/training.py"}


def _python_files(part: str) -> list[Path]:
    return [p for p in (REPO / part).rglob("*.py") if "_proto" not in p.parts]


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at top level of the file) for every import in ``path``; ``from pkg import mod`` -> pkg.mod."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
            found += [
                (f"{node.module}.{alias.name}", id(node) in top)
                for alias in node.names
                if _is_module(f"{node.module}.{alias.name}")
            ]
    return found


def _file_of(module: str) -> Path | None:
    """The source file of an ecgsearch module (package-dir mapping: ecgsearch.<part> -> <part>/)."""
    parts = module.split(".")
    if parts[0] != "ecgsearch" or len(parts) < 2:
        return None
    base = REPO.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_module(name: str) -> bool:
    return _file_of(name) is not None


def _ours(path: Path) -> list[str]:
    """ecgsearch modules (not bare packages) that ``path`` imports, anywhere in the file."""
    return sorted({m for m, _ in _imports(path) if m.startswith("ecgsearch.") and _file_of(m) is not None})


def _allowed(module: str, allowed: set[str]) -> bool:
    return any(module == a or (a.endswith(".") and module.startswith(a)) for a in allowed)


def _is_package(module: str) -> bool:
    found = _file_of(module)
    return found is not None and found.name == "__init__.py"


def test_module_imports() -> None:
    """Per module: the listed modules import only what their entry allows; serving stays torch-free."""
    for rel, allowed in MODULE_ALLOWED.items():
        for module in _ours(REPO / rel):
            if not _is_package(module):
                assert _allowed(module, allowed), f"{rel} imports {module}"
    for part in ("search", "ingest", "web"):
        for path in _python_files(part):
            rel = path.relative_to(REPO).as_posix()
            for module in _ours(path):
                target = module.split(".")[1]
                if target in {"encoder", "export"} and not _is_package(module):
                    assert _allowed(module, SERVING_MAY_USE), f"{rel} imports {module}"


def test_no_part_imports_commands_or_benchmarks_from_below() -> None:
    """Only cli/ mounts commands; only bench/ and cli/ import benchmark code."""
    for part in PARTS - {"cli"}:
        for path in _python_files(part):
            rel = path.relative_to(REPO).as_posix()
            for module in _ours(path):
                assert not module.endswith((".cli", "_cli")), f"{rel} imports the command module {module}"
                if part != "bench":
                    assert not module.startswith("ecgsearch.bench"), f"{rel} imports {module}"


def test_only_command_modules_use_the_cli_grammar() -> None:
    """Below cli/, only a part's command modules (cli.py, *_cli.py) import the grammar modules."""
    for part in PARTS - {"cli"}:
        for path in _python_files(part):
            if path.name == "cli.py" or path.name.endswith("_cli.py"):
                continue
            used = [m for m, _ in _imports(path) if m in CLI_GRAMMAR or m == "ecgsearch.cli"]
            assert not used, f"{path.relative_to(REPO)} imports {used}: only command modules may"


def test_command_modules_import_machinery_inside_commands() -> None:
    stdlib = set(sys.stdlib_module_names)
    for rel in sorted(COMMAND_MODULES):
        for module, at_top in _imports(REPO / rel):
            root = module.split(".")[0]
            leaf = module in CLI_GRAMMAR | HELP_TABLES
            if at_top and root not in stdlib | {"__future__", "typer"} and not leaf:
                raise AssertionError(f"{rel} imports {module} at module level")


def test_help_tables_import_only_the_standard_library() -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for module in HELP_TABLES:
        path = _file_of(module)
        assert path is not None, module
        used = [m for m, _ in _imports(path) if m.split(".")[0] not in stdlib]
        assert not used, f"{module} imports {used}"


def test_no_import_circle() -> None:
    """Module-level imports between ecgsearch modules form no cycle."""
    graph: dict[str, set[str]] = {}
    for part in PARTS:
        for path in _python_files(part):
            name = "ecgsearch." + ".".join(path.relative_to(REPO).with_suffix("").parts)
            name = name.removesuffix(".__init__")
            graph[name] = {
                m for m, top in _imports(path) if top and m.startswith("ecgsearch.") and _is_module(m)
            } - {name}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            assert state.get(nxt) != 1, "import circle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_parts_form_layers() -> None:
    """Every allowed import goes down one ranking of the parts, so no walk (a hospital file from ingest
    through ecg/ to the store) ever steps back up: ecg/ is below all, cli/ above all."""
    rank = ["ecg", "encoder", "export", "search", "ingest", "web", "bench", "cli"]
    assert set(rank) == PARTS
    for part, allowed in ALLOWED.items():
        assert all(rank.index(a) <= rank.index(part) for a in allowed), (part, allowed)


@pytest.mark.parametrize("part", sorted(PARTS))
def test_import_direction(part: str) -> None:
    for path in _python_files(part):
        for module, _ in _imports(path):
            if module.startswith("ecgsearch.") and module not in CLI_GRAMMAR | {"ecgsearch.cli"}:
                target = module.split(".")[1]
                assert target in ALLOWED[part], f"{path.relative_to(REPO)} imports {module}"
            assert module.split(".")[0] not in PARTS, f"{path.relative_to(REPO)}: write ecgsearch.{module}"


def test_torch_only_where_allowed() -> None:
    """torch stays in encoder/ and the two export modules: the data layer and serving never load it."""
    for part in PARTS - {"encoder"}:
        for path in _python_files(part):
            top_level = [m for m, at_top in _imports(path) if at_top and m.split(".")[0] == "torch"]
            allowed = path.relative_to(REPO).as_posix() in TORCH_EXPORT
            assert allowed or not top_level, f"{path.relative_to(REPO)} imports torch at module level"
    for name in TORCH_FREE_ENCODER:
        path = REPO / "encoder" / name
        if path.exists():
            assert all(m.split(".")[0] != "torch" for m, _ in _imports(path)), f"encoder/{name} imports torch"
    for init in ("ecg/__init__.py", "encoder/__init__.py", "export/__init__.py"):
        assert not _imports(REPO / init), f"{init} must stay empty of imports"


def test_test_only_references_stay_out_of_every_part() -> None:
    for part in sorted(PARTS):
        for path in _python_files(part):
            imported = [m for m, _ in _imports(path) if m.split(".")[0] in TEST_ONLY]
            named = [
                node.value
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.split(".")[0] in TEST_ONLY
            ]
            assert not imported + named, f"{path.relative_to(REPO)} uses {imported + named}"


def test_serving_imports_without_torch() -> None:
    """With torch made unimportable, the CLI, the server and ingest still import and --help runs."""
    # A finder that refuses torch (a None entry in sys.modules would confuse scipy's array-API probing).
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch': raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "import ecgsearch.search.serving.server, ecgsearch.ingest.cli, ecgsearch.export.runtime\n"
        "from typer.testing import CliRunner\n"
        "from ecgsearch.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_help_and_completion_import_no_heavy_library() -> None:
    """``ecgsearch --help``, every ``SUBCOMMAND --help`` and completion leave the heavy libraries unloaded."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ecgsearch.cli.main import app\n"
        "runner = CliRunner()\n"
        "calls = [['--help'], ['--version']]\n"
        "import typer\n"
        "group = typer.main.get_command(app)\n"
        "for name, cmd in group.commands.items():\n"
        "    calls.append([name, '--help'])\n"
        "    for sub in getattr(cmd, 'commands', {}):\n"
        "        calls.append([name, sub, '--help'])\n"
        "for args in calls:\n"
        "    r = runner.invoke(app, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "env = {'_ECGSEARCH_COMPLETE': 'complete_bash', 'COMP_WORDS': 'ecgsearch be', 'COMP_CWORD': '1'}\n"
        "r = runner.invoke(app, [], env=env, prog_name='ecgsearch')\n"
        "assert 'bench' in r.output, r.output\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not loaded, loaded\n"
        "print(len(calls))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) >= 15  # every command's help was rendered


def test_version_names_the_package_and_the_default_model() -> None:
    from ecgsearch.cli.main import version_text
    from ecgsearch.export.runtime import Embedder

    text = version_text()
    assert (
        text.splitlines()[0]
        == "ecgsearch " + tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    )
    assert text.splitlines()[1] == f"default model {Embedder(threads=1).version}"


def test_pyproject_lists_every_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(config["packages"])
    dirs = {
        "ecgsearch." + ".".join(p.parent.relative_to(REPO).parts)
        for p in REPO.glob("*/**/__init__.py")
        if p.parent.relative_to(REPO).parts[0] in PARTS
    }
    # ecgsearch.proto holds no code of a part: the wire contract as package data (ecgsearch proto --out).
    assert packages == dirs | {"ecgsearch.proto"}
    for package, folder in config["package-dir"].items():
        assert package in packages
        assert (REPO / folder / "__init__.py").is_file(), folder


SERVED_PARTS = ("ecg", "search", "ingest", "web")
NOT_SERVED = ("scipy", "wfdb", "torch", "pandas", "matplotlib", "edfio", "sklearn", "faiss")


def test_served_code_imports_no_library_the_serving_install_leaves_out() -> None:
    """The serving lock has no scipy, wfdb, torch, pandas, matplotlib or edfio: a served module that
    imports one, even inside a function, fails only in the image (deploy/build_stage.py finds it late)."""
    for part in SERVED_PARTS:
        for path in _python_files(part):
            used = sorted({m for m, _ in _imports(path) if m.split(".")[0] in NOT_SERVED})
            assert not used, f"{path.relative_to(REPO)} imports {used}"
    for rel in ("export/runtime.py", "export/card.py"):
        used = sorted({m for m, _ in _imports(REPO / rel) if m.split(".")[0] in NOT_SERVED})
        assert not used, f"{rel} imports {used}"


def test_package_data_ships_every_data_file() -> None:
    """Every file a package folder holds beside its code is matched by a package-data pattern, so the
    installed package (the image, a wheel) has it: a table read at run time and left out fails only there."""
    import fnmatch

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {REPO / folder: package for package, folder in config["package-dir"].items()}
    patterns = config["package-data"]
    missing = []
    for folder, package in folders.items():
        for path in folder.rglob("*"):
            if path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
                continue
            owner = max((f for f in folders if path.is_relative_to(f)), key=lambda f: len(f.parts))
            if owner != folder:
                continue  # a subpackage's file: checked under its own package
            rel = path.relative_to(folder).as_posix()
            globs = patterns.get(package, []) + patterns.get("*", [])
            if not any(fnmatch.fnmatch(rel, g) and rel.count("/") == g.count("/") for g in globs):
                missing.append(path.relative_to(REPO).as_posix())
    assert sorted(missing) == sorted(NOT_SHIPPED), "not in [tool.setuptools.package-data]: " + ", ".join(
        sorted(set(missing) - NOT_SHIPPED)
    )


# Files in package folders that the installed package does not need: the proto's lint configuration.
NOT_SHIPPED = {"proto/buf.yaml"}
