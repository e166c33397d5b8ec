"""User and environment mistakes end in one line naming the file or field, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecgsearch.cli.main import app


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback: the test fails
    return result.exit_code, " ".join(result.stderr.replace("│", " ").split())


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "bad.yaml").write_text("epochs: [oops\n")
    (tmp_path / "unknown.yaml").write_text("nonsense_field: 3\n")
    (tmp_path / "bad.pt").write_text("garbage\n")
    return {p.name: p for p in tmp_path.iterdir()}


def test_train_names_the_config_file_and_the_field(files: dict[str, Path], data_dir: Path) -> None:
    code, err = run("train", "--config", files["bad.yaml"], "--data", data_dir)
    assert code == 2 and "bad.yaml" in err
    code, err = run("train", "--config", files["unknown.yaml"], "--data", data_dir)
    assert code == 2 and "nonsense_field" in err


def test_a_file_that_is_not_a_checkpoint(files: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    code, err = run(
        "export", "--checkpoint", files["bad.pt"], "--out", tmp_path / "m.onnx", "--data", data_dir
    )
    assert code == 1 and "bad.pt: not a readable training checkpoint" in err
    code, err = run("eval", "training", "--checkpoint", files["bad.pt"], "--data", data_dir)
    assert code == 1 and "bad.pt: not a readable training checkpoint" in err


def test_export_names_dense_levels_the_network_cannot_take(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "plain.yaml").write_text("antialias: false\n")  # strided convolutions: no BlurPool to densify
    code, err = run(
        "export", "--random", "--config", tmp_path / "plain.yaml", "--dense-levels", 1,
        "--out", tmp_path / "m.onnx", "--data", data_dir,
    )  # fmt: skip
    assert code == 2 and "--dense-levels" in err and "needs antialias" in err
    assert not (tmp_path / "m.onnx").exists()


def test_export_and_crossfit_name_a_whitening_they_cannot_take(data_dir: Path, tmp_path: Path) -> None:
    for bad in (-0.1, "inf"):  # typer refuses the first, the config the second
        code, err = run(
            "export", "--random", "--whitening", bad, "--out", tmp_path / "m.onnx", "--data", data_dir
        )
        assert code == 2 and "--whitening" in err and not (tmp_path / "m.onnx").exists()
    code, err = run("eval", "crossfit", "--whitening", "--data", data_dir, "--out", tmp_path / "c.json")
    assert code == 2 and "add --nested" in err and not (tmp_path / "c.json").exists()


def test_bench_and_eval_name_missing_inputs(tmp_path: Path) -> None:
    code, err = run("bench", "recall", "--merge", tmp_path / "none.json", "--out", tmp_path / "r.json")
    assert code == 2 and "none.json" in err
    code, err = run("eval", "retrieval", "--ptbxl", tmp_path, "--out", tmp_path / "r.json")
    assert code == 2 and "ptbxl_database.csv" in err
    code, err = run("bench", "encoder", "--model", tmp_path / "none.onnx", "--seconds", 0.01)
    assert code == 1 and "none.onnx" in err
    code, err = run("bench", "ingest", tmp_path / "nowhere", "--out", tmp_path / "r.json")
    assert code == 2 and "nowhere" in err
