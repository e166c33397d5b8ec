"""The only inference path in production: an onnxruntime session over an exported encoder.

Never imports torch. Input is a batch of prepared ECGs (see ``ecgsearch.ecg.signals``);
output is L2-normalised float32 embeddings, ready for cosine search.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ecgsearch.ecg.signals import LEADS, MODEL_FS, MODEL_SAMPLES, NORMALISATION
from ecgsearch.export.card import CARD_METADATA_KEY, ModelCard

DEFAULT_MODEL = "ecg-encoder.onnx"
RANDOM_MODEL = "ecg-encoder-random.onnx"


class ModelError(RuntimeError):
    """The model file is missing, unreadable or does not match the signal contract."""


def bundled_model(name: str = DEFAULT_MODEL) -> Path:
    """Path of a model shipped inside the package (no torch, no download)."""
    path = Path(str(resources.files("ecgsearch.export.models").joinpath(name)))
    if not path.is_file():
        raise ModelError(f"bundled model {name} is not installed at {path}")
    return path


def read_card(model_path: str | Path) -> ModelCard:
    """The model card stored in an ONNX file's metadata."""
    meta = _session(Path(model_path), threads=1).get_modelmeta().custom_metadata_map
    return _card_from_meta(meta, model_path)


def _card_from_meta(meta: dict[str, str], model_path: str | Path) -> ModelCard:
    if CARD_METADATA_KEY not in meta:
        raise ModelError(f"{model_path}: no '{CARD_METADATA_KEY}' in ONNX metadata; not an ecgsearch model")
    return ModelCard.model_validate(json.loads(meta[CARD_METADATA_KEY]))


def _session(path: Path, threads: int | None, spinning: bool = True) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path}: onnxruntime cannot load it ({exc})") from exc


class Embedder:
    """Batch of prepared ECGs (n, 12, 1000) -> unit vectors (n, dim). Thread-safe for concurrent calls.

    ``spinning`` False: onnxruntime's threads sleep between a run's parallel parts instead of spinning.
    Spinning answers one query sooner on idle cores; where other processes need the cores (ingest's
    reading workers) a spinning thread burns CPU they need, nearly doubling the CPU per ECG on 2
    shared cores (``bench ingest`` records the encoder's CPU per ECG with ingest's settings).
    """

    def __init__(
        self, model_path: str | Path | None = None, *, threads: int | None = None, spinning: bool = True
    ) -> None:
        self.path = Path(model_path) if model_path else bundled_model()
        self.session = _session(self.path, threads, spinning)
        self.card = _card_from_meta(self.session.get_modelmeta().custom_metadata_map, self.path)
        if (
            self.card.sampling_rate_hz != MODEL_FS
            or self.card.input_samples != MODEL_SAMPLES
            or list(self.card.lead_order) != list(LEADS)
            or self.card.normalisation != NORMALISATION
        ):
            raise ModelError(
                f"{self.path}: model expects {self.card.sampling_rate_hz} Hz x {self.card.input_samples} "
                f"samples in lead order {self.card.lead_order}, prepared as '{self.card.normalisation}'; "
                f"this build prepares {MODEL_FS} Hz x {MODEL_SAMPLES} in {list(LEADS)} as '{NORMALISATION}'"
            )
        self._input = self.session.get_inputs()[0].name

    @property
    def dim(self) -> int:
        return self.card.embedding_dim

    @property
    def version(self) -> str:
        return self.card.version

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Embed prepared ECGs; returns float32 rows of unit L2 norm."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1:] != (len(LEADS), MODEL_SAMPLES):
            raise ValueError(f"expected (n, {len(LEADS)}, {MODEL_SAMPLES}) prepared ECGs, got {x.shape}")
        if x.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        (out,) = self.session.run(None, {self._input: x})
        return normalise_rows(out)

    @property
    def learned_dim(self) -> int:
        """Dims of the learned part: the served vector less the measured blocks its card lists (those
        with feature ``names``: heart rate, amplitudes). The learned part is the leading columns (the
        waveform view takes them); ``waveform_split_error`` says which models have none."""
        blocks = [b for b in (self.card.features or {}).values() if isinstance(b, dict)]
        measured = sum(len(b.get("names", ())) for b in blocks)
        refused = waveform_split_error(
            measured > 0,
            any("vocabulary" in b for b in blocks),
            bool((self.card.features or {}).get("whitening")),
        )
        if refused:
            raise ValueError(f"model {self.version}: {refused}")
        return self.dim - measured


def waveform_split_error(measured: bool, statements: bool, whitened: bool) -> str | None:
    """Why a served vector with these blocks has no leading learned part for the waveform view, or None.

    The graph appends the statement block after the measured blocks (rhythm, amplitudes), and a
    whitening mixes every column; either leaves the learned columns no longer leading. One rule for the
    runtime and for the served settings a choice may pick (``bench.crossfit.grid_settings``,
    ``bench.whitening_choice.shrinkages``)."""
    if measured and statements:
        return (
            "a statement block after measured blocks leaves no leading learned part for the waveform view; "
            "serve it with rhythm_weight and amplitude_weight 0"
        )
    if measured and whitened:
        return (
            "its whitening mixes the measured blocks into every column, so no leading part is the waveform "
            "alone; serve it with rhythm_weight and amplitude_weight 0"
        )
    return None


def normalise_rows(x: np.ndarray, dtype: type[np.floating] = np.float32) -> np.ndarray:
    """L2-normalise rows (zero rows stay zero), in ``dtype`` (served vectors: float32)."""
    x = np.asarray(x, dtype=dtype)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
