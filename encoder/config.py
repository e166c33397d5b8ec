"""Hyperparameters of the encoder and its self-supervised training, as one frozen dataclass.

No torch here: the CLI, the model card and tests read configs without loading torch. A config file
(YAML) only overrides fields; every field has a default, so old checkpoints stay loadable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

STATEMENT_BLOCKS = ("probabilities", "logit_z")  # EncoderConfig.statement_block (model.StatementBlock)
STATEMENT_HEADS = ("trained", "refit_rhythm")  # EncoderConfig.statement_head
WHITENING_SCOPES = ("vector", "embedding")  # EncoderConfig.whitening_scope


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture, augmentations, loss weights and schedule."""

    # what this configuration is and how it differs from the one before (copied into the model card)
    notes: str = ""

    # architecture: a strided conv stem, residual stages, global average pooling
    in_leads: int = 12
    stem_channels: int = 32
    stem_kernel: int = 9
    stem_stride: int = 4
    stage_channels: tuple[int, ...] = (48, 96, 160)
    stage_kernels: tuple[int, ...] = (5, 5, 3)
    embedding_dim: int = 256
    projection_dim: int = 128
    decoder_channels: int = 64
    pooling: str = "mean"  # "mean", or "meanmax": [mean | max] over time of embedding_dim/2 channels
    # low-pass (binomial blur) before every downsampling and a stride-1 stem conv, so a shifted ECG
    # embeds like the original (a strided conv alone aliases: its output depends on the start sample)
    antialias: bool = False
    stem_conv_stride: int = (
        1  # with antialias: the stem conv's own stride; BlurPools do the rest of stem_stride
    )
    # served: the last dense_levels subsamplings (BlurPools) are evaluated at every phase, the convolutions
    # after them dilated (a trous), so the pooled embedding reads the ECG at 2^dense_levels offsets of the
    # coarsest grid instead of one: the same weights, steadier neighbours when an ECG starts a little later
    # (needs antialias; 0 = the grid the network trained on)
    dense_levels: int = 0
    # served, > 0: the vector is whitened against how it moves when the same ECG is read a little
    # differently (later starts, other sampling phases, its other-rate file), the moves' covariance shrunk
    # toward the identity by this share of its mean eigenvalue; fitted on the training folds at export
    # (export.whitening), so near-tie neighbours stay put; 0 = off
    whitening: float = 0.0
    # which columns the whitening mixes: the whole served vector ("vector"), or only the unit conv
    # embedding ("embedding"), leaving the statement block (and its AF logit) as the head gives it
    whitening_scope: str = "vector"
    # > 0: the exported embedding appends lead-II heart rate and RR irregularity (standardised on the
    # training folds, computed inside the ONNX graph) at this weight beside the unit conv embedding
    rhythm_weight: float = 0.0
    # > 0: it also appends the 12 per-lead log-RMS amplitudes in mV (standardised on the training
    # folds, computed inside the graph from the prepared ECG) at this weight: absolute voltage
    amplitude_weight: float = 0.0
    # > 0: it also appends the statement head's sigmoid outputs (a probability per SCP statement of the
    # training folds' vocabulary, ``statement_vocabulary``), divided by their norm, at this weight: what
    # the network learned to read from the diagnoses, in the graph (needs w_statement > 0 in training)
    statement_weight: float = 0.0
    # how the head's outputs form that block: "probabilities" (sigmoid outputs over their norm) or
    # "logit_z" (each statement's logit standardised on the training folds, clipped, over sqrt(L), so a
    # rare statement weighs as much as a common one)
    statement_block: str = "probabilities"
    # which head gives that block: the one trained with the network ("trained"), or one logistic
    # regression per statement refitted at export on the training folds' unit embedding and rhythm z
    # ("refit_rhythm", ``encoder.refit_head``), so the block reads the measured rhythm beside the waveform
    statement_head: str = "trained"
    recon_source: str = "pooled"  # decode from the "pooled" embedding or the temporal "features" map

    # views: two windows of ``window`` samples from one 10 s ECG
    window: int = 500
    random_crop: bool = True  # random windows; False = the fixed first and second halves
    # the augmented view starts up to this many samples before or after window A (0 = same start),
    # so the augmentation term also asks for stability under a time offset
    view_offset: int = 0

    # augmentations of the "augmented" view
    scale_min: float = 0.8
    scale_max: float = 1.2
    noise_std: float = 0.05
    wander_amplitude: float = 0.2
    wander_max_hz: float = 0.5
    augment_pair: bool = False  # also augment both halves of the halves-contrast term
    lead_dropout: float = 0.0  # probability of zeroing each lead of an augmented view

    # loss: w_halves * NT-Xent(A, B) + w_augment * NT-Xent(A, aug A) + w_recon * MSE(decode(A), A)
    temperature: float = 0.1
    w_halves: float = 1.0
    w_augment: float = 1.0
    w_recon: float = 1.0
    # > 0: add w_steady * the mean (1 - cosine) between the embedding of window A and of the same window
    # started up to view_offset samples earlier or later (not augmented): search compares embeddings, and
    # the contrastive terms, on the projection at a temperature, tolerate small moves that reorder near ties
    w_steady: float = 0.0
    # > 0: add w_label * a supervised contrastive term on the embeddings of ECGs with statements, soft
    # targets = Jaccard overlap of their label sets (losses.label_contrast); 0 = self-supervised only
    w_label: float = 0.0
    label_temperature: float = 0.1
    # what a label set holds: "statements" (every SCP statement of the ECG, diagnostic, form and
    # rhythm, plus its diagnostic superclasses) or "superclasses" (the superclasses only)
    label_sets: str = "statements"
    # > 0: the label term's target overlap is share x the Jaccard of the rhythm statements other than
    # sinus rhythm (PTB-XL's rhythm column: AFIB, STACH, SBRAD, ...) + (1 - share) x the Jaccard of every
    # other label (sinus rhythm among them), so a shared abnormal rhythm counts apart from the morphology,
    # not as one label among ~70; 0 = one Jaccard over every label (needs w_label > 0)
    label_rhythm_share: float = 0.0
    # > 0: add w_statement * a multi-label BCE of a linear statement head on the embedding, over every
    # label (statement or superclass, as label_sets="statements" forms them) with at least
    # statement_min_count positives in the training rows; training writes that vocabulary into the
    # checkpoint's config (statement_vocabulary), which sizes the head
    w_statement: float = 0.0
    statement_min_count: int = 10
    statement_vocabulary: tuple[str, ...] = ()
    # True: the statement head also reads the window's heart rate and RR irregularity (the rhythm block's
    # two numbers, computed in the graph, no learned weights), so a rhythm statement such as AFIB can be
    # told from the R-R intervals instead of only from what the pooled embedding kept of them
    statement_rhythm: bool = False

    # schedule
    epochs: int = 30
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    eval_every: int = 1
    train_folds: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)
    val_fold: int = 9
    max_records: int | None = None  # cap on training and on validation records (tests, smoke runs)
    threads: int = 2  # torch intra-op threads: part of the recipe, since CPU reductions depend on it

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "meanmax"):
            raise ValueError(f"pooling must be 'mean' or 'meanmax', not {self.pooling!r}")
        if self.pooling == "meanmax" and self.embedding_dim % 2:
            raise ValueError("meanmax pooling needs an even embedding_dim")
        if self.antialias and self.stem_stride & (self.stem_stride - 1):
            raise ValueError(f"antialias needs a power-of-two stem_stride, not {self.stem_stride}")
        if self.antialias and (self.stem_conv_stride < 1 or self.stem_stride % self.stem_conv_stride):
            raise ValueError(
                f"stem_conv_stride {self.stem_conv_stride} must divide stem_stride {self.stem_stride}"
            )
        if self.dense_levels and not 0 < self.dense_levels <= len(self.blur_pools):
            raise ValueError(
                f"dense_levels {self.dense_levels} needs antialias and at most {len(self.blur_pools)} "
                "subsamplings (BlurPools)"
            )
        if not 0 <= self.whitening < float("inf"):
            raise ValueError(f"whitening must be a finite number >= 0, not {self.whitening}")
        if self.whitening_scope not in WHITENING_SCOPES:
            raise ValueError(f"whitening_scope must be in {WHITENING_SCOPES}, not {self.whitening_scope!r}")
        if self.view_offset < 0 or self.view_offset >= self.window:
            raise ValueError(f"view_offset must be in [0, window), not {self.view_offset}")
        if not self.rhythm_weight >= 0:
            raise ValueError(f"rhythm_weight must be >= 0, not {self.rhythm_weight}")
        if not self.amplitude_weight >= 0:
            raise ValueError(f"amplitude_weight must be >= 0, not {self.amplitude_weight}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, not {self.threads}")
        if not self.w_steady >= 0 or (self.w_steady > 0 and not self.view_offset > 0):
            raise ValueError(f"w_steady must be >= 0 and needs view_offset > 0, not {self.w_steady}")
        if not self.w_label >= 0:
            raise ValueError(f"w_label must be >= 0, not {self.w_label}")
        if not self.label_temperature > 0:
            raise ValueError(f"label_temperature must be > 0, not {self.label_temperature}")
        if self.label_sets not in ("statements", "superclasses"):
            raise ValueError(f"label_sets must be 'statements' or 'superclasses', not {self.label_sets!r}")
        if not 0 <= self.label_rhythm_share <= 1:
            raise ValueError(f"label_rhythm_share must be in [0, 1], not {self.label_rhythm_share}")
        if self.label_rhythm_share > 0 and (self.label_sets != "statements" or not self.w_label > 0):
            raise ValueError(
                "label_rhythm_share shapes the label term: it needs w_label > 0 and label_sets 'statements' "
                "(superclasses hold no rhythm)"
            )
        if not self.w_statement >= 0 or not self.statement_weight >= 0:
            raise ValueError(
                f"w_statement and statement_weight must be >= 0: {self.w_statement}, {self.statement_weight}"
            )
        if self.statement_weight > 0 and not self.w_statement > 0:
            raise ValueError("statement_weight > 0 serves a statement head: it needs w_statement > 0")
        if self.statement_rhythm and not self.w_statement > 0:
            raise ValueError("statement_rhythm feeds the statement head: it needs w_statement > 0")
        if self.statement_block not in STATEMENT_BLOCKS:
            raise ValueError(f"statement_block must be in {STATEMENT_BLOCKS}, not {self.statement_block!r}")
        if self.statement_head not in STATEMENT_HEADS:
            raise ValueError(f"statement_head must be one of {STATEMENT_HEADS}, not {self.statement_head!r}")
        if self.statement_min_count < 1:
            raise ValueError(f"statement_min_count must be >= 1, not {self.statement_min_count}")
        if self.recon_source not in ("pooled", "features"):
            raise ValueError(f"recon_source must be 'pooled' or 'features', not {self.recon_source!r}")

    @property
    def blur_pools(self) -> tuple[str, ...]:
        """Where the network halves time through a BlurPool, in order ("stem" or "stage"): with antialias
        the stem's after its conv and one before each stage; none without (strided convolutions)."""
        if not self.antialias:
            return ()
        stem = (self.stem_stride // self.stem_conv_stride).bit_length() - 1
        return ("stem",) * stem + ("stage",) * len(self.stage_channels)

    @property
    def output_dim(self) -> int:
        """Length of the exported embedding: the conv embedding, plus 2 rhythm, 12 amplitude and one value
        per statement of the vocabulary when they are appended."""
        return (
            self.embedding_dim
            + (2 if self.rhythm_weight > 0 else 0)
            + (12 if self.amplitude_weight > 0 else 0)
            + (len(self.statement_vocabulary) if self.statement_weight > 0 else 0)
        )

    @property
    def measured_blocks(self) -> bool:
        """Whether the served vector appends measured blocks (heart rate and irregularity, amplitudes),
        which the export standardises on training data and a whitening would mix into every column."""
        return self.rhythm_weight > 0 or self.amplitude_weight > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Build from a dict, ignoring unknown keys' absence but rejecting unknown names."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> EncoderConfig:
        """A copy with the non-None overrides applied (CLI flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# what the export reads from a config and training never does: two configs that differ only here train
# the same network, so one training serves both (``eval crossfit`` reuses it under other served settings)
SERVED_ONLY = frozenset(
    {
        "whitening",
        "whitening_scope",
        "rhythm_weight",
        "amplitude_weight",
        "statement_weight",
        "statement_block",
        "statement_head",
    }
)


def training_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a config dict that decide its trained weights (the statement vocabulary is read
    from the training folds, not set)."""
    return {k: v for k, v in config.items() if k not in SERVED_ONLY and k != "statement_vocabulary"}


def load_config(path: str | Path | None) -> EncoderConfig:
    """Read a YAML config file (a mapping of field overrides); None gives the defaults."""
    if path is None:
        return EncoderConfig()
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields")
    return EncoderConfig.from_dict(data)
