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

from ecgsearch.ecg import features, ptbxl, signals
from ecgsearch.encoder import refit_head
from ecgsearch.encoder.config import SERVED_ONLY, EncoderConfig
from ecgsearch.encoder.data import EcgArrays, label_sets, load_ptbxl, multi_hot
from ecgsearch.encoder.model import (
    HEAD_RHYTHM_CENTRE,
    HEAD_RHYTHM_SCALE,
    Encoder,
    LeadAmplitudes,
    RefitHead,
    RhythmFeatures,
    SelfSupervised,
    ServingEncoder,
    StatementBlock,
    count_parameters,
    load_checkpoint,
)
from ecgsearch.export import whitening
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


SCALE_NOTE = (
    " The graph reads the prepared ECG in mV and first divides it by its global RMS over the non-flat leads "
    "(clipped to +-{clip:g}), as in training, so the learned part is blind to gain."
)

DENSE_NOTE = (
    " The last {n} subsamplings run at every phase (stride 1, the convolutions after them dilated: the a "
    "trous algorithm), so the pooling reads the feature map at {phases} offsets of the network's coarsest "
    "grid, with the weights trained on that grid."
)

RHYTHM_NOTE = (
    " Then two measured numbers join it, also inside the ONNX graph: heart rate (60 / median RR, bpm) "
    "and RR irregularity (RMS of the successive RR differences without the two largest, over the median "
    "RR, so one missed or extra beat does not read as arrhythmia) from lead-II R peaks (QRS-band energy "
    "peaks, ecgsearch.ecg.features), standardised with the training folds' mean and std (card field "
    "'features'), clipped to +-{zclip:g}, 0 when fewer than three R peaks are found, each weighted "
    "{w:g}/sqrt(2)."
)

AMPLITUDE_NOTE = (
    " Then twelve more for absolute voltage: each lead's log-RMS in mV (the lead's RMS in the scaled ECG "
    "times the global RMS), standardised with the training folds' per-lead mean and std, clipped to "
    "+-{zclip:g}, each weighted {w:g}/sqrt(12). A global RMS outside {low:g}-{high:g} mV cannot be a "
    "surface ECG's (a header gain off by 1000x): the training folds' median stands in, so only the "
    "relative lead amplitudes count."
)

STATEMENT_NOTE = (
    " Then {n} statement values: a linear head on the {dim}-d embedding (before its normalisation){rhythm}, "
    "trained with a multi-label cross entropy on the training folds' PTB-XL statements and superclasses "
    "with at least {min_count} positives there (card field 'features'); {how}, weighted {w:g}."
)
STATEMENT_RHYTHM_INPUT = (
    " and on the ECG's heart rate and RR irregularity (as measured for the rhythm block, centred on "
    "{centre[0]:g} bpm and {centre[1]:g}, scaled by {scale[0]:g} bpm and {scale[1]:g}, clipped to "
    "+-{zclip:g})"
)
REFIT_NOTE = (
    " Then {n} statement values: one L2 logistic regression per statement (C {c:g}), fitted after training "
    "on the training folds' [unit {dim}-d embedding | heart rate and RR irregularity z (the rhythm block's "
    "numbers) / sqrt 2], for the training folds' PTB-XL statements and superclasses with at least "
    "{min_count} positives there (card field 'features'); {how}, weighted {w:g}."
)
STATEMENT_HOW = {
    "probabilities": "its statement probabilities (sigmoid outputs) divided by their norm",
    "logit_z": (
        "each statement's logit standardised with the training folds' mean and std, clipped to +-{zclip:g}, "
        "over sqrt({n})"
    ),
}

LAYOUT_NOTE = (
    " The exported vector is [the {dim}-d embedding divided by its norm | the blocks above in this "
    "order] ({out} values), which the runtime L2-normalises: a block of weight w has a squared norm of "
    "about w^2 on average beside 1 for the embedding."
)

WHITENING_NOTE = (
    " Last, the graph multiplies the vector by a symmetric whitening matrix fitted on the training folds "
    "(features.whitening): the inverse square root of how the vector moves when the same ECG is read a "
    "little differently, shrunk toward the identity by {shrink:g} of its mean eigenvalue, so that the "
    "directions such reads move count less in the cosine."
)


WHITENING_SCOPE_NOTE = (
    " The whitening mixes the {dim} embedding columns only; the blocks after them pass through unchanged."
)


def embedding_note(config: EncoderConfig) -> str:
    """The model card's ``embedding`` field: how the vector is formed from the input."""
    if config.pooling == "meanmax":
        note = EMBEDDING_NOTE_MEANMAX.format(dim=config.embedding_dim, half=config.embedding_dim // 2)
    else:
        note = EMBEDDING_NOTE.format(dim=config.embedding_dim)
    if config.dense_levels:
        note += DENSE_NOTE.format(n=config.dense_levels, phases=2**config.dense_levels)
    note += SCALE_NOTE.format(clip=signals.CLIP)
    if config.rhythm_weight > 0:
        note += RHYTHM_NOTE.format(zclip=features.Z_CLIP, w=config.rhythm_weight)
    if config.amplitude_weight > 0:
        low, high = features.VOLTAGE_RANGE_MV
        note += AMPLITUDE_NOTE.format(zclip=features.Z_CLIP, w=config.amplitude_weight, low=low, high=high)
    if config.statement_weight > 0 and config.statement_head == "refit_rhythm":
        note += REFIT_NOTE.format(
            n=len(config.statement_vocabulary),
            c=refit_head.C,
            dim=config.embedding_dim,
            min_count=config.statement_min_count,
            w=config.statement_weight,
            how=STATEMENT_HOW[config.statement_block].format(
                zclip=features.Z_CLIP, n=len(config.statement_vocabulary)
            ),
        )
    elif config.statement_weight > 0:
        note += STATEMENT_NOTE.format(
            n=len(config.statement_vocabulary),
            dim=config.embedding_dim,
            min_count=config.statement_min_count,
            w=config.statement_weight,
            rhythm=STATEMENT_RHYTHM_INPUT.format(
                centre=HEAD_RHYTHM_CENTRE, scale=HEAD_RHYTHM_SCALE, zclip=features.Z_CLIP
            )
            if config.statement_rhythm
            else "",
            how=STATEMENT_HOW[config.statement_block].format(
                zclip=features.Z_CLIP, n=len(config.statement_vocabulary)
            ),
        )
    if config.output_dim > config.embedding_dim:
        note += LAYOUT_NOTE.format(dim=config.embedding_dim, out=config.output_dim)
    if config.whitening > 0:
        note += WHITENING_NOTE.format(shrink=config.whitening)
        if config.whitening_scope == "embedding":
            note += WHITENING_SCOPE_NOTE.format(dim=config.embedding_dim)
    return note


def rhythm_statistics(data: EcgArrays) -> dict:
    """Mean and std of heart rate and RR irregularity over ``data`` (rows with R peaks)."""
    return features.rhythm_statistics(features.rhythm(data.x))


def amplitude_statistics(data: EcgArrays) -> dict:
    """Per-lead mean and std of log-RMS (mV) over ``data``, and the range of its global RMS."""
    assert data.mv is not None  # load_ptbxl keeps the mV ECGs
    log_rms = features.lead_log_rms(data.mv)
    scale = signals.global_rms(data.mv)
    return {
        "names": [f"log_rms_mv_{lead}" for lead in signals.LEADS],
        "mean": log_rms.mean(axis=0).tolist(),
        "std": log_rms.std(axis=0).tolist(),
        "n": len(data),
        "global_rms_mv": {
            "median": float(np.median(scale)),
            "min": float(scale.min()),
            "max": float(scale.max()),
            "plausible_range": list(features.VOLTAGE_RANGE_MV),
        },
    }


def serving_module(
    encoder: Encoder,
    config: EncoderConfig,
    data_root: str | Path,
    cache_dir: str | Path | None = None,
    train: EcgArrays | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The module to export: the encoder behind its input scaling, with the measured feature blocks the
    config asks for. Returns the module and the card's ``features`` entry (empty without features).
    ``train``: the training folds' ECGs already loaded (else read from ``data_root``)."""
    cards: dict[str, Any] = {}
    rhythm = amplitude = None
    folds = {"folds": list(config.train_folds)}
    if train is None and config.measured_blocks:
        train = load_ptbxl(
            data_root, folds=config.train_folds, cache_dir=cache_dir, max_records=config.max_records
        )
    if config.rhythm_weight > 0:
        assert train is not None  # given, or loaded just above
        stats = {**rhythm_statistics(train), **folds}
        rhythm = RhythmFeatures(tuple(stats["mean"]), tuple(stats["std"]))
        cards["rhythm"] = {**stats, "weight": config.rhythm_weight}
    if config.amplitude_weight > 0:
        assert train is not None  # given, or loaded just above
        stats = {**amplitude_statistics(train), **folds}
        amplitude = LeadAmplitudes(
            tuple(stats["mean"]), tuple(stats["std"]), stats["global_rms_mv"]["median"]
        )
        cards["amplitude"] = {**stats, "weight": config.amplitude_weight}
    statement = refit = None
    if config.statement_weight > 0:
        cards["statements"] = {
            "vocabulary": list(config.statement_vocabulary),
            "min_count": config.statement_min_count,
            "weight": config.statement_weight,
            "block": config.statement_block,
            "head": config.statement_head,
            **folds,
        }
        statement = StatementBlock("probabilities")
        if train is None and (config.statement_block == "logit_z" or config.statement_head == "refit_rhythm"):
            train = load_ptbxl(
                data_root, folds=config.train_folds, cache_dir=cache_dir, max_records=config.max_records
            )
        train_logits = None
        if config.statement_head == "refit_rhythm":
            assert train is not None  # given, or loaded just above
            refit, train_logits, cards["statements"]["refit"] = refit_rhythm_head(encoder, config, train)
        if config.statement_block == "logit_z":
            assert train is not None  # given, or loaded just above
            if train_logits is None:
                mean, std = logit_statistics(encoder, train)
            else:
                mean, std = train_logits.mean(dim=0), train_logits.std(dim=0, unbiased=False)
            statement = StatementBlock("logit_z", mean, std)
            cards["statements"].update(mean=mean.tolist(), std=std.tolist(), n=len(train))
    module = ServingEncoder(
        encoder,
        rhythm,
        config.rhythm_weight,
        amplitude,
        config.amplitude_weight,
        config.statement_weight,
        statement,
        refit,
    )
    if config.whitening > 0:
        if train is None:
            train = load_ptbxl(
                data_root, folds=config.train_folds, cache_dir=cache_dir, max_records=config.max_records
            )
        matrix, entry = fit_whitening(module, train, data_root, config.whitening, whitened_columns(config))
        module.whiten(matrix)
        cards["whitening"] = {**entry, "scope": config.whitening_scope, **folds}
    return module, cards


def refit_rhythm_head(
    encoder: Encoder, config: EncoderConfig, train: EcgArrays
) -> tuple[RefitHead, torch.Tensor, dict]:
    """The statement head refitted on the training folds' [unit embedding | rhythm z / sqrt 2]
    (``encoder.refit_head``): the graph's head, its logits over ``train`` (the logit_z block's
    standardisation) and the card's entry."""
    from ecgsearch.encoder.train import embed

    assert train.mv is not None  # load_ptbxl keeps the reads in mV
    stats = rhythm_statistics(train)
    rhythm = (tuple(stats["mean"]), tuple(stats["std"]))
    inputs = embed(ServingEncoder(encoder, RhythmFeatures(*rhythm), 1.0), train.mv, torch.device("cpu"))
    labels = multi_hot(label_sets(train, "statements"), list(config.statement_vocabulary))
    weights, bias = refit_head.fit(inputs, labels)
    logits = torch.from_numpy((inputs.astype(np.float64) @ weights.T + bias).astype(np.float32))
    entry = {
        "inputs": "unit embedding, heart rate and RR irregularity z / sqrt 2",
        "c": refit_head.C,
        "rhythm": stats,
        "n": len(train),
    }
    return RefitHead(RhythmFeatures(*rhythm), weights, bias), logits, entry


def whitened_columns(config: EncoderConfig) -> int | None:
    """The leading columns ``config``'s whitening mixes (None: all of them)."""
    return config.embedding_dim if config.whitening_scope == "embedding" else None


def fit_whitening(
    module: torch.nn.Module,
    train: EcgArrays,
    data_root: str | Path,
    shrink: float,
    columns: int | None = None,
) -> tuple[np.ndarray, dict]:
    """``export.whitening.fit`` of the served ``module``'s vectors on the training folds' ECGs (of their
    first ``columns`` only, ``whitened_columns``)."""
    from ecgsearch.encoder.train import embed

    by_id = {row.ecg_id: row for row in ptbxl.read_table(Path(data_root) / "ptb-xl")}
    assert train.mv is not None  # load_ptbxl keeps the reads in mV
    return whitening.fit(
        lambda mv: embed(module, mv, torch.device("cpu")),
        [by_id[int(i)] for i in train.ecg_ids],
        train.mv,
        shrink,
        columns,
    )


@torch.no_grad()
def logit_statistics(
    encoder: Encoder, train: EcgArrays, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-statement mean and std of the head's logits over the training folds' ECGs (unit RMS, as the
    served graph feeds the encoder): the ``logit_z`` block's standardisation."""
    was_training = encoder.training
    encoder.eval()
    x = torch.from_numpy(np.ascontiguousarray(train.x))
    logits = torch.cat(
        [
            encoder.statement_logits(encoder(x[i : i + batch]), x[i : i + batch])
            for i in range(0, len(x), batch)
        ]
    )
    encoder.train(was_training)
    return logits.mean(dim=0), logits.std(dim=0, unbiased=False)


class ParityError(RuntimeError):
    """onnxruntime and torch disagree on the same input beyond the tolerance."""


def random_encoder(config: EncoderConfig) -> Encoder:
    """The randomly initialised encoder for ``config.seed``: exactly the weights training starts from."""
    torch.manual_seed(config.seed)
    return SelfSupervised(config).encoder


def parity_inputs(data_root: str | Path, n: int = 16) -> np.ndarray:
    """A few real prepared PTB-XL ECGs in mV (fold 10) for the parity check."""
    mv = load_ptbxl(data_root, folds=[10], max_records=n).mv
    assert mv is not None  # load_ptbxl keeps the mV ECGs
    return mv


def weights_version(model: onnx.ModelProto) -> str:
    """sha256 over the initialisers (name, dims, bytes) and the graph's nodes, first 16 hex chars: the
    model's identity. The nodes count because they hold constants (a feature block's weight, the input
    scaling): the same weights behind another graph embed differently and must not share a version."""
    digest = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda t: t.name):
        digest.update(init.name.encode())
        digest.update(np.asarray(init.dims, dtype=np.int64).tobytes())
        digest.update(onnx.numpy_helper.to_array(init).tobytes())
    for node in model.graph.node:
        digest.update(node.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


def export_encoder(
    encoder: torch.nn.Module,
    config: EncoderConfig,
    out: str | Path,
    *,
    inputs: np.ndarray,
    initialisation: str,
    training: dict[str, Any],
    name: str = "ecg-encoder",
    feature_card: dict[str, Any] | None = None,
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
    # fields the card class does not declare (it allows extras): kept after the declared ones
    extras: dict[str, Any] = {
        "parameters": count_parameters(encoder),
        "parity": {"max_abs_diff": max_diff, "tolerance": PARITY_TOLERANCE, "n_ecgs": int(len(inputs))},
    }
    card = ModelCard(
        name=name,
        version=weights_version(model),
        sampling_rate_hz=signals.MODEL_FS,
        input_samples=signals.MODEL_SAMPLES,
        lead_order=list(signals.LEADS),
        embedding_dim=config.output_dim,
        normalisation=signals.NORMALISATION,
        embedding=embedding_note(config),
        training=training,
        initialisation=initialisation,
        onnx_opset=OPSET,
        **extras,
        **({"features": feature_card} if feature_card else {}),
        notes=config.notes,
    )
    onnx.helper.set_model_props(model, {CARD_METADATA_KEY: card.model_dump_json()})
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    write_card_file(out, card)
    return card


def parity(encoder: torch.nn.Module, model: onnx.ModelProto, inputs: np.ndarray) -> float:
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
    cache_dir: str | Path | None = None,
    dense_levels: int | None = None,
    whitening: float | None = None,
) -> ModelCard:
    """Export a training checkpoint, or (``random``) the same architecture at its seed's initial weights.

    With a checkpoint, ``config`` gives only what is chosen at export: its served settings
    (``encoder.config.SERVED_ONLY``), the dense levels and the notes (the weights are the checkpoint's).
    ``dense_levels`` and ``whitening`` override the config's.
    """
    training: dict[str, Any] = {}
    if checkpoint is not None:
        encoder, trained, ckpt = load_checkpoint(checkpoint)
        training = dict(ckpt.get("summary") or {})
        training.setdefault("config", trained.to_dict())
        training.setdefault("step", ckpt.get("step"))
        if config is not None:
            trained = trained.with_overrides(
                **{key: getattr(config, key) for key in SERVED_ONLY},
                dense_levels=config.dense_levels,
                notes=config.notes,
            )
        config = trained
    config = config or EncoderConfig()
    if dense_levels is not None:
        config = config.with_overrides(dense_levels=dense_levels)
    if whitening is not None:
        config = config.with_overrides(whitening=whitening)
    if checkpoint is not None:
        encoder = encoder.served_as(config)  # the checkpoint's weights in the network served
    if random:
        encoder = random_encoder(config)
        training = {"config": config.to_dict(), "note": "randomly initialised, never trained"}
    inputs = parity_inputs(data_root)
    module, feature_card = serving_module(encoder, config, data_root, cache_dir)
    card = export_encoder(
        module,
        config,
        out,
        inputs=inputs,
        initialisation="random" if random else "trained",
        training=json.loads(json.dumps(training, default=str)),
        name=name,
        feature_card=feature_card,
    )
    return card
