"""A tiny real training run: the loss falls, checkpoints resume, and the result exports to ONNX."""

import json
from pathlib import Path

import numpy as np
import pytest

from ecgsearch.encoder.config import EncoderConfig

TINY = EncoderConfig(
    stem_channels=8,
    stage_channels=(16, 16),
    stage_kernels=(5, 3),
    embedding_dim=32,
    projection_dim=16,
    decoder_channels=8,
    batch_size=16,
    epochs=4,
    lr=1e-2,
    max_records=32,
    seed=0,
)


@pytest.fixture(scope="module")
def tiny_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    from ecgsearch.encoder.train import train

    out = tmp_path_factory.mktemp("tiny_run")
    summary = train(TINY, data_dir, out, device="cpu")
    return out, summary


def test_loss_falls_and_metric_is_logged(tiny_run: tuple[Path, dict]) -> None:
    out, summary = tiny_run
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss_total"] < log[0]["loss_total"]
    assert all(0.0 <= r["val_agreement"] <= 1.0 for r in log)
    assert summary["data"]["n_train"] == 32 and summary["steps"] == 8
    assert set(summary["final_losses"]) == {"halves", "augment", "recon", "total"}
    assert (out / "best.pt").is_file()


def test_resume_continues_from_last_checkpoint(tiny_run: tuple[Path, dict], data_dir: Path) -> None:
    import torch

    from ecgsearch.encoder.train import train

    out, _ = tiny_run
    ckpt = torch.load(out / "last.pt", weights_only=False)
    assert {"state_dict", "config", "step", "optimizer"} <= set(ckpt)
    assert EncoderConfig.from_dict(ckpt["config"]) == TINY
    summary = train(TINY.with_overrides(epochs=5), data_dir, out, resume=True, device="cpu")
    assert summary["epochs"] == 5 and summary["steps"] == 10
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4, 5]


def test_tiny_model_exports_with_parity(tiny_run: tuple[Path, dict], data_dir: Path, tmp_path: Path) -> None:
    from ecgsearch.export.onnx import export_checkpoint
    from ecgsearch.export.runtime import Embedder

    out, _ = tiny_run
    card = export_checkpoint(out / "best.pt", tmp_path / "tiny.onnx", data_dir)
    assert card.parity["max_abs_diff"] < 1e-4
    embedder = Embedder(tmp_path / "tiny.onnx", threads=1)
    assert embedder.card == card and embedder.dim == 32 and embedder.card.initialisation == "trained"
    assert embedder.card.training["data"]["n_train"] == 32
    vectors = embedder.embed(np.random.default_rng(0).standard_normal((3, 12, 1000)))
    assert vectors.shape == (3, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_training_report_compares_trained_and_random(tiny_run: tuple[Path, dict], data_dir: Path) -> None:
    from ecgsearch.bench.training import training_report

    out, _ = tiny_run
    report = training_report(out / "best.pt", data_dir)
    for which in ("trained", "random_init"):
        row = report["fold9"][which]
        assert "macro_auc" in row["probe"]
        assert row["n_searched"] == 32 and row["n_searched"] > row["n_fold9_queries"]
    training = report["training"]
    assert set(training["final_losses"]) == {"halves", "augment", "recon", "total"}
    assert training["best_epoch"] is not None and training["wall_time_s"] > 0


def test_same_seed_gives_identical_weights(data_dir: Path, tmp_path: Path) -> None:
    import torch

    from ecgsearch.encoder.train import train

    config = TINY.with_overrides(
        epochs=2, antialias=True, view_offset=16, lead_dropout=0.2, augment_pair=True
    )
    runs = []
    for name in ("a", "b"):
        train(config, data_dir, tmp_path / name, device="cpu")
        runs.append(torch.load(tmp_path / name / "last.pt", weights_only=False)["state_dict"])
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    train(config.with_overrides(seed=1), data_dir, tmp_path / "c", device="cpu")
    other = torch.load(tmp_path / "c" / "last.pt", weights_only=False)["state_dict"]
    assert not torch.equal(runs[0]["encoder.stem.0.weight"], other["encoder.stem.0.weight"])
    assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == config.threads


def test_rhythm_model_exports_with_parity_and_card(
    tiny_run: tuple[Path, dict], data_dir: Path, tmp_path: Path
) -> None:
    from ecgsearch.export.onnx import export_checkpoint, parity_inputs
    from ecgsearch.export.runtime import Embedder

    config = TINY.with_overrides(rhythm_weight=0.3)
    card = export_checkpoint(None, tmp_path / "r.onnx", data_dir, random=True, config=config)
    assert card.embedding_dim == 34 and card.parity["max_abs_diff"] < 1e-4
    stats = card.features["rhythm"]
    assert stats["names"] == ["heart_rate_bpm", "rr_irregularity"] and stats["weight"] == 0.3
    assert 40 < stats["mean"][0] < 110 and stats["n"] > 20
    assert "RR irregularity" in card.embedding
    embedder = Embedder(tmp_path / "r.onnx", threads=1)
    vectors = embedder.embed(parity_inputs(data_dir, n=4))
    assert vectors.shape == (4, 34) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_resumed_run_equals_an_uninterrupted_one(data_dir: Path, tmp_path: Path) -> None:
    import torch

    from ecgsearch.encoder.train import train

    class Interrupted(Exception):
        pass

    def stop_after_first_epoch(record: dict) -> None:
        if record["epoch"] == 1:
            raise Interrupted

    config = TINY.with_overrides(epochs=3, view_offset=16)
    train(config, data_dir, tmp_path / "straight", device="cpu")
    with pytest.raises(Interrupted):
        train(config, data_dir, tmp_path / "resumed", device="cpu", on_epoch=stop_after_first_epoch)
    train(config, data_dir, tmp_path / "resumed", resume=True, device="cpu")
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batches_carry_their_own_ecgs_label_sets(data_dir: Path) -> None:
    import torch

    from ecgsearch.encoder.data import label_sets, load_ptbxl, multi_hot
    from ecgsearch.encoder.train_data import InMemory

    data = load_ptbxl(data_dir, folds=[1], max_records=24)
    labelled = InMemory(TINY.with_overrides(w_label=1.0), data_dir, None, arrays=(data, data))
    plain = InMemory(TINY, data_dir, None, arrays=(data, data))
    sets = label_sets(labelled.train)
    assert all(sets) and all("superclass:NORM" in s or "NORM" not in s for s in sets)
    expected = multi_hot(sets, sorted(set().union(*sets)))
    flat = labelled.train.x.reshape(len(labelled.train), -1)
    batches = zip(
        labelled.batches(0, 0, torch.Generator().manual_seed(0)),
        plain.batches(0, 0, torch.Generator().manual_seed(0)),
        strict=True,
    )
    for (x, y), (x_plain, y_plain) in batches:
        assert y_plain is None and torch.equal(x, x_plain)  # labels change nothing a plain run draws
        assert y is not None
        for row, labels in zip(x.reshape(len(x), -1).numpy(), y.numpy(), strict=True):
            (i,) = np.flatnonzero((flat == row).all(axis=1))
            assert np.array_equal(labels, expected[i])


def test_the_rhythm_share_marks_the_rhythm_statements_but_sinus_rhythm(data_dir: Path) -> None:
    from ecgsearch.encoder.data import label_sets, load_ptbxl
    from ecgsearch.encoder.train_data import InMemory

    data = load_ptbxl(data_dir, folds=[1], max_records=60)
    assert {"SR", "AFIB"} <= data.rhythm_statements and "NORM" not in data.rhythm_statements
    shared = InMemory(TINY.with_overrides(w_label=1.0, label_rhythm_share=0.5), data_dir, None, (data, data))
    plain = InMemory(TINY.with_overrides(w_label=1.0), data_dir, None, arrays=(data, data))
    assert plain.rhythm_columns is None and shared.rhythm_columns is not None and shared.y is not None
    vocabulary = sorted(set().union(*(s for s in label_sets(shared.train))))
    marked = {c for c, m in zip(vocabulary, shared.rhythm_columns.tolist(), strict=True) if m}
    assert marked == (data.rhythm_statements - {"SR"}) & set(vocabulary) and "SR" in vocabulary
    head = InMemory(
        TINY.with_overrides(w_label=1.0, w_statement=1.0, statement_min_count=5, label_rhythm_share=0.5),
        data_dir,
        None,
        (data, data),
    )
    assert head.y is not None and head.rhythm_columns is not None and head.statement_vocabulary
    columns = [*head.statement_vocabulary, *sorted(set(vocabulary) - set(head.statement_vocabulary))]
    for j, code in enumerate(columns):  # the head's columns come first: the mask follows them
        assert bool(head.rhythm_columns[j]) == (code in marked)
        has = np.array([code in s for s in label_sets(head.train)])
        assert np.array_equal(head.y[:, j].numpy().astype(bool), has)
    with pytest.raises(ValueError, match="label_rhythm_share"):
        TINY.with_overrides(label_rhythm_share=1.5)
    with pytest.raises(ValueError, match="w_label"):
        TINY.with_overrides(label_rhythm_share=0.5)
    with pytest.raises(ValueError, match="label_sets"):
        TINY.with_overrides(w_label=1.0, label_rhythm_share=0.5, label_sets="superclasses")


@pytest.mark.slow
def test_label_aware_run_is_deterministic_and_logs_its_term(data_dir: Path, tmp_path: Path) -> None:
    import torch

    from ecgsearch.encoder.train import train

    config = TINY.with_overrides(epochs=1, w_label=1.0)
    runs = []
    for name in ("a", "b"):
        summary = train(config, data_dir, tmp_path / name, device="cpu")
        runs.append(torch.load(tmp_path / name / "last.pt", weights_only=False)["state_dict"])
    assert summary["final_losses"]["label"] > 0
    assert summary["data"]["labelled_train"] == summary["data"]["n_train"]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    train(config.with_overrides(w_label=0.0), data_dir, tmp_path / "plain", device="cpu")
    plain = torch.load(tmp_path / "plain" / "last.pt", weights_only=False)["state_dict"]
    assert not torch.equal(runs[0]["encoder.stem.0.weight"], plain["encoder.stem.0.weight"])


def test_statement_vocabulary_is_the_training_rows_frequent_labels(data_dir: Path) -> None:
    from collections import Counter

    from ecgsearch.encoder.data import label_sets, load_ptbxl
    from ecgsearch.encoder.train_data import InMemory

    data = load_ptbxl(data_dir, folds=[1], max_records=40)
    loaded = InMemory(
        TINY.with_overrides(w_statement=1.0, statement_min_count=5), data_dir, None, (data, data)
    )
    counts = Counter(label for s in label_sets(data) for label in s)
    assert loaded.statement_vocabulary == tuple(sorted(c for c, n in counts.items() if n >= 5))
    assert "superclass:NORM" in loaded.statement_vocabulary and 0 < len(loaded.statement_vocabulary) < len(
        counts
    )
    assert loaded.y is not None
    head = loaded.y[:, : len(loaded.statement_vocabulary)].numpy()
    assert head.sum(axis=0).tolist() == [counts[c] for c in loaded.statement_vocabulary]


@pytest.mark.slow
@pytest.mark.parametrize("statement_rhythm", [False, True], ids=["embedding", "embedding+rhythm"])
def test_statement_head_run_is_deterministic_and_exports(
    data_dir: Path, tmp_path: Path, statement_rhythm: bool
) -> None:
    import torch

    from ecgsearch.encoder.model import load_checkpoint
    from ecgsearch.encoder.train import train
    from ecgsearch.export.onnx import export_checkpoint

    config = TINY.with_overrides(
        epochs=1,
        w_statement=1.0,
        statement_min_count=3,
        statement_weight=0.8,
        statement_rhythm=statement_rhythm,
    )
    runs = []
    for name in ("a", "b"):
        summary = train(config, data_dir, tmp_path / name, device="cpu")
        runs.append(torch.load(tmp_path / name / "last.pt", weights_only=False)["state_dict"])
    assert summary["final_losses"]["statement"] > 0
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    encoder, saved, _ = load_checkpoint(tmp_path / "a" / "last.pt")
    vocabulary = saved.statement_vocabulary
    assert len(vocabulary) == summary["data"]["statement_vocabulary"] > 0
    assert encoder.statements is not None and encoder.statements.out_features == len(vocabulary)
    assert encoder.statements.in_features == 32 + 2 * statement_rhythm
    card = export_checkpoint(tmp_path / "a" / "last.pt", tmp_path / "s.onnx", data_dir)
    assert card.embedding_dim == 32 + len(vocabulary) and card.parity["max_abs_diff"] < 1e-4
    assert card.features["statements"]["vocabulary"] == list(vocabulary)
    assert "statement probabilities" in card.embedding
    assert ("RR irregularity" in card.embedding) == statement_rhythm  # TINY serves no rhythm block
    standardised = config.with_overrides(statement_block="logit_z")
    card = export_checkpoint(tmp_path / "a" / "last.pt", tmp_path / "z.onnx", data_dir, config=standardised)
    assert card.parity["max_abs_diff"] < 1e-4 and len(card.features["statements"]["std"]) == len(vocabulary)
    assert "logit standardised" in card.embedding
    # the head refitted on the embedding and the rhythm, in the graph: parity, and the card says so
    refit = standardised.with_overrides(statement_head="refit_rhythm")
    card = export_checkpoint(tmp_path / "a" / "last.pt", tmp_path / "r.onnx", data_dir, config=refit)
    statements = card.features["statements"]
    assert card.parity["max_abs_diff"] < 1e-4 and statements["head"] == "refit_rhythm"
    assert statements["refit"]["n"] == statements["n"] and len(statements["std"]) == len(vocabulary)
    assert "logistic regression per statement" in card.embedding and "RR irregularity" in card.embedding
