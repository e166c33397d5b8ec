"""Candidate served blocks, each judged as the shipped blocks were: nested choice, cross-fitted report.

The statement-head recipe's served blocks (unit embedding, rhythm block, statement block) leave AFIB under
the rhythm kNN and CLBBB under PCA of log spectra (``results/retrieval_crossfit_nested.json``). Each
candidate below adds settings to the nested grid (``crossfit.grid_settings``): per held-out group, the
group's inner model picks among the base grid and the candidate's settings on its inner fold, inside the
training folds, by each of two rules (``RULES``: the nested run's INNER_SCORE, and aims first); the
group's model serves the pick; pooled over the groups, every labelled ECG is a query once, and each
candidate is compared with the nested run's own pick on the same queries (paired intervals). A candidate
goes into the ONNX graph only if it wins under this judgement and a check it was not chosen on.

Nothing is retrained: the models are those ``ecgsearch eval crossfit --nested --work W`` left in W (a
nested run trains one inner and one outer model per group); the candidate blocks are computed from their
served blocks in numpy. Every candidate's settings are fixed here, before a run; a candidate written after
an earlier run's figures were seen says so (``post_hoc``, copied into the results).

The statement head refitted on the embedding and the rhythm (once the ``rhythm_head`` candidate) passed
its check on the 48-epoch models and is part of the grid (``statement_head: refit_rhythm``); results files
written before that name it as a candidate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ecgsearch.bench import crossfit as cf
from ecgsearch.bench.results import load_average, machine, relative
from ecgsearch.bench.retrieval import Corpus, baseline_methods, log_spectra, per_query
from ecgsearch.ecg import features, ptbxl
from ecgsearch.encoder import refit_head
from ecgsearch.encoder.config import EncoderConfig
from ecgsearch.encoder.data import EcgArrays, label_sets, load_ptbxl, multi_hot

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

RHYTHM_IRREGULARITY = 1  # column of the rhythm block (z / sqrt 2) holding the RR irregularity
SPECTRUM_DIMS = (32, 128)
SPECTRUM_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
GATE_ABOVE = (0.5, 1.0, 1.5)
GATED_WEIGHTS = (0.5, 1.0, 1.5, 2.0)
RHYTHM_STATEMENT_WEIGHTS = (0.5, 1.0, 1.5, 2.0)
STATEMENT_WEIGHTS_BEYOND = (2.5, 3.0, 4.0, 6.0)
RHYTHM_WEIGHTS_BEYOND = (0.75, 1.0)
IRREGULARITY_WEIGHTS = (0.25, 0.5, 0.75, 1.0)
AF_WEIGHTS = (0.5, 1.0, 2.0, 3.0)
AF_CODE = "AFIB"


def _logistic(
    x: np.ndarray, y: np.ndarray, fit: np.ndarray, c: float, max_iter: int
) -> LogisticRegression | None:
    """A logistic regression of ``y`` on ``x`` fitted on the rows ``fit`` only; None when those rows hold
    one class (a small --limit), which no regression can separate."""
    from sklearn.linear_model import LogisticRegression

    seen = y[fit]
    if seen.all() or not seen.any():
        return None
    return LogisticRegression(C=c, max_iter=max_iter).fit(x[fit], seen)


class WorkMismatch(ValueError):
    """The models of --work are not those of a nested run with the options given."""


@dataclass(frozen=True)
class Candidate:
    """Settings added to the base grid (each a base setting plus this candidate's keys), and why."""

    name: str
    why: str
    settings: Callable[[list[dict]], list[dict]]
    post_hoc: bool = False  # designed after an earlier run of this command had shown the others


CANDIDATES = (
    Candidate(
        "statement_weight_beyond_2",
        "three of five groups picked the grid's largest statement weight (2.0): the edge, not the data",
        lambda base: [
            {**s, "statement_weight": w}
            for s in base
            if s["statement_weight"] == max(cf.STATEMENT_WEIGHTS)
            for w in STATEMENT_WEIGHTS_BEYOND
        ],
    ),
    Candidate(
        "rhythm_weight_beyond_0.5",
        "AFIB, a rhythm, sits under a two-number rhythm kNN: a heavier rhythm block",
        lambda base: [
            {**s, "rhythm_weight": w}
            for s in base
            if s["rhythm_weight"] == max(cf.RHYTHM_WEIGHTS)
            for w in RHYTHM_WEIGHTS_BEYOND
        ],
    ),
    Candidate(
        "log_spectrum",
        "PCA of per-lead log power spectra finds CLBBB at 0.771 (QRS width lives in the spectrum) and is "
        "blind to where the window starts",
        lambda base: [
            {**s, "spectrum_dim": d, "spectrum_weight": w}
            for s in base
            for d in SPECTRUM_DIMS
            for w in SPECTRUM_WEIGHTS
        ],
    ),
    Candidate(
        "gated_rhythm",
        "the rhythm block scaled by each ECG's own irregularity (0 at the gate's z, 1 a z above it): two "
        "irregular ECGs share it, a regular one carries none, so it cannot crowd regular queries",
        lambda base: [
            {**s, "gate_above": t, "gated_weight": w} for s in base for t in GATE_ABOVE for w in GATED_WEIGHTS
        ],
    ),
    Candidate(
        "irregularity_only",
        "the rhythm block without heart rate: the RR irregularity z alone, in place of the two-number "
        "block (heart rate says little about morphology, and a regular ECG's irregularity sits near 0)",
        lambda base: [
            {**s, "rhythm_weight": 0.0, "irregularity_weight": w}
            for s in base
            if s["rhythm_weight"] == 0
            for w in IRREGULARITY_WEIGHTS
        ],
        post_hoc=True,
    ),
    Candidate(
        "af_probability",
        "the probability of AFIB given the rhythm block (heart rate and RR irregularity z), a logistic "
        "regression fitted on the model's training rows, as a one-number block: near 0 for a regular ECG, "
        "so unlike the irregularity z it leaves regular queries' neighbours alone",
        lambda base: [{**s, "af_weight": w} for s in base for w in AF_WEIGHTS],
        post_hoc=True,
    ),
    Candidate(
        "refit_head",
        "control for the refit_rhythm head: the statement head refitted as one logistic regression per "
        "statement on the unit embedding alone, on the model's training rows, in place of the trained head",
        lambda base: [{**s, "head_inputs": "embedding"} for s in base if s["statement_weight"] > 0],
        post_hoc=True,
    ),
    Candidate(
        "rhythm_statements",
        "the statement head's rhythm statements (PTB-XL's rhythm column: SR, AFIB, STACH, ...) as their own "
        "block, so AFIB is not one label of 44-48",
        lambda base: [
            {**s, "rhythm_statements_weight": w}
            for s in base
            if s["statement_weight"] > 0
            for w in RHYTHM_STATEMENT_WEIGHTS
        ],
    ),
)


# the nested choice's rules under this command's names (``crossfit.RULES``), as its results name them
RULE_NAMES = {"inner_score": "inner-score", "aims_first": "aims-first"}
RULES = {name: cf.RULES[rule] for name, rule in RULE_NAMES.items()}
RULE_KEY = {name: cf.RULE_KEY[rule] for name, rule in RULE_NAMES.items()}
REFERENCE = "inner_score/base"  # what results/retrieval_crossfit_nested.json reports


@dataclass
class Served:
    """One model's served blocks over some rows, and what a candidate block needs beside them."""

    blocks: dict[str, np.ndarray]
    spectra: np.ndarray  # log power spectra of the rows
    fit: np.ndarray  # rows (of these) whose spectra fit the PCA: the model's training rows
    rhythm_columns: list[int]  # statement-vocabulary columns of the rhythm statements
    af: np.ndarray  # whether each row carries AF_CODE
    labels: np.ndarray | None = None  # (n, L) the model's statement vocabulary, multi-hot (refitted heads)

    def __post_init__(self) -> None:
        self._pca: dict[int, np.ndarray] = {}
        self._af: np.ndarray | None = None
        self._heads: dict[str, dict[str, np.ndarray]] = {}

    def refit_blocks(self, inputs: str) -> dict[str, np.ndarray]:
        """The served blocks with both statement blocks from a head refitted on the training rows
        (``encoder.refit_head.fit``) on the unit embedding alone (``inputs`` "embedding": the control of
        the grid's refit_rhythm head, which adds the rhythm); each block built as the graph builds it."""
        if inputs not in self._heads:
            assert self.labels is not None and inputs == "embedding"
            x = self.blocks["embedding"]
            weights, bias = refit_head.fit(x[self.fit], self.labels[self.fit])
            logits = x @ weights.T + bias
            p = 1.0 / (1.0 + np.exp(-logits))
            mean, std = logits[self.fit].mean(axis=0), logits[self.fit].std(axis=0).clip(min=1e-6)
            z = np.clip((logits - mean) / std, -features.Z_CLIP, features.Z_CLIP)
            self._heads[inputs] = {
                **self.blocks,
                "probabilities": p / np.linalg.norm(p, axis=1, keepdims=True).clip(min=1e-12),
                "logit_z": z / np.sqrt(logits.shape[1]),
            }
        return self._heads[inputs]

    def af_probability(self) -> np.ndarray:
        """(n, 1) P(AF_CODE | rhythm block) of a logistic regression fitted on the training rows only."""
        if self._af is None:
            rhythm = np.nan_to_num(self.blocks["rhythm"])
            model = _logistic(rhythm, self.af, self.fit, 1.0, 1000)
            if model is None:  # one class in the training rows: the block is that class's certainty
                self._af = np.full((len(rhythm), 1), float(self.af[self.fit].all()), dtype=np.float32)
            else:
                self._af = model.predict_proba(rhythm)[:, 1:].astype(np.float32)
        return self._af

    def spectrum(self, dim: int) -> np.ndarray:
        """Unit rows of the spectra's PCA, fitted on the training rows only."""
        if dim not in self._pca:
            from sklearn.decomposition import PCA

            pca = PCA(n_components=min(dim, int(self.fit.sum()) - 1), random_state=cf.SEED)
            self._pca[dim] = cf._unit(pca.fit(self.spectra[self.fit]).transform(self.spectra))
        return self._pca[dim]


def gated_rhythm(rhythm: np.ndarray, above: float) -> np.ndarray:
    """The rhythm block times a ramp of the ECG's own irregularity z: 0 up to ``above``, 1 from above+1."""
    z = rhythm[:, RHYTHM_IRREGULARITY : RHYTHM_IRREGULARITY + 1] * np.sqrt(2)
    return np.clip(z - above, 0.0, 1.0) * rhythm


def rhythm_statement_block(logit_z: np.ndarray, columns: list[int]) -> np.ndarray:
    """The rhythm statements' columns of the logit-z block (each z / sqrt L), rescaled to z / sqrt L_r."""
    return logit_z[:, columns] * np.sqrt(logit_z.shape[1] / max(len(columns), 1))


def vectors(served: Served, setting: dict) -> np.ndarray:
    """Unit vectors of a setting: the base blocks (``crossfit.compose``) and any candidate block."""
    blocks = served.refit_blocks(setting["head_inputs"]) if setting.get("head_inputs") else served.blocks
    base = cf.compose(
        blocks,
        setting["statement_weight"],
        setting["rhythm_weight"],
        setting["statement_block"],
        setting.get("statement_head", cf.STATEMENT_HEADS_TRIED[0]),
    )
    extra = []
    if setting.get("spectrum_weight"):
        extra.append(setting["spectrum_weight"] * served.spectrum(setting["spectrum_dim"]))
    if setting.get("gated_weight"):
        extra.append(setting["gated_weight"] * gated_rhythm(served.blocks["rhythm"], setting["gate_above"]))
    if setting.get("irregularity_weight"):
        z = served.blocks["rhythm"][:, RHYTHM_IRREGULARITY : RHYTHM_IRREGULARITY + 1] * np.sqrt(2)
        extra.append(setting["irregularity_weight"] * z)
    if setting.get("af_weight"):
        extra.append(setting["af_weight"] * served.af_probability())
    if setting.get("rhythm_statements_weight"):
        block = rhythm_statement_block(served.blocks["logit_z"], served.rhythm_columns)
        extra.append(setting["rhythm_statements_weight"] * block)
    return cf._unit(np.concatenate([base, *extra], axis=1)) if extra else base


def _served(
    work: Path, name: str, held_out: tuple[int, ...], data: EcgArrays, rows: np.ndarray, ctx: dict
) -> tuple[Served, EncoderConfig]:
    """The served blocks of ``work/<name>-heldout-*``'s model over ``rows``; also its config."""
    encoder, cfg = cf.group_model(work, name, held_out, ctx["how"], data)
    if not cfg.statement_vocabulary:
        raise ValueError(
            f"{work}/{name}-heldout-*: no statement head (the candidates extend the statement-head recipe)"
        )
    train = np.isin(data.folds, cfg.train_folds)
    assert data.mv is not None
    blocks = cf.served_blocks(encoder, cfg, data.select(train), data.mv[rows])
    columns = [i for i, code in enumerate(cfg.statement_vocabulary) if code in ctx["rhythm"]]
    labels = multi_hot([ctx["labels"][i] for i in rows], list(cfg.statement_vocabulary)).astype(bool)
    return Served(blocks, ctx["spectra"][rows], train[rows], columns, ctx["af"][rows], labels), cfg


def run(
    root: Path,
    work: Path,
    *,
    n_groups: int = 5,
    k: int = 10,
    limit: int | None = None,
    cache_dir: Path | None = None,
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Every candidate's nested pick per group and its cross-fitted figures beside the base grid's."""
    import torch

    torch.set_num_threads(1)
    started_on = machine(torch=torch.__version__, threads=1)
    t0 = time.perf_counter()
    groups = cf.fold_groups(n_groups)
    data = load_ptbxl(root, max_records=limit, cache_dir=cache_dir)
    corpus = cf.corpus_of(data, root / "ptb-xl")
    group = cf.group_of(data.folds, groups)
    ctx = {
        "spectra": log_spectra(data.x).astype(np.float32),
        "rhythm": ptbxl.rhythm_statements(root / "ptb-xl"),
        "af": np.array([AF_CODE in r.scp_codes for r in corpus.rows]),
        "labels": label_sets(data, "statements"),
        "how": f"--nested --groups {n_groups}" + (f" --limit {limit}" if limit else ""),
    }
    names = [f"{rule}/{c}" for rule in RULES for c in ("base", *(c.name for c in CANDIDATES))]
    served_vectors: dict[str, list[np.ndarray]] = {name: [] for name in names}
    picks: dict[str, list[dict]] = {name: [] for name in names}
    baselines: dict[str, list[np.ndarray]] = {}
    euclidean: dict[str, bool] = {}
    everything = np.arange(len(data))
    for held_out in groups:
        outer = [f for f in cf.FOLDS if f not in held_out]
        inner_fold = outer[-1]
        rows = np.flatnonzero(np.isin(data.folds, outer))  # never a held-out row
        inner, inner_cfg = _served(work, "inner", held_out, data, rows, ctx)
        if inner_fold in inner_cfg.train_folds:
            raise WorkMismatch(f"the inner model of {list(held_out)} trained on its inner fold {inner_fold}")
        sub = Corpus([corpus.rows[i] for i in rows], corpus.x[rows], corpus.mv[rows], [])
        queries = np.flatnonzero(data.folds[rows] == inner_fold)
        rivals = cf.inner_rivals(sub, np.isin(data.folds[rows], inner_cfg.train_folds), queries, k)
        base = cf.grid_settings(True)
        base_scores = [cf.inner_score(vectors(inner, s), sub, queries, k) for s in base]
        model, cfg = _served(work, "trained", held_out, data, everything, ctx)
        for candidate in (None, *CANDIDATES):
            extra = [] if candidate is None else candidate.settings(base)
            tried = [{**s, **scored} for s, scored in zip(base, base_scores, strict=True)]
            tried += [{**s, **cf.inner_score(vectors(inner, s), sub, queries, k)} for s in extra]
            for t in tried:
                t["aims_first"] = cf.aims_first(t, rivals)
            for rule in RULES:
                name = f"{rule}/{'base' if candidate is None else candidate.name}"
                best = max(tried, key=lambda t: t[RULE_KEY[rule]])  # the first of equals
                setting = {
                    key: v for key, v in best.items() if key not in ("p10_any", "codes", *RULE_KEY.values())
                }
                picks[name].append(
                    {
                        "held_out_folds": list(held_out),
                        "chosen": setting,
                        "inner_score": best["score"],
                        "aims_first": best["aims_first"],
                        "inner_p10_any": best["p10_any"],
                        "inner_codes": best["codes"],
                        "settings_tried": len(tried),
                    }
                )
                served_vectors[name].append(vectors(model, setting))
        picked = ", ".join(f"{n} {picks[n][-1]['chosen']}" for n in names)
        log(f"held out {list(held_out)} (inner rivals {rivals}): {picked}")
        for method in baseline_methods(corpus, np.isin(data.folds, cfg.train_folds), cfg.embedding_dim):
            baselines.setdefault(method.name, []).append(method.embed(corpus.x, corpus.mv, everything))
            euclidean[method.name] = method.euclidean

    def scores_of(v: list[np.ndarray], euclid: bool = False) -> dict[str, np.ndarray]:
        return per_query(cf.crossfit_neighbours(v, euclid, group, corpus.patients, k), corpus)

    fixed = {name: scores_of(v, euclidean[name]) for name, v in baselines.items()}
    fixed[REFERENCE] = scores_of(served_vectors[REFERENCE])
    results = {}
    for name in names:
        view = cf._view({"trained": scores_of(served_vectors[name]), **fixed}, corpus, group, groups)
        results[name] = {
            "pooled": view["methods"]["trained"]["pooled"],
            "minus_reference": None if name == REFERENCE else view["trained_minus"][REFERENCE],
            "aims": cf.judge(view),
            "picks": picks[name],
        }
    return {
        "evaluation": "candidate served blocks, nested choice, cross-fitted",
        "dataset": {
            "root": relative(root),
            "records": len(data),
            "limit": limit,
            "groups": [list(g) for g in groups],
        },
        "work": relative(work),
        "protocol": {
            "k": k,
            "choice": f"per group, the best by each rule {RULES} among the base grid {cf.GRID} and the "
            "candidate's settings (ties: the base grid's, lighter first)",
            "report": "pooled over the held-out groups, every labelled ECG a query once, own patient "
            f"excluded; differences minus {REFERENCE} on the same queries, bootstrap 95% paired",
        },
        "candidates": {
            c.name: {
                "why": c.why,
                "extra_settings": len(c.settings(cf.grid_settings(True))),
                "post_hoc": c.post_hoc,
            }
            for c in CANDIDATES
        },
        "results": results,
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": {**started_on, "load_avg_at_end": load_average()},
        **({"command": command} if command else {}),
    }


def line(result: dict) -> str:
    """One summary line: each entry's pooled P@10 and AFIB minus the reference (the shipped protocol)."""
    parts = []
    for name, r in result["results"].items():
        p = r["pooled"]["p10_any_superclass"]["value"]
        d = r["minus_reference"]
        parts.append(
            f"{name} {p:.3f}"
            if d is None
            else f"{name} {d['p10_any_superclass']['value']:+.3f} (AFIB {d['codes']['AFIB']['value']:+.3f})"
        )
    return f"P@10 any superclass, minus {REFERENCE}: " + "; ".join(parts)
