"""`ecgsearch train`: self-supervised training of the encoder (torch is imported inside the command)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.options import need_file
from ecgsearch.cli.output import AsJson, emit, results

DEFAULT_DATA = Path("../shared/data")
DEFAULT_CONFIG = Path("configs/default.yaml")
DEFAULT_OUT = Path("runs/default")
DEFAULT_CACHE = Path("runs/cache")


def train_command(
    config: Annotated[Path, typer.Option("--config", help="YAML file of config fields.")] = DEFAULT_CONFIG,
    out: Annotated[Path, typer.Option("--out", help="Checkpoints and log.jsonl.")] = DEFAULT_OUT,
    data: Annotated[Path, typer.Option("--data", help="Folder holding ptb-xl/.")] = DEFAULT_DATA,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/last.pt.")] = False,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the config's seed.")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", help="Override the config's epochs.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if available), cpu or cuda.")] = "auto",
    cache: Annotated[Path | None, typer.Option("--cache", help="Prepared-array cache.")] = DEFAULT_CACHE,
    shards: Annotated[
        Path | None,
        typer.Option(
            "--shards", help="Stream from an archive made by `ecgsearch prepare` instead of PTB-XL."
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="--shards: DataLoader worker processes.")] = 2,
    checkpoint_every: Annotated[
        int | None, typer.Option(min=1, help="--shards: also save last.pt every N steps (mid-epoch).")
    ] = None,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after N steps in all (checkpointed; resumable).")
    ] = None,
    amp: Annotated[
        bool | None, typer.Option("--amp/--no-amp", help="Mixed precision (default: on with CUDA).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Torch threads per process (default: the config's).")
    ] = None,
    val_records: Annotated[
        int, typer.Option(min=2, help="--shards: ECGs of the validation fold evaluated.")
    ] = 2048,
    as_json: AsJson = False,
) -> None:
    """Train the encoder on PTB-XL folds 1-8, keeping the best checkpoint by fold-9 retrieval.

    With --shards it streams the training folds of a prepared archive instead (DataLoader workers,
    seeded shuffle across shards, memory flat in the archive's size) and validates on its validation
    fold: agreement@10 where the archive has labels, else the loss and shift stability. Several
    processes (CPUs: gloo; GPUs: nccl) start under torchrun; the batch size is the global batch, split
    across processes, and NT-Xent's negatives are gathered from all of them. --resume continues from
    OUT/last.pt, mid-epoch included, and makes the same updates as a run never stopped.

    Examples:

        ecgsearch train --config configs/default.yaml --out runs/default

        ecgsearch train --out runs/default --resume

        ecgsearch train --shards archive/ptbxl --out runs/a --checkpoint-every 100

        torchrun --nproc_per_node 2 -m ecgsearch.cli.main train --shards archive/ptbxl --out runs/b
    """
    if not config.is_file():
        raise typer.BadParameter(f"no config file {config}", param_hint="--config")
    if shards is not None and not (shards / "index.json").is_file():
        raise typer.BadParameter(
            f"no index.json under {shards} (make it with ecgsearch prepare)", param_hint="--shards"
        )
    if shards is None:
        from ecgsearch.ecg import ptbxl

        need_file(data / "ptb-xl", ptbxl.TABLE, "--data")
    import yaml
    from rich.console import Console

    from ecgsearch.encoder.config import load_config
    from ecgsearch.encoder.train import train

    console = Console(stderr=True)
    try:
        cfg = load_config(config).with_overrides(seed=seed, epochs=epochs)
    except (ValueError, TypeError, yaml.YAMLError) as exc:  # malformed YAML, unknown or mistyped fields
        message = " ".join(str(exc).split())
        raise typer.BadParameter(f"{config}: {message}", param_hint="--config") from None

    def show(record: dict) -> None:
        if os.environ.get("RANK", "0") != "0":  # under torchrun: the first process speaks for all
            return
        line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        console.print(line)

    from ecgsearch.ecg.shards import ArchiveError

    try:
        summary = train(
            cfg,
            data,
            out,
            resume=resume,
            device=device,
            cache_dir=cache,
            on_epoch=show,
            shards_dir=shards,
            workers=workers,
            checkpoint_every=checkpoint_every,
            max_steps=max_steps,
            amp=amp,
            threads=threads,
            val_records=val_records,
        )
    except (ArchiveError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exits.FAILED) from None
    if os.environ.get("RANK", "0") != "0":
        return
    keys = ("wall_time_s", "steps", "val_agreement_best", "best_epoch")
    document = {"out": str(out)} | {k: summary[k] for k in keys}
    document["ecgs_per_s"] = summary["throughput"]["ecgs_per_s"]
    steps, seconds, rate = document["steps"], document["wall_time_s"], document["ecgs_per_s"]
    best, epoch = document["val_agreement_best"], document["best_epoch"]
    text = f"{steps} steps in {seconds} s ({rate} ECGs/s); best validation {best} at epoch {epoch} -> {out}"
    emit(document, text, as_json)


def synthetic_archive_command(
    base: Annotated[Path, typer.Argument(help="A small prepared archive (ecgsearch prepare) to draw from.")],
    out: Annotated[Path, typer.Option("--out", help="Archive folder to write.")],
    count: Annotated[int, typer.Option("--count", min=1, help="Synthetic ECGs to write.")] = 200_000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the augmentations.")] = 0,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="ECGs per shard file.")] = 4096,
    as_json: AsJson = False,
) -> None:
    """Write an archive of COUNT synthetic ECGs: seeded augmentations of the ECGs of BASE.

    For throughput and memory figures at archive scale, not for model quality: each ECG is a prepared
    ECG of BASE with its own gain, time shift, baseline wander and noise, labelled dataset 'synthetic'.
    A rerun continues after the complete shards.

    Examples:

        ecgsearch prepare ../shared/data/ptb-xl --out archive/ptbxl

        ecgsearch bench synthetic-archive archive/ptbxl --out archive/synthetic-200k --count 200000
    """
    from ecgsearch.ecg.shards import ArchiveError
    from ecgsearch.encoder.synthetic import synthesise

    try:
        archive = synthesise(
            base,
            out,
            count,
            seed=seed,
            shard_size=shard_size,
            on_shard=lambda k: typer.echo(f"shard {k}", err=True),
        )
    except ArchiveError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exits.FAILED) from None
    document = {"out": str(out), "ecgs": len(archive), "shards": len(archive.shards)}
    emit(document, f"{document['ecgs']} synthetic ECGs in {document['shards']} shards -> {out}", as_json)


def train_scale_command(
    archives: Annotated[list[Path], typer.Argument(help="Prepared archives, e.g. of different sizes.")],
    processes: Annotated[list[int], typer.Option("--processes", help="Process counts to run.")] = [1, 2],  # noqa: B006
    config: Annotated[Path, typer.Option("--config", help="Model and batch (YAML).")] = DEFAULT_CONFIG,
    steps: Annotated[int, typer.Option(min=1, help="Training steps per run.")] = 10,
    workers: Annotated[int, typer.Option(min=0, help="DataLoader workers per process.")] = 1,
    cpu_threads: Annotated[int, typer.Option(min=1, help="Torch threads in all, split over processes.")] = 2,
    runs: Annotated[Path, typer.Option(help="Where the runs' checkpoints go.")] = Path("runs/train_scale"),
    out: Annotated[Path, typer.Option("--out", help="Results file.")] = Path("results/train_scale.json"),
    as_json: AsJson = False,
) -> None:
    """Training ECGs/s and peak memory of `ecgsearch train --shards` for 1 and several processes (CPU).

    Each cell is a real run under torchrun, stopped after --steps steps; run it on archives of
    different sizes to see that memory does not grow with the archive.

    Examples:

        ecgsearch bench train-scale archive/synthetic-20k archive/synthetic-200k --steps 10
    """
    if not config.is_file():
        raise typer.BadParameter(f"no config file {config}", param_hint="--config")
    from ecgsearch.ecg.shards import ArchiveError
    from ecgsearch.encoder.scale import train_scale, write

    try:
        result = train_scale(
            archives, processes, config, steps=steps, workers=workers, cpu_threads=cpu_threads, runs=runs,
            log=lambda line: typer.echo(line, err=True),
        )  # fmt: skip
    except ArchiveError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exits.FAILED) from None
    write(out, result)
    emit(results(out), f"wrote {out}", as_json)


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
    app.command("train")(train_command)
    bench.command("synthetic-archive")(synthetic_archive_command)
    bench.command("train-scale")(train_scale_command)
