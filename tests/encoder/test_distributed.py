"""Two training processes on the gloo backend: gathered NT-Xent equals the one-process loss on the global
batch (value and gradient), and a 2-process run from shards resumes from its checkpoint and finishes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ecgsearch.ecg import shards
from ecgsearch.encoder.losses import nt_xent

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"
N, D, WORLD = 6, 8, 2  # rows per process, projection width, processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(N * WORLD, D, generator=g, dtype=torch.float64), torch.randn(
        N * WORLD, D, generator=g, dtype=torch.float64
    )


def _gathered_loss(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from ecgsearch.encoder.distributed import gather_with_grad

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    a, b = _batch()
    mine = slice(rank * N, (rank + 1) * N)
    a_local = a[mine].clone().requires_grad_(True)
    b_local = b[mine].clone().requires_grad_(True)
    loss = nt_xent(a_local, b_local, 0.2, gather=gather_with_grad)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad_a": a_local.grad, "grad_b": b_local.grad}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_gathered_nt_xent_is_the_global_batch_loss(tmp_path: Path) -> None:
    mp.spawn(_gathered_loss, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    a, b = _batch()
    a.requires_grad_(True)
    b.requires_grad_(True)
    full = nt_xent(a, b, 0.2)
    full.backward()
    parts = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    # the mean of the processes' losses is the global loss; DDP's gradient average then gives its gradient
    assert torch.allclose(sum(p["loss"] for p in parts) / WORLD, full.detach(), atol=1e-12)
    grad_a = torch.cat([p["grad_a"] for p in parts]) / WORLD
    grad_b = torch.cat([p["grad_b"] for p in parts]) / WORLD
    assert torch.allclose(grad_a, a.grad, atol=1e-12) and torch.allclose(grad_b, b.grad, atol=1e-12)
    assert not torch.allclose(parts[0]["loss"], parts[1]["loss"])  # each process scores its own rows


@pytest.fixture(scope="module")
def archive(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ecgsearch.ecg.identity import Pseudonymizer
    from ecgsearch.ingest.prepare import prepare_archive

    out = tmp_path_factory.mktemp("archive")
    prepare_archive(data_dir / "ptb-xl", out, Pseudonymizer.ephemeral(), shard_size=64, workers=0, limit=320)
    return out


def _torchrun(archive: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """Two gloo processes under torchrun, as a job would run them: with one elastic restart, because on
    shared CPU cores a gloo rank was seen to abort (SIGABRT) once in a dozen runs; a restarted group
    starts over (or, with --resume, from the last checkpoint), so the assertions below still hold."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
        str(_free_port()), "--max-restarts", "1", "-m", "ecgsearch.cli.main", "train",
        "--config", str(TINY_CONFIG), "--shards", str(archive), "--out", str(out), "--workers", "1",
        "--device", "cpu", "--val-records", "64", "--json", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_two_processes_resume_from_their_checkpoint_and_finish(archive: Path, tmp_path: Path) -> None:
    opened = shards.open_archive(archive)
    full_steps = 2 * (int(opened.rows_in(range(1, 9)).sum()) // 16)  # tiny.yaml: 2 epochs of 16
    stopped = _torchrun(archive, tmp_path, "--max-steps", "20", "--checkpoint-every", "7")
    # a failing rank's traceback comes before the summary: keep enough of stderr to show it
    assert stopped.returncode == 0, stopped.stderr[-8000:]
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ckpt["step"] == 20 and ckpt["world_size"] == 2 and len(ckpt["generators"]) == 2
    assert not torch.equal(ckpt["generators"][0], ckpt["generators"][1])  # each process its own draws
    finished = _torchrun(archive, tmp_path, "--resume")
    assert finished.returncode == 0, finished.stderr[-8000:]
    line = json.loads(finished.stdout[finished.stdout.index("{") :])  # the first process speaks for both
    assert line["steps"] == full_steps
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["epochs"] == 2 and summary["steps"] == full_steps
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [full_steps // 2, full_steps]
    assert all(0.0 <= r["val_agreement"] <= 1.0 for r in log)
    assert len(summary["throughput"]["peak_rss_mb"]) == 2
    from ecgsearch.encoder.config import load_config
    from ecgsearch.encoder.train import train

    with pytest.raises(ValueError, match="written by 2 processes, not 1"):
        train(load_config(TINY_CONFIG), REPO, tmp_path, resume=True, device="cpu", shards_dir=archive)


def test_train_scale_writes_one_cell_per_archive_and_process_count(archive: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ecgsearch.cli.main import app

    out = tmp_path / "scale.json"
    args = ["bench", "train-scale", str(archive), "--processes", "1", "--config", str(TINY_CONFIG),
            "--steps", "3", "--runs", str(tmp_path / "runs"), "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cells = json.loads(out.read_text())["cells"]
    assert len(cells) == 1
    cell = cells[0]
    assert cell["archive_ecgs"] == 320 and cell["archive_bytes"] > 320 * 12 * 1000 * 4
    assert cell["processes"] == 1 and cell["steps"] == 3 and cell["ecgs_trained"] == 48
    assert cell["ecgs_per_s"] > 0 and cell["ecgs_per_s_after_first_step"] > 0
    assert (
        50 < cell["peak_rss_mb_per_process"][0] < 4000
        and cell["peak_rss_mb_largest_worker_per_process"][0] > 0
    )
