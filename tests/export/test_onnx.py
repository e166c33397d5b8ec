"""ONNX export: card in metadata, dynamic batch, content-hash version, parity enforced; the bundled models."""

from pathlib import Path

import numpy as np
import pytest

from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.export.runtime import DEFAULT_MODEL, RANDOM_MODEL, Embedder, bundled_model

SMALL = EncoderConfig(stem_channels=8, stage_channels=(16,), stage_kernels=(3,), embedding_dim=24)


def test_random_export_matches_torch_for_any_batch(tmp_path: Path) -> None:
    import torch

    from ecgsearch.export.onnx import export_encoder, random_encoder

    x = np.random.default_rng(0).standard_normal((5, 12, 1000)).astype(np.float32)
    encoder = random_encoder(SMALL)
    card = export_encoder(encoder, SMALL, tmp_path / "m.onnx", inputs=x, initialisation="random", training={})
    embedder = Embedder(tmp_path / "m.onnx", threads=1)
    assert embedder.card.version == card.version and len(card.version) == 16
    assert card.onnx_opset >= 17 and card.initialisation == "random"
    for n in (1, 5):
        with torch.no_grad():
            want = torch.nn.functional.normalize(encoder(torch.from_numpy(x[:n])), dim=1).numpy()
        assert np.abs(embedder.embed(x[:n]) - want).max() < 1e-4
    again = export_encoder(
        random_encoder(SMALL), SMALL, tmp_path / "b.onnx", inputs=x, initialisation="random", training={}
    )
    assert again.version == card.version  # same weights, same identity


def test_parity_failure_stops_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecgsearch.export import onnx as export_onnx

    monkeypatch.setattr(export_onnx, "PARITY_TOLERANCE", -1.0)
    x = np.zeros((2, 12, 1000), dtype=np.float32)
    with pytest.raises(export_onnx.ParityError):
        export_onnx.export_encoder(
            export_onnx.random_encoder(SMALL),
            SMALL,
            tmp_path / "m.onnx",
            inputs=x,
            initialisation="random",
            training={},
        )
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("name", [DEFAULT_MODEL, RANDOM_MODEL])
def test_bundled_models_load_without_torch_side_imports(name: str) -> None:
    embedder = Embedder(bundled_model(name), threads=1)
    # model 6: 256 learned + a statement block over its training folds' vocabulary, from the head refitted
    # on the embedding and the rhythm (encoder.refit_head), not whitened
    statements = (embedder.card.features or {})["statements"]
    vocabulary = statements["vocabulary"]
    assert embedder.dim == 256 + len(vocabulary) and "superclass:NORM" in vocabulary and "AFIB" in vocabulary
    assert set(embedder.card.features or {}) == {"statements"}
    assert statements["head"] == "refit_rhythm" and statements["refit"]["n"] == statements["n"]
    assert embedder.learned_dim == embedder.dim  # no measured block: all of it is the waveform view
    assert embedder.card.parity["max_abs_diff"] < 1e-4
    assert "10 s" in embedder.card.embedding


def test_card_file_beside_each_bundled_model_matches_its_onnx_metadata() -> None:
    """``--version`` reads the card beside the .onnx; it must be the card inside the model."""
    import json

    from ecgsearch.export.card import card_file

    for name in (DEFAULT_MODEL, RANDOM_MODEL):
        path = bundled_model(name)
        beside = json.loads(card_file(path).read_text())
        assert beside == Embedder(path, threads=1).card.model_dump(mode="json")


def test_meanmax_export_matches_torch_and_documents_pooling(tmp_path: Path) -> None:
    from ecgsearch.export.onnx import export_encoder, random_encoder

    config = SMALL.with_overrides(pooling="meanmax")
    x = np.random.default_rng(1).standard_normal((3, 12, 1000)).astype(np.float32)
    card = export_encoder(
        random_encoder(config), config, tmp_path / "mm.onnx", inputs=x, initialisation="random", training={}
    )
    assert card.parity["max_abs_diff"] < 1e-4 and "max" in card.embedding
    assert Embedder(tmp_path / "mm.onnx", threads=1).embed(x).shape == (3, config.embedding_dim)
