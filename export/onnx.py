"""Checkpoint -> ONNX encoder with its model card in the metadata, checked against torch on real ECGs.

The export fails (nothing is written) when onnxruntime and torch disagree by more than
``PARITY_TOLERANCE`` on real prepared PTB-XL inputs: a model that embeds differently in production
than in training would silently break every collection built with it.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ecgsearch.encoder import signals
from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.data import load_ptbxl
from ecgsearch.encoder.model import Encoder, SelfSupervised, count_parameters
from ecgsearch.export.card import CARD_METADATA_KEY, ModelCard, write_card_file

OPSET = 17
PARITY_TOLERANCE = 1e-4
EMBEDDING_NOTE = (
    "The encoder runs over the full prepared 10 s ECG (12 x 1000 at 100 Hz); its convolutional feature map "
    "is averaged over time (global average pooling) into one {dim}-d vector, which the runtime "
    "L2-normalises. "
    "Training saw 5 s windows; the fully convolutional encoder and mean pooling make the 10 s embedding the "
    "average of the same features over twice the time."
)


EMBEDDING_NOTE_MEANMAX = (
    "The encoder runs over the full prepared 10 s ECG (12 x 1000 at 100 Hz); its convolutional feature map "
    "of {half} channels is pooled over time twice, by its mean and by its max, and the two {half}-d vectors "
    "are concatenated (mean first, then max) into one {dim}-d vector inside the ONNX graph, which the "
    "runtime L2-normalises. "
    "Training saw 5 s windows; the fully convolutional encoder makes the 10 s embedding the mean and the "
    "max of the same features over twice the time."
)


def embedding_note(config: EncoderConfig) -> str:
    """The model card's ``embedding`` field: how the vector is formed from the feature map."""
    if config.pooling == "meanmax":
        return EMBEDDING_NOTE_MEANMAX.format(dim=config.embedding_dim, half=config.embedding_dim // 2)
    return EMBEDDING_NOTE.format(dim=config.embedding_dim)


class ParityError(RuntimeError):
    """onnxruntime and torch disagree on the same input beyond the tolerance."""


def random_encoder(config: EncoderConfig) -> Encoder:
    """The randomly initialised encoder for ``config.seed``: exactly the weights training starts from."""
    torch.manual_seed(config.seed)
    return SelfSupervised(config).encoder


def load_checkpoint(path: str | Path) -> tuple[Encoder, EncoderConfig, dict[str, Any]]:
    """Rebuild the encoder from a training checkpoint; returns (encoder, config, checkpoint)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    config = EncoderConfig.from_dict(ckpt["config"])
    model = SelfSupervised(config)
    model.load_state_dict(ckpt["state_dict"])
    return model.encoder, config, ckpt


def parity_inputs(data_root: str | Path, n: int = 16) -> np.ndarray:
    """A few real prepared PTB-XL ECGs (fold 10) for the parity check."""
    return load_ptbxl(data_root, folds=[10], max_records=n).x


def weights_version(model: onnx.ModelProto) -> str:
    """sha256 over the initialisers (name, dims, bytes), first 16 hex chars: the model's identity."""
    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        digest.update(init.name.encode())
        digest.update(np.asarray(init.dims, dtype=np.int64).tobytes())
        digest.update(onnx.numpy_helper.to_array(init).tobytes())
    return digest.hexdigest()[:16]


def export_encoder(
    encoder: Encoder,
    config: EncoderConfig,
    out: str | Path,
    *,
    inputs: np.ndarray,
    initialisation: str,
    training: dict[str, Any],
    name: str = "ecg-encoder",
) -> ModelCard:
    """Export ``encoder`` to ``out`` with its card; raises ParityError if ORT and torch disagree."""
    encoder = encoder.eval().cpu()
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        dummy = torch.from_numpy(inputs[:2].astype(np.float32))
        torch.onnx.export(
            encoder,
            (dummy,),
            str(raw),
            input_names=["ecg"],
            output_names=["embedding"],
            dynamic_axes={"ecg": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
        model = onnx.load(str(raw))
    max_diff = parity(encoder, model, inputs)
    card = ModelCard(
        name=name,
        version=weights_version(model),
        sampling_rate_hz=signals.MODEL_FS,
        input_samples=signals.MODEL_SAMPLES,
        lead_order=list(signals.LEADS),
        embedding_dim=config.embedding_dim,
        normalisation=signals.NORMALISATION,
        embedding=embedding_note(config),
        training=training,
        initialisation=initialisation,
        onnx_opset=OPSET,
        parameters=count_parameters(encoder),
        parity={"max_abs_diff": max_diff, "tolerance": PARITY_TOLERANCE, "n_ecgs": int(len(inputs))},
    )
    onnx.helper.set_model_props(model, {CARD_METADATA_KEY: card.model_dump_json()})
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    write_card_file(out, card)
    return card


def parity(encoder: Encoder, model: onnx.ModelProto, inputs: np.ndarray) -> float:
    """Max |ORT - torch| over raw (unnormalised) embeddings of ``inputs``; raises above tolerance."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ascontiguousarray(inputs, dtype=np.float32)
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        want = encoder(torch.from_numpy(x)).numpy()
    diff = float(np.max(np.abs(got - want)))
    if not diff < PARITY_TOLERANCE:
        raise ParityError(f"onnxruntime vs torch max abs diff {diff:.3g} >= {PARITY_TOLERANCE:g}")
    return diff


def export_checkpoint(
    checkpoint: str | Path | None,
    out: str | Path,
    data_root: str | Path,
    *,
    random: bool = False,
    config: EncoderConfig | None = None,
    name: str = "ecg-encoder",
) -> ModelCard:
    """Export a training checkpoint, or (``random``) the same architecture at its seed's initial weights."""
    training: dict[str, Any] = {}
    if checkpoint is not None:
        encoder, config, ckpt = load_checkpoint(checkpoint)
        training = dict(ckpt.get("summary") or {})
        training.setdefault("config", config.to_dict())
        training.setdefault("step", ckpt.get("step"))
    config = config or EncoderConfig()
    if random:
        encoder = random_encoder(config)
        training = {"config": config.to_dict(), "note": "randomly initialised, never trained"}
    inputs = parity_inputs(data_root)
    card = export_encoder(
        encoder,
        config,
        out,
        inputs=inputs,
        initialisation="random" if random else "trained",
        training=json.loads(json.dumps(training, default=str)),
        name=name,
    )
    return card
