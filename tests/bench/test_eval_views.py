"""The shipped model's choice of served settings, and the named views judged with a label-trained
waveform: every query answered by a model that saw neither it nor its labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgsearch.bench import crossfit as cf
from ecgsearch.cli.main import app
from ecgsearch.encoder.config import load_config
from ecgsearch.encoder.data import load_ptbxl


def test_views_of_a_label_trained_model_need_its_group_models(data_dir: Path, tmp_path: Path) -> None:
    """The bundled model learned folds 1-9's diagnoses: its own vectors may not judge the views."""
    out = tmp_path / "views.json"
    result = CliRunner().invoke(app, ["eval", "views", "--data", str(data_dir), "--out", str(out)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert "learned the diagnoses of folds [1, 2, 3, 4, 5, 6, 7, 8, 9]" in said
    assert not out.exists()


@pytest.mark.slow
def test_choose_writes_a_config_trained_outside_the_held_out_fold(
    data_dir: Path, tmp_path: Path, tiny_head_config: Path
) -> None:
    base = tiny_head_config
    written, out = tmp_path / "shipped.yaml", tmp_path / "choice.json"
    args = ["eval", "choose", "--config", str(base), "--data", str(data_dir), "--held-out", "10"]
    args += ["--limit", "150", "--cache", str(tmp_path / "cache"), "--work", str(tmp_path / "work")]
    result = CliRunner().invoke(app, [*args, "--write-config", str(written), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    config = load_config(written)  # the written file is a config training reads as it is
    assert config.train_folds == tuple(range(1, 10)) and config.val_fold == 9
    assert {key: getattr(config, key) for key in cf.GRID} == record["chosen"]
    choice = record["choice"]
    assert choice["inner_fold"] == 9 and choice["inner_train_folds"] == list(range(1, 9))
    best = max(choice["tried"], key=lambda t: t["score"])
    assert record["chosen"] == {key: best[key] for key in cf.GRID}
    assert "--held-out 10" in record["command"] and "--held-out 10" in config.notes


@pytest.mark.slow
def test_choose_with_whitening_picks_a_shrinkage_from_its_grid_inside_the_training_folds(
    data_dir: Path, tmp_path: Path, tiny_head_config: Path
) -> None:
    from ecgsearch.bench.whitening_choice import GRID

    written, out = tmp_path / "shipped.yaml", tmp_path / "choice.json"
    args = ["eval", "choose", "--config", str(tiny_head_config), "--data", str(data_dir), "--whitening"]
    args += ["--limit", "150", "--cache", str(tmp_path / "cache"), "--write-config", str(written)]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    judged = record["choice"]["whitening"]
    assert [t["shrink"] for t in judged["tried"]] == list(GRID)
    assert judged["fitted_on_folds"] == list(range(1, 9)) and judged["inner_fold"] == 9
    assert judged["read_queries"] > 0 and judged["later_start_queries"] == judged["queries"]
    for tried in judged["tried"]:
        assert set(tried["top10_overlap"]) == {"0.16s", "0.24s", "read_500hz_vs_100hz"}
    assert record["chosen"]["whitening"] == judged["chosen"] == load_config(written).whitening
    assert "--whitening" in record["command"]


@pytest.mark.slow
def test_views_take_each_groups_waveform_from_its_own_model(
    data_dir: Path, tmp_path: Path, tiny_head_config: Path
) -> None:
    config, work = tiny_head_config, tmp_path / "work"
    common = ["--data", str(data_dir), "--limit", "150", "--cache", str(tmp_path / "cache"), "--quiet"]
    trained = CliRunner().invoke(
        app,
        ["eval", "crossfit", "--config", str(config), "--groups", "5", "--work", str(work), *common]
        + ["--out", str(tmp_path / "crossfit.json")],
    )
    assert trained.exit_code == 0, trained.output
    data = load_ptbxl(data_dir, max_records=150, cache_dir=tmp_path / "cache")
    settings = {"rhythm_weight": 0.0, "amplitude_weight": 0.0, "statement_weight": 1.0}
    vectors = cf.group_vectors(
        work, cf.fold_groups(5), data, {**settings, "statement_block": "probabilities"}, data_dir
    )
    # five models, each with its own folds' statement vocabulary after the 32 learned dims
    assert len(vectors) == 5 and all(len(v) == 150 and v.shape[1] > 32 for v in vectors)
    assert not np.allclose(vectors[0][:, :32], vectors[1][:, :32])
    with pytest.raises(FileNotFoundError, match="held out"):
        cf.group_vectors(tmp_path / "nowhere", cf.fold_groups(5), data, settings, data_dir)

    out = tmp_path / "views.json"
    result = CliRunner().invoke(
        app, ["eval", "views", "--crossfit-work", str(work), *common, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    views = json.loads(out.read_text())
    assert str(work) in views["waveform_view"] and f"--crossfit-work {work}" in views["command"]
    assert {
        "view:waveform",
        "view:rhythm",
        "view:voltage",
        "blend:rrf",
        "blend:formula",
        "blend:gated",
    } <= set(views["methods"])
    served = views["served_default"]
    assert served["chosen_on_folds"] == list(range(1, 10)) and served["statistics_folds"] == list(range(1, 9))
    for fusion, chosen in views["chosen_weights"].items():
        assert len(chosen) == 5 and all(c["weights"]["waveform"] == 1.0 for c in chosen), fusion


def test_the_gated_rerank_reorders_the_waveform_candidates_by_rhythm_only_for_an_irregular_query() -> None:
    """Query 0's waveform neighbours are 1, 2, 3 (in that order) and its rhythm twin is 4, outside them:
    above the gate the rhythm view reorders 1-3 (3 shares the rhythm) and never brings 4 in; below it,
    or with no rhythm weight, the order stays the waveform's."""
    from ecgsearch.bench import views as bv
    from ecgsearch.ecg import views

    angle = np.array([0.0, 0.1, 0.2, 0.3, 1.5, 1.6])
    waveform = np.column_stack([np.cos(angle), np.sin(angle)])
    rhythm = np.zeros((6, 4))
    rhythm[:, views.GATE_FEATURE] = [2.0, 0.0, 0.0, 2.0, 2.0, 0.0]  # 0, 3 and 4 irregular alike
    mats = {views.WAVEFORM: waveform, views.RHYTHM: rhythm, views.VOLTAGE: np.zeros((6, 12))}
    pre = bv.Prefetched(mats, np.arange(6), limit=3)
    weights = {views.WAVEFORM: 1.0, views.RHYTHM: 1.0, views.VOLTAGE: 0.0, views.GATE: 1.0}
    assert pre.fuse("gated", weights, k=3)[0].tolist() == [3, 1, 2]
    assert pre.fuse("gated", {**weights, views.GATE: 2.5}, k=3)[0].tolist() == [1, 2, 3]
    assert pre.fuse("gated", {**weights, views.RHYTHM: 0.0}, k=3)[0].tolist() == [1, 2, 3]
    assert all(len(w) == 4 and w[views.WAVEFORM] == 1.0 for w in bv.weight_grid("gated"))


def test_aims_first_prefers_the_weights_that_meet_the_blend_aims_over_a_higher_mean() -> None:
    from ecgsearch.bench import views as bv

    n = 40
    queries = np.arange(n)
    rivals = {h: {k: np.full(n, 0.1) for k in bv.OBJECTIVE} for h in bv.HANDCRAFTED}
    rivals["view:waveform"] = {k: np.full(n, 0.5) for k in bv.OBJECTIVE}
    rivals["knn-hr-rr-median"]["AFIB"] = np.full(n, 0.4)
    high_mean = {k: np.full(n, 0.9) for k in bv.OBJECTIVE} | {"AFIB": np.full(n, 0.3)}  # AFIB under 0.4
    every_aim = {k: np.full(n, 0.6) for k in bv.OBJECTIVE} | {"AFIB": np.full(n, 0.45)}
    tried = [high_mean, every_aim] + [high_mean] * (len(bv.weight_grid("gated")) - 2)
    grid = bv.weight_grid("gated")
    assert bv.choose_weights(tried, "gated", queries)[0] == grid[0]  # the mean: the higher one
    weights, value = bv.choose_weights(tried, "gated", queries, "aims-first", rivals)
    assert weights == grid[1] and 7 < value < 8  # 7 aims met on these queries, the mean below 1
    with pytest.raises(ValueError, match="objective"):
        bv.choose_weights(tried, "gated", queries, "best")
