"""`ecgsearch export` (checkpoint -> ONNX) and `ecgsearch bench encoder` (throughput). Torch loads lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_DATA = Path("../shared/data")
DEFAULT_BENCH_OUT = Path("results/encoder_throughput.json")
DEFAULT_CACHE = Path("runs/cache")


def export_command(
    out: Annotated[Path, typer.Option("--out", help="Where to write the .onnx file.")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Training checkpoint.")] = None,
    random: Annotated[bool, typer.Option("--random", help="Export the random initialisation.")] = False,
    config: Annotated[Path | None, typer.Option("--config", help="Config for --random alone.")] = None,
    data: Annotated[Path, typer.Option("--data", help="Folder holding ptb-xl/.")] = DEFAULT_DATA,
    name: Annotated[str, typer.Option("--name", help="Model name in the card.")] = "ecg-encoder",
    results: Annotated[
        Path | None,
        typer.Option(
            "--results", help="Also write the training report (fold-9 trained vs random init) here."
        ),
    ] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="Prepared-array cache.")] = DEFAULT_CACHE,
) -> None:
    """Export an encoder to ONNX with its model card; fails if onnxruntime and torch disagree.

    Examples:
        ecgsearch export --checkpoint runs/default/best.pt --out export/models/ecg-encoder.onnx
        ecgsearch export --checkpoint runs/default/best.pt --out export/models/ecg-encoder.onnx \
            --results results/train_default.json
        ecgsearch export --random --config configs/default.yaml --out export/models/ecg-encoder-random.onnx
    """
    if checkpoint is None and not random:
        raise typer.BadParameter("give --checkpoint, or --random", param_hint="--checkpoint")
    if checkpoint is not None and not checkpoint.is_file():
        raise typer.BadParameter(f"no checkpoint {checkpoint}", param_hint="--checkpoint")
    from ecgsearch.encoder.config import load_config
    from ecgsearch.export.onnx import ParityError, export_checkpoint

    cfg = load_config(config) if config is not None else None
    try:
        card = export_checkpoint(checkpoint, out, data, random=random, config=cfg, name=name)
    except ParityError as exc:
        typer.echo(f"export failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{out}: version {card.version}, parity max abs diff {card.parity['max_abs_diff']:.2e}")
    if results is not None:
        if checkpoint is None:
            raise typer.BadParameter("--results needs --checkpoint", param_hint="--results")
        from ecgsearch.export.results import training_report, write_report

        command = f"ecgsearch export --checkpoint {checkpoint} --out {out} --results {results}"
        exported = {"model": out.name, "version": card.version, "parity": card.parity}
        report = training_report(checkpoint, data, cache_dir=cache, exported=exported, command=command)
        write_report(report, results)
        fold9 = report["fold9"]
        for which in ("trained", "random_init"):
            row = fold9[which]
            typer.echo(
                f"fold 9 {which}: agreement@10 {row['fold9_queries_folds1to9']:.3f} (folds 1-9 searched), "
                f"{row['fold9_within_fold9']:.3f} (fold 9 searched), "
                f"probe macro-AUC {row['probe']['macro_auc']}"
            )


def bench_encoder_command(
    model: Annotated[Path | None, typer.Option("--model", help="ONNX model (default: bundled).")] = None,
    threads: Annotated[int, typer.Option("--threads", help="Intra-op threads for both runtimes.")] = 2,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated sizes.")] = "1,32,256",
    seconds: Annotated[float, typer.Option("--seconds", help="Minimum timed seconds per size.")] = 3.0,
    out: Annotated[Path, typer.Option("--out", help="Results JSON.")] = DEFAULT_BENCH_OUT,
) -> None:
    """Measure encoder throughput (ECGs/s) in onnxruntime and, if installed, torch.

    Examples:
        ecgsearch bench encoder --threads 2 --batch-sizes 1,32,256
    """
    from ecgsearch.export.bench import run_benchmark

    sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter("batch sizes must be positive integers", param_hint="--batch-sizes")
    result = run_benchmark(model, threads=threads, batch_sizes=sizes, min_seconds=seconds, out=out)
    for row in result["results"]:
        typer.echo(f"{row['runtime']:12s} batch {row['batch_size']:4d}: {row['ecgs_per_s']:9.1f} ECGs/s")


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
    app.command("export")(export_command)
    bench.command("encoder")(bench_encoder_command)
