"""Write and check the locks: every install (CI, README, the image) goes through one of these files.

Why pip-tools and not uv: every install here is done by pip, and pip is what finds the CPU build of torch
where a machine provides it (``PIP_FIND_LINKS`` / ``PIP_EXTRA_INDEX_URL``); pip-compile resolves with the
same finder, so the lock names exactly the file pip will install (``torch==2.13.0+cpu`` and its hash).

Sets (each a subset of ``all.txt``, resolved against it so one package has one version everywhere):
  build.txt   pyproject's build-system requirements (installs use --no-build-isolation: locked too)
  serve.txt   the default install: what the serving image carries
  train.txt   serve + the ``train`` extra (CPU torch)
  bench.txt   serve + ``bench``;   dev.txt  serve + ``dev``;   web.txt  serve + ``web`` (the viewer)
  all.txt     every extra: CI and development
  ../deploy/requirements-validate.txt  the deployment validators (their own venv in CI)

Each file's header records a digest of pyproject.toml's dependency tables; ``--check`` (offline, in CI)
fails when pyproject.toml changed without a new lock, when a pinned version does not satisfy a
requirement, or when two sets disagree on a version.

Usage:
  python requirements/lock.py            # resolve every set again (needs the package index)
  python requirements/lock.py --check    # offline consistency check
  python requirements/lock.py --freeze   # compare `pip freeze` of this environment with all.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "requirements"
PYPROJECT = REPO / "pyproject.toml"
VALIDATE_IN = REPO / "deploy" / "requirements-validate.in"
VALIDATE_LOCK = REPO / "deploy" / "requirements-validate.txt"
DIGEST_LINE = "# pyproject-dependencies-sha256: "
TORCH_NOTE = (
    "# torch is the CPU build (2.13.0+cpu) from https://download.pytorch.org/whl/cpu: where PyPI is\n"
    "# the only index, set PIP_EXTRA_INDEX_URL to that address (or PIP_FIND_LINKS to a folder holding\n"
    "# the wheel).\n"
)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["project"]


def build_requires() -> list[str]:
    return tomllib.loads(PYPROJECT.read_text())["build-system"]["requires"]


def extras() -> list[str]:
    return sorted(project()["optional-dependencies"])


def dependency_digest() -> str:
    """SHA-256 of what the locks are resolved from: pyproject's requirement tables, the validators' input."""
    p = project()
    tables = {
        "build-system": build_requires(),
        "requires-python": p.get("requires-python"),
        "dependencies": p["dependencies"],
        "optional-dependencies": p["optional-dependencies"],
        "validate": [line for line in VALIDATE_IN.read_text().splitlines() if not line.startswith("#")],
    }
    return hashlib.sha256(json.dumps(tables, sort_keys=True).encode()).hexdigest()


def lock_sets() -> dict[str, list[str]]:
    """Lock file name -> the extras it holds beside the serving set."""
    sets = {"serve.txt": []}
    sets.update({f"{extra}.txt": [extra] for extra in extras()})
    sets["all.txt"] = extras()
    return sets


def pins(path: Path) -> dict[str, str]:
    """Canonical package name -> pinned version, from a pip-compile output file."""
    out = {}
    for line in path.read_text().splitlines():
        m = _PIN.match(line)
        if m:
            out[canonicalize_name(m.group(1))] = m.group(2)
    return out


def _compile(output: Path, args: list[str], constraint: Path | None) -> None:
    cmd = [
        sys.executable,
        "-m",
        "piptools",
        "compile",
        "--quiet",
        "--generate-hashes",
        "--allow-unsafe",
        "--strip-extras",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--newline=LF",
        "--output-file",
        str(output),
        *args,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "constraints.txt"
        if constraint is not None:
            # Constraints without hashes: pip refuses hashes in a constraint file.
            plain.write_text("".join(f"{name}=={version}\n" for name, version in pins(constraint).items()))
            cmd += ["--constraint", str(plain)]
        env = dict(os.environ, CUSTOM_COMPILE_COMMAND="python requirements/lock.py")
        output.unlink(missing_ok=True)  # resolve afresh, not from the old pins
        subprocess.run(cmd, check=True, cwd=REPO, env=env)
    body = output.read_text()
    if constraint is not None:  # name the constraint as the repository does, not by its scratch path
        body = body.replace(f"-c {plain}", f"-c requirements/{constraint.name}")
    header = f"{DIGEST_LINE}{dependency_digest()}\n"
    if "torch==" in body:
        header += TORCH_NOTE
    output.write_text(header + body)


def write() -> None:
    sets = lock_sets()
    all_lock = HERE / "all.txt"
    print("resolving all.txt", file=sys.stderr)
    _compile(all_lock, ["--all-extras", "pyproject.toml"], None)
    for name, chosen in sets.items():
        if name == "all.txt":
            continue
        print(f"resolving {name}", file=sys.stderr)
        args = [arg for extra in chosen for arg in ("--extra", extra)]
        _compile(HERE / name, [*args, "pyproject.toml"], all_lock)
    print("resolving build.txt", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "build.in"
        source.write_text("".join(f"{req}\n" for req in build_requires()))
        _compile(HERE / "build.txt", [str(source)], all_lock)
        build = HERE / "build.txt"
        build.write_text(build.read_text().replace(f"-r {source}", "pyproject.toml (build-system)"))
    print("resolving deploy/requirements-validate.txt", file=sys.stderr)
    _compile(VALIDATE_LOCK, [str(VALIDATE_IN.relative_to(REPO))], None)


def _requirements(chosen: list[str]) -> list[Requirement]:
    p = project()
    reqs = [Requirement(r) for r in p["dependencies"]]
    for extra in chosen:
        reqs += [Requirement(r) for r in p["optional-dependencies"][extra]]
    return reqs


def check() -> list[str]:
    """Problems that make the locks disagree with pyproject.toml or with each other (empty: consistent)."""
    problems = []
    digest = dependency_digest()
    all_pins = pins(HERE / "all.txt") if (HERE / "all.txt").is_file() else {}
    for name, chosen in lock_sets().items():
        path = HERE / name
        if not path.is_file():
            problems.append(f"requirements/{name} is missing: run python requirements/lock.py")
            continue
        if DIGEST_LINE + digest not in path.read_text():
            problems.append(
                f"requirements/{name} was resolved from another pyproject.toml: "
                "run python requirements/lock.py"
            )
        locked = pins(path)
        for req in _requirements(chosen):
            version = locked.get(canonicalize_name(req.name))
            if version is None:
                problems.append(f"requirements/{name}: {req.name} is required but not locked")
            elif not req.specifier.contains(Version(version), prereleases=True):
                problems.append(f"requirements/{name}: {req.name}=={version} does not satisfy {req}")
        for pkg, version in locked.items():
            if all_pins.get(pkg) != version:
                problems.append(f"requirements/{name}: {pkg}=={version} but all.txt has {all_pins.get(pkg)}")
    build = HERE / "build.txt"
    if not build.is_file() or DIGEST_LINE + digest not in build.read_text():
        problems.append("requirements/build.txt is stale: run python requirements/lock.py")
    else:
        for req in map(Requirement, build_requires()):
            version = pins(build).get(canonicalize_name(req.name))
            if version is None or not req.specifier.contains(Version(version), prereleases=True):
                problems.append(f"requirements/build.txt: {req} is not satisfied ({version})")
    if not VALIDATE_LOCK.is_file() or DIGEST_LINE + digest not in VALIDATE_LOCK.read_text():
        problems.append("deploy/requirements-validate.txt is stale: run python requirements/lock.py")
    return problems


def freeze_problems(lock: Path) -> list[str]:
    """Installed distributions that the lock does not list, or lists at another version."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    locked = pins(lock)
    problems = []
    for line in frozen.splitlines():
        m = _PIN.match(line)
        if not m:
            problems.append(f"installed but not pinned: {line}")
            continue
        name, version = canonicalize_name(m.group(1)), m.group(2)
        if name in {"pip", "setuptools", "ecgsearch"} and name not in locked:
            continue  # the venv's own installer; the project itself
        if locked.get(name) != version:
            problems.append(
                f"installed {name}=={version}, lock {lock.name} has {locked.get(name, 'nothing')}"
            )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="offline: fail if the locks disagree with pyproject"
    )
    mode.add_argument("--freeze", metavar="LOCK", help="fail if `pip freeze` lists anything LOCK does not")
    args = parser.parse_args()
    if args.freeze:
        problems = freeze_problems(Path(args.freeze))
    elif args.check:
        problems = check()
    else:
        write()
        problems = check()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
