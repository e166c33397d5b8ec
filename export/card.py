"""The model card: what an ONNX model expects and where it came from, stored in the ONNX metadata.

Everything downstream (ingest, the store, the service) reads the card instead of assuming: the
collection records ``version`` so vectors of two models are never mixed.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict

CARD_METADATA_KEY = "ecgsearch.model_card"


class ModelCard(BaseModel):
    """Input contract and provenance of one exported encoder."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str
    version: str  # content hash of the ONNX weights: the identity a collection records
    sampling_rate_hz: int
    input_samples: int
    lead_order: list[str]
    embedding_dim: int
    normalisation: str
    embedding: str  # how the 10 s embedding is formed
    training: dict  # data summary, config, losses, time
    initialisation: str = "trained"  # "trained" or "random"
    onnx_opset: int | None = None
    # measured features appended to the learned embedding inside the graph (name -> how), if any
    features: dict | None = None
    notes: str = ""  # what changed against the previous default (the config's ``notes``)


def card_file(model_path: str | Path) -> Path:
    """``model.card.json`` beside ``model.onnx``: the card readable without onnxruntime (``--version``)."""
    return Path(model_path).with_suffix(".card.json")


def write_card_file(model_path: str | Path, card: ModelCard) -> Path:
    """Write the card beside the model; the ONNX metadata stays the source of truth."""
    path = card_file(model_path)
    path.write_text(json.dumps(card.model_dump(mode="json"), indent=2) + "\n")
    return path
