"""Replay the serving image's build stage without a container engine, then use what it built.

CI machines here have no Docker engine, so nothing would notice a Dockerfile that forgets a file. This
reads deploy/Dockerfile's ``build`` stage and replays it instruction by instruction in a scratch root:
``WORKDIR`` and ``COPY`` (from the build context as .dockerignore filters it) create the same tree, ``RUN``
runs the same command with the stage's container paths mapped into the scratch root and a fresh Python
3.11 (no site packages) first on PATH. Any other instruction in that stage is refused, so the replay
cannot silently diverge from the file. Then, as the final stage does with ``COPY --from=build /install``,
it runs the installed result alone (``PYTHONPATH`` = the prefix, nothing else importable): ``ecgsearch
--version``, an ingest of real WFDB records into a tiny store, ``serve`` on a loopback port, one
``query``, and the viewer through the image's own entrypoint for it (deploy/web-entrypoint.sh) with its
liveness and readiness answering 200. The prefix's size is the serving install; ``--out`` writes it as
a results file.

Usage: python deploy/build_stage.py [--dockerfile deploy/Dockerfile] [--data ../shared/data] [--out FILE]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE = "build"
SMOKE_RECORDS = 12
# Left out of the serving install on purpose (test references and training only): their presence fails.
NOT_SERVED = ("scipy", "wfdb", "ecgdatakit", "torch", "pandas", "matplotlib", "edfio")
SHIPPED = (
    "ecgsearch/search/py.typed",
    "ecgsearch/proto/ecgsearch/v1/search.proto",
    "ecgsearch/export/models/ecg-encoder.onnx",
)
# Reads every hospital file and a WFDB record of each shared folder; prints a digest of what was read.
READ_ALL = """
import hashlib, json, sys
from pathlib import Path
from ecgsearch.ecg.formats import EXTENSIONS
from ecgsearch.ecg.readers import read_ecg
from ecgsearch.ecg.signals import read_wfdb
data = Path(sys.argv[1])
out = {}
for path in sorted((data / "hospital").iterdir()):
    if path.suffix.lower() in EXTENSIONS:
        ecg = read_ecg(path)
        digest = hashlib.sha256(ecg.signal.tobytes()).hexdigest()
        out[path.name] = [digest, ecg.sampling_rate_hz, list(ecg.lead_names), ecg.format]
for name in ("ptb-xl/records100/00000/00001_lr", "cinc2021/E07500", "challenge/georgia/E00001"):
    raw = read_wfdb(data / name)
    out[name] = [hashlib.sha256(raw.signal.tobytes()).hexdigest(), raw.fs, list(raw.leads)]
print(json.dumps(out))
"""


class ReplayError(RuntimeError):
    """The build stage cannot be replayed or one of its steps failed."""


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = (pending + stripped).strip()
        pending = ""
        keyword, _, rest = whole.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def stage(dockerfile: Path, name: str = STAGE) -> list[tuple[str, str]]:
    """The instructions of the stage ``FROM ... AS name``, without its FROM."""
    steps, inside = [], False
    for keyword, args in instructions(dockerfile):
        if keyword == "FROM":
            inside = bool(re.search(rf"\s+AS\s+{re.escape(name)}$", args, re.IGNORECASE))
            continue
        if inside:
            steps.append((keyword, args))
    if not steps:
        raise ReplayError(f"{dockerfile}: no stage named {name!r}")
    return steps


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``relative`` (or a folder above it) out of the build context."""
    parts = relative.split("/")
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(parts[depth - 1], pattern[3:])
            ):
                excluded = not negate
                break
    return excluded


def _patterns(context: Path) -> list[str]:
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    return [
        line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def _copy(context: Path, patterns: list[str], sources: list[str], target: Path) -> None:
    """COPY semantics: a folder's contents go into the target folder; files keep their names in a folder."""
    into_folder = len(sources) > 1 or str(target).endswith("/")
    for source in sources:
        path = context / source
        if ignored(source.strip("/"), patterns) or not path.exists():
            raise ReplayError(f"COPY {source}: not in the build context")
        if path.is_dir():
            for item in path.rglob("*"):
                relative = item.relative_to(context).as_posix()
                if item.is_file() and not ignored(relative, patterns):
                    dest = target / item.relative_to(path)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(item, dest)
        else:
            dest = target / path.name if into_folder else target
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)


def replay(dockerfile: Path, context: Path, root: Path, python: Path) -> tuple[Path, Path]:
    """Replay the build stage under ``root``; returns the install prefix it filled (its ``/install``) and
    its last working folder (where the project was copied and built)."""
    steps = stage(dockerfile)
    patterns = _patterns(context)
    prefixes = {m for _, args in steps for m in re.findall(r"--prefix[= ](/\S+)", args)}
    if len(prefixes) != 1:
        raise ReplayError(
            f"the build stage must install into one --prefix, found {sorted(prefixes) or 'none'}"
        )
    prefix = prefixes.pop()
    env = dict(os.environ, PATH=f"{python.parent}{os.pathsep}{os.environ['PATH']}", PIP_NO_INPUT="1")
    env.pop("PYTHONPATH", None)
    workdir = root
    mapped = {prefix: root / prefix.lstrip("/")}
    for keyword, args in steps:
        if keyword == "WORKDIR":
            workdir = root / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
            mapped[args] = workdir
        elif keyword == "COPY":
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            if any(w.startswith("--from") for w in shlex.split(args)) or len(words) < 2:
                raise ReplayError(f"COPY {args}: only context copies are replayed")
            *sources, dest = words
            target = root / dest.lstrip("/") if dest.startswith("/") else workdir / dest
            _copy(context, patterns, sources, Path(str(target) + ("/" if dest.endswith("/") else "")))
        elif keyword == "RUN":
            command = args
            for container, host in sorted(mapped.items(), key=lambda kv: -len(kv[0])):
                command = re.sub(rf"(?<![\w/]){re.escape(container)}(?![\w])", str(host), command)
            print(f"RUN {args}", file=sys.stderr, flush=True)
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", command], cwd=workdir, env=env, stdout=sys.stderr
            )
            if done.returncode:
                raise ReplayError(f"RUN {args}: exit status {done.returncode}")
        elif keyword == "ENV" or keyword == "ARG":
            continue
        else:
            raise ReplayError(
                f"{keyword}: not replayed; extend deploy/build_stage.py or keep it out of the stage"
            )
    return mapped[prefix], workdir


def lock_of(dockerfile: Path) -> str:
    """The lock file the build stage installs into its prefix (``-r requirements/<set>.txt``)."""
    for keyword, args in stage(dockerfile):
        if keyword == "RUN":
            for command in args.split("&&"):
                found = re.search(r"--prefix[= ]\S+.*-r (\S+)", command)
                if found:
                    return found.group(1)
    raise ReplayError(f"{dockerfile}: no locked install into the prefix")


def _stop(process: subprocess.Popen) -> None:
    """Terminate a process started here, killing it when it does not end within 30 s."""
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _site_packages(prefix: Path) -> Path:
    found = sorted(prefix.glob("lib/python3*/site-packages"))
    if not found:
        raise ReplayError(f"{prefix}: no site-packages was installed")
    return found[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def smoke(prefix: Path, python: Path, data: Path, scratch: Path) -> dict:
    """Use the installed result alone: version, ingest, serve, one query by record."""
    env = {
        "PATH": f"{prefix / 'bin'}{os.pathsep}/usr/bin:/bin",
        "PYTHONPATH": str(_site_packages(prefix)),
        "PYTHONNOUSERSITE": "1",
        "HOME": str(scratch),
        "ECGSEARCH_HOME": str(scratch / "home"),
    }
    cli = [str(python), "-m", "ecgsearch.cli.main"]

    def run(*args: str, timeout: float = 600) -> str:
        done = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise ReplayError(
                f"ecgsearch {' '.join(args[:2])}: exit {done.returncode}\n{done.stderr[-2000:]}"
            )
        return done.stdout

    version = run("--version").strip()
    site = _site_packages(prefix)
    present = [name for name in NOT_SERVED if (site / name).exists()]
    if present:
        raise ReplayError(f"the serving install carries {', '.join(present)}")
    missing = [name for name in SHIPPED if not (site / name).exists()]
    if missing:
        raise ReplayError(f"the installed package lacks {', '.join(missing)}")
    # Every format is read by the lean install exactly as by the full environment, where the tests compare
    # the readers with the reference libraries (wfdb, ecgdatakit, sierraecg, edfio).
    lean = subprocess.run([str(python), "-c", READ_ALL, str(data)], env=env, capture_output=True, text=True)
    full = subprocess.run([sys.executable, "-c", READ_ALL, str(data)], capture_output=True, text=True)
    if lean.returncode or full.returncode:
        raise ReplayError(f"reading the shared files failed:\n{(lean.stderr or full.stderr)[-2000:]}")
    if json.loads(lean.stdout) != json.loads(full.stdout):
        raise ReplayError("the serving install reads the shared files differently from the full environment")
    records = scratch / "records"
    records.mkdir()
    source = data / "cinc2021"
    for header in sorted(source.glob("*.hea"))[:SMOKE_RECORDS]:
        for part in source.glob(header.stem + ".*"):
            (records / part.name).symlink_to(part.resolve())
    store = scratch / "store"
    run("ingest", str(records), "--dataset", "smoke", "--store", str(store))
    port = _free_port()
    server = subprocess.Popen(
        [*cli, "serve", "--store", str(store), "--port", str(port), "--host", "127.0.0.1"],
        env={**env, "ECGSEARCH_TOKENS": "smoke-token"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = sorted(records.glob("*.hea"))[0].stem
        deadline = time.monotonic() + 120
        while True:
            done = subprocess.run(
                [*cli, "query", "--target", f"127.0.0.1:{port}"]
                + ["--record-id", f"smoke:{first}", "--k", "3", "--json"],
                env={**env, "ECGSEARCH_TOKEN": "smoke-token"},
                capture_output=True,
                text=True,
            )
            if done.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(1)
        if done.returncode:
            raise ReplayError(
                f"query against the built service: exit {done.returncode}\n{done.stderr[-2000:]}"
            )
        hits = json.loads(done.stdout)["hits"]
        probes = _viewer_probes(env, f"127.0.0.1:{port}", "smoke-token")
    finally:
        _stop(server)
    if len(hits) != 3:
        raise ReplayError(f"query against the built service returned {len(hits)} hits, expected 3")
    return {
        "version": version,
        "files_read_alike": len(json.loads(lean.stdout)),
        "records_ingested": SMOKE_RECORDS,
        "hits": len(hits),
        "viewer": probes,
    }


def _viewer_probes(env: dict[str, str], target: str, token: str) -> dict[str, int]:
    """The viewer as the image starts it (deploy/web-entrypoint.sh, here on a loopback port): HTTP status
    of /healthz and /readyz once it listens; both must be 200 while the service serves."""
    port = _free_port()
    viewer = subprocess.Popen(
        ["sh", str(REPO / "deploy" / "web-entrypoint.sh"), "--host", "127.0.0.1", "--port", str(port)],
        env={
            **env,
            "ECGSEARCH_TARGET": target,
            "ECGSEARCH_TOKEN": token,
            "ECGSEARCH_ALLOWED_HOSTS": "localhost",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert viewer.stderr is not None
        seen = ""
        while f":{port}/" not in seen:  # "ecgsearch web: http://...:<port>/" once it listens
            line = viewer.stderr.readline()
            if not line:
                raise ReplayError(f"the viewer did not start: {seen[-2000:]}")
            seen += line
        status = {}
        for path in ("/healthz", "/readyz"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
                    status[path] = reply.status
            except urllib.error.HTTPError as exc:
                status[path] = exc.code
        if set(status.values()) != {200}:
            raise ReplayError(f"the viewer's probes answered {status}")
        return status
    finally:
        _stop(viewer)


def size_report(prefix: Path, top: int = 12) -> dict:
    """Bytes installed under the prefix, in all and for the largest top-level entries of site-packages."""

    def size(path: Path) -> int:
        if path.is_file():
            return path.stat().st_size
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())

    site = _site_packages(prefix)
    entries = sorted(((size(p), p.name) for p in site.iterdir()), reverse=True)[:top]
    return {
        "prefix_bytes": size(prefix),
        "prefix_mb": round(size(prefix) / 1e6, 1),
        "largest": [{"name": name, "mb": round(b / 1e6, 1)} for b, name in entries],
    }


def fresh_venv_mb(scratch: Path, project: Path, lock: str = "requirements/serve.txt") -> float:
    """Size of a new venv holding the serving lock and the project (pip and setuptools included): the
    serving install as a user without the image gets it. The project is installed from the replayed
    stage's copy, so the build leaves nothing in the checkout."""
    venv = scratch / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps"]
    for step in (
        ["--require-hashes", "-r", str(REPO / "requirements" / "build.txt")],
        ["--require-hashes", "-r", str(REPO / lock)],
        ["--no-build-isolation", str(project)],
    ):
        if subprocess.run([*pip, *step], stdout=sys.stderr).returncode:
            raise ReplayError(f"fresh venv: pip install {' '.join(step)} failed")
    total = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    return round(total / 1e6, 1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dockerfile", type=Path, default=REPO / "deploy" / "Dockerfile")
    parser.add_argument("--context", type=Path, default=REPO)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, help="write the size and smoke results as JSON here")
    parser.add_argument("--no-smoke", action="store_true", help="replay the stage only")
    parser.add_argument(
        "--fresh-venv", action="store_true", help="also measure a new venv from requirements/serve.txt"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ecgsearch-build-") as tmp:
        scratch = Path(tmp)
        # A fresh interpreter environment, as the base image has: Python 3.11 with pip and nothing else.
        subprocess.run([sys.executable, "-m", "venv", str(scratch / "python")], check=True)
        python = scratch / "python" / "bin" / "python"
        try:
            prefix, project = replay(args.dockerfile, args.context, scratch / "root", python)
            report = {
                "command": "python deploy/build_stage.py " + " ".join(sys.argv[1:]),
                "dockerfile": args.dockerfile.name,
                "lock": lock_of(args.dockerfile),
                **size_report(prefix),
            }
            if args.fresh_venv:
                report["fresh_venv_serve_mb"] = fresh_venv_mb(scratch, project)
            if not args.no_smoke:
                (scratch / "smoke").mkdir()
                report["smoke"] = smoke(prefix, python, args.data, scratch / "smoke")
        except (ReplayError, subprocess.TimeoutExpired) as exc:
            print(f"build stage: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
