"""`ecgsearch export`: checkpoint -> ONNX with its model card. Torch loads inside the command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

import ecgsearch.cli.exits as exits
from ecgsearch.cli.options import need_file
from ecgsearch.cli.output import AsJson, emit

DEFAULT_DATA = Path("../shared/data")


def export_command(
    out: Annotated[Path, typer.Option("--out", help="Where to write the .onnx file.")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Training checkpoint.")] = None,
    random: Annotated[bool, typer.Option("--random", help="Export the random initialisation.")] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Config: the architecture for --random; with --checkpoint, the feature weights and notes.",
        ),
    ] = None,
    data: Annotated[Path, typer.Option("--data", help="Folder holding ptb-xl/.")] = DEFAULT_DATA,
    name: Annotated[str, typer.Option("--name", help="Model name in the card.")] = "ecg-encoder",
    dense_levels: Annotated[
        int | None,
        typer.Option(
            "--dense-levels",
            min=0,
            help="Evaluate the network's last N subsamplings at every phase: the same weights, steadier "
            "neighbours when an ECG starts a little later, more compute per ECG (`bench encoder` measures "
            "it). Default: the config's (0).",
        ),
    ] = None,
    whitening: Annotated[
        float | None,
        typer.Option(
            "--whitening",
            min=0.0,
            help="Whiten the served vector against how it moves when the same ECG is read a little "
            "differently, fitted on the training folds' ECGs and their moved reads, shrunk toward the "
            "identity by this share (0 = off): steadier neighbours for about 0.005 of P@10 "
            "(docs/results.md). Default: the config's (0).",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Export an encoder to ONNX with its model card; fails if onnxruntime and torch disagree.

    Examples:
        ecgsearch export --checkpoint runs/default/best.pt --config configs/default.yaml
            --out export/models/ecg-encoder.onnx
        ecgsearch export --random --config configs/default.yaml --out export/models/ecg-encoder-random.onnx
    """
    if checkpoint is None and not random:
        raise typer.BadParameter("give --checkpoint, or --random", param_hint="--checkpoint")
    if checkpoint is not None and not checkpoint.is_file():
        raise typer.BadParameter(f"no checkpoint {checkpoint}", param_hint="--checkpoint")
    if config is not None and not config.is_file():
        raise typer.BadParameter(f"no config file {config}", param_hint="--config")
    from ecgsearch.ecg import ptbxl

    need_file(data / "ptb-xl", ptbxl.TABLE, "--data")
    import pickle

    import yaml

    from ecgsearch.encoder.config import load_config
    from ecgsearch.export.onnx import ParityError, export_checkpoint

    try:
        cfg = load_config(config) if config is not None else None
    except (ValueError, TypeError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"{config}: {' '.join(str(exc).split())}", param_hint="--config") from None
    try:
        card = export_checkpoint(
            checkpoint,
            out,
            data,
            random=random,
            config=cfg,
            name=name,
            dense_levels=dense_levels,
            whitening=whitening,
        )
    except ParityError as exc:
        typer.echo(f"export failed: {exc}", err=True)
        raise typer.Exit(exits.FAILED) from None
    except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError) as exc:
        if dense_levels is not None and "dense_levels" in str(exc):  # the network has fewer subsamplings
            raise typer.BadParameter(str(exc), param_hint="--dense-levels") from None
        if whitening is not None and "whitening" in str(exc):  # e.g. inf
            raise typer.BadParameter(str(exc), param_hint="--whitening") from None
        typer.echo(f"error: {checkpoint}: not a readable training checkpoint ({exc})", err=True)
        raise typer.Exit(exits.FAILED) from None
    assert card.model_extra is not None  # a dict on every card: the class allows extra fields
    parity = card.model_extra["parity"]
    emit(
        {"out": str(out), "version": card.version, "parity": parity},
        f"{out}: version {card.version}, parity max abs diff {parity['max_abs_diff']:.2e}",
        as_json,
    )


def register(app: typer.Typer, bench: typer.Typer, evaluate: typer.Typer) -> None:
    """Mount this part's commands on the root app and its groups."""
    app.command("export")(export_command)
