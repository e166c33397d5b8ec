"""The served whitening's shrinkage, chosen inside the training folds (`eval choose --whitening`).

The inner model of the nested choice (trained on the training folds less the last) serves the blocks
the choice picked. Its whitening is fitted on its own training folds (``export.whitening``), and each
shrinkage of ``GRID`` is judged on the last training fold's ECGs, searching the training
folds' records, own patient excluded, as the evaluation judges fold 10 (``bench.retrieval``): top-10
overlap at 0.16 s and 0.24 s later starts of the 100 Hz file, and between the 500 Hz and the 100 Hz
read, with P@10 any superclass beside them.

The rule (set before the choice's first run; scratch runs of the same kind on the same inner model
and fold came before it, as docs/results.md says): a shrinkage may cost at most ``P10_TOLERANCE`` of
the inner P@10 against no whitening; of those, the lightest (largest shrinkage) whose three overlaps
meet the aims wins; if none does, the one with the largest smallest margin to the aims (ties to the
lighter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ecgsearch.bench.crossfit import inner_score
from ecgsearch.bench.retrieval import AIMS, LATE_STARTS_100HZ, Corpus, Method, _neighbours, load_later_starts
from ecgsearch.ecg import signals
from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.data import EcgArrays
from ecgsearch.export import whitening
from ecgsearch.export.runtime import waveform_split_error

if TYPE_CHECKING:  # torch only where a model is loaded
    from ecgsearch.encoder.model import Encoder

GRID = (0.0, 1.0, 0.3, 0.1, 0.03, 0.01)  # shrinkages tried, lightest first (0: no whitening)
P10_TOLERANCE = 0.02
RULE = (
    f"inner P@10 any superclass at most {P10_TOLERANCE} below no whitening; of those, the lightest shrinkage "
    f"whose inner top-10 overlaps meet the aims ({AIMS['top10_overlap']} at both later starts, "
    f"{AIMS['read_overlap']} between the two reads), else the largest smallest margin to them"
)


def shrinkages(config: EncoderConfig) -> tuple[float, ...]:
    """The shrinkages a model served as ``config`` may be judged with: none but 0 (no whitening) where a
    whitening would leave the runtime no waveform part (``export.runtime.waveform_split_error``)."""
    servable = waveform_split_error(config.measured_blocks, config.statement_weight > 0, True) is None
    return GRID if servable else GRID[:1]


def choose(
    encoder: Encoder,
    config: EncoderConfig,
    data: EcgArrays,
    corpus: Corpus,
    inner_fold: int,
    k: int,
    log: Callable[[str], None],
) -> tuple[float, dict]:
    """(the shrinkage picked, the record of every one tried) for ``encoder`` served as ``config`` says.

    ``config``'s training folds are the inner model's; they and ``inner_fold`` form the search space.
    """
    import torch

    from ecgsearch.encoder.train import embed
    from ecgsearch.export.onnx import serving_module, whitened_columns

    train = data.in_folds(config.train_folds)
    served, _ = serving_module(encoder, config.with_overrides(whitening=0.0), "", train=train)

    def vectors(mv: np.ndarray) -> np.ndarray:
        return whitening.unit(embed(served, mv, torch.device("cpu")))

    space = np.flatnonzero(np.isin(data.folds, (*config.train_folds, inner_fold)))
    sub = Corpus([corpus.rows[i] for i in space], corpus.x[space], corpus.mv[space], [])
    base = vectors(sub.mv)  # the search space; its training-fold rows are what the whitening is fitted on
    fit = np.flatnonzero(np.isin(data.folds[space], config.train_folds))
    covariance, _ = whitening.move_covariance(
        vectors, base[fit], whitening.moved_reads([sub.rows[i] for i in fit], sub.mv[fit])
    )
    queries = np.flatnonzero(data.folds[space] == inner_fold)
    late = load_later_starts(sub, signals.MODEL_FS, LATE_STARTS_100HZ, log, queries)
    high = load_later_starts(sub, 500, (), log, queries)
    if late is None or high is None:
        raise ValueError(f"fold {inner_fold} has no ECG to judge the whitening on")
    later = [f"{n / signals.MODEL_FS:g}s" for n in LATE_STARTS_100HZ]
    reads = {
        "start": (vectors(late["mv"][0]), late["idx"]),
        **{name: (vectors(late["mv"][j]), late["idx"]) for j, name in enumerate(later, 1)},
        "500hz": (vectors(high["mv"][0]), high["idx"]),
    }
    method = Method("whitened", None, False, {})
    tried = []
    for shrink in shrinkages(config):
        matrix = (
            whitening.whitening_matrix(covariance, shrink, whitened_columns(config))
            if shrink > 0
            else np.eye(len(covariance))
        )
        space_v = whitening.unit(base @ matrix)
        top = {
            name: _neighbours(method, sub, space_v, whitening.unit(v @ matrix), idx, k)
            for name, (v, idx) in reads.items()
        }
        overlaps = {name: _overlap(top["start"], top[name]) for name in later}
        overlaps["read_500hz_vs_100hz"] = _overlap(
            _neighbours(method, sub, space_v, space_v[high["idx"]], high["idx"], k), top["500hz"]
        )
        score = inner_score(space_v, sub, queries, k)
        tried.append(
            {
                "shrink": shrink,
                "p10_any": score["p10_any"],
                "codes": score["codes"],
                "top10_overlap": overlaps,
            }
        )
        log(
            f"whitening {shrink:g}: inner P@10 {score['p10_any']:.3f}, overlaps "
            + " / ".join(f"{v:.3f}" for v in overlaps.values())
        )
    picked = _pick(tried)
    return picked["shrink"], {
        "rule": RULE,
        "inner_fold": inner_fold,
        "fitted_on_folds": list(config.train_folds),
        "queries": int(len(queries)),
        "later_start_queries": int(len(late["idx"])),
        "read_queries": int(len(high["idx"])),
        "tried": tried,
        "chosen": picked["shrink"],
    }


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b, strict=True)]))


def _margin(entry: dict) -> float:
    """The smallest overlap minus its aim."""
    aims = {name: AIMS["top10_overlap"] for name in entry["top10_overlap"]}
    aims["read_500hz_vs_100hz"] = AIMS["read_overlap"]
    return min(value - aims[name] for name, value in entry["top10_overlap"].items())


def _pick(tried: list[dict]) -> dict:
    """RULE over ``tried`` (in GRID order, lightest first; the first entry is no whitening)."""
    allowed = [t for t in tried if t["p10_any"] >= tried[0]["p10_any"] - P10_TOLERANCE]
    meeting = [t for t in allowed if _margin(t) >= 0]
    if meeting:
        return meeting[0]
    return max(allowed, key=_margin)  # max keeps the first of equals: the lighter
