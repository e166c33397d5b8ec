"""`ecgsearch train`: self-supervised training of the encoder (torch is imported inside the command)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

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
) -> None:
    """Train the encoder on PTB-XL folds 1-8, keeping the best checkpoint by fold-9 retrieval.

    Examples:
        ecgsearch train --config configs/default.yaml --out runs/default
        ecgsearch train --out runs/default --resume
    """
    if not config.is_file():
        raise typer.BadParameter(f"no config file {config}", param_hint="--config")
    if not (data / "ptb-xl" / "ptbxl_database.csv").is_file():
        raise typer.BadParameter(f"no ptb-xl/ptbxl_database.csv under {data}", param_hint="--data")
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
        line = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        console.print(line)

    with console.status("training"):
        summary = train(cfg, data, out, resume=resume, device=device, cache_dir=cache, on_epoch=show)
    typer.echo(json.dumps({k: summary[k] for k in ("wall_time_s", "val_agreement_best", "best_epoch")}))


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
    app.command("train")(train_command)
