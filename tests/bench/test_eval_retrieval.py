"""The retrieval evaluation end to end on a small PTB-XL subset, with the committed ONNX models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from typer.testing import CliRunner

from ecgsearch.bench import retrieval as ev
from ecgsearch.bench.metrics import bootstrap_mean, neighbours_excluding_patient
from ecgsearch.cli.main import app
from ecgsearch.ecg import ptbxl, signals

METHODS = [
    "trained",
    "random-init",
    "chance",
    "pca-log-spectra",
    "pca-raw",
    "knn-hr-rr",
    "knn-hr-rr-median",
    "knn-hr-rmssd",
    "knn-lead-log-rms-mv",
    "knn-hr-age",
    "peer:openecg",  # CI installs every extra, so the peer is there
]


def test_eval_retrieval_end_to_end(ptbxl_dir: Path, tmp_path: Path) -> None:
    out, png = tmp_path / "retrieval.json", tmp_path / "retrieval.png"
    args = ["eval", "retrieval", "--ptbxl", str(ptbxl_dir), "--limit", "120", "--pca-dim", "32"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--plot", str(png), "--quiet"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["dataset"]["records"] == 120 and data["dataset"]["records_500hz"] == 120
    assert [m["method"] for m in data["methods"]] == METHODS
    assert 40 < data["heart_rate"]["median_bpm"] < 100
    by = {m["method"]: m for m in data["methods"]}
    for method in data["methods"]:
        for scope in ("fold10", "all_queries"):
            p = method[scope]["p10_any_superclass"]
            assert 0.0 <= p["ci95"][0] <= p["value"] <= p["ci95"][1] <= 1.0
            codes = {row["code"]: row for row in method[scope]["codes"]}
            assert list(codes) == list(ev.NAMED_CODES)
        assert method["all_queries"]["p10_any_superclass"]["n"] > method["fold10"]["p10_any_superclass"]["n"]
        assert 0.0 <= method["linear_probe"]["fold10_macro_auc"] <= 1.0
    # A log-spectrum and an RMS are blind to a circular shift: their neighbours cannot move.
    for name in ("pca-log-spectra", "knn-lead-log-rms-mv"):
        for shift in by[name]["shift_stability"]["circular"].values():
            assert shift["all"]["top10_overlap"]["value"] == 1.0
    # The trained model's own ECG shifted stays close; raw-sample PCA does not.
    trained = by["trained"]["shift_stability"]
    assert trained["circular"]["4"]["all"]["cosine"]["value"] > 0.95
    assert set(trained["later_start_500hz"]) == {"0.16s", "1s"}
    # later starts over every fold-10 ECG from its 100 Hz file; the 500 Hz read against the 100 Hz one
    n10, n500 = data["dataset"]["fold_sizes"]["10"], data["dataset"]["records_500hz_fold10"]
    assert data["dataset"]["records_100hz_later_start_fold10"] == n10 > 0 and n500 == n10
    assert set(trained["later_start_100hz"]) == {"0.16s", "0.24s"}
    for late in trained["later_start_100hz"].values():
        assert late["fold10"]["top10_overlap"]["n"] == n10 and 0.9 < late["fold10"]["cosine"]["value"] <= 1
    read = trained["read_500hz_vs_100hz"]
    assert read["fold10"]["top10_overlap"]["n"] == n500 and 0.95 < read["fold10"]["cosine"]["value"] <= 1
    assert read["all"]["top10_overlap"]["n"] == data["dataset"]["records_500hz"]
    assert by["pca-raw"]["shift_stability"]["circular"]["50"]["all"]["top10_overlap"]["value"] < 0.5
    assert "note" in by["chance"]["shift_stability"]
    # the peer is scored like the others: finite P@10 on fold 10, its inputs and training data stated
    assert data["peers"] == {"peer:openecg": "0.11.0"}
    peer = by["peer:openecg"]
    p10 = peer["fold10"]["p10_any_superclass"]
    assert p10["n"] > 0 and np.isfinite(p10["value"]) and 0.0 <= p10["value"] <= 1.0
    assert peer["meta"]["embedding_dim"] == 16 and "100 Hz" in peer["meta"]["input"]
    assert "PTB-XL" in peer["meta"]["labelled_folds"]
    # a slow method's shift checks move only the fold-10 ECGs, so it reports no all-records summary
    peer_shift = peer["shift_stability"]["circular"]["4"]
    assert set(peer_shift) == {"fold10"} and peer_shift["fold10"]["top10_overlap"]["n"] > 0
    assert peer["shift_stability"]["later_start_100hz"]["0.24s"]["fold10"]["top10_overlap"]["n"] == n10
    rho = by["knn-hr-age"]["similarity_vs_difference"]["abs_delta_age"]["rho"]
    assert rho < -0.3  # similarity in a heart-rate + age space must fall as ages part
    aims = {a["aim"]: a for a in data["aims"]}
    assert aims["P@10 any superclass >= 0.72"]["met"] == (
        by["trained"]["fold10"]["p10_any_superclass"]["value"] >= 0.72
    )
    # the bundled model learned folds 1-9's diagnoses: only fold 10 judges it, however few its queries
    assert by["trained"]["meta"]["labelled_folds"] == list(range(1, 10))
    assert by["random-init"]["meta"]["labelled_folds"] == []
    assert aims["AFIB P@10 above the best handcrafted baseline"]["scope"].startswith("fold 10, ")
    for start, late in trained["later_start_100hz"].items():
        name = f"start {start} later (100 Hz)"
        assert aims[f"top-10 overlap >= 0.90, {name}"]["value"] == late["fold10"]["top10_overlap"]["value"]
        assert aims[f"cosine >= 0.99, {name}"]["value"] == late["fold10"]["cosine"]["value"]
    read_aim = aims["top-10 overlap >= 0.95, 500 Hz vs 100 Hz read"]
    assert read_aim["value"] == read["fold10"]["top10_overlap"]["value"] and read_aim["met"] == (
        read_aim["value"] >= 0.95
    )
    assert png.stat().st_size > 1000


def test_corpus_holds_prepared_mv_and_the_same_at_unit_rms(ptbxl_dir: Path) -> None:
    """The evaluation reads preparation's mV signal and divides it by its RMS over live leads."""
    for row in ptbxl.read_table(ptbxl_dir)[:3]:
        for path in (row.path(), row.path(prefer_hr=True)):
            raw = signals.read_wfdb(path)
            unit, mv = ev._read(raw)
            assert np.array_equal(mv, signals.prepare(raw))
            live = mv.std(axis=1) > signals.FLAT_STD_MV
            rms = np.sqrt(np.mean(mv[live].astype(np.float64) ** 2))
            assert np.allclose(unit, np.clip(mv / rms, -signals.CLIP, signals.CLIP), atol=1e-5)
            assert 0.01 < rms < 2.0  # mV, not normalised units


def test_later_starts_read_the_same_ecg_again_and_move_it(ptbxl_dir: Path) -> None:
    """The start view is the corpus's own preparation; a later start is the same ECG moved earlier by the
    dropped samples (away from the edges, where the padding and the high-pass differ)."""
    corpus = ev.load_corpus(ptbxl_dir, limit=40, log=lambda _: None)
    rows = np.flatnonzero(corpus.folds == 10)
    late = ev.load_later_starts(corpus, signals.MODEL_FS, (16, 24), print, rows)
    assert (
        late is not None and late["idx"].tolist() == rows.tolist() and late["x"].shape[:2] == (3, len(rows))
    )
    assert np.array_equal(late["mv"][0], corpus.mv[rows]) and np.array_equal(late["x"][0], corpus.x[rows])
    for j, drop in enumerate((16, 24), start=1):
        moved, start = late["mv"][j][:, :, 100:800], late["mv"][0][:, :, 100 + drop : 800 + drop]
        assert np.abs(moved - start).max() < 0.1 * np.abs(start).max()
        assert np.abs(late["mv"][j] - late["mv"][0]).max() > 0.3 * np.abs(start).max()  # it did move
    hr = ev.load_later_starts(corpus, 500, (80,), print, rows)
    assert hr is not None and hr["fs"] == 500 and hr["mv"].shape == (2, len(rows), 12, signals.MODEL_SAMPLES)


def test_bootstrap_mean_and_euclidean_neighbours() -> None:
    mean, low, high = bootstrap_mean(np.array([0.0, 1.0] * 50 + [np.nan]), 500, 0)
    assert mean == 0.5 and 0.38 < low < 0.5 < high < 0.62
    assert bootstrap_mean(np.array([0.3, 0.3]), 10, 0) == (0.3, 0.3, 0.3)
    x = np.array([[1.0, 0.0], [10.0, 0.0], [1.1, 0.0], [0.0, 1.0]])
    cos, _ = neighbours_excluding_patient(x, [1, 2, 3, 4], 1, np.array([0]))
    euc, _ = neighbours_excluding_patient(x, [1, 2, 3, 4], 1, np.array([0]), euclidean=True)
    assert cos[0, 0] == 1 and euc[0, 0] == 2  # same direction vs nearest point


def test_crossfit_groups_never_train_on_their_queries() -> None:
    from ecgsearch.bench import crossfit as cf
    from ecgsearch.encoder.config import EncoderConfig

    assert cf.fold_groups(5) == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10)]
    for n in (2, 5, 10):
        groups = cf.fold_groups(n)
        assert sorted(f for g in groups for f in g) == list(range(1, 11))
        for held_out in groups:
            config = cf.training_config(EncoderConfig(epochs=3), held_out, threads=1)
            assert not set(config.train_folds) & set(held_out)
            assert set(config.train_folds) | set(held_out) == set(range(1, 11))
            assert config.val_fold in config.train_folds and config.eval_every == 3
    for bad in (1, 3, 4):
        with pytest.raises(ValueError):
            cf.fold_groups(bad)
    folds = np.array([1, 2, 3, 10, 9])
    assert cf.group_of(folds, cf.fold_groups(5)).tolist() == [0, 0, 1, 4, 4]


def test_a_work_folder_trained_by_one_config_is_refused_to_another(tmp_path: Path) -> None:
    """Two configs training into one folder would read each other's per-epoch last.pt; a config that
    differs only in what is served reuses the training (it would train the same network)."""
    from ecgsearch.bench import crossfit as cf
    from ecgsearch.encoder.config import SERVED_ONLY, EncoderConfig

    out = tmp_path / "inner-heldout-9-10"
    first = EncoderConfig(epochs=12, w_statement=1.0)
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"config": first.to_dict(), "epochs": 12}))
    no_arrays = cast(Any, (None, None))  # a reused training reads no data
    served = first.with_overrides(
        whitening=0.1,
        whitening_scope="embedding",
        statement_weight=2.0,
        statement_block="logit_z",
        statement_head="refit_rhythm",
        rhythm_weight=0.5,
        amplitude_weight=1,
    )
    assert {k for k in SERVED_ONLY if getattr(served, k) != getattr(first, k)} == SERVED_ONLY
    assert cf.train_once(served, out, 1, no_arrays)["epochs"] == 12
    assert cf.train_once(first, out, 1, no_arrays)["epochs"] == 12  # another process of one run goes on
    with pytest.raises(ValueError, match=r"inner-heldout-9-10 holds the training of another config .*epochs"):
        cf.train_once(first.with_overrides(epochs=48), out, 1, no_arrays)
    assert not (out / "last.pt").exists()
    assert sorted(p.name for p in out.iterdir()) == [cf.CLAIM, "summary.json"]


def test_crossfit_neighbours_come_from_each_querys_own_model() -> None:
    from ecgsearch.bench import crossfit as cf

    # rows 0-2 in group 0, rows 3-5 in group 1; each group's "model" puts its own rows near a row of the
    # other group, and would mislead the other group's queries if it answered them
    group = np.array([0, 0, 0, 1, 1, 1])
    patients = [1, 2, 3, 4, 5, 6]
    e = np.eye(6)
    model0 = e.copy()
    model0[0] = model0[4] = normalise(e[0] + e[4])  # model 0: row 0 next to row 4
    model1 = e.copy()
    model1[0] = model1[5] = normalise(e[0] + e[5])  # model 1: row 0 next to row 5
    model1[4] = normalise(e[4] + 0.1 * e[3])  # and row 4 next to row 3 (model 0: next to row 0)
    nbrs = cf.crossfit_neighbours([model0, model1], False, group, patients, k=1)
    assert nbrs[0, 0] == 4  # model 0 answers row 0
    assert nbrs[5, 0] == 0  # model 1 answers row 5
    assert nbrs[4, 0] == 3  # model 1 answers row 4, not model 0
    inside = cf.crossfit_neighbours([model0, model1], False, group, patients, k=2, within_group=True)
    assert all(group[j] == group[i] for i in range(6) for j in inside[i])
    same_patient = cf.crossfit_neighbours([model0, model1], False, group, [1, 1, 3, 4, 5, 6], k=4)
    assert 1 not in same_patient[0] and 0 not in same_patient[1]


def test_nested_choice_scores_exactly_what_would_be_served(data_dir: Path) -> None:
    import torch

    from ecgsearch.bench import crossfit as cf
    from ecgsearch.encoder.config import EncoderConfig
    from ecgsearch.encoder.data import load_ptbxl
    from ecgsearch.encoder.train import embed
    from ecgsearch.export.onnx import random_encoder, serving_module

    data = load_ptbxl(data_dir, folds=[1, 2], max_records=30)
    assert data.mv is not None
    config = EncoderConfig(
        stem_channels=8, stage_channels=(16,), stage_kernels=(3,), embedding_dim=24, w_statement=1.0,
        statement_vocabulary=("NORM", "SR", "superclass:MI"),
    )  # fmt: skip
    encoder = random_encoder(config)
    blocks = cf.served_blocks(encoder, config, data, data.mv)
    assert {k: b.shape[1] for k, b in blocks.items()} == {
        "embedding": 24, "rhythm": 2, "probabilities": 3, "logit_z": 3,
        "refit_rhythm/probabilities": 3, "refit_rhythm/logit_z": 3,
    }  # fmt: skip
    for sw, rw, kind, head in (
        (0.0, 0.25, "probabilities", "trained"),
        (1.5, 0.5, "logit_z", "trained"),
        (0.5, 0.0, "probabilities", "trained"),
        (1.0, 0.0, "probabilities", "refit_rhythm"),
        (2.0, 0.0, "logit_z", "refit_rhythm"),
    ):
        setting = config.with_overrides(
            statement_weight=sw, rhythm_weight=rw, statement_block=kind, statement_head=head
        )
        served, _ = serving_module(encoder, setting, "", train=data)
        direct = embed(served, data.mv, torch.device("cpu")).astype(np.float64)
        direct /= np.linalg.norm(direct, axis=1, keepdims=True)
        composed = cf.compose(blocks, sw, rw, kind, head)  # a weight 0 block stays as zeros: the same cosines
        assert np.allclose(composed @ composed.T, direct @ direct.T, atol=1e-5)
        assert np.allclose(composed[:, :24], direct[:, :24], atol=1e-5)
    corpus = cf.corpus_of(data, data_dir / "ptb-xl")
    queries = np.flatnonzero(data.folds == 2)
    scored = cf.inner_score(cf.compose(blocks, 1.0, 0.25), corpus, queries, k=5)
    codes = list(scored["codes"].values()) or [scored["p10_any"]]
    assert 0 <= scored["p10_any"] <= 1 and scored["score"] == pytest.approx(
        0.5 * scored["p10_any"] + 0.5 * np.mean(codes)
    )


def normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.mark.slow
def test_eval_crossfit_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "tiny_label.yaml"
    config.write_text(
        "stem_channels: 8\nstage_channels: [16, 16]\nstage_kernels: [5, 3]\nembedding_dim: 32\n"
        "projection_dim: 16\ndecoder_channels: 8\nbatch_size: 16\nepochs: 1\nw_label: 1.0\n"
    )
    out = tmp_path / "crossfit.json"
    args = ["eval", "crossfit", "--config", str(config), "--data", str(data_dir), "--groups", "2"]
    args += ["--limit", "80", "--cache", str(tmp_path / "cache"), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    for info in data["training"]["trained"]:
        assert not set(info["train_folds"]) & set(info["held_out_folds"])
        assert info["final_losses"]["label"] > 0
    assert sum(data["dataset"]["group_sizes"]) == data["dataset"]["records"] == 80
    view = data["views"]["all_records"]
    assert set(view["methods"]) == {"trained", "random-init", *METHODS[3:-1]}  # no peer row
    pooled = view["methods"]["trained"]["pooled"]["p10_any_superclass"]
    assert pooled["n"] == data["dataset"]["labelled_queries"]
    assert 0 <= pooled["ci95"][0] <= pooled["value"] <= pooled["ci95"][1] <= 1
    diff = view["trained_minus"]["random-init"]["p10_any_superclass"]
    random = view["methods"]["random-init"]["pooled"]["p10_any_superclass"]["value"]
    assert diff["value"] == pytest.approx(pooled["value"] - random)
    assert [a["aim"].split()[0] for a in data["aims"][1:]] == ["AFIB", "LVH", "CLBBB", "CRBBB", "IMI", "ASMI"]


@pytest.mark.slow
def test_eval_crossfit_nested_choice_stays_inside_the_training_folds(
    data_dir: Path, tmp_path: Path, tiny_head_config: Path
) -> None:
    from ecgsearch.bench import crossfit as cf

    config = tiny_head_config
    out = tmp_path / "crossfit.json"
    args = ["eval", "crossfit", "--config", str(config), "--data", str(data_dir), "--groups", "2", "--nested"]
    args += ["--limit", "120", "--cache", str(tmp_path / "cache"), "--out", str(out), "--quiet"]
    result = CliRunner().invoke(app, [*args, "--work", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    # a second run over the same --work reuses the four finished trainings: the same results
    summaries = sorted((tmp_path / "work").glob("*/summary.json"))
    assert len(summaries) == 4
    stamps = [p.stat().st_mtime_ns for p in summaries]
    again = tmp_path / "again.json"
    args[args.index("--out") + 1] = str(again)
    assert CliRunner().invoke(app, [*args, "--work", str(tmp_path / "work")]).exit_code == 0
    assert [p.stat().st_mtime_ns for p in summaries] == stamps
    assert json.loads(again.read_text())["views"] == data["views"]
    nested = data["nested_choice"]
    assert len(nested["groups"]) == 2 and "--nested" in data["command"]
    for choice, info in zip(nested["groups"], data["training"]["trained"], strict=True):
        held_out = set(choice["held_out_folds"])
        assert choice["inner_fold"] not in held_out and not set(choice["inner_train_folds"]) & held_out
        assert choice["inner_fold"] not in choice["inner_train_folds"]
        grid = nested["grid"]
        assert [{k: t[k] for k in grid} for t in choice["tried"]] == cf.grid_settings(True)  # servable only
        best = max(t["score"] for t in choice["tried"])
        picked = [t for t in choice["tried"] if t["score"] == best][0]
        assert choice["chosen"] == {k: picked[k] for k in grid}
        assert info["served"] == choice["chosen"] and info["statement_vocabulary"]
    # candidate blocks judged on the same models: the base grid reproduces the nested run's figures
    judged = tmp_path / "candidates.json"
    args = ["eval", "candidates", "--work", str(tmp_path / "work"), "--data", str(data_dir), "--groups", "2"]
    args += ["--limit", "120", "--cache", str(tmp_path / "cache"), "--out", str(judged), "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    candidates = json.loads(judged.read_text())["results"]
    trained = data["views"]["all_records"]["methods"]["trained"]["pooled"]
    reference = candidates["inner_score/base"]
    assert reference["pooled"] == trained and reference["minus_reference"] is None
    assert [p["chosen"] for p in reference["picks"]] == [c["chosen"] for c in nested["groups"]]
    assert {name.split("/")[0] for name in candidates} == {"inner_score", "aims_first"}
    for name, judged_one in candidates.items():
        picks = judged_one["picks"]
        assert len(picks) == 2 and all(p["settings_tried"] >= len(choice["tried"]) for p in picks), name
        if [p["chosen"] for p in picks] == [p["chosen"] for p in reference["picks"]]:
            assert judged_one["pooled"] == trained  # the same picks: the same vectors, the same figures


def test_a_missing_peer_is_stated_not_omitted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without openecg the results say so instead of dropping its row silently."""
    import sys

    from ecgsearch.bench import peers

    monkeypatch.setitem(sys.modules, "openecg", None)  # import openecg now raises ImportError
    monkeypatch.setitem(sys.modules, "openecg.deploy", None)
    assert peers.installed() == {"peer:openecg": "not installed"}
    assert peers.openecg_method(None) is None  # type: ignore[arg-type]  # returns before reading it


def test_the_peer_feeds_openecg_as_its_own_codec_does(ptbxl_dir: Path) -> None:
    """The pooled heads come from the same input openecg's OnnxCodec builds: its labels are their argmax."""
    from openecg.deploy import OnnxCodec
    from openecg.eval import SUPER_QRS

    from ecgsearch.bench import peers
    from ecgsearch.ecg import dsp

    session = peers.openecg_session()
    codec = OnnxCodec()
    lead = signals.LEADS.index(peers.OPENECG_LEAD)
    for row in ptbxl.read_table(ptbxl_dir)[:3]:
        mv = signals.prepare(signals.read_wfdb(row.path()))
        x = dsp.resample_poly(mv[lead].astype(np.float64), peers.OPENECG_FS // signals.MODEL_FS, 1)
        probs = peers.codec_probabilities(session, x)
        assert probs.shape == (peers.OPENECG_SAMPLES, 16)
        assert np.allclose(probs[:, :4].sum(axis=1), 1.0) and np.allclose(probs[:, 10:].sum(axis=1), 1.0)
        labels = codec.encode(x.astype(np.float32), fs=peers.OPENECG_FS)
        assert np.array_equal(probs[:, :4].argmax(axis=1), labels.frame)
        assert np.array_equal(probs[:, 10:].argmax(axis=1), labels.rhythm)
        assert (labels.frame == SUPER_QRS).any()  # QRS found: a real ECG went in, not noise
