"""Named views of one ECG: what "similar" means is chosen per query, not fixed at ingest.

A cardiologist asking for "ECGs like this one" may mean the same rhythm (AF), the same voltage (LVH)
or the same waveform (a bundle-branch pattern). One fixed vector cannot rank all three well, so every
ECG carries one vector per view and a query names the view, or a blend of views that the store fuses:

- ``waveform``: the learned part of the served vector, at unit norm (cosine): what the model learned,
  without the measured blocks a model may append (model 3's rhythm block; ``waveform_from_embedding``).
  Model 4 appends none (its 256 learned dims and 48 statement probabilities are all learned), so its
  waveform view is the served vector itself, and a collection stores it once (``collection_layout``).
- ``rhythm``: heart rate and three RR irregularities (trimmed RMSSD, median |ΔRR|, RMSSD, each over the
  typical RR) from lead-II R peaks (``features.rhythm``), z-scored with the training folds' statistics;
  Euclidean. Scale-free, so it is the same for any gain.
- ``voltage``: the natural log of each lead's RMS in mV (``features.lead_log_rms``), z-scored likewise;
  Euclidean. Only as right as the header's gain: an ECG whose global RMS lies outside
  ``PLAUSIBLE_GLOBAL_RMS_MV`` gets no voltage vector and is flagged ``gain_suspect`` instead.

The features were chosen on the training folds' queries (``bench.views``; results/views.json). Numpy
only, so ingest, push and query compute every view through this one module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Protocol

import numpy as np

from ecgsearch.ecg import features
from ecgsearch.ecg.schema import (
    GAIN_VIEW,
    LEARNED_VIEW,
    VIEW_DISTANCE,
    VIEW_PREFETCH,
    VIEW_RRF_K,
    EcgPayload,
)
from ecgsearch.ecg.signals import LEADS, global_rms

WAVEFORM, RHYTHM, VOLTAGE = LEARNED_VIEW, "rhythm", GAIN_VIEW
VIEWS = tuple(VIEW_DISTANCE)  # declared in ecg.schema (the store reads the declaration only)
MEASURED = (RHYTHM, VOLTAGE)
EUCLIDEAN = frozenset(v for v, d in VIEW_DISTANCE.items() if d == "euclid")
RHYTHM_FEATURES = (
    "heart_rate_bpm",
    "rr_irregularity_trimmed",
    "rr_irregularity_median",
    "rr_irregularity_rmssd",
)
VOLTAGE_FEATURES = tuple(f"log_rms_mv_{lead}" for lead in LEADS)
LEARNED_DIM = 256  # the conv embedding's width: the learned part of a model with measured blocks
# Global RMS (mV, non-flat leads, after the 0.5 Hz high-pass) of a surface ECG read with a right gain:
# PTB-XL's 1,987 span 0.076-0.82 mV and the Challenge's other groups 0.017-0.51; the Challenge's 5x-gain
# copies of PTB-XL ECGs read 0.51-1.60 and its 1000x group ~0.0002. Outside the range the voltage is
# unknown. A 5x error of a quiet ECG stays inside it: the signal alone cannot tell it (see gain_suspect).
PLAUSIBLE_GLOBAL_RMS_MV = (0.01, 0.85)
STATISTICS_FILE = "view_statistics.json"
PREFETCH, RRF_K = VIEW_PREFETCH, VIEW_RRF_K  # a blend fuses each view's top PREFETCH (at least k)
GATE_FEATURE = RHYTHM_FEATURES.index("rr_irregularity_trimmed")  # the default blend's rhythm gate
GATE = "irregularity_above"  # the default blend's gate threshold, beside its weights in STATISTICS_FILE


class ViewError(ValueError):
    """Statistics that do not fit a view's features."""


@dataclass(frozen=True)
class ViewStatistics:
    """Mean and std of a measured view's features over the training folds: its standardisation."""

    view: str
    names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    folds: tuple[int, ...]
    n: int

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "mean": list(self.mean),
            "std": list(self.std),
            "folds": list(self.folds),
            "n": self.n,
        }


def rhythm_measures(ecgs: np.ndarray) -> np.ndarray:
    """(n, 12, T) prepared ECGs (any scale) -> (n, 4) RHYTHM_FEATURES; NaN rows without 3 R peaks."""
    got = features.rhythms(ecgs, ("trimmed", "median", "rmssd"))
    return np.column_stack([got["trimmed"], got["median"][:, 1], got["rmssd"][:, 1]])


def voltage_measures(ecgs_mv: np.ndarray) -> np.ndarray:
    """(n, 12, T) prepared ECGs in mV -> (n, 12) VOLTAGE_FEATURES."""
    return features.lead_log_rms(ecgs_mv)


MEASURES = {RHYTHM: rhythm_measures, VOLTAGE: voltage_measures}
NAMES = {RHYTHM: RHYTHM_FEATURES, VOLTAGE: VOLTAGE_FEATURES}
# The distance a reranked candidate without a view's vector (a gain-suspect ECG has no voltage vector)
# counts as: the mean distance of two unrelated ECGs' z-scored features, sqrt(2 x features).
UNKNOWN_DISTANCE = {view: float(np.sqrt(2 * len(names))) for view, names in NAMES.items()}


def gain_suspect(ecgs_mv: np.ndarray) -> np.ndarray:
    """(n,) bool: the ECG's global RMS is outside PLAUSIBLE_GLOBAL_RMS_MV (or every lead is flat)."""
    g = np.asarray(global_rms(np.asarray(ecgs_mv)), dtype=np.float64)
    low, high = PLAUSIBLE_GLOBAL_RMS_MV
    return ~((g >= low) & (g <= high))


def fit_statistics(view: str, measures: np.ndarray, folds: tuple[int, ...]) -> ViewStatistics:
    """Standardisation of a measured view from the training rows' measures (NaN rows left out)."""
    v = np.asarray(measures, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != len(NAMES[view]):
        raise ViewError(f"{view}: expected (n, {len(NAMES[view])}) measures, got {v.shape}")
    return ViewStatistics(
        view,
        NAMES[view],
        tuple(float(x) for x in np.nanmean(v, axis=0)),
        tuple(float(x) for x in np.nanstd(v, axis=0)),
        tuple(int(f) for f in folds),
        int(np.isfinite(v).all(axis=1).sum()),
    )


def standardised(view: str, measures: np.ndarray, stats: ViewStatistics) -> np.ndarray:
    """z-scores of a measured view (clipped, missing measurement = 0), float32."""
    if stats.names != NAMES[view]:
        raise ViewError(f"statistics for {stats.view} {stats.names} do not fit view {view}")
    return features.standardise(measures, stats.mean, stats.std).astype(np.float32)


GAIN_DISAGREEMENT = (
    2.0  # a copy whose voltage is more than 2x (or under half) its original's has a gain error
)


def copy_gain_is_off(mine: np.ndarray, original: np.ndarray, stats: ViewStatistics | None = None) -> bool:
    """Whether a copy's voltage view (z-scores) disagrees with its original's by more than
    GAIN_DISAGREEMENT in amplitude and is the less plausible of the two (further from the training
    folds' typical voltage). Same recording, so the two may differ only by a header's gain: the one
    nearer a typical ECG keeps its voltage. A 5x error inside the plausible range (a quiet ECG stored
    at 5x) is found this way, which the signal alone cannot do (``gain_suspect``)."""
    std = np.asarray((stats or served_statistics()[VOLTAGE]).std, dtype=np.float64)
    a, b = np.asarray(mine, dtype=np.float64), np.asarray(original, dtype=np.float64)
    log_ratio = float(np.mean((a - b) * std))  # mean log-RMS difference = log of the gain ratio
    if abs(log_ratio) <= np.log(GAIN_DISAGREEMENT):
        return False
    return abs(float(np.mean(a))) > abs(float(np.mean(b)))


def waveform_from_embedding(served: np.ndarray, learned_dim: int = LEARNED_DIM) -> np.ndarray:
    """The served vectors' learned part, back at unit norm (cosine): the waveform view."""
    e = np.asarray(served, dtype=np.float64)[:, :learned_dim]
    return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class ViewVectors:
    """Every view of a batch: ``voltage`` rows of gain-suspect ECGs are NaN and must not be stored."""

    waveform: np.ndarray
    rhythm: np.ndarray
    voltage: np.ndarray
    gain_suspect: np.ndarray

    def row(self, i: int) -> dict[str, list[float]]:
        """One ECG's named vectors, the voltage view left out when its gain is suspect."""
        out = {WAVEFORM: self.waveform[i].tolist(), RHYTHM: self.rhythm[i].tolist()}
        if not self.gain_suspect[i]:
            out[VOLTAGE] = self.voltage[i].tolist()
        return out

    def rows(self) -> list[dict[str, list[float]]]:
        return [self.row(i) for i in range(len(self.waveform))]

    def withholding_voltage(self, rows: Sequence[int]) -> ViewVectors:
        """The same views with the voltage of ``rows`` withheld (their gain is suspect)."""
        suspect, voltage = self.gain_suspect.copy(), self.voltage.copy()
        suspect[list(rows)] = True
        voltage[suspect] = np.nan
        return dataclasses.replace(self, voltage=voltage, gain_suspect=suspect)

    def flagged(self, payloads: list[EcgPayload]) -> list[EcgPayload]:
        """The payloads, ``gain_suspect`` set on those whose voltage view is withheld."""
        return [
            p.model_copy(update={"gain_suspect": True}) if suspect else p
            for p, suspect in zip(payloads, self.gain_suspect, strict=True)
        ]


def view_vectors(
    served: np.ndarray,
    ecgs_mv: np.ndarray,
    statistics: dict[str, ViewStatistics] | None = None,
    learned_dim: int = LEARNED_DIM,
) -> ViewVectors:
    """The served embeddings and the prepared ECGs (mV) of one batch -> every view of each ECG."""
    stats = statistics or served_statistics()
    suspect = gain_suspect(ecgs_mv)
    voltage = standardised(VOLTAGE, voltage_measures(ecgs_mv), stats[VOLTAGE])
    voltage[suspect] = np.nan
    return ViewVectors(
        waveform_from_embedding(served, learned_dim),
        standardised(RHYTHM, rhythm_measures(ecgs_mv), stats[RHYTHM]),
        voltage,
        suspect,
    )


class Encoder(Protocol):
    """What ``embed_views`` needs of an embedder (``export.runtime.Embedder``)."""

    @property
    def learned_dim(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def version(self) -> str: ...

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


def collection_layout(encoder: Encoder) -> dict:
    """What a collection of this encoder's vectors declares per view (``store.view_specs`` takes it):
    each view's size and version, and the served vector's width (a waveform view as wide is that
    vector, stored once)."""
    return {
        "dims": view_dims(encoder.learned_dim),
        "versions": view_versions(encoder.version),
        "served_dim": encoder.dim,
    }


def embed_views(encoder: Encoder, ecgs_mv: np.ndarray) -> tuple[np.ndarray, ViewVectors]:
    """The served vectors and every view of prepared ECGs (mV): ingest, push and queries all take their
    views here."""
    x = np.asarray(ecgs_mv, dtype=np.float32)
    x = x[None] if x.ndim == 2 else x
    served = encoder.embed(x)
    return served, view_vectors(served, x, learned_dim=encoder.learned_dim)


@cache
def served_statistics() -> dict[str, ViewStatistics]:
    """The shipped standardisation (PTB-XL folds 1-8, the encoder's training folds)."""
    raw = json.loads(resources.files("ecgsearch.ecg").joinpath("data", STATISTICS_FILE).read_text())
    return {
        view: ViewStatistics(
            view,
            tuple(s["names"]),
            tuple(s["mean"]),
            tuple(s["std"]),
            tuple(s["folds"]),
            int(s["n"]),
        )
        for view, s in raw["views"].items()
    }


DEFAULT_FUSION = "gated"  # the one fusion the runtime serves as similar_by "blend" (DefaultBlend)


@dataclass(frozen=True)
class DefaultBlend:
    """The default blend (``similar_by`` "blend"): the waveform view's candidates reranked by cosine
    minus ``rhythm`` x the rhythm distance (only for a query whose trimmed RR irregularity z-score is
    above ``irregularity_above``) minus ``voltage`` x the voltage distance."""

    rhythm: float
    voltage: float
    irregularity_above: float

    def rhythm_weight(self, rhythm_view: Sequence[float]) -> float:
        """The rhythm view's weight for a query with this rhythm view."""
        return self.rhythm if rhythm_view[GATE_FEATURE] > self.irregularity_above else 0.0

    def weights(self, query: dict[str, list[float]]) -> dict[str, float]:
        """One query's reranking weights (its named views): rhythm only for an irregular rhythm,
        voltage unless the query has no voltage vector (gain suspect)."""
        return {
            RHYTHM: self.rhythm_weight(query[RHYTHM]) if RHYTHM in query else 0.0,
            VOLTAGE: self.voltage if VOLTAGE in query else 0.0,
        }


@cache
def default_blend() -> DefaultBlend:
    """The shipped default blend (``ecgsearch eval views --statistics``: weights chosen on folds 1-9)."""
    raw = json.loads(resources.files("ecgsearch.ecg").joinpath("data", STATISTICS_FILE).read_text())
    blend = raw["default_blend"]
    if blend["fusion"] != DEFAULT_FUSION:
        raise ViewError(f"{STATISTICS_FILE}: the default blend is {blend['fusion']!r}, not {DEFAULT_FUSION}")
    w = blend["weights"]
    return DefaultBlend(float(w[RHYTHM]), float(w[VOLTAGE]), float(w[GATE]))


def view_dims(learned_dim: int = LEARNED_DIM) -> dict[str, int]:
    return {WAVEFORM: learned_dim, RHYTHM: len(RHYTHM_FEATURES), VOLTAGE: len(VOLTAGE_FEATURES)}


def view_versions(model_version: str, statistics: dict[str, ViewStatistics] | None = None) -> dict[str, str]:
    """The version of each view's vectors: the model's for the waveform, a hash of the rule and its
    statistics for a measured view (a collection refuses vectors of another version, per view)."""
    stats = statistics or served_statistics()
    out = {WAVEFORM: model_version}
    for view in MEASURED:
        blob = json.dumps({"view": view, "rule": _RULES[view], **stats[view].to_dict()}, sort_keys=True)
        out[view] = f"{view}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    return out


_RULES = {
    RHYTHM: "features.rhythm trimmed/median/rmssd on lead II, z-scored, clip 5, missing 0",
    VOLTAGE: f"features.lead_log_rms, z-scored, clip 5; gain suspect outside {PLAUSIBLE_GLOBAL_RMS_MV}",
}
